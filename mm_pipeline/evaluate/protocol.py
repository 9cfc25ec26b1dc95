"""The evaluation protocol: every model, one split, full ranking and cold-start ranking."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from mm_pipeline.evaluate.bootstrap import bootstrap_ci, paired_bootstrap
from mm_pipeline.evaluate.metrics import per_user_metrics, ranking_metrics
from mm_pipeline.recommend.base import EmbeddingRecommender

if TYPE_CHECKING:
    from mm_pipeline.recommend.fit import SplitData

PROTOCOL = ("Split: {split}. Test: every item is scored for each test user, the "
            "user's training and validation items are excluded, and the top-k is compared with the user's "
            "test items. Cold start: test interactions on items with no training interaction, ranked among "
            "those cold items only. Coverage: share of the catalogue recommended to anyone; novelty: mean "
            "self-information -log2((pop+1)/(users+1)) of recommended items.")


CI_METRICS = ("recall@20", "ndcg@20")


def evaluate_models(models: dict[str, EmbeddingRecommender], data: "SplitData", ks=(10, 20),
                    primary: str | None = None, baselines: tuple[str, ...] = (), n_resamples: int = 1000,
                    seed: int = 0, split: str = "per-user chronological split (8:1:1)") -> dict:
    """Test metrics for each model on all items and on cold-start items.

    Adds 95% bootstrap intervals over test users for recall@20 and ndcg@20 (``"recall@20_ci"``), and,
    when ``primary`` and ``baselines`` are given, a paired bootstrap of the primary model against the
    baseline with the best recall@20 (``out["significance"]``).
    """
    exclude = (data.train + data.valid).tocsr()
    popularity = np.asarray(data.train.sum(axis=0)).ravel()
    cold = ~data.warm_items
    cold_truth = data.test.multiply(sp.csr_matrix(cold.astype(np.float32)[None, :])).tocsr()
    cold_truth.eliminate_zeros()
    out: dict = {"models": {}, "cold_start": {}, "protocol": PROTOCOL.format(split=split),
                 "cold_test_interactions": int(cold_truth.nnz)}
    per_user = {}
    for name, model in models.items():
        out["models"][name] = ranking_metrics(model, truth=data.test, exclude=exclude, ks=ks,
                                              item_popularity=popularity, n_train_users=data.n_users)
        per_user[name] = per_user_metrics(model, truth=data.test, exclude=exclude, ks=(20,))
        for metric in CI_METRICS:
            out["models"][name][f"{metric}_ci"] = list(bootstrap_ci(per_user[name][metric], n_resamples,
                                                                    seed=seed))
        if cold.any() and cold_truth.nnz:
            out["cold_start"][name] = ranking_metrics(model, truth=cold_truth, exclude=exclude, ks=ks,
                                                      item_popularity=popularity, n_train_users=data.n_users,
                                                      candidates=cold)
    present = [b for b in baselines if b in out["models"]]
    if primary in out["models"] and present:
        best = max(present, key=lambda b: out["models"][b]["recall@20"])
        out["significance"] = {"primary": primary, "best_baseline": best, **{
            metric: paired_bootstrap(per_user[primary][metric], per_user[best][metric], n_resamples, seed=seed)
            for metric in CI_METRICS}}
    return out

"""The evaluation protocol: every model, one split, full ranking and cold-start ranking."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from mm_pipeline.evaluate.metrics import ranking_metrics
from mm_pipeline.recommend.base import EmbeddingRecommender

if TYPE_CHECKING:
    from mm_pipeline.recommend.fit import SplitData

PROTOCOL = ("Per-user chronological split (8:1:1). Test: every item is scored for each test user, the "
            "user's training and validation items are excluded, and the top-k is compared with the user's "
            "test items. Cold start: test interactions on items with no training interaction, ranked among "
            "those cold items only. Coverage: share of the catalogue recommended to anyone; novelty: mean "
            "self-information -log2((pop+1)/(users+1)) of recommended items.")


def evaluate_models(models: dict[str, EmbeddingRecommender], data: "SplitData", ks=(10, 20)) -> dict:
    """Test metrics for each model on all items and on cold-start items."""
    exclude = (data.train + data.valid).tocsr()
    popularity = np.asarray(data.train.sum(axis=0)).ravel()
    cold = ~data.warm_items
    cold_truth = data.test.multiply(sp.csr_matrix(cold.astype(np.float32)[None, :])).tocsr()
    cold_truth.eliminate_zeros()
    out: dict = {"models": {}, "cold_start": {}, "protocol": PROTOCOL,
                 "cold_test_interactions": int(cold_truth.nnz)}
    for name, model in models.items():
        out["models"][name] = ranking_metrics(model, truth=data.test, exclude=exclude, ks=ks,
                                              item_popularity=popularity, n_train_users=data.n_users)
        if cold.any() and cold_truth.nnz:
            out["cold_start"][name] = ranking_metrics(model, truth=cold_truth, exclude=exclude, ks=ks,
                                                      item_popularity=popularity, n_train_users=data.n_users,
                                                      candidates=cold)
    return out

"""The evaluation protocol: every model, one split; full ranking, cold-start and long-tail items."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from mm_pipeline.evaluate.bootstrap import bootstrap_intervals, paired_bootstraps
from mm_pipeline.evaluate.metrics import (
    per_user_metrics_from_top_k,
    ranking_metrics_from_top_k,
    top_k,
)
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.ranking import SplitRankings, rank_splits, top_k_and_among_candidates

if TYPE_CHECKING:
    from mm_pipeline.data.types import SplitData

HEAD_SHARE = 0.2
# Below these a subgroup's metrics are noise or trivially perfect (one cold item: recall@20 = 1 for
# every model), so the report says "not enough data" instead of printing them.
MIN_SUBGROUP_INTERACTIONS = 30
MIN_SUBGROUP_USERS = 10

PROTOCOL = (
    "Split: {split}. Test: every item is scored for each test user, the "
    "user's training and validation items are excluded, and the top-k is compared with the user's "
    "test items. Cold start: test interactions on items with no training interaction, ranked among "
    "those cold items only. Long tail: test interactions on warm items outside the head (the most "
    "popular items that together hold {head:.0%} of the training interactions), on the same "
    "full ranking. Coverage: share of the catalogue recommended to anyone; novelty: mean "
    "self-information -log2((pop+1)/(users+1)) of recommended items; personalization: 1 - mean "
    "overlap of two users' top-k lists;{diversity} tail share: share of recommended slots "
    "holding long-tail items. A cold-start or long-tail group with fewer than {min_interactions} test "
    "interactions or {min_users} test users (or, for cold start, no more than k cold items) is "
    "reported as not enough data, not as numbers. Intervals: 95% percentile bootstrap over test users ({resamples} "
    "resamples, the same resamples for every model)."
)
DIVERSITY = (
    " intra-list diversity: mean cosine distance between the items of one list, on one item "
    "representation for every model (the fused content embeddings);"
)


def popularity_groups(train: sp.spmatrix, head_share: float = HEAD_SHARE) -> tuple[np.ndarray, np.ndarray]:
    r"""``(head, tail)`` bool masks over items, from training popularity.

    Items are ordered by their number of training interactions (descending; ties by lower index).
    The **head** is the shortest prefix of that order whose interactions reach ``head_share`` of
    all training interactions; the **long tail** is every other item with at least one training
    interaction. Cold items (no training interaction) are in neither.
    """
    if not 0 < head_share < 1:
        raise ValueError(f"head_share must lie in (0, 1), got {head_share!r}")
    if not sp.issparse(train):
        raise TypeError(f"train must be a scipy.sparse matrix, got {type(train).__name__}")
    counts = np.asarray((train != 0).sum(axis=0)).ravel().astype(np.int64)
    n_items = counts.size
    head = np.zeros(n_items, dtype=bool)
    total = int(counts.sum())
    if total:
        order = np.lexsort((np.arange(n_items), -counts))
        n_head = int(np.searchsorted(np.cumsum(counts[order]), head_share * total, side="left")) + 1
        head[order[:n_head]] = True
    return head, (counts > 0) & ~head


def subgroup_support(
    truth: sp.csr_matrix,
    candidates: np.ndarray | None,
    k: int,
    min_interactions: int = MIN_SUBGROUP_INTERACTIONS,
    min_users: int = MIN_SUBGROUP_USERS,
) -> dict:
    """How much test data a subgroup (cold-start or long-tail items) has, and whether it is enough.

    ``truth`` holds the subgroup's test interactions; ``candidates`` (bool over items, or ``None`` for
    the full ranking) is what they are ranked among. Enough means at least ``min_interactions`` test
    interactions from at least ``min_users`` users and, when ranking among candidates, more than ``k``
    of them (with ``k`` or fewer, every model's top-``k`` holds them all). ``reason`` says what is missing.
    """
    interactions = int(truth.nnz)
    users = int((np.diff(truth.tocsr().indptr) > 0).sum())
    items = int(np.asarray(candidates).sum()) if candidates is not None else int(truth.shape[1])
    missing = []
    if interactions < min_interactions:
        missing.append(f"{interactions} test interactions (need {min_interactions})")
    if users < min_users:
        missing.append(f"{users} test users (need {min_users})")
    if candidates is not None and items <= k:
        missing.append(f"{items} candidate items (need more than {k}, else every top-{k} holds them all)")
    return {
        "interactions": interactions,
        "users": users,
        "items": items,
        "enough": not missing,
        "reason": "; ".join(missing) if missing else None,
    }


def _restrict(matrix: sp.spmatrix, items: np.ndarray) -> sp.csr_matrix:
    out = sp.csr_matrix(matrix.multiply(sp.csr_matrix(items.astype(np.float32)[None, :])))
    out.eliminate_zeros()
    return out


def _cold_test(data: SplitData) -> tuple[np.ndarray, sp.csr_matrix, np.ndarray]:
    """``(cold, cold_truth, cold_users)``: the items without training interactions (bool), the test
    interactions on them, and the test users with at least one."""
    cold = ~data.warm_items
    cold_truth = _restrict(data.test, cold)
    return cold, cold_truth, np.flatnonzero(cold_truth.getnnz(axis=1) > 0).astype(np.int64)


def rank_for_evaluation(model: EmbeddingRecommender, data: SplitData, k: int = 20) -> SplitRankings:
    """Every list model selection and :func:`evaluate_models` read of ``model``, from one scoring pass
    (:func:`~mm_pipeline.recommend.ranking.rank_splits`): its validation lists, its test lists and its
    cold-start test lists (among the cold items), at ``k``."""
    cold, _, cold_users = _cold_test(data)
    if not cold_users.size:
        return rank_splits(model, data, k)
    return rank_splits(model, data, k, candidates=cold, among=cold_users)


class ModelsOnDemand(Mapping[str, EmbeddingRecommender]):
    """Models built when they are read and not kept (``builders``: name -> a function returning the model):
    evaluating them in turn holds one model's tables at a time instead of every model's, when the loop drops
    each model before reading the next (``for name in models: model = models[name]; ...; del model``; a loop
    over ``items()`` keeps the previous one bound while the next is built)."""

    def __init__(self, builders: Mapping[str, Callable[[], EmbeddingRecommender]]):
        self._builders = dict(builders)

    def __getitem__(self, name: str) -> EmbeddingRecommender:
        return self._builders[name]()

    def __contains__(self, name: object) -> bool:  # Mapping's default would build the model
        return name in self._builders

    def __iter__(self):
        return iter(self._builders)

    def __len__(self) -> int:
        return len(self._builders)


def evaluate_models(
    models: Mapping[str, EmbeddingRecommender],
    data: SplitData,
    ks: Sequence[int] = (10, 20),
    primary: str | None = None,
    baselines: Sequence[str] = (),
    n_resamples: int = 1000,
    seed: int = 0,
    split: str = "per-user chronological split (8:1:1)",
    item_features: np.ndarray | None = None,
    head_share: float = HEAD_SHARE,
    min_subgroup: tuple[int, int] = (MIN_SUBGROUP_INTERACTIONS, MIN_SUBGROUP_USERS),
    rankings: Mapping[str, SplitRankings] | None = None,
) -> dict:
    """Test metrics for each model on all items, on cold-start items and on long-tail items.

    Each model scores each test user once; the full-ranking and long-tail metrics share those
    top-k lists. Adds, per model, 95% bootstrap intervals over test users for recall@K and ndcg@K
    (``K = max(ks)``, keys ``"recall@K_ci"``). When ``baselines`` are given, every model is compared
    with the baseline of best recall@K by a paired bootstrap (``"significant_vs_best_baseline"``
    per model, the full tests in ``out["significance"]["models"]``; the primary model's tests also
    at ``out["significance"][metric]``). ``out["per_user"][model]`` holds the per-user arrays at ``K``
    (``user_idx``, ``recall@K``, ``ndcg@K``; :func:`per_user_metrics_from_top_k`). ``item_features``
    (``[n_items, d]``) adds intra-list diversity. ``min_subgroup`` is ``(interactions, users)`` a cold-start
    or long-tail group needs to be reported (:func:`subgroup_support`); ``out["support"]`` says what each
    group had. ``rankings`` (name -> :func:`rank_for_evaluation` of the model, at ``k >= max(ks)``) are read
    instead of ranking those models again: their models are never built.
    """
    if not models:
        raise ValueError("models is empty: nothing to evaluate")
    max_k = max(ks)
    exclude = (data.train + data.valid).tocsr()
    popularity = np.asarray(data.train.sum(axis=0)).ravel()
    test_users = np.flatnonzero(data.test.getnnz(axis=1) > 0).astype(np.int64)
    if test_users.size == 0:
        raise ValueError("the test split has no interactions: nothing to evaluate (check the interaction split)")
    cold, cold_truth, cold_users = _cold_test(data)
    head, tail = popularity_groups(data.train, head_share)
    tail_truth = _restrict(data.test, tail)
    cold_support = subgroup_support(cold_truth, cold, max_k, *min_subgroup)
    tail_support = subgroup_support(tail_truth, None, max_k, *min_subgroup)
    common = dict(ks=ks, item_popularity=popularity, n_train_users=data.n_users, item_features=item_features)
    out: dict = {
        "models": {},
        "cold_start": {},
        "long_tail": {},
        "protocol": PROTOCOL.format(
            split=split,
            head=head_share,
            resamples=n_resamples,
            min_interactions=min_subgroup[0],
            min_users=min_subgroup[1],
            diversity="" if item_features is None else DIVERSITY,
        ),
        "cold_test_interactions": int(cold_truth.nnz),
        "support": {"cold_start": cold_support, "long_tail": tail_support},
        "popularity_groups": {
            "head_share": head_share,
            "head_items": int(head.sum()),
            "tail_items": int(tail.sum()),
            "cold_items": int(cold.sum()),
            "tail_test_interactions": int(tail_truth.nnz),
        },
    }
    ci_metrics = (f"recall@{max_k}", f"ndcg@{max_k}")
    per_user = {}
    rankings = rankings or {}
    for name in models:  # one model at a time when they are built on reading (ModelsOnDemand)
        if name in rankings:
            ranked = rankings[name]
            if ranked.k < max_k:
                raise ValueError(f"the rankings of {name!r} hold {ranked.k} items a list; the report needs {max_k}")
            top = ranked.test_lists(test_users)[:, :max_k]
            cold_top = ranked.among_lists(cold_users)[:, :max_k] if cold_support["enough"] else None
        elif cold_support["enough"]:  # the cold-start lists from the same scores (one scoring pass)
            model = models[name]
            top, cold_top = top_k_and_among_candidates(model, test_users, exclude, max_k, cold, cold_users)
            del model
        else:
            model = models[name]
            top = top_k(model, test_users, exclude, max_k)
            del model
        out["models"][name] = ranking_metrics_from_top_k(top, test_users, data.test, tail_items=tail, **common)
        per_user[name] = per_user_metrics_from_top_k(top, test_users, data.test, ks=(max_k,))
        if tail_support["enough"]:
            out["long_tail"][name] = ranking_metrics_from_top_k(top, test_users, tail_truth, tail_items=tail, **common)
        if cold_support["enough"]:
            out["cold_start"][name] = ranking_metrics_from_top_k(cold_top, cold_users, cold_truth, **common)

    # Each model's per-user test metrics at K (what the intervals resample): for reports that group the test
    # users (say, by dominant modality) without ranking again. Not part of the metrics written out.
    out["per_user"] = per_user
    names = list(models)
    stacked = {metric: np.stack([per_user[name][metric] for name in names]) for metric in ci_metrics}
    for metric, values in stacked.items():
        intervals = bootstrap_intervals(values, n_resamples, seed=seed)
        for name, (lo, hi) in zip(names, intervals):
            out["models"][name][f"{metric}_ci"] = [float(lo), float(hi)]

    present = [b for b in baselines if b in out["models"]]
    if present:
        best = max(present, key=lambda b: out["models"][b][f"recall@{max_k}"])  # ties: the first listed
        tests = {
            metric: paired_bootstraps(values, stacked[metric][names.index(best)], n_resamples, seed=seed)
            for metric, values in stacked.items()
        }
        per_model = {name: {metric: tests[metric][row] for metric in ci_metrics} for row, name in enumerate(names)}
        for name in names:
            out["models"][name]["significant_vs_best_baseline"] = {
                metric: per_model[name][metric]["significant"] for metric in ci_metrics
            }
        out["significance"] = {"best_baseline": best, "metrics": list(ci_metrics), "models": per_model}
        if primary in out["models"]:
            out["significance"].update({"primary": primary, **per_model[primary]})
    return out

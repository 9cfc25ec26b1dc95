"""What the validation search tries for each model (see :mod:`mm_pipeline.recommend.selection`).

Every model is tuned the same way, baselines included, so that the comparison is between tuned
models, not between a tuned primary model and baselines left at their defaults:

* EASE: its L2 :math:`\\lambda` on a factor-2 line from 200 (hill-climbing; the Gram matrix is
  computed once and reused);
* item k-NN: its neighbourhood size ``k`` on a factor-2 line from 100;
* BPR-trained models (BPR-MF, LightGCN, VBPR, mm_gcn, FREEDOM): the given config first, then one change at a
  time from the model's grid below, while the time budget lasts. Each trial early-stops on
  validation NDCG@20 like a single training run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.baselines import check_ease_size, item_item
from mm_pipeline.recommend.linear import ItemGram, item_knn_weights
from mm_pipeline.recommend.selection import SearchResult, grid, log_line, search

# One change at a time from the given config, in the order tried (the first entry, {}, is the config).
GRIDS: dict[str, list[dict[str, Any]]] = {
    "bpr_mf": [{}, {"reg": 1e-3}, {"lr": 3e-3}, {"dim": 128}],
    "lightgcn": [{}, {"reg": 1e-3}, {"lr": 3e-3}, {"num_layers": 3}],
    "vbpr": [{}, {"reg": 1e-3}, {"lr": 3e-3}],
    "mm_gcn": [{}, {"lr": 1e-2}, {"reg": 1e-3}, {"knn_k": 0}],
    "freedom": [{}, {"lr": 1e-2}, {"reg": 1e-3}],
}


@dataclass
class Tuning:
    """The time budget (seconds) and the most trials of one model's validation search."""

    budget_s: float = 60.0
    max_trials: int = 4


def tune_ease(data, tuning: Tuning, start: float = 200.0, factor: float = 2.0, on_trial=None) -> SearchResult:
    """EASE with its L2 chosen on validation NDCG@20 (hill-climbing on ``start * factor**k``)."""
    check_ease_size(data.n_items)
    gram = ItemGram(data.train)

    def fit(params: dict) -> EmbeddingRecommender:
        return item_item("ease", data.train, gram.ease(params["l2"]), {"kind": "EASE", "l2": params["l2"]})

    return search(log_line("l2", start, factor, 1e-2, 1e6), fit, data.validator(), tuning.budget_s,
                  tuning.max_trials, on_trial=on_trial)


def tune_item_knn(data, tuning: Tuning, start: int = 100, shrink: float = 10.0, on_trial=None) -> SearchResult:
    """Item k-NN with its neighbourhood size chosen on validation NDCG@20 (factor-2 line from ``start``)."""
    check_ease_size(data.n_items)  # the same dense item x item matrix
    gram = ItemGram(data.train).gram

    def fit(params: dict) -> EmbeddingRecommender:
        k = int(params["k"])
        return item_item("item_knn", data.train, item_knn_weights(gram, k, shrink),
                         {"kind": "item k-NN", "k": k, "shrink": shrink})

    high = float(max(data.n_items - 1, 1))
    low = min(5.0, high)
    return search(log_line("k", min(max(float(start), low), high), 2.0, low, high), fit, data.validator(),
                  tuning.budget_s, tuning.max_trials, on_trial=on_trial)


def tune_trained(name: str, fit: Callable[[Any], EmbeddingRecommender], config: Any, validate, tuning: Tuning,
                 on_trial=None) -> SearchResult:
    """A BPR-trained model (``fit(config) -> model``) over ``GRIDS[name]`` applied to ``config``.

    A grid entry that equals the given config (say the user already set ``reg: 1e-3``) is skipped.
    """
    candidates, seen = [], set()
    for change in GRIDS[name]:
        candidate = dataclasses.replace(config, **change)
        key = tuple(sorted(dataclasses.asdict(candidate).items()))
        if key not in seen:
            seen.add(key)
            candidates.append(change)
    return search(grid(candidates), lambda change: fit(dataclasses.replace(config, **change)), validate,
                  tuning.budget_s, tuning.max_trials, on_trial=on_trial)

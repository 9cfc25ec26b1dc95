"""What the validation search tries for each model (see :mod:`mm_pipeline.recommend.selection`).

Every model is tuned the same way, baselines included, so that the comparison is between tuned
models, not between a tuned primary model and baselines left at their defaults:

* EASE: its L2 :math:`\\lambda` on a factor-2 line from 200 (hill-climbing; the Gram matrix is
  computed once and reused; on a catalogue above ``search_items`` the line is climbed on the most
  popular items' sub-catalogue and EASE fitted once on the whole one);
* item k-NN: its neighbourhood size ``k`` on a factor-2 line from 100;
* BPR-trained models (BPR-MF, LightGCN, VBPR, mm_gcn, FREEDOM): the given config first, then one change at a
  time from the model's grid below, while the time budget lasts. Each trial early-stops on
  validation NDCG@20 like a single training run, and a later trial also stops as soon as, from
  ``warmup`` epochs on, its best validation NDCG@20 so far is below what the best trial had reached by
  the same epoch (it would need to overtake a curve it is already behind): a setting that loses is
  dropped after a few epochs, so the search costs little more than one training.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from mm_pipeline.data.types import SplitData
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.baselines import check_ease_size, item_item
from mm_pipeline.recommend.linear import ItemGram, item_knn_weights
from mm_pipeline.recommend.ranking import validator
from mm_pipeline.recommend.selection import MONITOR, SearchResult, grid, log_line, search
from mm_pipeline.recommend.train import StopTraining

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
    """The time budget (seconds) and the most trials of one model's validation search; ``warmup``: the
    epochs a trained model's trial runs before it can be stopped for trailing the best one;
    ``validation_users``: the validation users a trial is scored on, a seeded sample (``seed``) when there
    are more (0: all). Every trial of a search is scored on the same users, so settings are compared on
    paired data; model selection (:func:`~mm_pipeline.recommend.selection.compare_on_validation`) still
    scores every validation user."""

    budget_s: float = 60.0
    max_trials: int = 4
    warmup: int = 3
    # On builtin:large scoring all 40k validation users was about a third of an item k-NN trial (3-4 s of
    # 10-13); 10k keep the choice's noise small. builtin:default (1,500 users) is scored whole.
    validation_users: int = 10_000
    seed: int = 0

    def validate(self, data: SplitData):
        """The validation a trial of this search is scored by (see the class doc)."""
        return validator(data, max_users=self.validation_users or None, seed=self.seed)


class TrailingStop:
    """The per-epoch rule that stops a trial once it trails the best finished trial (see the module doc).

    :meth:`callback` gives a fresh trial's ``on_epoch``; :meth:`finished` records a trial's curve and
    keeps it as the reference when its final score is the best so far.
    """

    def __init__(self, warmup: int, monitor: str = "valid_ndcg@20"):
        self.warmup, self.monitor = warmup, monitor
        self.reference: np.ndarray | None = None  # best-so-far validation score by epoch
        self.best = -math.inf
        self._curve: list[float] = []

    def callback(self) -> Callable[[dict], None]:
        self._curve = []

        def on_epoch(row: dict) -> None:
            value = row.get(self.monitor)
            previous = self._curve[-1] if self._curve else -math.inf
            self._curve.append(previous if value is None or math.isnan(value) else max(previous, value))
            epoch = len(self._curve)
            if self.reference is not None and epoch >= self.warmup:
                reached = self.reference[min(epoch, len(self.reference)) - 1]
                if self._curve[-1] < reached:
                    raise StopTraining

        return on_epoch

    def finished(self, score: float) -> None:
        if score > self.best:
            self.best, self.reference = score, np.asarray(self._curve)


def tune_ease(
    data, tuning: Tuning, start: float = 200.0, factor: float = 2.0, on_trial=None, search_items: int = 0
) -> SearchResult:
    """EASE with its L2 chosen on validation NDCG@20 (hill-climbing on ``start * factor**k``).

    With ``search_items`` > 0 and a larger catalogue, the line is climbed on the sub-catalogue of the
    ``search_items`` most popular training items (their interactions only, validated on their validation
    items), then EASE is fitted once on the whole catalogue with the chosen L2 and validated: each trial is
    a dense n x n inverse (n^3 work), so the search costs (search_items / n)^3 of a full trial per setting.
    The trial table's ``items`` column says which catalogue a row was fitted on; the full fit is the chosen row.
    """
    check_ease_size(data.n_items)
    if not search_items or data.n_items <= search_items:
        return _ease_line(data, tuning, start, factor, on_trial)
    started = time.perf_counter()
    keep = np.sort(np.argsort(-np.asarray(data.train.sum(axis=0)).ravel(), kind="stable")[:search_items])
    sub = SplitData(
        data.n_users, len(keep), *(m[:, keep].tocsr() for m in (data.train, data.valid, data.test)), torch.zeros(0)
    )
    line = _ease_line(sub, tuning, start, factor, on_trial)
    fit_start = time.perf_counter()
    l2 = float(line.params["l2"])
    model = item_item("ease", data.train, ItemGram(data.train).ease(l2), {"kind": "EASE", "l2": l2})
    metrics = tuning.validate(data)(model)
    row = {
        "l2": l2,
        **{f"valid_{k}": float(v) for k, v in metrics.items()},
        "seconds": round(time.perf_counter() - fit_start, 3),
        "items": data.n_items,
    }
    if on_trial:
        on_trial(row)
    score = float(metrics[MONITOR])
    model.info = {**model.info, f"valid_{MONITOR}": score}
    trials = pd.concat([line.trials.assign(items=len(keep), chosen=False), pd.DataFrame([{**row, "chosen": True}])])
    stopped = (
        f"{line.stopped} on the {len(keep)} most popular items; fitted once on all {data.n_items} items "
        f"({time.perf_counter() - started:.0f} s in all)"
    )
    return SearchResult({"l2": l2}, model, score, trials.reset_index(drop=True), stopped)


def _ease_line(data, tuning: Tuning, start: float, factor: float, on_trial) -> SearchResult:
    gram = ItemGram(data.train)

    def fit(params: dict) -> EmbeddingRecommender:
        return item_item("ease", data.train, gram.ease(params["l2"]), {"kind": "EASE", "l2": params["l2"]})

    return search(
        log_line("l2", start, factor, 1e-2, 1e6),
        fit,
        tuning.validate(data),
        tuning.budget_s,
        tuning.max_trials,
        on_trial=on_trial,
    )


def tune_item_knn(data, tuning: Tuning, start: int = 100, shrink: float = 10.0, on_trial=None) -> SearchResult:
    """Item k-NN with its neighbourhood size chosen on validation NDCG@20 (factor-2 line from ``start``)."""
    check_ease_size(data.n_items)  # the same dense item x item matrix
    gram = ItemGram(data.train).gram

    def fit(params: dict) -> EmbeddingRecommender:
        k = int(params["k"])
        return item_item(
            "item_knn", data.train, item_knn_weights(gram, k, shrink), {"kind": "item k-NN", "k": k, "shrink": shrink}
        )

    high = float(max(data.n_items - 1, 1))
    low = min(5.0, high)
    return search(
        log_line("k", min(max(float(start), low), high), 2.0, low, high),
        fit,
        tuning.validate(data),
        tuning.budget_s,
        tuning.max_trials,
        on_trial=on_trial,
        keep_best=False,  # a trial is a deterministic table build: the best is built again, not kept beside the next
    )


def tune_trained(
    name: str,
    fit: Callable[[Any, Callable[[dict], None]], EmbeddingRecommender],
    config: Any,
    validate,
    tuning: Tuning,
    on_trial=None,
) -> SearchResult:
    """A BPR-trained model (``fit(config, on_epoch) -> model``) over ``GRIDS[name]`` applied to ``config``,
    each trial stopped once it trails the best one (:class:`TrailingStop`).

    A grid entry that equals the given config (say the user already set ``reg: 1e-3``) is skipped.
    """
    candidates, seen = [], set()
    for change in GRIDS[name]:
        candidate = dataclasses.replace(config, **change)
        key = tuple(sorted(dataclasses.asdict(candidate).items()))
        if key not in seen:
            seen.add(key)
            candidates.append(change)
    stop = TrailingStop(tuning.warmup)

    def fit_one(change: dict) -> EmbeddingRecommender:
        model = fit(dataclasses.replace(config, **change), stop.callback())
        stop.finished(float(model.info.get("best_valid_ndcg@20", -math.inf)))
        return model

    return search(grid(candidates), fit_one, validate, tuning.budget_s, tuning.max_trials, on_trial=on_trial)

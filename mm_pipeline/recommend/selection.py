"""Choosing a model's hyper-parameters on the validation split, within a time budget.

Every model of the pipeline, the baselines included, gets the same treatment: a *proposer* names
the next setting to try from the ones tried so far, ``fit`` trains a model with it, and the model's
validation NDCG@20 (users' validation items, their training items excluded) decides. The test split
is never read. The first setting (the documented default) always runs; another starts only while the
time spent plus the mean trial time stays within ``budget_s``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from mm_pipeline.memory import release_freed_memory
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.ranking import SplitRankings, validator

Proposer = Callable[[list[dict]], dict | None]  # tried trials (params + score) -> next params, or None
MONITOR = "ndcg@20"


@dataclass
class SearchResult:
    """The chosen setting, its model and the table of every trial (``chosen`` marks the winner)."""

    params: dict[str, Any]
    model: EmbeddingRecommender
    score: float
    trials: pd.DataFrame
    stopped: str  # why no further setting was tried

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts for MLflow params and Dagster metadata."""
        return {
            "chosen": self.params,
            f"valid_{MONITOR}": self.score,
            "trials": int(len(self.trials)),
            "stopped": self.stopped,
            "seconds": float(self.trials["seconds"].sum()),
        }


def grid(candidates: Sequence[dict]) -> Proposer:
    """Try ``candidates`` in order (put the default first: it is the one that always runs)."""
    candidates = [dict(c) for c in candidates]
    if not candidates:
        raise ValueError("a grid needs at least one candidate setting")

    def propose(tried: list[dict]) -> dict | None:
        return candidates[len(tried)] if len(tried) < len(candidates) else None

    return propose


def log_line(name: str, start: float, factor: float, low: float, high: float, fixed: dict | None = None) -> Proposer:
    """Hill-climb one positive parameter on the grid ``start * factor**k`` within ``[low, high]``.

    After ``start``, it tries the untried neighbour of the best value so far, the larger one first,
    and stops when both neighbours of the best are tried (or out of range): for a score that is
    unimodal in ``log(name)`` that is the grid's best value, reached in few trials.
    """
    if not (start > 0 and factor > 1 and 0 < low <= start <= high):
        raise ValueError(
            f"log_line needs 0 < low <= start <= high and factor > 1, got start={start}, "
            f"factor={factor}, low={low}, high={high}"
        )
    fixed = dict(fixed or {})

    def value(step: int) -> float:
        return float(f"{start * factor**step:.6g}")

    def propose(tried: list[dict]) -> dict | None:
        if not tried:
            return {**fixed, name: value(0)}
        steps = {round(math.log(t[name] / start, factor)): t["score"] for t in tried}
        best = max(steps, key=lambda s: (steps[s], -abs(s)))
        for step in (best + 1, best - 1):
            if step not in steps and low <= value(step) <= high:
                return {**fixed, name: value(step)}
        return None

    return propose


def search(
    propose: Proposer,
    fit: Callable[[dict], EmbeddingRecommender],
    validate: Callable[[EmbeddingRecommender], dict[str, float]],
    budget_s: float,
    max_trials: int = 20,
    on_trial: Callable[[dict], None] | None = None,
    keep_best: bool = True,
    final: Callable[[dict], EmbeddingRecommender] | None = None,
) -> SearchResult:
    """Run trials from ``propose`` until it is done, ``max_trials`` ran, or the budget would be exceeded.

    ``fit(params)`` returns a trained model (a trained model's early stopping may read the validation
    split too: that is still choosing on validation); ``validate(model)`` returns its validation
    metrics, of which ``ndcg@20`` decides (ties: the earlier trial). Only the best model is kept; with
    ``keep_best`` off not even that one: the best setting is fitted again at the end, for a ``fit`` that is
    deterministic and cheap but whose model is big (the hybrid's item table, 1.6 GB at 20k items, would
    otherwise sit beside every later trial's). ``final`` (with ``keep_best`` off) builds that model instead of
    ``fit``: for trials that are scored without building the model (the hybrid's :meth:`HybridParts.trial`).
    """
    if budget_s < 0 or max_trials < 1:
        raise ValueError(f"budget_s must be >= 0 and max_trials >= 1, got {budget_s} and {max_trials}")
    tried: list[dict] = []
    rows: list[dict] = []
    best: tuple[float, dict, EmbeddingRecommender | None, int] | None = None
    started = time.perf_counter()
    stopped = "max_trials reached"
    while len(tried) < max_trials:
        params = propose(tried)
        if params is None:
            stopped = "every proposed setting tried"
            break
        spent = time.perf_counter() - started
        if tried and spent + spent / len(tried) > budget_s:
            stopped = f"time budget ({budget_s:.0f} s) spent"
            break
        trial_start = time.perf_counter()
        model = fit(params)
        metrics = validate(model)
        score = float(metrics[MONITOR])
        row = {
            **params,
            **{f"valid_{k}": float(v) for k, v in metrics.items()},
            "seconds": round(time.perf_counter() - trial_start, 3),
        }
        for key in ("best_epoch", "epochs_run", "stopped_early"):
            if key in model.info:
                row[key] = model.info[key]
        tried.append({**params, "score": score})
        rows.append(row)
        if on_trial:
            on_trial(row)
        if best is None or score > best[0]:
            best = (score, params, model if keep_best else None, len(rows) - 1)
        del model  # only the best trial's model is kept: the others' tables go now, and their pages with them
        release_freed_memory()
    assert best is not None  # the first trial always runs
    trials = pd.DataFrame(rows)
    trials["chosen"] = trials.index == best[3]
    model = best[2] if keep_best else (final or fit)(dict(best[1]))
    model.info = {**model.info, f"valid_{MONITOR}": best[0]}
    return SearchResult(dict(best[1]), model, best[0], trials, stopped)


def compare_on_validation(
    models: Mapping[str, EmbeddingRecommender],
    data,
    ks: tuple[int, ...] = (20,),
    rankings: Mapping[str, SplitRankings] | None = None,
) -> pd.DataFrame:
    """Every model's validation recall and NDCG (all validation users, training items excluded), best
    NDCG first (ties: the order of ``models``): what choosing the model to ship reads. Never the test split.
    A model with ``rankings`` (:func:`~mm_pipeline.recommend.ranking.rank_splits`, at ``ks[-1]``) is scored from
    its validation lists and never built."""
    validate = validator(data, ks)
    rankings = rankings or {}
    rows = []
    for name in models:  # one model at a time when they are built on reading (ModelsOnDemand)
        if name in rankings:
            if rankings[name].k != ks[-1]:
                raise ValueError(f"the rankings of {name!r} hold {rankings[name].k} items a list, not {ks[-1]}")
            metrics = rankings[name].validation_metrics(data.valid)
        else:
            model = models[name]
            metrics = validate(model)
            del model
        rows.append({"model": name, **{f"valid_{k}": float(v) for k, v in metrics.items()}})
    table = pd.DataFrame(rows)
    key = f"valid_ndcg@{ks[-1]}"
    return table.sort_values(key, ascending=False, kind="stable").reset_index(drop=True)

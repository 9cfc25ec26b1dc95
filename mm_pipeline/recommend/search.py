"""Hyper-parameter search for the multimodal recommender: an Optuna study over ``MultimodalConfig`` fields.

Each trial trains ``fit_multimodal`` with one sampled configuration and is scored on **validation**
NDCG@20 only: the best epoch's value, the one early stopping keeps. The trials train on a copy of the
split whose test matrix is empty, so nothing the search decides can depend on the test split.

The search space maps a ``MultimodalConfig`` field to either a list of choices or a range::

    {"lr": {"low": 1e-3, "high": 2e-2, "log": True},   # a float field: sampled in [low, high]
     "dim": [32, 64, 128],                            # any field: one of the choices
     "num_layers": {"low": 1, "high": 3}}             # an int field: an integer in [low, high]

Sampling is Optuna's TPE with a fixed seed (the first trials are seeded random draws), so one seed
gives the same trials, parameters and scores again. With ``prune`` a trial whose validation NDCG
falls below the median of earlier trials at the same epoch is stopped early (Optuna's MedianPruner,
hooked in through the trainer's per-epoch callback).
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mm_pipeline.recommend.fit import MultimodalConfig, SplitData, fit_multimodal

MONITOR = "ndcg@20"
OBJECTIVE = f"valid_{MONITOR}"  # the history column the search maximises
RECALL = "valid_recall@20"

DEFAULT_SPACE: dict[str, Any] = {
    "lr": {"low": 1e-3, "high": 2e-2, "log": True},
    "dim": [32, 64, 128],
    "reg": {"low": 1e-6, "high": 1e-3, "log": True},
    "cold_prob": {"low": 0.0, "high": 0.5},
    "dropout": {"low": 0.0, "high": 0.3},
    # The multimodal parts: where the item graph comes from, whom it smooths, whom content scores.
    "knn_k": [0, 5, 10, 20],
    "graph_mode": ["pre", "add", "cold"],
    "graph_source": ["raw", "aligned"],
    "content_mode": ["all", "cold"],
    "align_weight": {"low": 0.0, "high": 0.2},
    "init": ["xavier", "normal"],
}

# Fields the search owns: searching them would make trials incomparable or change what is measured.
_NOT_SEARCHABLE = {
    "seed": "the search seeds every trial the same way, so trials differ only by their parameters",
    "epochs": "it is the per-trial training budget: set max_epochs instead",
    "eval_every": "the objective is read from every epoch's validation score",
}
_RANGE_KEYS = {"low", "high", "log", "step"}
_CATEGORICAL_TYPES = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class Choice:
    """Sample one of ``values``."""

    values: tuple


@dataclass(frozen=True)
class Range:
    """Sample from ``[low, high]``: integers for an int field, floats for a float field."""

    low: float
    high: float
    log: bool = False
    step: float | None = None


Param = Choice | Range


@dataclass
class TrialResult:
    """One finished trial: what was tried, how it scored on validation, and what it cost."""

    number: int
    state: str  # "complete" or "pruned"
    params: dict[str, Any]  # the sampled fields only
    config: MultimodalConfig  # the full configuration the trial trained with
    valid_ndcg: float  # best validation NDCG@20 over the epochs run: the objective
    valid_recall: float  # validation Recall@20 at that epoch
    best_epoch: int
    epochs_run: int
    seconds: float  # wall time of the trial (training + validation)
    history: pd.DataFrame  # the trainer's per-epoch rows

    def row(self) -> dict[str, Any]:
        train_seconds = float(self.history["train_seconds"].sum()) if "train_seconds" in self.history else math.nan
        return {
            "trial": self.number,
            "state": self.state,
            **self.params,
            OBJECTIVE: self.valid_ndcg,
            RECALL: self.valid_recall,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "seconds": self.seconds,
            "train_seconds": train_seconds,
        }


@dataclass
class SearchResult:
    trials: pd.DataFrame  # one row per trial (see TrialResult.row), in trial order
    results: list[TrialResult]
    best: TrialResult  # the complete trial with the highest validation NDCG@20
    space: dict[str, Param]

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.best.params)

    @property
    def best_config(self) -> MultimodalConfig:
        return self.best.config

    def histories(self) -> pd.DataFrame:
        """Every trial's per-epoch history in one table, with a ``trial`` column first."""
        frames = [r.history.assign(trial=r.number) for r in self.results if len(r.history)]
        if not frames:
            return pd.DataFrame({"trial": pd.Series(dtype=np.int64)})
        out = pd.concat(frames, ignore_index=True)
        return out[["trial", *[c for c in out.columns if c != "trial"]]]


# ----------------------------------------------------------------------------------- the space
def _field_types(config_type: type) -> dict[str, Any]:
    hints = typing.get_type_hints(config_type)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_type)}


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return value


def _check_choice(name: str, annotation: Any, value: Any) -> Any:
    if not isinstance(value, _CATEGORICAL_TYPES):
        raise ValueError(
            f"search space field {name!r}: choice {value!r} is a {type(value).__name__}; "
            "choices must be numbers, strings, booleans or null"
        )
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"search space field {name!r} is an int field; choice {value!r} is not an integer")
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"search space field {name!r} is a float field; choice {value!r} is not a number")
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise ValueError(f"search space field {name!r} is a bool field; choice {value!r} is not true/false")
    if annotation is str and not isinstance(value, str):
        raise ValueError(f"search space field {name!r} is a str field; choice {value!r} is not a string")
    return value


def _parse_param(name: str, annotation: Any, spec: Any) -> Param:
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError(f"search space field {name!r} has an empty list of choices")
        values = tuple(_check_choice(name, annotation, v) for v in spec)
        if len(set(values)) != len(values):
            raise ValueError(f"search space field {name!r} repeats a choice: {list(spec)}")
        return Choice(values)
    if isinstance(spec, Mapping):
        unknown = sorted(set(map(str, spec)) - _RANGE_KEYS)
        if unknown or "low" not in spec or "high" not in spec:
            raise ValueError(
                f"search space field {name!r}: a range is {{low, high[, log][, step]}}, got keys "
                f"{sorted(map(str, spec))}" + (f" (unknown: {unknown})" if unknown else "")
            )
        if annotation not in (int, float):
            raise ValueError(f"search space field {name!r} is not numeric ({annotation}); give a list of choices")
        low = _number(spec["low"], f"search space field {name!r}: low")
        high = _number(spec["high"], f"search space field {name!r}: high")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ValueError(f"search space field {name!r}: log must be true or false, got {log!r}")
        step = spec.get("step")
        if step is not None and _number(step, f"search space field {name!r}: step") <= 0:
            raise ValueError(f"search space field {name!r}: step must be positive, got {step!r}")
        if not low < high:
            raise ValueError(f"search space field {name!r}: low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise ValueError(f"search space field {name!r}: a log range needs low > 0, got {low}")
        if log and step is not None:
            raise ValueError(f"search space field {name!r}: Optuna samples a log range without a step; drop one")
        if annotation is int:
            for key, value in (("low", low), ("high", high), ("step", step)):
                if value is not None and float(value) != int(value):
                    raise ValueError(f"search space field {name!r} is an int field; {key} {value!r} is not whole")
            return Range(int(low), int(high), log, None if step is None else int(step))
        return Range(float(low), float(high), log, None if step is None else float(step))
    raise ValueError(
        f"search space field {name!r}: give a list of choices or a range {{low, high[, log]}}, "
        f"got {type(spec).__name__} {spec!r}"
    )


def parse_space(space: Mapping[str, Any], config_type: type = MultimodalConfig) -> dict[str, Param]:
    """Check ``space`` against the fields of ``config_type`` and return it as :class:`Choice` /
    :class:`Range` objects. Raises ``ValueError`` naming the offending field and what to do."""
    if not isinstance(space, Mapping) or not space:
        raise ValueError(
            f"the search space must be a non-empty mapping of {config_type.__name__} field -> "
            f"choices or range, got {space!r}"
        )
    fields = _field_types(config_type)
    parsed: dict[str, Param] = {}
    for name, spec in space.items():
        if name not in fields:
            raise ValueError(
                f"search space field {name!r} is not a {config_type.__name__} field; "
                f"searchable fields: {sorted(set(fields) - set(_NOT_SEARCHABLE))}"
            )
        if name in _NOT_SEARCHABLE:
            raise ValueError(f"search space field {name!r} cannot be searched: {_NOT_SEARCHABLE[name]}")
        parsed[name] = _parse_param(name, fields[name], spec)
    return parsed


def _suggest(trial, name: str, param: Param, annotation: Any) -> Any:
    if isinstance(param, Choice):
        return trial.suggest_categorical(name, list(param.values))
    if annotation is int:
        return trial.suggest_int(name, int(param.low), int(param.high), step=int(param.step or 1), log=param.log)
    return trial.suggest_float(name, float(param.low), float(param.high), step=param.step, log=param.log)


# ---------------------------------------------------------------------------------- the search
def _validation_only(data: SplitData) -> SplitData:
    """``data`` with an empty test matrix: what the trials see. The caller's ``data`` is not changed."""
    return dataclasses.replace(data, test=sp.csr_matrix(data.test.shape, dtype=data.test.dtype))


def _trial_result(
    number: int, state: str, params: dict, config: MultimodalConfig, history: pd.DataFrame, seconds: float
) -> TrialResult:
    scored = history[history[OBJECTIVE].notna()] if OBJECTIVE in history else history.iloc[:0]
    if len(scored):
        best = scored.loc[scored[OBJECTIVE].idxmax()]  # the first best epoch, as the trainer keeps it
        ndcg, recall, best_epoch = float(best[OBJECTIVE]), float(best.get(RECALL, math.nan)), int(best["epoch"])
    else:
        ndcg, recall, best_epoch = math.nan, math.nan, 0
    return TrialResult(number, state, params, config, ndcg, recall, best_epoch, len(history), seconds, history)


def search_hyperparameters(
    data: SplitData,
    aligned: Mapping[str, np.ndarray],
    space: Mapping[str, Any] | None = None,
    n_trials: int = 8,
    seed: int = 0,
    base_config: MultimodalConfig | None = None,
    on_trial: Callable[[TrialResult], None] | None = None,
    *,
    max_epochs: int | None = None,
    prune: bool = True,
    startup_trials: int | None = None,
    pruner: Any = None,
    raw_features: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> SearchResult:
    """Run ``n_trials`` trials of ``fit_multimodal``, maximising validation NDCG@20.

    ``space`` (default :data:`DEFAULT_SPACE`) maps ``MultimodalConfig`` fields to choices or ranges;
    the other fields come from ``base_config`` (default ``MultimodalConfig()``), with ``seed`` (which
    also seeds the sampler) and at most ``max_epochs`` epochs per trial. ``on_trial`` is called with
    each :class:`TrialResult` as soon as the trial ends (e.g. to log it). ``startup_trials`` (default
    half the trials, 2 to 10) are seeded random draws before TPE takes over; the pruner waits for as
    many complete trials. ``pruner`` replaces that MedianPruner with another Optuna pruner.
    ``raw_features`` (``{modality: (features, present)}``) feed the item graph when a trial's
    ``graph_source`` is ``"raw"``. Exceptions raised by training propagate.
    """
    import optuna

    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if max_epochs is not None and (isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1):
        raise ValueError(f"max_epochs must be a positive integer or None, got {max_epochs!r}")
    base = MultimodalConfig() if base_config is None else base_config
    if not isinstance(base, MultimodalConfig):
        raise TypeError(f"base_config must be a MultimodalConfig, got {type(base).__name__}")
    if data.valid.nnz == 0:
        raise ValueError(
            "the split has no validation interactions; the search scores every trial on "
            "validation NDCG@20, so it needs a valid split"
        )
    params_space = parse_space(DEFAULT_SPACE if space is None else space)
    annotations = _field_types(MultimodalConfig)
    base = dataclasses.replace(
        base, seed=seed, epochs=base.epochs if max_epochs is None else min(base.epochs, max_epochs)
    )
    startup = min(10, max(2, n_trials // 2)) if startup_trials is None else int(startup_trials)
    if startup < 1:
        raise ValueError(f"startup_trials must be at least 1, got {startup_trials!r}")
    visible = _validation_only(data)

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    # Pruning starts once `startup` trials are complete, and never before a third of the budget.
    if not prune:
        pruner = optuna.pruners.NopPruner()
    elif pruner is None:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=max(1, base.epochs // 3))
    study = optuna.create_study(
        direction="maximize", sampler=sampler, pruner=pruner, study_name="mm_gcn_hyperparameter_search"
    )
    results: list[TrialResult] = []

    def objective(trial: optuna.Trial) -> float:
        params = {name: _suggest(trial, name, param, annotations[name]) for name, param in params_space.items()}
        config = dataclasses.replace(base, **params)
        rows: list[dict] = []

        def on_epoch(row: dict) -> None:
            rows.append(dict(row))
            value = row.get(OBJECTIVE)
            if prune and value is not None and math.isfinite(value):
                trial.report(float(value), step=int(row["epoch"]))
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {row['epoch']} (validation NDCG@20 {value:.4f})")

        started = time.perf_counter()
        try:
            _, history = fit_multimodal(
                visible,
                aligned,
                config,
                on_epoch=on_epoch,
                raw_features=None if raw_features is None else dict(raw_features),
                attribution=False,
            )
            state = "complete"
        except optuna.TrialPruned:
            history, state = pd.DataFrame(rows), "pruned"
        result = _trial_result(trial.number, state, params, config, history, time.perf_counter() - started)
        if not math.isfinite(result.valid_ndcg):
            raise RuntimeError(
                f"trial {trial.number} produced no finite validation NDCG@20 "
                f"(params {params}); check the split's validation users"
            )
        results.append(result)
        if on_trial is not None:
            on_trial(result)
        if state == "pruned":
            raise optuna.TrialPruned()
        return result.valid_ndcg

    study.optimize(objective, n_trials=n_trials)
    complete = [r for r in results if r.state == "complete"]
    if not complete:  # the default pruner never prunes the first trial; a custom one might prune them all
        raise RuntimeError(f"none of the {n_trials} trials completed")
    best = max(complete, key=lambda r: (r.valid_ndcg, -r.number))  # ties: the earliest trial
    trials = pd.DataFrame([r.row() for r in results])
    return SearchResult(trials, results, best, params_space)


def trials_plot_png(trials: pd.DataFrame, best_trial: int | None = None) -> bytes:
    """Validation NDCG@20 per trial as a bar chart (pruned trials hatched, the best one outlined); PNG bytes.

    A bare matplotlib ``Figure`` on the Agg canvas: no pyplot state, safe inside a Dagster worker.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    missing = [c for c in ("trial", "state", OBJECTIVE) if c not in trials.columns]
    if missing:
        raise ValueError(f"trials lacks column(s) {missing} (it has {list(trials.columns)})")
    fig = Figure(figsize=(max(4.0, 0.35 * len(trials) + 2), 3), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pruned = (trials["state"] == "pruned").to_numpy()
    bars = ax.bar(trials["trial"].to_numpy(), trials[OBJECTIVE].to_numpy(dtype=float), color="tab:blue")
    for bar, was_pruned, number in zip(bars, pruned, trials["trial"].to_numpy()):
        if was_pruned:
            bar.set_hatch("//")
            bar.set_alpha(0.5)
        if best_trial is not None and number == best_trial:
            bar.set_edgecolor("black")
            bar.set_linewidth(2)
    ax.set_xlabel("trial (hatched: pruned, outlined: best)")
    ax.set_ylabel("validation NDCG@20")
    ax.set_title("hyper-parameter search")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()

"""MLflow tracking helpers: where runs go, what they are tagged with, and what may be logged.

Nothing here imports Dagster: callers pass the Dagster run id / asset key in as plain strings.

Safety rule for everything logged through this module (see :func:`safe_params`): raw user
identifiers never reach MLflow params, tags or metrics.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

try:  # MLflow's own limits; the fallbacks are the values MLflow 3.17 ships with.
    from mlflow.utils.validation import (
        MAX_ENTITY_KEY_LENGTH,
        MAX_METRICS_PER_BATCH,
        MAX_PARAM_VAL_LENGTH,
        MAX_TAG_VAL_LENGTH,
    )
except ImportError:  # pragma: no cover - only if MLflow moves its internals
    MAX_ENTITY_KEY_LENGTH, MAX_METRICS_PER_BATCH = 250, 1000
    MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH = 6000, 8000

TAG_DAGSTER_RUN_ID = "dagster.run_id"
TAG_DAGSTER_ASSET_KEY = "dagster.asset_key"
TAG_CODE_VERSION = "mm_pipeline.code_version"
_RESERVED_TAGS = (TAG_DAGSTER_RUN_ID, TAG_DAGSTER_ASSET_KEY, TAG_CODE_VERSION)

# Param / metric / tag keys MLflow accepts (POSIX rule: word characters, / . - space and colon).
_INVALID_KEY_CHAR = re.compile(r"[^/\w.\- :]")

# See safe_params: a key component that *names* user identifiers ...
_IDENTIFIER_KEY = re.compile(r"^(?:.*_)?(?:user_?ids?|uids?)$")
# ... or that names users and holds a collection or a string (``users: [...]``, ``user: "ann"``).
_USERS_KEY = re.compile(r"^(?:.*_)?users?$")


def _require_str(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def configure_mlflow(tracking_uri: str, experiment_name: str, artifact_root: Path | None = None) -> str:
    """Point MLflow at ``tracking_uri`` (tracking *and* model registry) and activate an experiment.

    The experiment ``experiment_name`` is created when it does not exist, with its artifact location
    set to ``artifact_root`` as a ``file://`` URI (the folder is created); with a SQLite store and no
    ``artifact_root`` MLflow would otherwise default to ``./mlruns`` in the working directory. An
    existing experiment keeps the artifact location it was created with. Returns the experiment id.
    """
    _require_str(tracking_uri, "tracking_uri")
    _require_str(experiment_name, "experiment_name")
    if artifact_root is not None and not isinstance(artifact_root, (str, Path)):
        raise TypeError(f"artifact_root must be a path or None, got {type(artifact_root).__name__}")

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        location = None
        if isinstance(artifact_root, str) and "://" in artifact_root:
            location = artifact_root  # an object store (s3://..., gs://...): MLflow writes there itself
        elif artifact_root is not None:
            root = Path(artifact_root).expanduser().resolve()
            root.mkdir(parents=True, exist_ok=True)
            location = root.as_uri()
        try:
            experiment_id = client.create_experiment(experiment_name, artifact_location=location)
        except MlflowException:
            # Lost a creation race with another process: use the experiment it made.
            experiment = client.get_experiment_by_name(experiment_name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    else:
        if experiment.lifecycle_stage != "active":
            raise ValueError(
                f"experiment_name {experiment_name!r} names a deleted MLflow experiment "
                f"(id {experiment.experiment_id}); restore it or choose another name"
            )
        experiment_id = experiment.experiment_id

    mlflow.set_experiment(experiment_id=experiment_id)
    return str(experiment_id)


def metric_key(name: str) -> str:
    """``name`` as a key MLflow accepts: ``@`` becomes ``_at_`` (``recall@20`` -> ``recall_at_20``)
    and any other character outside word characters, ``/ . - :`` and space becomes ``_``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    key = _INVALID_KEY_CHAR.sub("_", name.replace("@", "_at_"))
    if len(key) > MAX_ENTITY_KEY_LENGTH:
        raise ValueError(f"name {name[:60]!r}... is longer than MLflow's {MAX_ENTITY_KEY_LENGTH}-character key limit")
    return key


def _clean_value(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else str(value)
    return text[:limit]


def run_tags(
    dagster_run_id: str | None = None,
    asset_key: str | None = None,
    code_version: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Tags linking an MLflow run to the Dagster run / asset / code version that produced it.

    ``dagster_run_id`` -> ``dagster.run_id``, ``asset_key`` -> ``dagster.asset_key`` and
    ``code_version`` -> ``mm_pipeline.code_version``; arguments left ``None`` are omitted. ``extra``
    tags are added after passing the same filter as :func:`safe_params` (identifier-like keys are
    dropped, nested mappings flattened); they may not set the three reserved tag names.
    """
    tags: dict[str, str] = {}
    for name, key, value in (
        ("dagster_run_id", TAG_DAGSTER_RUN_ID, dagster_run_id),
        ("asset_key", TAG_DAGSTER_ASSET_KEY, asset_key),
        ("code_version", TAG_CODE_VERSION, code_version),
    ):
        if value is not None:
            tags[key] = _clean_value(_require_str(value, name), MAX_TAG_VAL_LENGTH)
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise TypeError(f"extra must be a mapping of tag names to values, got {type(extra).__name__}")
        reserved = sorted(set(map(str, extra)) & set(_RESERVED_TAGS))
        if reserved:
            raise ValueError(
                f"extra must not set the reserved tag(s) {reserved}; pass dagster_run_id / "
                f"asset_key / code_version instead"
            )
        for key, value in _flatten(extra, "extra"):
            tags[key] = _clean_value(value, MAX_TAG_VAL_LENGTH)
    return tags


def _normalise_component(key: str) -> str:
    return re.sub(r"[\s\-]+", "_", key.strip().lower())


def is_identifier_key(key: str, value: Any = None) -> bool:
    """Whether a (single, un-dotted) key looks like it carries user identifiers; see :func:`safe_params`."""
    component = _normalise_component(key)
    if _IDENTIFIER_KEY.match(component):
        return True
    carrier = isinstance(value, (str, bytes, Mapping, list, tuple, set, frozenset, np.ndarray, pd.Series, pd.Index))
    return carrier and bool(_USERS_KEY.match(component))


def _flatten(params: Mapping[str, Any], argument: str) -> list[tuple[str, Any]]:
    out: dict[str, Any] = {}

    def visit(mapping: Mapping, prefix: str) -> None:
        for raw_key, value in mapping.items():
            key = str(raw_key)
            if not key:
                raise ValueError(f"{argument} has an empty key under {prefix or 'the top level'!r}")
            if is_identifier_key(key, value):
                continue  # the whole subtree: its keys may themselves be user ids
            full = f"{prefix}.{key}" if prefix else key
            if isinstance(value, Mapping):
                visit(value, full)
                continue
            if len(full) > MAX_ENTITY_KEY_LENGTH:
                raise ValueError(
                    f"{argument} key {full[:60]!r}... is longer than MLflow's {MAX_ENTITY_KEY_LENGTH}-character limit"
                )
            full = metric_key(full)
            if full in out:
                raise ValueError(f"{argument} has two entries that flatten to the same key {full!r}")
            out[full] = value

    visit(params, "")
    return list(out.items())


def safe_params(params: Mapping[str, Any]) -> dict[str, str]:
    """``params`` made loggable with ``mlflow.log_params``: flat, stringified, bounded, no user ids.

    * Nested mappings are flattened with dots: ``{"opt": {"lr": 0.1}}`` -> ``{"opt.lr": "0.1"}``.
    * Values are ``str()``-ed and truncated to MLflow's param value limit (6000 characters).
    * Keys pass :func:`metric_key` (``recall@20`` -> ``recall_at_20``; other characters MLflow
      rejects become ``_``).
    * **Identifier rule.** A key component is dropped, together with everything nested under it,
      when (case-insensitive, ``-``/space read as ``_``) it is or ends in ``_``-separated
      ``user_id``, ``user_ids``, ``userid``, ``userids``, ``uid`` or ``uids`` (``user_id``,
      ``test_user_ids``: dropped whatever the value), or when it is or ends in ``user`` / ``users``
      and its value is a string or a collection (list, tuple, set, array, Series, Index or mapping:
      ``users: [...]``, ``user: "ann"``, ``eval_users: {...}``). Numeric counts such as
      ``users: 100`` or ``n_users: 100`` are kept. The rule goes by key name only: it cannot spot an
      identifier hidden under an innocent key, so do not put ids in params at all.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping, got {type(params).__name__}")
    return {key: _clean_value(value, MAX_PARAM_VAL_LENGTH) for key, value in _flatten(params, "params")}


_DATASETS: dict[tuple[str, str], Any] = {}


def log_split_input(frame: pd.DataFrame, name: str, context: str, tags: Mapping[str, str]) -> str:
    """Log ``frame`` as the active run's input dataset (MLflow lineage: name, digest, schema) and return
    its digest.

    MLflow infers the schema of a dataset object once (half a second for a 55k-row split); every model of
    a run trains on the same split, so the dataset object is kept per (name, digest) and logged again.
    """
    import warnings

    with warnings.catch_warnings():  # MLflow's hint about integer columns and missing values
        warnings.simplefilter("ignore", UserWarning)
        dataset = mlflow.data.from_pandas(frame, name=name)
        key = (name, dataset.digest)
        if key not in _DATASETS:
            if len(_DATASETS) >= 8:
                _DATASETS.clear()
            _DATASETS[key] = dataset
        mlflow.log_input(_DATASETS[key], context=context, tags=dict(tags))
    return dataset.digest


def log_history(history: pd.DataFrame, step_column: str = "epoch", *, run_id: str | None = None) -> int:
    """Log every numeric column of ``history`` as an MLflow metric at step ``history[step_column]``.

    One ``MlflowClient.log_batch`` call per 1000 metric values (MLflow's batch limit), all with one
    timestamp, instead of one call per value. Missing (NaN) values are skipped, e.g. a validation
    metric computed every other epoch; booleans are logged as 0/1; non-numeric columns are ignored.
    Column names pass :func:`metric_key` (``valid_recall@20`` is logged as ``valid_recall_at_20``).
    ``run_id`` defaults to the active run. Returns the number of metric values logged.
    """
    if not isinstance(history, pd.DataFrame):
        raise TypeError(f"history must be a pandas DataFrame, got {type(history).__name__}")
    if step_column not in history.columns:
        raise ValueError(
            f"step_column {step_column!r} is not a column of history (columns: {list(map(str, history.columns))})"
        )
    if run_id is None:
        run = mlflow.active_run()
        if run is None:
            raise RuntimeError("log_history needs an active MLflow run (mlflow.start_run()) or run_id")
        run_id = run.info.run_id

    steps_raw = pd.to_numeric(history[step_column], errors="coerce").to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(steps_raw)) or np.any(steps_raw != np.round(steps_raw)):
        raise ValueError(f"step_column {step_column!r} must hold whole numbers with no missing values")
    steps = steps_raw.astype(np.int64)

    columns = [c for c in history.columns if c != step_column and pd.api.types.is_numeric_dtype(history[c])]
    keys: dict[str, Any] = {}
    for column in columns:
        if not isinstance(column, str) or not column:
            raise ValueError(f"history column names must be non-empty strings, got {column!r}")
        key = metric_key(column)
        if key in keys.values():
            other = next(c for c, k in keys.items() if k == key)
            raise ValueError(f"history columns {other!r} and {column!r} both map to metric {key!r}")
        keys[column] = key

    timestamp = int(time.time() * 1000)
    metrics: list[Metric] = []
    for column in columns:
        values = history[column].to_numpy(dtype=np.float64, na_value=np.nan)
        for step, value in zip(steps.tolist(), values.tolist()):
            if not math.isnan(value):
                metrics.append(Metric(key=keys[column], value=value, timestamp=timestamp, step=step))

    client = MlflowClient()
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH])
    return len(metrics)


def evaluation_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The report's test numbers as flat MLflow metric keys: ``<model>.<metric>`` for the full ranking and
    ``cold.<model>.<metric>`` / ``tail.<model>.<metric>`` for the cold-start and long-tail tables
    (finite numbers only; ``@`` written as ``_at_``)."""
    out: dict[str, float] = {}
    for section, prefix in (("models", ""), ("cold_start", "cold."), ("long_tail", "tail.")):
        for model, values in (metrics.get(section) or {}).items():
            for name, value in (values or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    out[metric_key(f"{prefix}{model}.{name}")] = float(value)
    return out


def log_evaluation(metrics: Mapping[str, Any], report_dir: Path) -> int:
    """Log a written evaluation report to the active MLflow run: every model's test metrics
    (:func:`evaluation_metrics`) and the report's files (``metrics.json``, ``report.md``, ``report.html``
    and the figures) as artifacts under ``report/``. Returns the number of metrics logged."""
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("log_evaluation needs an active MLflow run (mlflow.start_run())")
    values = evaluation_metrics(metrics)
    timestamp = int(time.time() * 1000)
    batch = [Metric(key=k, value=v, timestamp=timestamp, step=0) for k, v in values.items()]
    client = MlflowClient()
    for start in range(0, len(batch), MAX_METRICS_PER_BATCH):
        client.log_batch(run.info.run_id, metrics=batch[start : start + MAX_METRICS_PER_BATCH])
    mlflow.log_artifacts(str(report_dir), artifact_path="report")
    return len(values)

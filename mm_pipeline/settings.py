"""Where the pipeline writes, which dataset it reads, and every other setting taken from the environment.

This is the one module that reads the environment: the others ask it (the Dagster resources turn the
values into resource config, ``dg.EnvVar`` where a run should read its own environment). The variables:

==================================  ==========================================================================
``MM_PIPELINE_HOME``                the project home (default ``.mm_pipeline/`` at the repository root)
``MM_PIPELINE_DATASET``             the dataset spec (default ``builtin:default``)
``MM_PIPELINE_STORAGE``             where asset values live (default ``<home>/assets``; may be ``s3://...``)
``MLFLOW_TRACKING_URI``             the MLflow store (default SQLite under the project home)
``MM_PIPELINE_MLFLOW_ARTIFACTS``    artifact root of runs logged straight into a database store
``MM_PIPELINE_LOCK_DB``             PostgreSQL URL whose advisory locks serialise champion changes / admission
``MM_PIPELINE_EXECUTOR``            ``in_process`` (default), ``multiprocess`` or ``celery``
``MM_PIPELINE_CELERY_BROKER``       the Celery broker URL (RabbitMQ), with ``MM_PIPELINE_EXECUTOR=celery``
``MM_PIPELINE_CELERY_BACKEND``      the Celery result backend URL (Redis)
``MM_PIPELINE_ITEM_SHARDS``         per-item stages split into this many shards (default 1)
``MM_PIPELINE_RUN_CONFIG``          a YAML run-config file the schedule and the sensor put on their runs
``MM_PIPELINE_RETRAIN_CRON``        the retraining schedule (default ``0 3 * * 1``)
``MM_PIPELINE_RETRAIN_TIMEZONE``    its time zone (default UTC)
``MM_PIPELINE_INBOX``               the inbox folder (default ``<home>/inbox``)
``MM_PIPELINE_INBOX_SETTLE_S``      seconds a new inbox file must be left alone before it is read (default 30)
``MM_PIPELINE_INBOX_INTERVAL_S``    seconds between two looks at the inbox (default 60)
==================================  ==========================================================================

Everything the pipeline writes lives under one *project home*: ``$MM_PIPELINE_HOME`` when set, else
``.mm_pipeline/`` at the repository root (or the current directory when the package is not installed
from a checkout).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATASET = "builtin:default"
HOME_ENV = "MM_PIPELINE_HOME"
DATASET_ENV = "MM_PIPELINE_DATASET"
STORAGE_ENV = "MM_PIPELINE_STORAGE"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
MLFLOW_ARTIFACTS_ENV = "MM_PIPELINE_MLFLOW_ARTIFACTS"
LOCK_DB_ENV = "MM_PIPELINE_LOCK_DB"
EXECUTOR_ENV = "MM_PIPELINE_EXECUTOR"
CELERY_BROKER_ENV = "MM_PIPELINE_CELERY_BROKER"  # e.g. amqp://user:password@rabbitmq:5672//
CELERY_BACKEND_ENV = "MM_PIPELINE_CELERY_BACKEND"  # e.g. redis://redis:6379/0
ITEM_SHARDS_ENV = "MM_PIPELINE_ITEM_SHARDS"
RUN_CONFIG_ENV = "MM_PIPELINE_RUN_CONFIG"
RETRAIN_CRON_ENV = "MM_PIPELINE_RETRAIN_CRON"
RETRAIN_TIMEZONE_ENV = "MM_PIPELINE_RETRAIN_TIMEZONE"
INBOX_ENV = "MM_PIPELINE_INBOX"
INBOX_SETTLE_ENV = "MM_PIPELINE_INBOX_SETTLE_S"
INBOX_INTERVAL_ENV = "MM_PIPELINE_INBOX_INTERVAL_S"
DAGSTER_HOME_ENV = "DAGSTER_HOME"
EXECUTORS = ("in_process", "multiprocess", "celery")
DEFAULT_RETRAIN_CRON = "0 3 * * 1"  # Mondays 03:00
DEFAULT_INBOX_SETTLE_S = 30.0
DEFAULT_INBOX_INTERVAL_S = 60.0
REGISTERED_MODEL_NAME = "mm_pipeline_recommender"
EXPERIMENT_NAME = "mm_pipeline"


def env(name: str) -> str:
    """The variable's value without surrounding blanks; empty when unset."""
    return os.environ.get(name, "").strip()


def is_set(name: str) -> bool:
    """Whether the variable holds something other than blanks."""
    return bool(env(name))


def prefer_offline_models() -> None:
    """Never let transformers / huggingface_hub try the network (the pipeline runs offline), unless the
    user said otherwise."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def quiet_mlflow_uploads() -> None:
    """No MLflow artifact progress bars in the run log (unless the user asked for them)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _repo_root() -> Path:
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else Path.cwd()


REPO_ROOT = _repo_root()


@dataclass(frozen=True)
class ProjectPaths:
    """The folders under the project home; ``ensure()`` creates them."""

    home: Path

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def assets(self) -> Path:
        return self.home / "assets"

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    @property
    def mlflow(self) -> Path:
        return self.home / "mlflow"

    @property
    def dagster(self) -> Path:
        return self.home / "dagster"

    @property
    def checkpoints(self) -> Path:
        """Warm-start checkpoints, one folder per trained model (mm_pipeline.recommend.warm)."""
        return self.home / "checkpoints"

    def ensure(self) -> ProjectPaths:
        for path in (self.data, self.assets, self.reports, self.mlflow, self.dagster):
            path.mkdir(parents=True, exist_ok=True)
        return self


def project_home() -> Path:
    raw = env(HOME_ENV)
    return Path(raw).expanduser().resolve() if raw else (REPO_ROOT / ".mm_pipeline").resolve()


def project_paths(home: str | Path | None = None) -> ProjectPaths:
    return ProjectPaths(Path(home).expanduser().resolve() if home else project_home())


def dataset_spec() -> str:
    """The dataset to run on, e.g. ``builtin:default``, ``builtin:tiny:video``, ``folder:/data/shop``."""
    return env(DATASET_ENV) or DEFAULT_DATASET


def mlflow_tracking_uri(paths: ProjectPaths | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else a SQLite store under the project home."""
    uri = env(TRACKING_URI_ENV)
    if uri:
        return uri
    paths = paths or project_paths()
    return f"sqlite:///{paths.mlflow / 'mlflow.db'}"


def mlflow_artifact_root(paths: ProjectPaths | None = None) -> Path | str:
    """Where runs logged straight into a database store put their artifacts: ``$MM_PIPELINE_MLFLOW_ARTIFACTS``
    (a shared path or an object-store URI such as ``s3://bucket/mlflow``), else ``<home>/mlflow/artifacts``."""
    root = env(MLFLOW_ARTIFACTS_ENV)
    if root:
        return root if "://" in root else Path(root).expanduser().resolve()
    return (paths or project_paths()).mlflow / "artifacts"


def is_database_uri(uri: str) -> bool:
    """Whether an MLflow tracking URI is a SQLAlchemy database (SQLite, PostgreSQL, MySQL, MSSQL)."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    return scheme in ("sqlite", "postgresql", "postgres", "mysql", "mssql")


def lock_database() -> str | None:
    """``$MM_PIPELINE_LOCK_DB``: a PostgreSQL URL (SQLAlchemy form, e.g. the Dagster database) whose
    advisory locks serialise champion changes and command-line run admission across machines when
    neither the MLflow store nor anything else provides one (an MLflow tracking *server*)."""
    return env(LOCK_DB_ENV) or None


def storage_location() -> str:
    """``$MM_PIPELINE_STORAGE``: where asset values live (a path or an fsspec URI); empty: ``<home>/assets``."""
    return env(STORAGE_ENV)


def dagster_home(paths: ProjectPaths | None = None) -> Path:
    """``$DAGSTER_HOME`` when set, else ``<home>/dagster``."""
    raw = env(DAGSTER_HOME_ENV)
    return Path(raw) if raw else (paths or project_paths()).dagster


def executor_name() -> str:
    """``$MM_PIPELINE_EXECUTOR`` (default ``in_process``), checked against :data:`EXECUTORS`."""
    choice = env(EXECUTOR_ENV) or "in_process"
    if choice not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_ENV}={choice!r} is not an executor: choose one of {', '.join(EXECUTORS)}")
    return choice


def celery_urls() -> tuple[str, str]:
    """``(broker, backend)``; a clear error naming what is missing."""
    missing = [name for name in (CELERY_BROKER_ENV, CELERY_BACKEND_ENV) if not is_set(name)]
    if missing:
        raise ValueError(
            f"{EXECUTOR_ENV}=celery needs {' and '.join(missing)}: the broker URL (RabbitMQ, "
            f"e.g. {CELERY_BROKER_ENV}=amqp://guest:guest@127.0.0.1:5672//) and the result backend "
            f"(Redis, e.g. {CELERY_BACKEND_ENV}=redis://127.0.0.1:6379/0); see deploy/env.example"
        )
    return env(CELERY_BROKER_ENV), env(CELERY_BACKEND_ENV)


def item_shards() -> int:
    """``$MM_PIPELINE_ITEM_SHARDS`` (default 1: no sharding)."""
    raw = env(ITEM_SHARDS_ENV) or "1"
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(
            f"{ITEM_SHARDS_ENV}={raw!r} must be a whole number of item shards, at least 1 (1: no sharding)"
        )
    return value


def torchrun_local_rank() -> int | None:
    """This process's ``LOCAL_RANK`` when torchrun launched it (its GPU on a multi-GPU machine), else None."""
    raw = env("LOCAL_RANK")
    return int(raw) if raw.isdigit() else None


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher that sets ``WORLD_SIZE``) started this process."""
    return is_set("WORLD_SIZE")


def run_config_file() -> str:
    """``$MM_PIPELINE_RUN_CONFIG``: the YAML run-config file automation puts on its runs (empty: none)."""
    return env(RUN_CONFIG_ENV)


def retrain_cron() -> str:
    return env(RETRAIN_CRON_ENV) or DEFAULT_RETRAIN_CRON


def retrain_timezone() -> str:
    return env(RETRAIN_TIMEZONE_ENV) or "UTC"


def seconds(name: str, default: float) -> float:
    """A number of seconds (at least 0) from the variable ``name``; ``default`` when unset."""
    raw = env(name)
    try:
        value = float(raw) if raw else default
    except ValueError as exc:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from exc
    return max(value, 0.0)


def inbox_settle_seconds() -> float:
    return seconds(INBOX_SETTLE_ENV, DEFAULT_INBOX_SETTLE_S)


def inbox_interval_seconds() -> float:
    return seconds(INBOX_INTERVAL_ENV, DEFAULT_INBOX_INTERVAL_S)


def inbox_folder(home: str | Path) -> Path:
    """``$MM_PIPELINE_INBOX``, else ``<project home>/inbox``."""
    raw = env(INBOX_ENV)
    return Path(raw).expanduser().resolve() if raw else Path(home) / "inbox"

"""Where the pipeline writes, and which dataset it reads.

Everything the pipeline writes lives under one *project home*: ``$MM_PIPELINE_HOME`` when set, else
``.mm_pipeline/`` at the repository root (or the current directory when the package is not installed
from a checkout).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATASET = "builtin:default"
REGISTERED_MODEL_NAME = "mm_pipeline_recommender"
EXPERIMENT_NAME = "mm_pipeline"


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

    def ensure(self) -> "ProjectPaths":
        for path in (self.data, self.assets, self.reports, self.mlflow, self.dagster):
            path.mkdir(parents=True, exist_ok=True)
        return self


def project_home() -> Path:
    raw = os.environ.get("MM_PIPELINE_HOME")
    return Path(raw).expanduser().resolve() if raw else (REPO_ROOT / ".mm_pipeline").resolve()


def project_paths(home: str | Path | None = None) -> ProjectPaths:
    return ProjectPaths(Path(home).expanduser().resolve() if home else project_home())


def dataset_spec() -> str:
    """The dataset to run on, e.g. ``builtin:default``, ``builtin:tiny:video``, ``folder:/data/shop``."""
    return os.environ.get("MM_PIPELINE_DATASET") or DEFAULT_DATASET


def mlflow_tracking_uri(paths: ProjectPaths | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else a SQLite store under the project home."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    paths = paths or project_paths()
    return f"sqlite:///{paths.mlflow / 'mlflow.db'}"


def mlflow_artifact_root(paths: ProjectPaths | None = None) -> Path | str:
    """Where runs logged straight into a database store put their artifacts: ``$MM_PIPELINE_MLFLOW_ARTIFACTS``
    (a shared path or an object-store URI such as ``s3://bucket/mlflow``), else ``<home>/mlflow/artifacts``."""
    env = os.environ.get("MM_PIPELINE_MLFLOW_ARTIFACTS", "").strip()
    if env:
        return env if "://" in env else Path(env).expanduser().resolve()
    return (paths or project_paths()).mlflow / "artifacts"


def is_database_uri(uri: str) -> bool:
    """Whether an MLflow tracking URI is a SQLAlchemy database (SQLite, PostgreSQL, MySQL, MSSQL)."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    return scheme in ("sqlite", "postgresql", "postgres", "mysql", "mssql")


def lock_database() -> str | None:
    """``$MM_PIPELINE_LOCK_DB``: a PostgreSQL URL (SQLAlchemy form, e.g. the Dagster database) whose
    advisory locks serialise champion changes and command-line run admission across machines when
    neither the MLflow store nor anything else provides one (an MLflow tracking *server*)."""
    return os.environ.get("MM_PIPELINE_LOCK_DB", "").strip() or None

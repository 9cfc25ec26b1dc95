"""Resources: where the pipeline writes, which dataset it reads, and MLflow tracking.

Their settings are resource config. :func:`from_environment` gives a field its environment override:
``dg.EnvVar(name)`` when the variable is set (Dagster resolves it when a run starts, in the process
that runs it, and the launchpad shows it as such), else the default. Run config
(``resources: {pipeline: {config: {dataset: ...}}}``) overrides either.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from pydantic import Field

from mm_pipeline import settings


def from_environment(name: str, default: str = "") -> str | dg.EnvVar:
    """``dg.EnvVar(name)`` when ``$name`` is set now (read through :mod:`mm_pipeline.settings`), else ``default``."""
    return dg.EnvVar(name) if settings.is_set(name) else default


class PipelineResource(dg.ConfigurableResource):
    """Project home, dataset spec and seed. Empty strings mean: the defaults of :mod:`mm_pipeline.settings`."""

    home: str = Field(
        default="", description="Project home (empty: $MM_PIPELINE_HOME, else .mm_pipeline/ at the repository root)."
    )
    dataset: str = Field(
        default="",
        description="Dataset spec, e.g. builtin:default, folder:/data/shop, "
        "movielens:/data/ml-100k (empty: builtin:default).",
    )
    seed: int = 0
    torch_threads: int = 0

    def paths(self) -> settings.ProjectPaths:
        return settings.project_paths(self.home or None).ensure()

    def dataset_spec(self) -> str:
        return self.dataset or settings.dataset_spec()

    def checkpoints(self, name: str) -> Path:
        """Warm-start checkpoint folder of ``name`` for this dataset and seed: runs of other datasets in the same
        home (concurrent ones too) neither read nor overwrite it."""
        key = hashlib.sha256(f"{self.dataset_spec()}\0{self.seed}".encode()).hexdigest()[:16]
        return self.paths().checkpoints / key / name

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.torch_threads > 0:
            import torch

            torch.set_num_threads(self.torch_threads)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking: ``tracking_uri`` empty means ``$MLFLOW_TRACKING_URI`` or SQLite in the project home."""

    tracking_uri: str = Field(default="", description="MLflow tracking URI (empty: SQLite in the project home).")
    experiment_name: str = settings.EXPERIMENT_NAME
    home: str = ""

    def uri(self) -> str:
        paths = settings.project_paths(self.home or None)
        return self.tracking_uri or settings.mlflow_tracking_uri(paths)

    def configure(self) -> str:
        """Point MLflow (tracking and registry) at :meth:`uri` and activate the experiment, without
        starting a run. Returns the URI."""
        settings.quiet_mlflow_uploads()
        from mm_pipeline.registry.tracking import configure_mlflow

        paths = settings.project_paths(self.home or None)
        uri = self.uri()
        # A database store has no artifact location of its own (MLflow would use ./mlruns of whatever the
        # working directory is); a tracking server (http) has its own --artifacts-destination.
        artifact_root = settings.mlflow_artifact_root(paths) if settings.is_database_uri(uri) else None
        if uri.startswith("sqlite:"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        configure_mlflow(uri, self.experiment_name, artifact_root)
        return uri

    def client(self):
        """An ``MlflowClient`` on the configured store (see :meth:`configure`)."""
        from mlflow.tracking import MlflowClient

        uri = self.configure()
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    @contextlib.contextmanager
    def start_run(self, context: dg.AssetExecutionContext, run_name: str | None = None) -> Iterator[object]:
        """An MLflow run tagged with the Dagster run id, asset key and code version."""
        import mlflow

        from mm_pipeline.registry.tracking import run_tags

        self.configure()
        key = context.asset_key
        code_version = (context.assets_def.code_versions_by_key or {}).get(key)
        tags = run_tags(context.run_id, key.to_user_string(), code_version, None)
        with mlflow.start_run(run_name=run_name or key.to_user_string(), tags=tags) as run:
            yield run

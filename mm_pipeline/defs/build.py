"""Assembles the Definitions: every asset, the full-pipeline job, resources and the executor."""

from __future__ import annotations

import os

import dagster as dg

from mm_pipeline import settings
from mm_pipeline.defs.assets import (
    align,
    augmented,
    batch,
    compress,
    evaluate,
    explain,
    features,
    promotion,
    raw,
    registry,
    select,
    train,
)
from mm_pipeline.defs.assets.inbox import INBOX_ASSET_KEY, inbox_interactions
from mm_pipeline.defs.assets.research import (
    RESEARCH_MODEL_ASSETS,
    mm_gcn_ablations,
    mm_hybrid_ablations,
    research_report,
)
from mm_pipeline.defs.assets.search import SEARCH_JOBS, mm_gcn_hyperparameter_search
from mm_pipeline.defs.checks import all_asset_checks
from mm_pipeline.defs.cutoff import with_early_cutoff
from mm_pipeline.defs.io_manager import BundleIOManager
from mm_pipeline.defs.lifecycle import (
    LIFECYCLE_JOBS,
    LIFECYCLE_SCHEDULES,
    LIFECYCLE_SENSORS,
    build_inbox_retrain_job,
)
from mm_pipeline.defs.resources import MlflowResource, PipelineResource, from_environment
from mm_pipeline.defs.shards import with_item_shards

ASSET_MODULES = [
    raw,
    augmented,
    features,
    align,
    train,
    select,
    compress,
    evaluate,
    explain,
    registry,
    promotion,
    batch,
]

# The inbox partitions are ingested by inbox_retrain runs (one partition each); full_pipeline reads
# whatever is stored, so it needs no partition key.
full_pipeline_job = dg.define_asset_job(
    "full_pipeline",
    selection=dg.AssetSelection.all()
    - dg.AssetSelection.assets(INBOX_ASSET_KEY)
    - dg.AssetSelection.groups("research"),
    description="Materialize every stage, raw data to registry and batch scores.",
)
# Everything full_pipeline does, plus the ablations and the report that includes them (not the search,
# which has its own job): several more minutes of training.
research_pipeline_job = dg.define_asset_job(
    "research_pipeline",
    selection=dg.AssetSelection.all()
    - dg.AssetSelection.assets(INBOX_ASSET_KEY)
    - dg.AssetSelection.assets(mm_gcn_hyperparameter_search),
    description="full_pipeline plus the ablations of the primary model and the research report.",
)


def all_assets() -> list:
    """The unpartitioned graph (what ``full_pipeline`` and ``dg.materialize`` run), the per-item stages
    split into ``$MM_PIPELINE_ITEM_SHARDS`` shards; the partitioned ``inbox_interactions`` is added by
    :func:`build_definitions`. Each asset reuses its stored value when its inputs did not change
    (:mod:`mm_pipeline.defs.cutoff`)."""
    return with_early_cutoff(with_item_shards(dg.load_assets_from_modules(ASSET_MODULES)))


def research_assets() -> list:
    """The research-role models of the model table (FREEDOM), the ablations and the report that includes
    them (group ``research``; not in ``full_pipeline``)."""
    return with_early_cutoff([*RESEARCH_MODEL_ASSETS, mm_gcn_ablations, mm_hybrid_ablations, research_report])


def default_resources(home: str = "", dataset: str = "", tracking_uri: str = "") -> dict:
    """The resources; a value not given comes from its environment variable (``dg.EnvVar``) when that is
    set, else from the defaults in :mod:`mm_pipeline.settings`. The project home is read by settings
    (``$MM_PIPELINE_HOME``) in every process: the Dagster instance lives under it too."""
    return {
        "pipeline": PipelineResource(home=home, dataset=dataset or from_environment(settings.DATASET_ENV)),
        "mlflow_tracking": MlflowResource(
            tracking_uri=tracking_uri or from_environment(settings.TRACKING_URI_ENV), home=home
        ),
        "io_manager": BundleIOManager(
            base_dir=os.path.join(home, "assets") if home else from_environment(settings.STORAGE_ENV)
        ),
    }


EXECUTOR_ENV = settings.EXECUTOR_ENV
EXECUTORS = settings.EXECUTORS


def pipeline_executor():
    """The executor named by ``$MM_PIPELINE_EXECUTOR``. One process by default: every step re-importing
    torch in its own process costs more than it saves on one machine. ``multiprocess`` is Dagster's
    default; ``celery`` sends every step to the Celery workers (``mm_pipeline.defs.celery``)."""
    choice = settings.executor_name()
    if choice == "in_process":
        return dg.in_process_executor
    if choice == "multiprocess":
        return dg.multiprocess_executor
    if choice == "celery":
        from mm_pipeline.defs.celery import celery_executor_def

        return celery_executor_def()
    raise AssertionError(choice)  # settings.executor_name() admits only EXECUTORS


def build_definitions() -> dg.Definitions:
    executor = pipeline_executor()
    return dg.Definitions(
        assets=[*all_assets(), inbox_interactions, *research_assets(), mm_gcn_hyperparameter_search],
        asset_checks=all_asset_checks(),
        jobs=[
            full_pipeline_job,
            research_pipeline_job,
            *LIFECYCLE_JOBS,
            *SEARCH_JOBS,
            build_inbox_retrain_job(full_pipeline_job),
        ],
        resources=default_resources(),
        schedules=LIFECYCLE_SCHEDULES,
        sensors=LIFECYCLE_SENSORS,
        executor=executor,
    )

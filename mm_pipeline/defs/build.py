"""Assembles the Definitions: every asset, the full-pipeline job, resources and the executor."""

from __future__ import annotations

import os

import dagster as dg

from mm_pipeline.defs.assets import align, augmented, compress, evaluate, features, raw, registry, train
from mm_pipeline.defs.assets import promotion
from mm_pipeline.defs.checks import all_asset_checks
from mm_pipeline.defs.io_manager import BundleIOManager
from mm_pipeline.defs.lifecycle import LIFECYCLE_JOBS, LIFECYCLE_SCHEDULES, LIFECYCLE_SENSORS
from mm_pipeline.defs.resources import MlflowResource, PipelineResource

ASSET_MODULES = [raw, augmented, features, align, train, compress, evaluate, registry, promotion]

full_pipeline_job = dg.define_asset_job("full_pipeline", selection=dg.AssetSelection.all(),
                                        description="Materialize every stage, raw data to registry.")


def all_assets() -> list:
    return dg.load_assets_from_modules(ASSET_MODULES)


def default_resources(home: str = "", dataset: str = "", tracking_uri: str = "") -> dict:
    return {"pipeline": PipelineResource(home=home, dataset=dataset),
            "mlflow_tracking": MlflowResource(tracking_uri=tracking_uri, home=home),
            "io_manager": BundleIOManager(base_dir=os.path.join(home, "assets") if home else "")}


def build_definitions() -> dg.Definitions:
    # One process by default: every step re-importing torch in its own process costs more than it saves
    # on one machine. MM_PIPELINE_EXECUTOR=multiprocess restores Dagster's default.
    executor = (dg.multiprocess_executor if os.environ.get("MM_PIPELINE_EXECUTOR") == "multiprocess"
                else dg.in_process_executor)
    return dg.Definitions(assets=all_assets(), asset_checks=all_asset_checks(),
                          jobs=[full_pipeline_job, *LIFECYCLE_JOBS], resources=default_resources(),
                          schedules=LIFECYCLE_SCHEDULES, sensors=LIFECYCLE_SENSORS,
                          executor=executor)

"""The Dagster layer loads, validates, and exposes config generated from the core dataclasses."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from mm_pipeline.defs.config import config_from_dataclass, to_dataclass
from mm_pipeline.features.image import ImageEncoderConfig
from mm_pipeline.recommend.fit import MultimodalConfig

REPO = Path(__file__).resolve().parent.parent


def test_definitions_load_with_every_stage():
    from mm_pipeline.definitions import defs

    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw_items", "augmented_images", "text_features", "aligned_item_embeddings", "mm_gcn_model",
            "lightgcn_model", "popularity_model", "compressed_model", "evaluation_report",
            "registered_model"} <= keys
    assert defs.resolve_job_def("full_pipeline") is not None


def test_config_classes_mirror_dataclasses():
    run_config = config_from_dataclass(ImageEncoderConfig, "X")()
    assert run_config.channels == [32, 64, 128] and run_config.checkpoint is None
    restored = to_dataclass(ImageEncoderConfig, run_config, seed=7)
    assert restored.channels == (32, 64, 128) and restored.seed == 7
    mm = config_from_dataclass(MultimodalConfig, "Y")(epochs=3)
    assert to_dataclass(MultimodalConfig, mm).epochs == 3
    assert issubclass(type(mm), dg.Config)


def test_dagster_cli_validates_workspace(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "MM_PIPELINE_HOME": str(tmp_path / "home")}
    (tmp_path / "dagster.yaml").symlink_to(REPO / "dagster.yaml")
    dagster = Path(sys.executable).parent / "dagster"
    out = subprocess.run([str(dagster), "definitions", "validate", "-w", "workspace.yaml"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr

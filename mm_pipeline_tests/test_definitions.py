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
    assert {
        "raw_items",
        "augmented_images",
        "text_features",
        "aligned_item_embeddings",
        "mm_gcn_model",
        "lightgcn_model",
        "popularity_model",
        "compressed_model",
        "evaluation_report",
        "registered_model",
    } <= keys
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
    out = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _environment_reads(path: Path) -> list[int]:
    """Lines of ``path`` that read ``os.environ`` / ``os.getenv`` (setting a variable is not reading it)."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "os":
            parent = parents.get(node)
            if node.attr == "getenv":
                lines.append(node.lineno)
            elif node.attr == "environ":
                written = (isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store)) or (
                    isinstance(parent, ast.Attribute) and parent.attr == "setdefault"
                )
                if not written:
                    lines.append(node.lineno)
    return lines


def test_the_environment_is_read_in_the_settings_module_only():
    package = REPO / "mm_pipeline"
    # io_manager.storage_base still reads $MM_PIPELINE_STORAGE itself; settings.storage_location() is its
    # replacement once that module moves to it.
    # The served model's code (registry/pyfunc.py) runs inside `mlflow models serve` without mm_pipeline:
    # it reads the user key secret and the request caps from the server's environment itself.
    allowed = {package / "settings.py", package / "defs" / "io_manager.py", package / "registry" / "pyfunc.py"}
    readers = {
        str(path.relative_to(REPO)): lines
        for path in sorted(package.rglob("*.py"))
        if path not in allowed and (lines := _environment_reads(path))
    }
    assert readers == {}, f"read the environment through mm_pipeline.settings instead: {readers}"
    assert _environment_reads(package / "settings.py")  # the scan does see reads


def test_resources_take_environment_overrides_as_env_vars(monkeypatch):
    from mm_pipeline.defs.build import default_resources

    for name in ("MM_PIPELINE_DATASET", "MLFLOW_TRACKING_URI", "MM_PIPELINE_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    plain = default_resources()
    assert plain["pipeline"].dataset == "" and plain["pipeline"].dataset_spec() == "builtin:default"
    assert plain["mlflow_tracking"].tracking_uri == "" and plain["io_manager"].base_dir == ""
    monkeypatch.setenv("MM_PIPELINE_DATASET", "builtin:tiny")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/x.db")
    monkeypatch.setenv("MM_PIPELINE_STORAGE", "/tmp/assets")
    from_env = default_resources()
    assert from_env["pipeline"].dataset == dg.EnvVar("MM_PIPELINE_DATASET")
    assert from_env["mlflow_tracking"].tracking_uri == dg.EnvVar("MLFLOW_TRACKING_URI")
    assert from_env["io_manager"].base_dir == dg.EnvVar("MM_PIPELINE_STORAGE")
    given = default_resources(home="/tmp/h", dataset="builtin:tiny:video", tracking_uri="sqlite:////tmp/y.db")
    assert given["pipeline"].dataset == "builtin:tiny:video" and given["io_manager"].base_dir == "/tmp/h/assets"
    assert given["mlflow_tracking"].tracking_uri == "sqlite:////tmp/y.db"

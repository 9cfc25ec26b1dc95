"""`make demo`'s entry point on the tiny dataset: the run lands in the project's Dagster instance."""

import json
import os

import dagster as dg

from mm_pipeline import cli


def test_demo_runs_the_full_job_and_prints_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MM_PIPELINE_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MM_PIPELINE_DATASET", raising=False)  # --dataset reaches the run as run config
    assert cli.main(["demo", "--dataset", "builtin:tiny"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "mm_gcn" in out and "recall@20" in out and "cold-start" in out
    assert "asset checks" in out
    # Progress while it runs: every step's start and finish with the elapsed time, and the assets' own lines.
    assert "started  raw_source" in captured.err and "finished batch_recommendations (" in captured.err
    assert "selected_model: selected model:" in captured.err
    assert (tmp_path / "batch" / "recommendations.parquet").exists() and "Batch:" in out
    metrics = json.loads((tmp_path / "reports" / "latest" / "metrics.json").read_text())
    assert metrics["dataset"]["spec"] == "builtin:tiny" and "MM_PIPELINE_DATASET" not in os.environ
    assert (tmp_path / "dagster" / "dagster.yaml").is_symlink()
    with dg.DagsterInstance.get() as instance:  # DAGSTER_HOME points at the project home
        runs = instance.get_runs()
        assert len(runs) == 1 and runs[0].job_name == "full_pipeline"
        assert runs[0].status == dg.DagsterRunStatus.SUCCESS

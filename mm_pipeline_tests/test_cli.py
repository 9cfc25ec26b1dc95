"""`make demo`'s entry point on the tiny dataset: the run lands in the project's Dagster instance."""

import json
import os

import dagster as dg
import yaml

from mm_pipeline import cli

from fast_config import FASTER_OPS, fast_run_config


def test_demo_runs_the_full_job_and_prints_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MM_PIPELINE_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MM_PIPELINE_DATASET", raising=False)  # --dataset reaches the run as run config
    config = tmp_path / "fast.yaml"  # shorter training: the demo runs three times here
    config.write_text(yaml.safe_dump(fast_run_config(FASTER_OPS)))
    demo = ["demo", "--dataset", "builtin:tiny", "--config", str(config)]
    assert cli.main(demo) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "mm_gcn" in out and "recall@20" in out and "cold-start" in out
    assert "asset checks" in out
    # Progress while it runs: every step's start and finish with the elapsed time, and the assets' own lines.
    assert "started  raw_source" in captured.err and "finished batch_recommendations (" in captured.err
    assert "selected_model: selected model:" in captured.err
    # Stage timings with each step's CPU use, and the idle core-seconds over the run's steps.
    assert "cores: CPU seconds per second of the step" in out and "core-seconds;" in out and " idle: " in out
    assert (tmp_path / "batch" / "recommendations.parquet").exists() and "Batch:" in out
    metrics = json.loads((tmp_path / "reports" / "latest" / "metrics.json").read_text())
    assert metrics["dataset"]["spec"] == "builtin:tiny" and "MM_PIPELINE_DATASET" not in os.environ
    assert (tmp_path / "dagster" / "dagster.yaml").is_symlink()
    with dg.DagsterInstance.get() as instance:  # DAGSTER_HOME points at the project home
        runs = instance.get_runs()
        assert len(runs) == 1 and runs[0].job_name == "full_pipeline"
        assert runs[0].status == dg.DagsterRunStatus.SUCCESS

    # Again, nothing changed: nothing is materialized, no run is made, the report stays as it was.
    report = (tmp_path / "reports" / "latest" / "metrics.json").read_text()
    assert cli.main(demo) == 0
    captured = capsys.readouterr()
    (summary,) = [line for line in captured.err.splitlines() if "assets up to date" in line]
    assert summary.startswith("32 assets up to date, 0 to materialize (up to date: ") and "raw_items, " in summary
    assert "started " not in captured.err and "Nothing to materialize" in captured.out and "mm_gcn" in captured.out
    assert (tmp_path / "reports" / "latest" / "metrics.json").read_text() == report
    with dg.DagsterInstance.get() as instance:
        assert len(instance.get_runs()) == 1

    # --force: every asset again.
    assert cli.main([*demo, "--force"]) == 0
    captured = capsys.readouterr()
    assert "assets up to date" not in captured.err and "finished batch_recommendations (" in captured.err
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert len(runs) == 2
        records = instance.fetch_materializations(dg.AssetRecordsFilter(dg.AssetKey("raw_items")), limit=10).records
        assert {r.event_log_entry.run_id for r in records} == {run.run_id for run in runs}


def _step_record(kind: str, step: str):
    import logging
    from types import SimpleNamespace

    record = logging.LogRecord("dagster", logging.DEBUG, __file__, 0, "", None, None)
    record.dagster_meta = {"dagster_event": SimpleNamespace(event_type_value=kind), "step_key": step}
    return record


def test_progress_handler_records_each_steps_wall_and_cpu_seconds():
    lines = []
    handler = cli.ProgressHandler(0.0, write=lines.append)
    handler.emit(_step_record("STEP_START", "busy"))
    started = cli.cpu_seconds()
    while cli.cpu_seconds() - started < 0.05:  # burn a little CPU inside the step
        sum(range(1000))
    handler.emit(_step_record("STEP_SUCCESS", "busy"))
    wall, cpu = handler.step_cpu["busy"]
    assert cpu >= 0.05 and wall > 0 and cpu <= wall * cli.available_cores() + 0.05
    assert any(line.endswith(f"finished busy ({wall:.1f}s)") for line in lines)


def test_idle_core_seconds_counts_what_the_cores_left_unused():
    # Two steps on two cores: 10 s at one core and 5 s at both leave 10 of 30 core-seconds idle.
    assert cli.idle_core_seconds({"a": (10.0, 10.0), "b": (5.0, 10.0)}, cores=2) == (10.0, 30.0)
    assert cli.idle_core_seconds({}, cores=2) == (0.0, 0.0)
    assert cli.idle_core_seconds({"a": (1.0, 1.2)}, cores=1) == (0.0, 1.0)  # clock granularity: never negative

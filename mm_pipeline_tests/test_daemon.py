"""End to end under ``dagster dev`` (webserver + daemon) on 127.0.0.1, with the repository's
``dagster.yaml``: the sensor, switched on over GraphQL, ingests a file dropped into the inbox as an
``inbox_interactions`` partition and retrains on it; the same content under another name triggers
nothing. The schedule is switched on too (it only has to be running: its cron is weekly).

Time-boxed; the whole process group of ``dagster dev`` (code server, daemon, launched runs) is
killed in ``finally``.
"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mm_pipeline.defs.build import all_assets
from mm_pipeline.settings import REPO_ROOT
from mm_pipeline.storage import load_bundle

from fast_config import FASTER_OPS, fast_run_config

DEADLINE_S = 180  # hard cap; ~90-100 s measured on a busy 2-core machine (start-up ~25 s, the run ~60 s)
LOCATION, REPOSITORY = "mm_pipeline", "__repository__"
# The fastest settings that still run every stage (the test checks orchestration, not quality).
DAEMON_OPS = {
    **FASTER_OPS,
    "bpr_mf_model": {"config": {"epochs": 1, "patience": 1}},
    "lightgcn_model": {"config": {"epochs": 1, "patience": 1}},
    "mm_gcn_model": {"config": {"epochs": 2, "patience": 1}},
    "vbpr_model": {"config": {"epochs": 1, "patience": 1}},
    "aligned_item_embeddings": {"config": {"epochs": 1}},
}

SENSOR_TICKS = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status ticks(limit: 50) { timestamp status runIds skipReason error { message } } } }
    ... on PythonError { message }
  }
}"""
START_SENSOR = """
mutation Start($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on PythonError { message }
  }
}"""
START_SCHEDULE = """
mutation Start($selector: ScheduleSelector!) {
  startSchedule(scheduleSelector: $selector) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on PythonError { message }
  }
}"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Dev:
    """``dagster dev`` in its own process group, plus GraphQL and instance helpers."""

    def __init__(self, home: Path, env: dict, deadline: float):
        self.home, self.deadline = home, deadline
        self.port = _free_port()
        self.log = home / "dagster-dev.log"
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "dagster"),
                "dev",
                "-w",
                "workspace.yaml",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def wait(self, what: str, probe, poll_s: float = 1.0):
        while time.monotonic() < self.deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"dagster dev exited ({self.proc.returncode}) while waiting for {what}:\n{self.tail()}")
            value = probe()
            if value:
                return value
            time.sleep(poll_s)
        pytest.fail(f"timed out waiting for {what}\n--- dagster dev log ---\n{self.tail()}")

    def graphql(self, query: str, variables: dict) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/graphql",
            data=json.dumps({"query": query, "variables": variables}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
        assert "errors" not in body, body
        return body["data"]

    def ready(self) -> bool:
        try:
            sensor = self.graphql(SENSOR_TICKS, {"selector": _sensor()})["sensorOrError"]
            return sensor["__typename"] == "Sensor"
        except OSError:
            return False

    def ticks(self) -> list[dict]:
        return self.graphql(SENSOR_TICKS, {"selector": _sensor()})["sensorOrError"]["sensorState"]["ticks"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever is left of the group (a launched run, the code server)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


def _sensor() -> dict:
    return {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": "new_interactions_sensor"}


def _sensor_runs(instance: dg.DagsterInstance) -> list:
    return instance.get_runs(filters=dg.RunsFilter(tags={"dagster/sensor_name": "new_interactions_sensor"}))


def test_sensor_ingests_an_inbox_file_and_retrains_under_dagster_dev(tmp_path, monkeypatch):
    started = time.monotonic()
    home = tmp_path / "home"
    dagster_home, inbox = home / "dagster", home / "inbox"
    dagster_home.mkdir(parents=True)
    inbox.mkdir()
    (dagster_home / "dagster.yaml").symlink_to(REPO_ROOT / "dagster.yaml")  # what `make home` does
    run_config = home / "fast.yaml"
    # Only ops of the graph full_pipeline / inbox_retrain run (a job refuses config for others).
    names = {key.to_user_string() for a in all_assets() for key in a.keys}
    ops = {op: cfg for op, cfg in fast_run_config(DAEMON_OPS)["ops"].items() if op in names}
    run_config.write_text(yaml.safe_dump({"ops": ops}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DAGSTER_", "MM_PIPELINE_"))}
    env.update(
        {
            "DAGSTER_HOME": str(dagster_home),
            "MM_PIPELINE_HOME": str(home),
            "MM_PIPELINE_DATASET": "builtin:tiny",
            "MM_PIPELINE_RUN_CONFIG": str(run_config),
            "MM_PIPELINE_INBOX_SETTLE_S": "0",
            "MM_PIPELINE_INBOX_INTERVAL_S": "2",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
    )
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    instance = dg.DagsterInstance.get()  # the same storage the daemon writes, read from here
    dev = Dev(home, env, started + DEADLINE_S)
    try:
        dev.wait("the webserver and code location", dev.ready, poll_s=2)
        started_sensor = dev.graphql(START_SENSOR, {"selector": _sensor()})["startSensor"]
        assert started_sensor.get("sensorState", {}).get("status") == "RUNNING", started_sensor
        schedule = dev.graphql(
            START_SCHEDULE,
            {
                "selector": {
                    "repositoryLocationName": LOCATION,
                    "repositoryName": REPOSITORY,
                    "scheduleName": "retrain_schedule",
                }
            },
        )["startSchedule"]
        assert schedule.get("scheduleState", {}).get("status") == "RUNNING", schedule

        new_rows = [
            ("u000001", "i000003", 1900000000),
            ("u000002", "i000005", 1900000100),
            ("u900000", "i000007", 1900000200),
        ]
        content = "user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in new_rows)
        (inbox / ".upload.csv").write_text(content)
        os.replace(inbox / ".upload.csv", inbox / "2026-11-01.csv")  # published atomically
        digest = hashlib.sha256(content.encode()).hexdigest()

        def finished_run():
            runs = _sensor_runs(instance)
            done = [r for r in runs if r.is_finished]
            return done[0] if done else None

        run = dev.wait("the sensor's run to finish", finished_run, poll_s=2)
        assert run.is_success, f"run {run.run_id} ended {run.status}\n{dev.tail()}"
        assert run.job_name == "inbox_retrain" and run.tags["dagster/partition"] == digest
        assert run.tags["mm_pipeline.inbox_sha256"] == digest
        assert run.run_config["ops"]["mm_gcn_model"] == DAEMON_OPS["mm_gcn_model"]  # the YAML was merged

        key = dg.AssetKey("inbox_interactions")
        assert instance.get_materialized_partitions(key) == {digest}
        (record,) = instance.fetch_materializations(dg.AssetKey("raw_interactions"), limit=1).records
        assert record.event_log_entry.run_id == run.run_id
        metadata = record.asset_materialization.metadata
        assert metadata["inbox_digests"].value == [digest] and metadata["inbox_rows_appended"].value == 3
        stored = load_bundle(home / "assets" / "raw_interactions")["table"]
        ingested = stored[stored["origin"] == f"inbox:{digest}"]
        assert sorted(map(tuple, ingested[["user_id", "item_id", "timestamp"]].values.tolist())) == new_rows
        assert (inbox / "2026-11-01.csv").read_text() == content  # the user's file is untouched

        # The same bytes under another name: the next ticks skip, no second run, no new partition.
        dropped = time.time()
        (inbox / "copy.csv").write_text(content)

        def ticks_after_drop():
            later = [t for t in dev.ticks() if t["timestamp"] > dropped + 0.5 and t["status"] != "STARTED"]
            return later if len(later) >= 2 else None

        later = dev.wait("two sensor ticks after the copy", ticks_after_drop)
        assert all(t["status"] == "SKIPPED" and not t["runIds"] for t in later), later
        assert len(_sensor_runs(instance)) == 1
        assert list(instance.get_dynamic_partitions("inbox_files")) == [digest]
        print(f"daemon end-to-end: {time.monotonic() - started:.0f} s")
    finally:
        dev.stop()
        instance.dispose()

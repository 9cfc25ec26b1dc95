"""The multi-machine deployment, on real services: the Dagster instance on PostgreSQL (deploy/dagster.yaml),
an MLflow tracking server on its own PostgreSQL database, RabbitMQ as Celery broker, Redis as result
backend, and two Celery worker processes (``celery -A mm_pipeline.defs.celery_worker worker``, what
``make worker`` runs). Runs are started with ``python -m mm_pipeline.cli run``, as a user would.

Skipped, with the reason, only when PostgreSQL (5432), RabbitMQ (5672) or Redis (6379) do not answer
on 127.0.0.1. Each test session gets its own databases (dropped afterwards); every process started
here is killed in the fixture's teardown, whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from mm_pipeline.settings import REGISTERED_MODEL_NAME, REPO_ROOT
from mm_pipeline.storage import MANIFEST, load_bundle, published_version

from fast_config import FASTER_OPS, fast_run_config

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"  # SQLAlchemy 2.1 reads plain postgresql:// as psycopg 3
BROKER = "amqp://guest:guest@127.0.0.1:5672//"
BACKEND = "redis://127.0.0.1:6379/0"
BIN = Path(sys.executable).parent
DEADLINE_S = 900  # the whole module, hard cap
# Short training (the tests check orchestration and isolation, not quality), one thread per process so
# two workers on two cores do not fight and results do not depend on the thread count.
OPS = {
    **FASTER_OPS,
    "lightgcn_model": {"config": {"epochs": 2, "patience": 1}},
    "bpr_mf_model": {"config": {"epochs": 2, "patience": 1}},
    "vbpr_model": {"config": {"epochs": 2, "patience": 1}},
    "mm_gcn_model": {"config": {"epochs": 3, "patience": 2}},
}
TINY, ECOMMERCE = "builtin:tiny", "builtin:tiny:ecommerce"


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sql(database: str, statement: str, params=None, fetch: bool = True):
    import psycopg2

    conn = psycopg2.connect(f"postgresql://postgres@127.0.0.1:5432/{database}")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.fetchall() if fetch else None
    finally:
        conn.close()


class Deployment:
    """Databases, the MLflow server and two Celery workers, all on 127.0.0.1, under ``root``."""

    def __init__(self, root: Path):
        self.root, self.procs, self.logs = root, {}, {}
        suffix = uuid.uuid4().hex[:10]
        self.dagster_db, self.mlflow_db = f"mm_test_dagster_{suffix}", f"mm_test_mlflow_{suffix}"
        self.home, self.dagster_home = root / "home", root / "dagster"
        self.mlflow_port = _free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DAGSTER_", "MM_PIPELINE_"))}
        self.env.update(
            {
                "DAGSTER_HOME": str(self.dagster_home),
                "DAGSTER_PG_URL": f"{PG}/{self.dagster_db}",
                "MM_PIPELINE_HOME": str(self.home),
                "MM_PIPELINE_EXECUTOR": "celery",
                "MM_PIPELINE_CELERY_BROKER": BROKER,
                "MM_PIPELINE_CELERY_BACKEND": BACKEND,
                "MM_PIPELINE_LOCK_DB": f"{PG}/{self.dagster_db}",
                "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{self.mlflow_port}",
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
                "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                "PYTHONUNBUFFERED": "1",
            }
        )
        self.run_config = root / "fast.yaml"
        self.run_config.write_text(yaml.safe_dump(fast_run_config(OPS)))

    def start(self) -> None:
        for db in (self.dagster_db, self.mlflow_db):
            _sql("postgres", f'CREATE DATABASE "{db}"', fetch=False)
        self.dagster_home.mkdir(parents=True)
        (self.dagster_home / "dagster.yaml").symlink_to(REPO_ROOT / "deploy" / "dagster.yaml")  # make deploy-home
        self._spawn(
            "mlflow",
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"{PG}/{self.mlflow_db}",
                "--artifacts-destination",
                str(self.root / "mlflow-artifacts"),
                "--serve-artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.mlflow_port),
                "--workers",
                "1",
            ],
        )
        from mm_pipeline.defs.celery import worker_app

        os.environ.update({"MM_PIPELINE_CELERY_BROKER": BROKER, "MM_PIPELINE_CELERY_BACKEND": BACKEND})
        self.app = worker_app()
        self.app.control.purge()  # step tasks an aborted earlier session may have left in the queue
        self.worker_names = [f"mmtest{i}-{uuid.uuid4().hex[:6]}" for i in (1, 2)]
        for name in self.worker_names:
            self._spawn(
                name,
                [
                    str(BIN / "celery"),
                    "-A",
                    "mm_pipeline.defs.celery_worker",
                    "worker",
                    "-Q",
                    "dagster",
                    "--concurrency",
                    "1",
                    "--prefetch-multiplier",
                    "1",
                    "--loglevel",
                    "INFO",
                    "-n",
                    f"{name}@%h",
                    "--without-gossip",
                    "--without-mingle",
                ],
            )
        self.wait("the MLflow server", lambda: self._http_ok(f"{self.env['MLFLOW_TRACKING_URI']}/health"))
        self.wait("both Celery workers", lambda: len(self.app.control.ping(timeout=1.0)) >= 2)

    def _spawn(self, name: str, args: list[str]) -> None:
        self.logs[name] = self.root / f"{name}.log"
        self.procs[name] = subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env=self.env,
            stdout=self.logs[name].open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def tail(self) -> str:
        return "\n".join(
            f"--- {name} ---\n{log.read_text(errors='replace')[-2500:]}"
            for name, log in self.logs.items()
            if log.exists()
        )

    def wait(self, what: str, probe, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    pytest.fail(f"{name} exited ({proc.returncode}) while waiting for {what}\n{self.tail()}")
            if probe():
                return
            time.sleep(1.0)
        pytest.fail(f"timed out waiting for {what}\n{self.tail()}")

    def cli(self, *args: str, timeout_s: float = 420.0) -> subprocess.Popen:
        """``python -m mm_pipeline.cli run ...`` with the deployment's environment (not yet waited for)."""
        log = self.root / f"cli-{uuid.uuid4().hex[:6]}.log"
        self.logs[log.stem] = log
        proc = subprocess.Popen(
            [sys.executable, "-m", "mm_pipeline.cli", "run", "--config", str(self.run_config), *args],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc.timeout_s, proc.log = timeout_s, log
        return proc

    def finish(self, proc: subprocess.Popen) -> tuple[int, str]:
        try:
            proc.wait(proc.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the CLI run did not finish in {proc.timeout_s} s\n{self.tail()}")
        out = proc.log.read_text(errors="replace")
        return proc.returncode, out

    def instance(self):
        import dagster as dg

        os.environ["DAGSTER_PG_URL"] = self.env["DAGSTER_PG_URL"]
        return dg.DagsterInstance.from_config(str(self.dagster_home))

    def stop(self) -> None:
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
            try:  # the worker's pool processes and whatever else is left of the group
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)
        for db in (self.dagster_db, self.mlflow_db):
            _sql("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
            _sql("postgres", f'DROP DATABASE IF EXISTS "{db}"', fetch=False)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    missing = [
        f"{name} (127.0.0.1:{port})"
        for name, port in (("PostgreSQL", 5432), ("RabbitMQ", 5672), ("Redis", 6379))
        if not _answers(port)
    ]
    if missing:
        pytest.skip(f"the deployment tests need {', '.join(missing)}, which did not answer")
    deployment = Deployment(tmp_path_factory.mktemp("deploy"))
    saved = {
        k: os.environ.get(k) for k in ("MM_PIPELINE_CELERY_BROKER", "MM_PIPELINE_CELERY_BACKEND", "DAGSTER_PG_URL")
    }
    try:
        deployment.start()
        deployment.started = time.monotonic()
        yield deployment
    finally:
        deployment.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run_id(out: str) -> str:
    line = next((line for line in out.splitlines() if line.startswith("Dagster run ")), None)
    assert line, out[-3000:]
    return line.split()[2].rstrip(":")


def _steps(instance, run_id: str) -> dict[str, dict]:
    """Per step: the pids of its STEP_START events and the Celery worker hostnames that reported taking it."""
    steps: dict[str, dict] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or not event.step_key:
            continue
        entry = steps.setdefault(event.step_key, {"pids": set(), "workers": set(), "success": False})
        if event.event_type_value == "STEP_START":
            entry["pids"].add(event.pid)
        elif event.event_type_value == "STEP_SUCCESS":
            entry["success"] = True
        elif event.event_type_value == "ENGINE_EVENT" and "in celery worker" in (event.message or ""):
            metadata = event.event_specific_data.metadata
            entry["workers"].add(metadata["Celery worker"].value)
    return steps


def _metrics(home: Path, run_id: str) -> dict:
    return json.loads((home / "reports" / "runs" / run_id / "metrics.json").read_text())


def _same_results(home: Path, run_a: str, run_b: str) -> None:
    """Reports and the primary model of two runs are the same (dataset, every model's metrics, embeddings)."""
    a, b = _metrics(home, run_a), _metrics(home, run_b)
    assert a["dataset"] == b["dataset"]
    assert a["models"].keys() == b["models"].keys()
    for name in a["models"]:
        for metric in ("recall@20", "ndcg@20", "coverage@20"):
            assert a["models"][name][metric] == pytest.approx(b["models"][name][metric], abs=1e-9), (name, metric)
    slot = home / "assets" / "mm_gcn_model"
    np.testing.assert_array_equal(
        load_bundle(slot, version=run_a)["item_embeddings"], load_bundle(slot, version=run_b)["item_embeddings"]
    )


def test_full_pipeline_runs_every_step_on_the_celery_workers(deployment):
    proc = deployment.cli("--dataset", TINY)
    code, out = deployment.finish(proc)
    assert code == 0, f"{out[-4000:]}\n{deployment.tail()}"
    run_id = _run_id(out)
    deployment.alone = {TINY: run_id}
    instance = deployment.instance()
    try:
        run = instance.get_run_by_id(run_id)
        assert run.is_success and run.job_name == "full_pipeline"
        assert run.run_config["resources"]["pipeline"]["config"]["dataset"] == TINY
        steps = _steps(instance, run_id)
    finally:
        instance.dispose()
    assert {"raw_source", "mm_gcn_model", "evaluation_report", "registered_model", "model_promotion"} <= set(steps)
    workers = {f"{name}@{socket.gethostname()}" for name in deployment.worker_names}
    for key, step in steps.items():
        # Every step: taken by one of the two workers (its engine event), started in a process other than
        # the CLI (the run's coordinator), and succeeded.
        assert step["success"], key
        assert len(step["workers"]) == 1 and step["workers"] <= workers, (key, step["workers"])
        assert step["pids"] and proc.pid not in step["pids"], (key, step["pids"])
    assert set().union(*(s["workers"] for s in steps.values())) == workers  # both workers took steps

    # The run and its events are in PostgreSQL (the instance's database), the model in MLflow's database.
    assert _sql(deployment.dagster_db, "SELECT status FROM runs WHERE run_id = %s", (run_id,)) == [("SUCCESS",)]
    assert _sql(deployment.dagster_db, "SELECT count(*) FROM event_logs WHERE run_id = %s", (run_id,))[0][0] > 50
    versions = _sql(
        deployment.mlflow_db, "SELECT version FROM model_versions WHERE name = %s", (REGISTERED_MODEL_NAME,)
    )
    assert versions == [(1,)]
    aliases = dict(
        _sql(
            deployment.mlflow_db,
            "SELECT alias, version FROM registered_model_aliases WHERE name = %s",
            (REGISTERED_MODEL_NAME,),
        )
    )
    assert aliases == {"champion": 1, "challenger": 1}
    # Artifacts went through the server to its destination, not into a ./mlruns somewhere.
    assert any((deployment.root / "mlflow-artifacts").rglob("MLmodel"))
    assert not (REPO_ROOT / "mlruns").exists()
    home = deployment.home
    assert (home / "reports" / "latest").resolve() == (home / "reports" / "runs" / run_id).resolve()
    assert _metrics(home, run_id)["dagster_run_id"] == run_id
    assert (home / "reports" / "runs" / run_id / "report.html").exists()
    assert published_version(home / "assets" / "mm_gcn_model") == run_id


def test_two_runs_at_once_on_two_datasets_match_their_runs_alone(deployment):
    assert hasattr(deployment, "alone"), "needs the full-pipeline test's run of builtin:tiny"
    # --force: the same home already holds builtin:tiny's assets, and this test is about two whole runs at once.
    procs = {
        TINY: deployment.cli("--dataset", TINY, "--force"),
        ECOMMERCE: deployment.cli("--dataset", ECOMMERCE, "--force"),
    }
    runs = {}
    for spec, proc in procs.items():
        code, out = deployment.finish(proc)
        assert code == 0, f"{spec}: {out[-4000:]}\n{deployment.tail()}"
        runs[spec] = _run_id(out)
    instance = deployment.instance()
    try:
        records = {spec: instance.get_run_by_id(run_id) for spec, run_id in runs.items()}
        starts = {spec: instance.get_run_record_by_id(run_id) for spec, run_id in runs.items()}
    finally:
        instance.dispose()
    assert all(r.is_success for r in records.values())
    a, b = starts[TINY], starts[ECOMMERCE]
    assert a.start_time < b.end_time and b.start_time < a.end_time, "the two runs did not overlap"
    home = deployment.home
    assert _metrics(home, runs[ECOMMERCE])["dataset"]["spec"] == ECOMMERCE
    assert _metrics(home, runs[TINY])["dataset"]["spec"] == TINY
    _same_results(home, deployment.alone[TINY], runs[TINY])  # concurrently == alone
    deployment.concurrent = runs


def test_a_worker_killed_mid_step_fails_the_run_and_reexecution_completes(deployment):
    assert hasattr(deployment, "concurrent"), "needs the concurrent runs"
    slow = deployment.root / "slow.yaml"
    config = fast_run_config(OPS)
    config["ops"]["mm_gcn_model"] = {"config": {"epochs": 400, "patience": 400}}  # long enough to be killed in
    slow.write_text(yaml.safe_dump(config))
    home, slot = deployment.home, deployment.home / "assets" / "mm_gcn_model"
    published_before = published_version(slot)
    log = deployment.root / "cli-killed.log"
    deployment.logs["cli-killed"] = log
    proc = subprocess.Popen(
        [sys.executable, "-m", "mm_pipeline.cli", "run", "--config", str(slow), "--dataset", ECOMMERCE, "--force"],
        cwd=REPO_ROOT,
        env=deployment.env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    instance = deployment.instance()
    try:
        import dagster as dg

        def started_training():
            runs = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
            for run in runs:
                for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START):
                    if record.dagster_event.step_key == "mm_gcn_model":
                        return run.run_id, record.dagster_event.pid
            return None

        found = None
        deadline = time.monotonic() + 300
        while found is None and time.monotonic() < deadline and proc.poll() is None:
            found = started_training()
            time.sleep(0.5)
        assert found, f"mm_gcn_model never started\n{log.read_text(errors='replace')[-3000:]}"
        run_id, pid = found
        time.sleep(2.0)  # well inside its 400 epochs
        os.kill(pid, signal.SIGKILL)  # the worker process executing the step, as the OOM killer would
        proc.wait(240)
        out = log.read_text(errors="replace")
        assert proc.returncode == 1 and f"Dagster run {run_id}: FAILED" in out, out[-3000:]
        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.FAILURE
        (failure,) = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        message = failure.dagster_event.message + str(failure.dagster_event.event_specific_data)
        assert "mm_gcn_model" in message and "SIGKILL" in message, message  # says which step and why
        # Nothing half-written: no version of the killed run, the published one unchanged.
        assert not (slot / "versions" / run_id / MANIFEST).exists()
        assert published_version(slot) == published_before

        code, out = deployment.finish(deployment.cli("--dataset", ECOMMERCE, "--from-failure", run_id))
        assert code == 0, f"{out[-4000:]}\n{deployment.tail()}"
        rerun_id = _run_id(out)
        rerun = instance.get_run_by_id(rerun_id)
        assert rerun.is_success and rerun.parent_run_id == run_id
        reexecuted = {key for key, step in _steps(instance, rerun_id).items() if step["success"]}
        assert "mm_gcn_model" in reexecuted and "raw_source" not in reexecuted  # only what had not finished
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        instance.dispose()
    # The re-executed run (its killed step now with the normal config) gives what the concurrent run gave.
    _same_results(home, deployment.concurrent[ECOMMERCE], rerun_id)
    print(f"deployment tests: {time.monotonic() - deployment.started:.0f} s")

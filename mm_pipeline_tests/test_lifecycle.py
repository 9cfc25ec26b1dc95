"""Model lifecycle: retraining schedule, new-interactions sensor (inbox partitions), promote/rollback
job with its lock, and the promotion loop end to end on the tiny built-in dataset."""

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import dagster as dg
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from mm_pipeline.defs.build import all_assets, default_resources
from mm_pipeline.defs.lifecycle import (
    DEFAULT_RETRAIN_CRON,
    build_retrain_schedule,
    new_interactions_sensor,
    promote_model_job,
    retrain_schedule,
)
from mm_pipeline.defs.resources import MlflowResource, PipelineResource
from mm_pipeline.registry import champion as champion_module
from mm_pipeline.registry.champion import TAG_CHAMPION_HISTORY, champion_history
from mm_pipeline.settings import REGISTERED_MODEL_NAME

from fast_config import fast_run_config

OLD = time.time() - 3600  # an mtime long past the inbox settle time


def test_definitions_expose_the_lifecycle():
    from mm_pipeline.definitions import defs

    assert defs.resolve_job_def("promote_model") is not None
    assert defs.resolve_schedule_def("retrain_schedule").job_name == "full_pipeline"
    sensor = defs.resolve_sensor_def("new_interactions_sensor")
    assert sensor.job_name == "inbox_retrain" and sensor.default_status == dg.DefaultSensorStatus.STOPPED
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"model_promotion", "inbox_interactions"} <= keys
    # full_pipeline needs no partition key: it leaves the partitioned inbox asset out and reads what is
    # stored; inbox_retrain ingests one inbox partition and runs the whole graph after it.
    full = defs.resolve_job_def("full_pipeline")
    full_keys = {k.to_user_string() for k in full.asset_layer.selected_asset_keys}
    assert full.partitions_def is None and "inbox_interactions" not in full_keys
    assert {"raw_interactions", "mm_gcn_model", "registered_model", "model_promotion"} <= full_keys
    inbox = defs.resolve_job_def("inbox_retrain")
    assert inbox.partitions_def.name == "inbox_files"
    assert {k.to_user_string() for k in inbox.asset_layer.selected_asset_keys} == full_keys | {"inbox_interactions"}
    assert "inbox_interactions" not in {k.to_user_string() for a in all_assets() for k in a.keys}


# --------------------------------------------------------------------------------------- schedule
def test_schedule_defaults_to_weekly_and_stopped(monkeypatch):
    assert retrain_schedule.job_name == "full_pipeline"
    assert retrain_schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    monkeypatch.delenv("MM_PIPELINE_RETRAIN_CRON", raising=False)
    monkeypatch.delenv("MM_PIPELINE_RUN_CONFIG", raising=False)
    schedule = build_retrain_schedule()
    assert schedule.cron_schedule == DEFAULT_RETRAIN_CRON == "0 3 * * 1"
    data = schedule.evaluate_tick(dg.build_schedule_context())
    (request,) = data.run_requests
    assert request.tags["mm_pipeline.trigger"] == "retrain_schedule"
    assert request.run_config == {}


def test_schedule_cron_from_environment(monkeypatch):
    monkeypatch.setenv("MM_PIPELINE_RETRAIN_CRON", "30 1 * * *")
    assert build_retrain_schedule().cron_schedule == "30 1 * * *"
    monkeypatch.setenv("MM_PIPELINE_RETRAIN_CRON", "every monday")
    with pytest.raises(ValueError, match="MM_PIPELINE_RETRAIN_CRON"):
        build_retrain_schedule()


def test_schedule_and_sensor_runs_carry_the_run_config_file(tmp_path, monkeypatch):
    config = tmp_path / "fast.yaml"
    config.write_text(
        "ops:\n  mm_gcn_model: {config: {epochs: 2}}\n"
        "  inbox_interactions: {config: {file: /not/for/full_pipeline.csv}}\n"
    )
    monkeypatch.setenv("MM_PIPELINE_RUN_CONFIG", str(config))
    (request,) = build_retrain_schedule().evaluate_tick(dg.build_schedule_context()).run_requests
    # full_pipeline has no inbox op: Dagster would refuse config for it.
    assert request.run_config == {"ops": {"mm_gcn_model": {"config": {"epochs": 2}}}}

    # A broken file fails the tick (visible in the UI) instead of launching runs without it.
    for content, message in (
        ("ops: [not, a, mapping]\n", "must hold a run-config mapping"),
        ("ops: {a: [\n", "not valid YAML"),
        (None, "cannot read"),
    ):
        if content is None:
            config.unlink()
        else:
            config.write_text(content)
        with pytest.raises(dg.DagsterUserCodeExecutionError) as failure:
            build_retrain_schedule().evaluate_tick(dg.build_schedule_context())
        cause = str(failure.value.user_exception)
        assert "MM_PIPELINE_RUN_CONFIG" in cause and message in cause, cause


# ----------------------------------------------------------------------------------------- sensor
@pytest.fixture
def inbox(tmp_path, monkeypatch):
    for name in ("MM_PIPELINE_INBOX", "MM_PIPELINE_INBOX_SETTLE_S", "MM_PIPELINE_RUN_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "home" / "inbox"
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(scope="module")
def sensor_instance():
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def _tick(sensor_instance):
    from mm_pipeline.definitions import defs

    # Partitioned run requests are resolved against the job and the instance's partitions (plus the
    # ones the same tick adds), as the daemon does: hence the definitions and a persistent instance.
    def tick(home, cursor=None):
        context = dg.build_sensor_context(
            cursor=cursor,
            instance_ref=sensor_instance.get_ref(),
            definitions=defs,
            resources={"pipeline": PipelineResource(home=str(home))},
        )
        return new_interactions_sensor.evaluate_tick(context)

    return tick


def _drop(folder, name, content, mtime=OLD):
    path = folder / name
    path.write_text(content)
    os.utime(path, (mtime, mtime))
    return path


def test_sensor_skips_an_empty_or_missing_inbox(inbox, _tick):
    data = _tick(inbox.parent)
    assert not data.run_requests and "no new interaction file" in data.skip_message
    shutil.rmtree(inbox)
    data = _tick(inbox.parent)
    assert not data.run_requests and "no inbox folder" in data.skip_message


def test_sensor_adds_one_partition_and_requests_one_run_per_new_content(inbox, _tick):
    first = _drop(inbox, "2026-11-01.csv", "user_id,item_id,timestamp\nu1,i1,1\n")
    _drop(inbox, "notes.txt", "not interactions")
    _drop(inbox, ".upload.csv", "user_id,item_id,timestamp\nu9,i9,9\n")  # hidden: still being published
    data = _tick(inbox.parent)
    (request,) = data.run_requests
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    assert request.run_key == digest and request.partition_key == digest
    assert request.tags["mm_pipeline.inbox_sha256"] == digest
    assert request.tags["mm_pipeline.trigger"] == "new_interactions_sensor"
    # The run ingests exactly this file as the new inbox_files partition.
    assert request.run_config == {"ops": {"inbox_interactions": {"config": {"file": str(first)}}}}
    (add,) = data.dynamic_partitions_requests
    assert add.partitions_def_name == "inbox_files" and list(add.partition_keys) == [digest]
    assert json.loads(data.cursor)["seen"] == [digest]

    # The same tick again, and the same bytes under another name: nothing new, no partition.
    again = _tick(inbox.parent, data.cursor)
    assert not again.run_requests and not again.dynamic_partitions_requests and again.skip_message
    shutil.copy(first, inbox / "copy-of-november.csv")
    os.utime(inbox / "copy-of-november.csv", (OLD, OLD))
    again = _tick(inbox.parent, again.cursor)
    assert not again.run_requests and not again.dynamic_partitions_requests

    # Two new files, one still being written (too recent): only the settled one fires.
    second = _drop(inbox, "2026-11-08.parquet", "PAR1 pretend parquet bytes")
    _drop(inbox, "2026-11-09.csv", "user_id,item_id,timestamp\nu3,i3,3\n", mtime=time.time())
    data = _tick(inbox.parent, again.cursor)
    second_digest = hashlib.sha256(second.read_bytes()).hexdigest()
    assert [r.run_key for r in data.run_requests] == [second_digest]
    assert [list(r.partition_keys) for r in data.dynamic_partitions_requests] == [[second_digest]]
    assert len(json.loads(data.cursor)["seen"]) == 2
    assert first.read_text() == "user_id,item_id,timestamp\nu1,i1,1\n"  # the user's files are only read


def test_sensor_hashes_a_file_only_when_it_changes(inbox, _tick, monkeypatch):
    from mm_pipeline.defs import lifecycle

    hashed = []
    digest_of = lifecycle.file_digest
    monkeypatch.setattr(lifecycle, "file_digest", lambda path: hashed.append(path.name) or digest_of(path))
    path = _drop(inbox, "big.csv", "user_id,item_id,timestamp\nu1,i1,1\n")
    first = _tick(inbox.parent)
    assert hashed == ["big.csv"] and len(first.run_requests) == 1
    again = _tick(inbox.parent, first.cursor)
    assert hashed == ["big.csv"] and not again.run_requests  # same size and mtime: the cached digest
    # Rewritten in place (new content, new mtime): hashed again, and it is new data.
    _drop(inbox, "big.csv", "user_id,item_id,timestamp\nu2,i2,2\n", mtime=OLD + 60)
    changed = _tick(inbox.parent, again.cursor)
    assert hashed == ["big.csv", "big.csv"]
    assert [r.run_key for r in changed.run_requests] == [hashlib.sha256(path.read_bytes()).hexdigest()]


def test_sensor_merges_the_run_config_file_into_its_requests(inbox, _tick, tmp_path, monkeypatch):
    config = tmp_path / "fast.yaml"
    config.write_text(
        "ops:\n  mm_gcn_model: {config: {epochs: 2}}\n  inbox_interactions: {config: {file: overridden.csv}}\n"
    )
    monkeypatch.setenv("MM_PIPELINE_RUN_CONFIG", str(config))
    path = _drop(inbox, "new.csv", "user_id,item_id,timestamp\nu1,i1,1\n")
    (request,) = _tick(inbox.parent).run_requests
    assert request.run_config == {
        "ops": {"mm_gcn_model": {"config": {"epochs": 2}}, "inbox_interactions": {"config": {"file": str(path)}}}
    }


def test_sensor_reads_a_fresh_file_once_settled_and_recovers_from_a_bad_cursor(inbox, _tick, monkeypatch):
    monkeypatch.setenv("MM_PIPELINE_INBOX_SETTLE_S", "0")
    _drop(inbox, "a.csv", "x\n1\n", mtime=time.time())
    assert len(_tick(inbox.parent, "not json").run_requests) == 1  # unreadable cursor: start over
    monkeypatch.setenv("MM_PIPELINE_INBOX", str(inbox.parent / "elsewhere"))
    assert "elsewhere" in _tick(inbox.parent).skip_message


# ------------------------------------------------------------------------- promote_model / rollback
@pytest.fixture
def registry(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    resource = MlflowResource(tracking_uri=uri, home=str(tmp_path))
    client = resource.client()
    client.create_registered_model(REGISTERED_MODEL_NAME)
    for _ in range(3):  # versions 1..3 (no artifacts needed to move aliases)
        client.create_model_version(REGISTERED_MODEL_NAME, source=(tmp_path / "model").as_uri())
    yield client, resource
    mlflow.set_tracking_uri(None)


def _promote(resource, **config):
    return promote_model_job.execute_in_process(
        run_config={"ops": {"set_champion_alias": {"config": config}}},
        resources={"mlflow_tracking": resource},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def _champion(client):
    return str(client.get_model_version_by_alias(REGISTERED_MODEL_NAME, "champion").version)


def test_promote_model_sets_and_rolls_back_the_champion(registry):
    client, resource = registry
    for version in (1, 3, 2):
        assert _promote(resource, version=version).success
    assert _champion(client) == "2" and champion_history(client, REGISTERED_MODEL_NAME) == ["1", "3", "2"]
    assert client.get_model_version(REGISTERED_MODEL_NAME, "2").tags["mm_pipeline.champion.action"] == "manual"

    result = _promote(resource, rollback=True)
    assert result.success and _champion(client) == "3"
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert event.step_output_data.metadata["champion_before"].value == "2"
    assert client.get_model_version(REGISTERED_MODEL_NAME, "3").tags["mm_pipeline.champion.action"] == "rollback"
    assert _promote(resource, rollback=True).success and _champion(client) == "1"
    assert client.get_registered_model(REGISTERED_MODEL_NAME).tags[TAG_CHAMPION_HISTORY] == "1"

    failed = _promote(resource, rollback=True)  # nothing earlier than the first champion
    assert not failed.success and "no earlier champion" in str(failed.failure_data_for_node("set_champion_alias"))
    assert _champion(client) == "1"
    for bad, message in (
        ({}, "exactly one of"),
        ({"version": 2, "rollback": True}, "exactly one of"),
        ({"version": 9}, "has no version 9"),
    ):
        failed = _promote(resource, **bad)
        assert not failed.success and message in str(failed.failure_data_for_node("set_champion_alias")), bad
    assert _champion(client) == "1"


# --------------------------------------------------------------------- the lock around alias changes
def _racing_set_champion(client, uri, lock_dir, versions, monkeypatch, locked):
    """Two threads move the champion at once; reading the history is slowed down so that, unlocked,
    both read before either writes (the lost update the lock exists for)."""
    read_history = champion_module.champion_history

    def slow_history(*args):
        history = read_history(*args)
        time.sleep(0.3)
        return history

    monkeypatch.setattr(champion_module, "champion_history", slow_history)
    barrier, errors = threading.Barrier(len(versions)), []

    def promote(version):
        try:
            barrier.wait()
            lock = (
                champion_module.champion_lock(REGISTERED_MODEL_NAME, lock_dir, uri, timeout_s=30)
                if locked
                else contextlib.nullcontext()
            )
            with lock:
                champion_module.set_champion(client, REGISTERED_MODEL_NAME, version)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    monkeypatch.setattr(champion_module, "champion_history", read_history)
    return champion_history(client, REGISTERED_MODEL_NAME), errors


def test_concurrent_champion_changes_are_serialised_by_the_lock(registry, tmp_path, monkeypatch):
    client, resource = registry
    uri = resource.uri()
    champion_module.set_champion(client, REGISTERED_MODEL_NAME, 1)
    # Unlocked, two simultaneous promotions interleave: one vanishes from the history (or the store
    # refuses one of the concurrent writes), so the race the lock exists for is real ...
    history, errors = _racing_set_champion(client, uri, tmp_path / "locks", ["2", "3"], monkeypatch, locked=False)
    assert errors or len(history) < 3, history
    # ... with the lock both are recorded, one after the other, and the alias is the last one.
    champion_module.set_champion(client, REGISTERED_MODEL_NAME, 1)
    client.set_registered_model_tag(REGISTERED_MODEL_NAME, TAG_CHAMPION_HISTORY, "1")
    history, errors = _racing_set_champion(client, uri, tmp_path / "locks", ["2", "3"], monkeypatch, locked=True)
    assert not errors, errors
    assert history in (["1", "2", "3"], ["1", "3", "2"]) and _champion(client) == history[-1]
    # The SQLite store's lock file sits next to the database, whatever the caller's home.
    assert (tmp_path / ".mm_pipeline_recommender.champion.lock").exists()


def test_the_lock_excludes_other_processes_and_promote_model_waits_for_it(registry, tmp_path):
    client, resource = registry
    hold_s = 3.0
    script = (
        "import sys, time\n"
        "from mm_pipeline.registry.champion import champion_lock\n"
        "with champion_lock(sys.argv[1], sys.argv[2], sys.argv[3]):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(float(sys.argv[4]))\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, REGISTERED_MODEL_NAME, str(tmp_path / "elsewhere"), resource.uri(), str(hold_s)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="another promotion or rollback holds it"):
            with champion_module.champion_lock(REGISTERED_MODEL_NAME, tmp_path / "mine", resource.uri(), timeout_s=0.3):
                pass
        # The promote_model job takes the same lock (the file next to the SQLite store): it waits.
        result = _promote(resource, version=2)
        waited = time.monotonic() - started
        assert holder.wait(30) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert result.success and _champion(client) == "2"
    assert waited >= hold_s - 0.5, waited


def test_compare_and_set_refuses_a_champion_that_moved(registry):
    client, _ = registry
    set_champion = champion_module.set_champion
    set_champion(client, REGISTERED_MODEL_NAME, 1, expected_previous=None)
    with pytest.raises(champion_module.ChampionMovedError, match="moved from 3 to 1"):
        set_champion(client, REGISTERED_MODEL_NAME, 2, expected_previous=3)
    assert _champion(client) == "1"
    assert set_champion(client, REGISTERED_MODEL_NAME, 2, expected_previous="1").current == "2"


def _postgres_uri() -> str | None:
    uri = os.environ.get("MM_PIPELINE_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(uri, connect_args={"connect_timeout": 2}, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return uri
    except Exception:
        return None


def test_postgres_store_adds_an_advisory_lock_across_hosts(tmp_path):
    uri = _postgres_uri()
    if uri is None:
        pytest.skip("no PostgreSQL at MM_PIPELINE_TEST_POSTGRES / 127.0.0.1:5432")
    name = f"lock-test-{os.getpid()}"
    # Different lock folders stand for different machines: only the advisory lock is shared.
    with champion_module.champion_lock(name, tmp_path / "host-a", uri, timeout_s=5):
        with pytest.raises(TimeoutError, match="PostgreSQL advisory lock"):
            with champion_module.champion_lock(name, tmp_path / "host-b", uri, timeout_s=0.3):
                pass
        with champion_module.champion_lock(name + "-other-model", tmp_path / "host-b", uri, timeout_s=5):
            pass  # another registered model is not blocked
    with champion_module.champion_lock(name, tmp_path / "host-b", uri, timeout_s=5):
        pass  # released with the first holder


# ------------------------------------------------------------------------ the loop, end to end
def _fast(**overrides) -> dict:
    names = {key.to_user_string() for a in all_assets() for key in a.keys}
    config = fast_run_config(**overrides)
    return {"ops": {op: cfg for op, cfg in config["ops"].items() if op in names}}  # what materialize takes


def test_promotion_loop_promotes_rejects_a_worse_model_and_rolls_back(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MM_PIPELINE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    resources = default_resources(home=str(home), dataset="builtin:tiny", tracking_uri=uri)
    instance = dg.DagsterInstance.ephemeral()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        first = dg.materialize(all_assets(), run_config=_fast(), instance=instance, resources=resources)
        assert first.success
        assert first.output_for_node("model_promotion")["decision"] == "promoted"
        assert _champion(client) == "1"

        # Ship a deliberately worse model: the selection may only pick the popularity baseline this time
        # (everything downstream of the selection runs again).
        worse = _fast(selected_model={"config": {"candidates": ["popularity"]}})
        downstream = dg.AssetSelection.assets("selected_model").downstream()
        names = {key.to_user_string() for key in downstream.resolve(all_assets())}
        second = dg.materialize(
            all_assets(),
            selection=downstream,
            instance=instance,
            resources=resources,
            run_config={"ops": {k: v for k, v in worse["ops"].items() if k in names}},
        )
        assert second.success
        promotion = second.output_for_node("model_promotion")
        assert promotion["challenger_version"] == "2" and promotion["champion_before"] == "1"
        assert promotion["decision"] == "rejected", promotion["reason"]
        assert promotion["challenger_metrics"]["ndcg@20"] < promotion["champion_metrics"]["ndcg@20"]
        # The champion was re-scored now, on the same split: the same numbers as in run 1.
        assert promotion["champion_metrics"]["ndcg@20"] == pytest.approx(
            first.output_for_node("model_promotion")["challenger_metrics"]["ndcg@20"], abs=1e-12
        )
        assert _champion(client) == "1"
        tags = client.get_model_version(REGISTERED_MODEL_NAME, "2").tags
        assert tags["mm_pipeline.promotion.decision"] == "rejected"
        assert tags["mm_pipeline.promotion.compared_with"] == "1"
        assert float(tags["mm_pipeline.promotion.gate_delta"]) < 0

        # Compare-and-set: while model_promotion re-scores (here: v2 made to look better), an operator
        # moves the champion by hand. The asset must not overwrite that with a decision taken against v1.
        from mm_pipeline.registry import served

        rescore = served.score_served_model

        def better_while_champion_moves(model, data, user_ids, item_ids, k=20, name="served"):
            metrics = rescore(model, data, user_ids, item_ids, k=k, name=name)
            if name == "v2":
                with champion_module.champion_lock(REGISTERED_MODEL_NAME, home / "locks", uri, timeout_s=30):
                    champion_module.set_champion(client, REGISTERED_MODEL_NAME, 2)  # the "operator"
                metrics = {m: v + 1.0 for m, v in metrics.items()}  # better on every metric
            return metrics

        monkeypatch.setattr(served, "score_served_model", better_while_champion_moves)
        third = dg.materialize(all_assets(), selection=["model_promotion"], instance=instance, resources=resources)
        monkeypatch.setattr(served, "score_served_model", rescore)
        assert third.success
        stale = third.output_for_node("model_promotion")
        assert stale["decision"] == "stale" and not stale["promote"], stale["reason"]
        assert "moved from 1 to 2" in stale["reason"] and stale["champion_after"] == "2"
        assert client.get_model_version(REGISTERED_MODEL_NAME, "2").tags["mm_pipeline.promotion.decision"] == "stale"
        assert _champion(client) == "2" and champion_history(client, REGISTERED_MODEL_NAME) == ["1", "2"]

        # An operator (re)sets v2, then rolls back: v1 serves again.
        mlflow_resource = resources["mlflow_tracking"]
        assert _promote(mlflow_resource, version=2).success and _champion(client) == "2"
        assert _promote(mlflow_resource, rollback=True).success and _champion(client) == "1"
        assert champion_history(client, REGISTERED_MODEL_NAME) == ["1"]
    finally:
        mlflow.set_tracking_uri(None)

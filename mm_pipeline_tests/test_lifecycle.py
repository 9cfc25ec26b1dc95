"""Model lifecycle: retraining schedule, new-interactions sensor, promote/rollback job, and the
promotion loop end to end on the tiny built-in dataset."""

import hashlib
import json
import os
import shutil
import time

import dagster as dg
from fast_config import fast_run_config
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
from mm_pipeline.registry.champion import TAG_CHAMPION_HISTORY, champion_history
from mm_pipeline.settings import REGISTERED_MODEL_NAME

OLD = time.time() - 3600  # an mtime long past the inbox settle time


def test_definitions_expose_the_lifecycle():
    from mm_pipeline.definitions import defs

    assert defs.resolve_job_def("promote_model") is not None
    assert defs.resolve_schedule_def("retrain_schedule").job_name == "full_pipeline"
    sensor = defs.resolve_sensor_def("new_interactions_sensor")
    assert sensor.job_name == "full_pipeline" and sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert "model_promotion" in {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}


# --------------------------------------------------------------------------------------- schedule
def test_schedule_defaults_to_weekly_and_stopped(monkeypatch):
    assert retrain_schedule.job_name == "full_pipeline"
    assert retrain_schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    monkeypatch.delenv("MM_PIPELINE_RETRAIN_CRON", raising=False)
    schedule = build_retrain_schedule()
    assert schedule.cron_schedule == DEFAULT_RETRAIN_CRON == "0 3 * * 1"
    data = schedule.evaluate_tick(dg.build_schedule_context())
    (request,) = data.run_requests
    assert request.tags["mm_pipeline.trigger"] == "retrain_schedule"


def test_schedule_cron_from_environment(monkeypatch):
    monkeypatch.setenv("MM_PIPELINE_RETRAIN_CRON", "30 1 * * *")
    assert build_retrain_schedule().cron_schedule == "30 1 * * *"
    monkeypatch.setenv("MM_PIPELINE_RETRAIN_CRON", "every monday")
    with pytest.raises(ValueError, match="MM_PIPELINE_RETRAIN_CRON"):
        build_retrain_schedule()


# ----------------------------------------------------------------------------------------- sensor
@pytest.fixture
def inbox(tmp_path, monkeypatch):
    monkeypatch.delenv("MM_PIPELINE_INBOX", raising=False)
    monkeypatch.delenv("MM_PIPELINE_INBOX_SETTLE_S", raising=False)
    folder = tmp_path / "home" / "inbox"
    folder.mkdir(parents=True)
    return folder


def _tick(home, cursor=None):
    context = dg.build_sensor_context(cursor=cursor, resources={"pipeline": PipelineResource(home=str(home))})
    return new_interactions_sensor.evaluate_tick(context)


def _drop(folder, name, content, mtime=OLD):
    path = folder / name
    path.write_text(content)
    os.utime(path, (mtime, mtime))
    return path


def test_sensor_skips_an_empty_or_missing_inbox(inbox):
    data = _tick(inbox.parent)
    assert not data.run_requests and "no new interaction file" in data.skip_message
    shutil.rmtree(inbox)
    data = _tick(inbox.parent)
    assert not data.run_requests and "no inbox folder" in data.skip_message


def test_sensor_fires_once_per_new_content(inbox):
    first = _drop(inbox, "2026-11-01.csv", "user_id,item_id,timestamp\nu1,i1,1\n")
    _drop(inbox, "notes.txt", "not interactions")
    _drop(inbox, ".upload.csv", "user_id,item_id,timestamp\nu9,i9,9\n")  # hidden: still being published
    data = _tick(inbox.parent)
    (request,) = data.run_requests
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    assert request.run_key == digest and request.tags["mm_pipeline.inbox_sha256"] == digest
    assert request.tags["mm_pipeline.trigger"] == "new_interactions_sensor"
    assert json.loads(data.cursor)["seen"] == [digest]

    # The same tick again, and the same bytes under another name: nothing new.
    again = _tick(inbox.parent, data.cursor)
    assert not again.run_requests and again.skip_message
    shutil.copy(first, inbox / "copy-of-november.csv")
    os.utime(inbox / "copy-of-november.csv", (OLD, OLD))
    again = _tick(inbox.parent, again.cursor)
    assert not again.run_requests

    # Two new files, one still being written (too recent): only the settled one fires.
    second = _drop(inbox, "2026-11-08.parquet", "PAR1 pretend parquet bytes")
    _drop(inbox, "2026-11-09.csv", "user_id,item_id,timestamp\nu3,i3,3\n", mtime=time.time())
    data = _tick(inbox.parent, again.cursor)
    assert [r.run_key for r in data.run_requests] == [hashlib.sha256(second.read_bytes()).hexdigest()]
    assert len(json.loads(data.cursor)["seen"]) == 2


def test_sensor_reads_a_fresh_file_once_settled_and_recovers_from_a_bad_cursor(inbox, monkeypatch):
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
        resources={"mlflow_tracking": resource}, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)


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
    for bad, message in (({}, "exactly one of"), ({"version": 2, "rollback": True}, "exactly one of"),
                         ({"version": 9}, "has no version 9")):
        failed = _promote(resource, **bad)
        assert not failed.success and message in str(failed.failure_data_for_node("set_champion_alias")), bad
    assert _champion(client) == "1"


# ------------------------------------------------------------------------ the loop, end to end
def _fast(**overrides) -> dict:
    return fast_run_config(**overrides)


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

        # Retrain only the primary model, deliberately badly, and everything downstream of it.
        worse = _fast(mm_gcn_model={"config": {"epochs": 1, "lr": 1e-7, "patience": 1}})
        downstream = dg.AssetSelection.assets("mm_gcn_model").downstream()
        names = {key.to_user_string() for key in downstream.resolve(all_assets())}
        second = dg.materialize(all_assets(), selection=downstream, instance=instance, resources=resources,
                                run_config={"ops": {k: v for k, v in worse["ops"].items() if k in names}})
        assert second.success
        promotion = second.output_for_node("model_promotion")
        assert promotion["challenger_version"] == "2" and promotion["champion_before"] == "1"
        assert promotion["decision"] == "rejected", promotion["reason"]
        assert promotion["challenger_metrics"]["ndcg@20"] < promotion["champion_metrics"]["ndcg@20"]
        # The champion was re-scored now, on the same split: the same numbers as in run 1.
        assert promotion["champion_metrics"]["ndcg@20"] == pytest.approx(
            first.output_for_node("model_promotion")["challenger_metrics"]["ndcg@20"], abs=1e-12)
        assert _champion(client) == "1"
        tags = client.get_model_version(REGISTERED_MODEL_NAME, "2").tags
        assert tags["mm_pipeline.promotion.decision"] == "rejected"
        assert tags["mm_pipeline.promotion.compared_with"] == "1"
        assert float(tags["mm_pipeline.promotion.gate_delta"]) < 0

        # An operator forces v2 anyway, then rolls back: v1 serves again.
        mlflow_resource = resources["mlflow_tracking"]
        assert _promote(mlflow_resource, version=2).success and _champion(client) == "2"
        assert _promote(mlflow_resource, rollback=True).success and _champion(client) == "1"
        assert champion_history(client, REGISTERED_MODEL_NAME) == ["1"]
    finally:
        mlflow.set_tracking_uri(None)

"""Incremental runs on the tiny dataset (a folder copy of it, so a source file can be edited): every asset
carries a content-hash data version, a second run with nothing changed materializes nothing, a changed run
config or source file recomputes exactly what is downstream of it, and an unchanged model is not
registered again."""

import json
import shutil

import dagster as dg
import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mm_pipeline.datasets.sources import resolve_source, source_fingerprint
from mm_pipeline.defs.assets.inbox import inbox_interactions
from mm_pipeline.defs.assets.raw import MediaConfig
from mm_pipeline.defs.build import all_assets, default_resources, full_pipeline_job
from mm_pipeline.defs.checks import all_asset_checks
from mm_pipeline.defs.cutoff import ALWAYS_COMPUTED, REUSE_OFF, REUSE_TAG
from mm_pipeline.defs.incremental import (
    Plan,
    expected_source_versions,
    op_config_entry,
    plan_run,
    planned_pipeline,
    stale_status_resolver,
    stored_in,
)
from mm_pipeline.defs.io_manager import storage_base, value_digest
from mm_pipeline.defs.lifecycle import RUN_CONFIG_ENV, build_retrain_schedule
from mm_pipeline.settings import REGISTERED_MODEL_NAME
from mm_pipeline.storage import bundle_digest, load_bundle

from fast_config import FASTER_OPS, fast_run_config

JOB = "full_pipeline"
K = dg.AssetKey
FAST = fast_run_config(FASTER_OPS)


class Project:
    """A project home with a persistent Dagster instance, the pipeline on a folder copy of builtin:tiny."""

    def __init__(self, root):
        self.home, self.shop = root / "home", root / "shop"
        shutil.copytree(resolve_source("builtin:tiny", root / "generated").root, self.shop)
        self.uri = f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"
        self.spec = f"folder:{self.shop}"
        self.resources = default_resources(home=str(self.home), dataset=self.spec, tracking_uri=self.uri)
        self.defs = dg.Definitions(
            assets=[*all_assets(), inbox_interactions],
            asset_checks=all_asset_checks(),
            jobs=[full_pipeline_job],
            resources=self.resources,
        )
        (root / "dagster").mkdir()
        self.config = FAST  # the run config of the latest run (what "nothing changed" means)
        self.instance = dg.DagsterInstance.local_temp(
            str(root / "dagster"), overrides={"telemetry": {"enabled": False}}
        )

    def plan(self, run_config=None) -> Plan:
        run_config = self.config if run_config is None else run_config
        pipeline = planned_pipeline(run_config, self.resources["pipeline"])
        stored = stored_in(storage_base(str(self.home / "assets")))
        return plan_run(self.defs, JOB, self.instance, run_config, stored, expected_source_versions(pipeline))

    def run(self, run_config=None, selection=None, tags=None):
        run_config = self.config if run_config is None else run_config
        result = self.defs.resolve_job_def(JOB).execute_in_process(
            run_config=run_config, instance=self.instance, asset_selection=selection, tags=tags
        )
        assert result.success
        return result

    def data_version(self, name: str) -> str:
        event = self.instance.get_latest_materialization_event(K(name))
        return event.asset_materialization.tags["dagster/data_version"]

    def stored(self, name: str) -> dict:
        return load_bundle(self.home / "assets" / name)

    def metrics(self) -> dict:
        return json.loads((self.home / "reports" / "latest" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("incremental")
    mp.setenv("MM_PIPELINE_HOME", str(root / "home"))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MM_PIPELINE_ITEM_SHARDS", raising=False)
    project = Project(root)
    plan = project.plan()
    assert set(plan.reasons.values()) == {"never materialized"} and not plan.up_to_date
    project.first = project.run(selection=list(plan.to_materialize))
    yield project
    project.instance.dispose()
    mp.undo()
    mlflow.set_tracking_uri(None)


def materialized(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def test_every_asset_carries_a_content_hash_data_version(project):
    job_keys = {k.to_user_string() for k in project.defs.resolve_job_def(JOB).asset_layer.executable_asset_keys}
    assert materialized(project.first) == job_keys and len(job_keys) == 32
    # A stored value's data version is the hash of what was stored; the source's is its fingerprint.
    stored = project.stored("raw_items")
    assert project.data_version("raw_items") == bundle_digest(stored)
    assert project.data_version("raw_items") == value_digest(project.first.asset_value("raw_items"))
    assert project.data_version("interaction_split") == bundle_digest(project.stored("interaction_split"))
    source = resolve_source(project.spec, project.home / "data")
    assert project.data_version("source_dataset") == source_fingerprint(project.spec, source, 0)
    resolver = stale_status_resolver(project.instance, project.defs.resolve_asset_graph())
    assert {resolver.get_status(K(name)).value for name in job_keys} == {"FRESH"}


def test_a_second_run_with_nothing_changed_materializes_nothing(project):
    plan = project.plan()
    assert plan.nothing_to_do and len(plan.up_to_date) == 32
    assert plan.summary().startswith("32 assets up to date, 0 to materialize (up to date: ")
    # --force's counterpart: any other run config than the last one (here: another dataset) is a change.
    other = project.plan({**FAST, "resources": {"pipeline": {"config": {"dataset": "builtin:tiny"}}}})
    assert other.reasons == {K("source_dataset"): "the source changed"} and len(other.to_materialize) == 32


def test_a_changed_run_config_recomputes_that_asset_and_what_is_downstream(project):
    before = project.metrics()
    client = MlflowClient(tracking_uri=project.uri, registry_uri=project.uri)
    versions = client.search_model_versions(f"name = '{REGISTERED_MODEL_NAME}'")
    changed = {**FAST, "ops": {**FAST["ops"], "compressed_model": {"config": {"latency_requests": 8}}}}
    plan = project.plan(changed)
    assert plan.reasons == {K("compressed_model"): "its run config changed"}
    downstream = [
        "compressed_model",
        "evaluation_report",
        "registered_model",
        "model_promotion",
        "batch_recommendations",
    ]
    assert [k.to_user_string() for k in plan.to_materialize] == downstream
    assert "and 4 downstream of them" in plan.why()
    result = project.run(changed, list(plan.to_materialize))
    assert materialized(result) == set(downstream)
    # The selected model did not change: no new model version, and the champion stays.
    assert len(client.search_model_versions(f"name = '{REGISTERED_MODEL_NAME}'")) == len(versions) == 1
    registered = result.output_for_node("registered_model")
    assert registered["version"] == str(versions[0].version)
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == K("registered_model")]
    assert event.materialization.metadata["reused"].value is True
    assert result.output_for_node("model_promotion")["decision"] == "unchanged"
    # The report's test metrics are those of the first run (same models, same split).
    after = project.metrics()
    for name, values in before["models"].items():
        if "[" not in name:  # compressed variants: measured again
            assert after["models"][name]["ndcg@20"] == pytest.approx(values["ndcg@20"]), name
    project.config = changed
    assert project.plan().nothing_to_do


def reuse(result) -> dict[str, bool]:
    """Each asset the run materialized through :mod:`mm_pipeline.defs.cutoff`: whether it reused its value."""
    return {
        e.asset_key.to_user_string(): e.materialization.metadata["reused"].value
        for e in result.get_asset_materialization_events()
        if "reuse" in e.materialization.metadata
    }


def test_a_change_that_leaves_a_value_as_it_was_stops_the_recomputation_below_it(project):
    """Early cutoff: a raised image-size limit that no image reaches changes raw_item_images' run config, so
    the plan runs it and everything below it; it computes the same value (same data version), and every
    asset below whose inputs are therefore unchanged reuses its stored value."""
    images_version, report_version = project.data_version("raw_item_images"), project.data_version("image_features")
    ops = project.config["ops"]
    limit = {"config": {"max_image_pixels": 2 * MediaConfig().max_image_pixels}}
    changed = {**project.config, "ops": {**ops, "raw_item_images": limit}}
    plan = project.plan(changed)
    assert plan.reasons == {K("raw_item_images"): "its run config changed"}
    result = project.run(changed, list(plan.to_materialize))
    reused = reuse(result)
    assert reused.pop("raw_item_images") is False
    assert project.data_version("raw_item_images") == images_version
    assert project.data_version("image_features") == report_version
    below = {k.to_user_string() for k in plan.to_materialize} - {"raw_item_images"} - ALWAYS_COMPUTED
    assert {"augmented_images", "image_features", "mm_gcn_model", "selected_model"} <= below
    assert reused == dict.fromkeys(below, True)
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == K("image_features")]
    why = event.materialization.metadata["reuse"].value
    assert why.startswith("inputs, code version") and event.materialization.metadata["reused_from_run"].value
    # The reused value is stored for this run too, and what the first run recorded about it is kept.
    assert project.first.asset_value("image_features").keys() == result.asset_value("image_features").keys()
    project.config = changed
    assert project.plan().nothing_to_do


def test_a_source_file_rewritten_into_the_same_tables_reuses_what_does_not_read_the_files(project):
    """The source's fingerprint is the bytes of its files: items.csv with Windows line endings is another
    source, read again, into the same tables. Only the assets that read the source's files (its direct
    children: the media, the split, the features) compute again; they compute the same values, so every
    other asset reuses its own."""
    versions = {name: project.data_version(name) for name in ("source_dataset", "raw_items", "raw_interactions")}
    path = project.shop / "items.csv"
    original = path.read_bytes()
    path.write_bytes(original.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    assert path.read_bytes() != original
    plan = project.plan()
    assert plan.reasons == {K("source_dataset"): "the source changed"}
    result = project.run(selection=list(plan.to_materialize))
    assert project.data_version("source_dataset") != versions["source_dataset"]
    assert {n: project.data_version(n) for n in ("raw_items", "raw_interactions")} == {
        n: versions[n] for n in ("raw_items", "raw_interactions")
    }
    reused = reuse(result)
    graph = project.defs.resolve_asset_graph()
    raw_source = {"source_dataset", "raw_items", "raw_interactions"}
    readers = {k.to_user_string() for k in graph.get(K("source_dataset")).child_keys} - raw_source
    assert {"interaction_split", "raw_item_images", "text_features", "image_features"} <= readers
    assert {name for name, again in reused.items() if not again} == readers - ALWAYS_COMPUTED
    assert set(reused) == set(materialized(result)) - raw_source - ALWAYS_COMPUTED
    assert {"raw_item_text", "augmented_images", "aligned_item_embeddings", "mm_gcn_model"} <= {
        name for name, again in reused.items() if again
    }


def test_a_scheduled_run_is_incremental_inside_its_steps(project, tmp_path, monkeypatch):
    """The retraining schedule requests the whole job (so does a run launched from the UI): with nothing
    changed, the raw source reads the source again and every asset below reuses its value, but for those
    that always run (report, registration, promotion, batch scores)."""
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(project.config))
    monkeypatch.setenv(RUN_CONFIG_ENV, str(config_file))
    request = build_retrain_schedule().evaluate_tick(dg.build_schedule_context()).run_requests[0]
    assert request.asset_selection is None and REUSE_TAG not in request.tags
    result = project.run(request.run_config, tags=request.tags)
    computed = {name for name, again in reuse(result).items() if not again}
    assert not computed and len(reuse(result)) == 32 - 3 - 4
    assert ALWAYS_COMPUTED & materialized(result) == {
        "evaluation_report",
        "registered_model",
        "model_promotion",
        "batch_recommendations",
    }


def test_a_run_tagged_reuse_off_computes_what_it_selects(project):
    """``--force`` (and the forget flow) tag their run ``mm_pipeline.reuse=off``."""
    result = project.run(selection=[K("raw_item_text")], tags={REUSE_TAG: REUSE_OFF})
    assert reuse(result) == {"raw_item_text": False}
    (event,) = result.get_asset_materialization_events()
    assert "reuse is off for this run" in event.materialization.metadata["reuse"].value
    assert reuse(project.run(selection=[K("raw_item_text")])) == {"raw_item_text": True}


def test_an_edited_source_file_recomputes_the_source_and_what_is_downstream(project):
    raw_interactions_version = project.data_version("raw_interactions")
    raw_items_version = project.data_version("raw_items")
    items = pd.read_csv(project.shop / "items.csv", keep_default_na=False)
    items.loc[5, "title"] = "An edited title"
    items.to_csv(project.shop / "items.csv", index=False)
    plan = project.plan()
    assert plan.reasons == {K("source_dataset"): "the source changed"} and len(plan.to_materialize) == 32

    # Materialize the source alone: only the table that changed gets a new data version, and Dagster's
    # staleness (what the UI shows) names its children.
    project.run(selection=[K("source_dataset"), K("raw_items"), K("raw_interactions")])
    assert project.data_version("raw_interactions") == raw_interactions_version
    assert project.data_version("raw_items") != raw_items_version
    plan = project.plan()
    assert plan.reasons[K("raw_item_text")] == "raw_items changed"
    assert K("raw_interactions") in plan.up_to_date and K("source_dataset") in plan.up_to_date
    assert len(plan.to_materialize) == 29  # everything below the source


def test_op_config_entry_treats_a_missing_and_an_empty_config_alike():
    assert op_config_entry({}, "a") == op_config_entry({"ops": {"a": {"config": {}}}}, "a")
    assert op_config_entry({"ops": {"a": {"config": {"x": 1}}}}, "a") != op_config_entry({}, "a")


def test_a_new_inbox_partition_makes_the_raw_source_run_again(project, tmp_path):
    """Dagster's staleness does not follow a new partition of the partitioned ``inbox_interactions`` into
    ``raw_interactions``: the plan compares the partitions it appended with those materialized now."""
    import hashlib

    from mm_pipeline.defs.assets.inbox import INBOX_ASSET_KEY, INBOX_PARTITIONS_NAME

    new = tmp_path / "2026-11-01.csv"
    new.write_text("user_id,item_id,timestamp\nu000001,i000003,1900000000\n")
    digest = hashlib.sha256(new.read_bytes()).hexdigest()
    project.instance.add_dynamic_partitions(INBOX_PARTITIONS_NAME, [digest])
    assert K("raw_interactions") not in project.plan().reasons  # registered, not materialized: not included
    result = dg.materialize(
        [inbox_interactions, *all_assets()],
        selection=[INBOX_ASSET_KEY],
        partition_key=digest,
        instance=project.instance,
        resources=project.resources,
        run_config={"ops": {"inbox_interactions": {"config": {"file": str(new)}}}},
    )
    assert result.success and project.data_version("inbox_interactions") == digest
    plan = project.plan()
    assert plan.reasons[K("raw_interactions")] == "the inbox partitions changed"
    assert {K("source_dataset"), K("raw_items"), K("raw_interactions")} <= set(plan.to_materialize)


def test_the_definitions_the_ui_and_the_daemon_load_reuse_in_every_step_they_can():
    """Runs launched from the UI, the schedule and the sensor use the same wrapped assets as the CLI; the
    wrapping keeps what Dagster shows of an asset (specs: code version, group, kinds, description) and its
    op's inputs, config and resources."""
    from mm_pipeline.defs.build import ASSET_MODULES, build_definitions
    from mm_pipeline.defs.cutoff import can_reuse, is_reusing, reusing

    defs = build_definitions()
    assets = defs.resolve_asset_graph().assets_defs
    plain = {
        a.key.to_user_string() if len(a.keys) == 1 else a.node_def.name for a in assets if a.keys and not is_reusing(a)
    }
    assert plain == {"raw_source", "inbox_interactions", "mm_gcn_hyperparameter_search", *ALWAYS_COMPUTED}
    for asset in dg.load_assets_from_modules(ASSET_MODULES):
        if not can_reuse(asset):
            continue
        wrapped = reusing(asset)
        assert list(wrapped.specs) == list(asset.specs)
        assert wrapped.node_keys_by_input_name == asset.node_keys_by_input_name
        assert wrapped.op.required_resource_keys == asset.op.required_resource_keys
        assert wrapped.op.config_schema.as_field().config_type.key == asset.op.config_schema.as_field().config_type.key
        assert {n: i.dagster_type.key for n, i in wrapped.op.ins.items()} == {
            n: i.dagster_type.key for n, i in asset.op.ins.items()
        }

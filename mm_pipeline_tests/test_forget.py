"""Forgetting a user: the forget list (keyed hashes only), the filter on every read of the training data, the
rewritten inbox copies, the forced promotion, the purge, and ``mm-pipeline forget`` end to end: afterwards no
file of the project home holds the id or its serving key, and the champion does not know the user."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sqlite3
import zipfile
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mm_pipeline.datasets.inbox import ingest_file, load_partition, redact_partition
from mm_pipeline.datasets.schema import DataError
from mm_pipeline.privacy.forget_list import (
    ForgetFilter,
    ForgetListError,
    add_to_forget_list,
    forget_filter,
    forget_hash,
    forget_list_path,
    forget_secret,
)
from mm_pipeline.registry.pyfunc import user_key

SECRET = b"a-forget-secret-of-32-bytes-0123"


# ------------------------------------------------------------------------------------ the forget list
def test_the_forget_list_holds_neither_the_id_nor_its_serving_key(tmp_path, monkeypatch):
    monkeypatch.setenv("MM_PIPELINE_FORGET_KEY_SECRET", SECRET.decode())
    monkeypatch.setenv("MM_PIPELINE_USER_KEY_SECRET", SECRET.decode())  # even with the same secret for both
    hashed = forget_hash("alice@example.com", forget_secret(tmp_path))
    assert hashed != user_key("alice@example.com", SECRET) and len(hashed) == 64
    listed, new = add_to_forget_list(tmp_path, hashed, "forget-r1", SECRET)
    again, new_again = add_to_forget_list(tmp_path, hashed, "forget-r2", SECRET)
    assert new and not new_again and len(again) == 1 and again.entries[0].request == "forget-r1"
    text = forget_list_path(tmp_path).read_text()
    assert "alice" not in text and user_key("alice@example.com", SECRET) not in text and hashed in text
    assert forget_list_path(tmp_path).stat().st_mode & 0o077 == 0  # owner only
    # Another forget secret cannot use the list: refused, never treated as empty.
    with pytest.raises(ForgetListError, match="another forget secret"):
        add_to_forget_list(tmp_path, forget_hash("bob", b"x" * 32), "forget-r3", b"x" * 32)
    monkeypatch.setenv("MM_PIPELINE_FORGET_KEY_SECRET", "y" * 32)
    with pytest.raises(ForgetListError, match="another forget secret"):
        forget_filter(tmp_path)
    monkeypatch.delenv("MM_PIPELINE_FORGET_KEY_SECRET")
    with pytest.raises(ForgetListError, match="no forget secret"):
        forget_filter(tmp_path)  # no env, no <home>/secrets/forget_key: cannot leave anyone out
    assert forget_filter(tmp_path / "elsewhere") is None  # no list: nothing to do, no secret needed


def test_the_filter_hashes_each_distinct_user_once(monkeypatch):
    filt = ForgetFilter([forget_hash("u2", SECRET)], SECRET)
    calls = []
    original = ForgetFilter._hash
    monkeypatch.setattr(ForgetFilter, "_hash", lambda self, u: calls.append(u) or original(self, u))
    frame = pd.DataFrame({"user_id": ["u1", "u2", "u2", "u3", "u2"] * 1000, "item_id": "i1"})
    kept, removed = filt.drop(frame)
    assert sorted(calls) == ["u1", "u2", "u3"]  # 5000 rows, 3 HMACs
    assert removed.sum() == 3000 and set(kept["user_id"]) == {"u1", "u3"} and kept.index.is_monotonic_increasing
    lines = ["u1,i1,2024", "u2,i4,later", "x::u2::5", "u22,i1,1", ""]
    assert filt.mentioned(lines).tolist() == [False, True, True, False, False]


# ----------------------------------------------------------------------------------- inbox copies
CSV = "user_id,item_id,timestamp,rating\nu1,i1,1709314533,4\nforget-me,i2,1709314600,5\nu2,i3,1709314700,3\n"


def test_stored_inbox_copies_are_rewritten_without_forgotten_users_and_still_checked(tmp_path):
    store, inbox = tmp_path / "store", tmp_path / "inbox"
    inbox.mkdir()
    path = inbox / "nov.csv"
    path.write_text(CSV)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    stored = ingest_file(path, digest, store)
    filt = ForgetFilter([forget_hash("forget-me", SECRET)], SECRET)

    assert redact_partition(store, digest, filt.forgotten, "forget-r1") == 1
    assert b"forget-me" not in stored.original.read_bytes() and path.read_text() == CSV  # the inbox file: untouched
    assert load_partition(store, digest)["user_id"].tolist() == ["u1", "u2"]
    record = json.loads((stored.folder / "redaction.json").read_text())
    assert record["original_sha256"] == digest and record["rows_removed"] == 1
    assert record["redactions"][0]["request"] == "forget-r1"
    assert redact_partition(store, digest, filt.forgotten) == 0  # done once
    again = ingest_file(None, digest, store)  # re-materializing accepts the rewritten copy
    assert again.table["user_id"].tolist() == ["u1", "u2"] and not again.newly_stored
    stored.original.write_text(CSV.replace("u1", "u9"))  # anything else changing it is still refused
    with pytest.raises(DataError, match="no longer has that SHA-256"):
        ingest_file(None, digest, store)

    # A file arriving after the user was forgotten: their rows are never stored; parquet alike.
    later = inbox / "dec.parquet"
    pd.DataFrame(
        {"user_id": ["forget-me", "forget-me"], "item_id": ["i1", "i2"], "timestamp": [1709400000, 1709400001]}
    ).to_parquet(later)
    digest = hashlib.sha256(later.read_bytes()).hexdigest()
    only_them = ingest_file(later, digest, store, forgotten=filt.forgotten)
    assert only_them.forgotten_rows == 2 and len(only_them.table) == 0
    assert b"forget-me" not in only_them.original.read_bytes()
    assert len(ingest_file(None, digest, store).table) == 0  # an emptied copy is still a valid partition


# ------------------------------------------------------------------------------------- raw_interactions
def test_raw_interactions_leave_forgotten_users_out_and_refuse_a_list_they_cannot_apply(tmp_path, monkeypatch):
    from mm_pipeline.defs.assets.inbox import INBOX_PARTITIONS_NAME, inbox_interactions
    from mm_pipeline.defs.build import all_assets, default_resources

    home = tmp_path / "home"
    for name in ("MM_PIPELINE_FORGET_KEY_SECRET", "MM_PIPELINE_FORGET_KEY_SECRET_FILE", "MM_PIPELINE_INBOX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MM_PIPELINE_HOME", str(home))
    instance = dg.DagsterInstance.ephemeral()

    def materialize(selection, partition_key=None):
        return dg.materialize(
            [inbox_interactions, *all_assets()],
            selection=selection,
            partition_key=partition_key,
            instance=instance,
            raise_on_error=False,
            resources=default_resources(home=str(home), dataset="builtin:tiny"),
        )

    raw = ["source_dataset", "raw_items", "raw_interactions"]
    before = materialize(raw).asset_value("raw_interactions")
    target = before["user_id"].value_counts().index[0]
    inbox = home / "inbox"
    inbox.mkdir()
    (inbox / "a.csv").write_text(
        f"user_id,item_id,timestamp\n{target},i000001,1900000000\nu999999,i000002,1900000001\n"
    )
    digest = hashlib.sha256((inbox / "a.csv").read_bytes()).hexdigest()
    secret = forget_secret(home, create=True)
    add_to_forget_list(home, forget_hash(target, secret), "forget-r1", secret)  # listed before the file arrives
    instance.add_dynamic_partitions(INBOX_PARTITIONS_NAME, [digest])
    run = materialize(["inbox_interactions", *raw], partition_key=digest)
    assert run.success
    after = run.asset_value("raw_interactions")
    assert target not in set(after["user_id"]) and "u999999" in set(after["user_id"])
    metadata = {
        e.asset_key.to_user_string(): {k: getattr(v, "value", v) for k, v in e.materialization.metadata.items()}
        for e in run.get_asset_materialization_events()
    }
    source_rows = int((before["user_id"] == target).sum())
    assert metadata["raw_interactions"]["forgotten_rows_removed"] == source_rows  # the inbox copy never held them
    assert metadata["raw_interactions"]["forgotten_rows_removed_by_origin"] == {"source": source_rows, "inbox": 0}
    assert metadata["inbox_interactions"]["forgotten_rows_removed"] == 1
    assert target.encode() not in b"".join(
        p.read_bytes() for p in (home / "assets" / "inbox_interactions").rglob("*.*")
    )

    (home / "secrets" / "forget_key").write_text("another-secret-" + "0" * 32)  # the secret was lost
    refused = materialize(raw)
    assert not refused.success
    assert "another forget secret" in str(refused.failure_data_for_node("raw_source").error.message)


# ------------------------------------------------------------------------------------------- promotion
def test_a_forget_request_replaces_the_champion_whatever_the_comparison():
    from mm_pipeline.registry.promotion import PromotionPolicy, decide_promotion

    good = {"ndcg@20": 0.3, "coverage@20": 0.5, "cold_recall@20": 0.2}
    worse = {"ndcg@20": 0.2, "coverage@20": 0.1, "cold_recall@20": 0.1}
    support = {"enough": True, "interactions": 90, "reason": ""}
    policy = PromotionPolicy()
    assert decide_promotion(policy, "2", worse, "1", good, support).label == "rejected"
    forced = decide_promotion(policy, "2", worse, "1", good, support, forget_request="forget-r1")
    assert forced.promote and "without the gate" in forced.reason and "forget-r1" in forced.reason
    assert forced.version_tags()["forget_request"] == "forget-r1" and forced.gate_delta == pytest.approx(-0.1)
    unmeasured = decide_promotion(policy, "2", {"ndcg@20": float("nan")}, "1", good, support, forget_request="r")
    assert not unmeasured.promote and "still holds data of a forgotten user" in unmeasured.reason


# --------------------------------------------------------------------------------------------- purging
def test_purge_keeps_only_the_retrains_asset_versions(tmp_path):
    from mm_pipeline.privacy.purge import purge_asset_versions, purge_run_folders
    from mm_pipeline.storage import publish_version, save_version, stored_versions

    base = tmp_path / "assets"
    for run in ("old1", "old2", "new"):
        save_version(base / "raw_interactions", run, {"n": 1})
    publish_version(base / "raw_interactions", "new")
    save_version(base / "mm_gcn_ablations", "old1", {"n": 1})  # not rewritten by the retrain
    publish_version(base / "mm_gcn_ablations", "old1")
    save_version(base / "prefix" / "nested", "new", {"n": 1})
    publish_version(base / "prefix" / "nested", "new")
    (base / "inbox_interactions" / ("a" * 64)).mkdir(parents=True)
    for run in ("old1", "new"):
        (base / "_ops" / run).mkdir(parents=True)

    purged = purge_asset_versions(base, {"new"}.__contains__, skip={"inbox_interactions", "_ops"})
    assert purged.versions_deleted == 3 and purged.assets_deleted == ["mm_gcn_ablations"]
    assert list(stored_versions(base / "raw_interactions")) == ["new"]
    assert not (base / "mm_gcn_ablations").exists() and (base / "inbox_interactions" / ("a" * 64)).exists()
    assert list(stored_versions(base / "prefix" / "nested")) == ["new"]
    assert purge_run_folders(base / "_ops", {"new"}.__contains__) == ["old1"]


# ------------------------------------------------------------------------------------ end to end
TARGET = "zq-forget-me-4711"  # appears nowhere else: a hit is the user, not a false positive


def _needles(home: Path) -> dict[str, bytes]:
    from mm_pipeline.registry.pyfunc import read_user_key_secret

    key = user_key(TARGET, read_user_key_secret(home=home))
    return {
        "id (UTF-8)": TARGET.encode(),
        "id (UTF-16)": TARGET.encode("utf-16-le"),
        "id (UTF-32)": TARGET.encode("utf-32-le"),  # numpy strings (npz, npy)
        "serving key (UTF-8)": key.encode(),
        "serving key (UTF-32)": key.encode("utf-32-le"),
    }


def _contents(data: bytes, depth: int = 0):
    """The bytes, and what they hold once unpacked: zip members (npz), gzip, Parquet's decoded values and
    metadata (its pages may be compressed), SQLite rows (a value may span overflow pages)."""
    yield data
    if depth > 3:
        return
    if data[:2] == b"PK":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for name in archive.namelist():
                    yield from _contents(archive.read(name), depth + 1)
        except zipfile.BadZipFile:
            pass
    elif data[:2] == b"\x1f\x8b":
        yield from _contents(gzip.decompress(data), depth + 1)
    elif data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        yield repr(table.to_pylist()).encode()
        yield repr(table.schema.metadata).encode()


def _sqlite_rows(path: Path) -> bytes:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return repr([conn.execute(f'SELECT * FROM "{t}"').fetchall() for t in tables]).encode()


def _traces(home: Path) -> list[str]:
    needles = _needles(home)
    found = []
    for path in sorted(home.rglob("*")):
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        blobs = list(_contents(data))
        if data[:16] == b"SQLite format 3\x00":
            blobs.append(_sqlite_rows(path))
        found += [
            f"{path.relative_to(home)}: {what}" for what, needle in needles.items() if any(needle in b for b in blobs)
        ]
    return found


@pytest.fixture(scope="module")
def forgotten(tmp_path_factory):
    """builtin:tiny as a folder source outside the home, one of its users renamed TARGET; an inbox file (outside
    the home too) with more of TARGET's rows ingested; full_pipeline (v1 champion); then ``mm-pipeline forget``."""
    import yaml

    from mm_pipeline import cli
    from mm_pipeline.datasets.sources import resolve_source
    from mm_pipeline.defs.assets.inbox import INBOX_PARTITIONS_NAME, inbox_interactions
    from mm_pipeline.defs.build import all_assets, default_resources
    from mm_pipeline.settings import project_paths

    from fast_config import FASTER_OPS, fast_run_config

    root = tmp_path_factory.mktemp("forget")
    home, inbox = root / "home", root / "inbox"
    source = resolve_source("builtin:tiny", root / "source").root
    table = source / "interactions.csv"
    inter = pd.read_csv(table, dtype=str)
    busiest = inter["user_id"].value_counts().index[0]
    inter["user_id"] = inter["user_id"].replace(busiest, TARGET)
    inter.to_csv(table, index=False)
    spec = f"folder:{source}"
    config = root / "fast.yaml"
    config.write_text(yaml.safe_dump(fast_run_config(FASTER_OPS)))
    inbox.mkdir()
    dropped = inbox / "2026-11.csv"
    dropped.write_text(
        f"user_id,item_id,timestamp\n{TARGET},i000001,1900000000\nu000007,i000002,1900000100\n"
        f"{TARGET},i000003,1900000200\n"
    )
    digest = hashlib.sha256(dropped.read_bytes()).hexdigest()

    mp = pytest.MonkeyPatch()
    mp.setenv("MM_PIPELINE_HOME", str(home))
    mp.setenv("DAGSTER_HOME", str(home / "dagster"))
    mp.setenv("MM_PIPELINE_INBOX", str(inbox))
    for name in (
        "MLFLOW_TRACKING_URI",
        "MM_PIPELINE_DATASET",
        "MM_PIPELINE_STORAGE",
        "MM_PIPELINE_USER_KEY_SECRET",
        "MM_PIPELINE_USER_KEY_SECRET_FILE",
        "MM_PIPELINE_FORGET_KEY_SECRET",
        "MM_PIPELINE_FORGET_KEY_SECRET_FILE",
    ):
        mp.delenv(name, raising=False)
    try:
        paths = project_paths().ensure()
        cli.prepare_dagster_home(paths)
        with dg.DagsterInstance.get() as instance:
            instance.add_dynamic_partitions(INBOX_PARTITIONS_NAME, [digest])
            ingested = dg.materialize(
                [inbox_interactions, *all_assets()],
                selection=["inbox_interactions"],
                partition_key=digest,
                instance=instance,
                resources=default_resources(home=str(home), dataset=spec),
            )
            assert ingested.success
        assert cli.main(["demo", "--dataset", spec, "--config", str(config)]) == 0
        before = _split(home)
        assert TARGET in before["user_id"].to_numpy() and _traces(home)  # the scan sees the user before
        checkpoints_before = [t for t in _traces(home) if t.startswith("checkpoints/")]
        code = cli.main(["forget", "--user", TARGET, "--dataset", spec, "--config", str(config)])
        yield {
            "home": home,
            "code": code,
            "before": before,
            "source_rows": int((inter["user_id"] == TARGET).sum()),
            "digest": digest,
            "spec": spec,
            "dropped": dropped,
            "mp": mp,
            "checkpoints_before": checkpoints_before,
        }
    finally:
        mp.undo()
        import mlflow

        mlflow.set_tracking_uri(None)


def _split(home: Path) -> pd.DataFrame:
    """The published interaction_split as (user_id, item_idx, timestamp, weight, split) rows."""
    from mm_pipeline.storage import load_bundle

    bundle = load_bundle(home / "assets" / "interaction_split")
    frame = bundle["table"]
    users = np.asarray(bundle["user_ids"]).astype(str)
    out = frame.assign(user_id=users[frame["user_idx"].to_numpy()]).drop(columns="user_idx")
    return out.sort_values(["user_id", "timestamp", "item_idx"]).reset_index(drop=True)


def test_forget_leaves_no_trace_of_the_id_or_its_key_in_the_home(forgotten):
    assert forgotten["code"] == 0
    traces = _traces(forgotten["home"])
    assert not traces, f"still holding the user: {traces}"
    assert forgotten["dropped"].read_text().count(TARGET) == 2  # the inbox file is the user's: never touched


def test_forget_retrains_from_scratch_and_leaves_no_checkpoint_holding_the_user(forgotten):
    from mm_pipeline.recommend.warm import load_checkpoint

    home = forgotten["home"]
    # The warm-start checkpoints of the first run held the user (its rows, keyed by its id) ...
    assert any(t.startswith("checkpoints/") and "/mm_gcn/" in t for t in forgotten["checkpoints_before"])
    # ... forget deleted them before the retrain, which trained every model from scratch and wrote new ones.
    from mm_pipeline.privacy.forget import read_audit

    (record,) = read_audit(home)
    assert record["checkpoints_deleted"] >= 4  # the trained models of full_pipeline and the aligner
    for model in ("bpr_mf", "lightgcn", "mm_gcn", "aligner"):
        (folder,) = (home / "checkpoints").glob(f"*/{model}")  # one dataset in this home
        checkpoint = load_checkpoint(folder)
        assert checkpoint is not None and TARGET not in checkpoint.user_ids
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("mm_gcn_model"))
    meta = event.asset_materialization.metadata
    assert meta["warm_start"].value is False and "forget" in meta["warm_start_reason"].value


def test_the_new_champion_does_not_know_the_user(forgotten):
    from mlflow.tracking import MlflowClient

    from mm_pipeline.privacy.forget import champion_recognises
    from mm_pipeline.registry import champion as champion_module
    from mm_pipeline.registry.pyfunc import read_user_key_secret
    from mm_pipeline.settings import REGISTERED_MODEL_NAME, mlflow_tracking_uri, project_paths

    home = forgotten["home"]
    uri = mlflow_tracking_uri(project_paths(home))
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert champion_module.alias_version(client, REGISTERED_MODEL_NAME, "champion") == "2"
    secret = read_user_key_secret(home=home)
    assert not champion_recognises(f"models:/{REGISTERED_MODEL_NAME}@champion", TARGET, secret)
    someone_else = forgotten["before"]["user_id"].iloc[0]
    assert someone_else != TARGET
    assert champion_recognises(f"models:/{REGISTERED_MODEL_NAME}@champion", someone_else, secret)  # others still are
    old = client.get_model_version(REGISTERED_MODEL_NAME, "1")
    assert old.tags[champion_module.TAG_ARTIFACTS_DELETED].startswith("forget-")
    with pytest.raises(LookupError, match="cannot serve again"):
        champion_module.rollback_champion(client, REGISTERED_MODEL_NAME)
    promotion = client.get_model_version(REGISTERED_MODEL_NAME, "2").tags
    assert promotion["mm_pipeline.promotion.forget_request"].startswith("forget-")


def test_the_users_interactions_are_gone_and_nobody_elses_changed(forgotten):
    before, after = forgotten["before"], _split(forgotten["home"])
    assert TARGET not in set(after["user_id"])
    assert int((before["user_id"] == TARGET).sum()) > 0
    pd.testing.assert_frame_equal(before[before["user_id"] != TARGET].reset_index(drop=True), after)


def test_the_audit_record_says_what_was_done(forgotten):
    from mm_pipeline.privacy.forget import read_audit

    (record,) = read_audit(forgotten["home"])
    assert record["status"] == "done" and record["request"].startswith("forget-")
    assert record["interactions_found"]["source"] == forgotten["source_rows"]
    assert record["interactions_found"]["inbox_copies"] == {forgotten["digest"]: 2}
    assert record["inbox_copies_rewritten"] == {forgotten["digest"]: 2}
    assert record["left_in_place"]["inbox_files"] == ["2026-11.csv"]
    assert record["rows_left_out_by_the_retrain"] == forgotten["source_rows"]  # the inbox copy had none left
    assert record["champion"] == {"name": "mm_pipeline_recommender", "version": "2", "decision": "promoted"}
    deleted = record["deleted"]
    assert deleted["asset_versions_deleted"] > 10 and deleted["report_runs_deleted"] == 1
    assert deleted["mlflow"]["model_versions_deleted"] == ["mm_pipeline_recommender/1"]
    assert deleted["mlflow"]["logged_models_deleted"] > 1 and deleted["mlflow"]["run_artifacts_deleted"] > 1
    assert record["verified"] == {"champion_recognises_user": False, "batch_scores_hold_user": False}
    assert (
        TARGET not in json.dumps(record)
        and record["forget_hash"] != _needles(forgotten["home"])["serving key (UTF-8)"].decode()
    )


def test_an_unknown_id_changes_nothing(forgotten, capsys):
    from mm_pipeline import cli

    home = forgotten["home"]
    listed = forget_list_path(home).read_bytes()
    audit = (home / "privacy" / "audit.jsonl").read_bytes()
    assert cli.main(["forget", "--user", "nobody-like-this", "--dataset", forgotten["spec"]]) == 1
    assert "nothing was changed" in capsys.readouterr().err
    assert forget_list_path(home).read_bytes() == listed and (home / "privacy" / "audit.jsonl").read_bytes() == audit

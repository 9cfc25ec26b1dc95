"""Inbox files as data: reading (the folder format's rules), the write-once store, appending to the
source's interactions, and the ``inbox_interactions`` partitions feeding ``raw_interactions``."""

import hashlib
import os

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from mm_pipeline.datasets.folder import load_folder
from mm_pipeline.datasets.inbox import (
    ORIGIN_COLUMN,
    append_inbox,
    file_digest,
    find_inbox_file,
    ingest_file,
    load_partition,
    read_interaction_file,
)
from mm_pipeline.datasets.schema import DataError
from mm_pipeline.defs.assets.inbox import INBOX_PARTITIONS_NAME, inbox_interactions
from mm_pipeline.defs.build import all_assets, default_resources

CSV = (
    "user_id,item_id,timestamp,rating,extra\n"
    "u000001,i000003,1709314533,4.5,x\n"
    "u999999,i000007,2024-03-02T10:00:00Z,3,y\n"
    "\n"
    "u000002,i000003,1709400000,5,z\n"
)


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------ reading
def test_inbox_file_reads_exactly_like_the_folder_formats_interactions(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "items.csv").write_text("item_id,title\ni000003,a\ni000007,b\n")
    (folder / "interactions.csv").write_text(CSV)
    inbox_file = tmp_path / "2026-11-01.csv"
    inbox_file.write_text(CSV)
    expected = load_folder(folder).interactions
    got = read_interaction_file(inbox_file)
    pd.testing.assert_frame_equal(got, expected)
    assert got["timestamp"].tolist() == [1709314533, 1709373600, 1709400000]
    assert got["weight"].dtype == np.float32 and got["weight"].tolist() == [4.5, 3.0, 5.0]

    parquet = tmp_path / "batch.parquet"
    pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "timestamp": [5, 6]}).to_parquet(parquet)
    frame = read_interaction_file(parquet)
    assert frame["weight"].tolist() == [1.0, 1.0] and frame["user_id"].tolist() == ["u1", "u2"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("user_id,item_id\nu1,i1\n", "missing required column(s) ['timestamp']"),
        ("user_id,item_id,timestamp\nu1,i1,1\nu2,i2,yesterday\n", "row 3 has timestamp 'yesterday'"),
        ("user_id,item_id,timestamp\nu1,,1\n", "line 2 has no value in column 'item_id'"),
        ("user_id,item_id,timestamp,weight\nu1,i1,1,1\nu1,i2,2,heavy\n", "line 3, column 'weight': 'heavy'"),
        ("user_id,item_id,timestamp\n", "holds no interactions"),
    ],
)
def test_a_bad_inbox_file_is_refused_with_file_and_row(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError) as error:
        read_interaction_file(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_non_utf8_and_unsupported_files_are_refused(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("user_id,item_id,timestamp\nJosé,i1,1\n".encode("latin-1"))
    with pytest.raises(DataError, match="not valid UTF-8"):
        read_interaction_file(latin)
    with pytest.raises(DataError, match=r"\.csv or \.parquet"):
        read_interaction_file(tmp_path / "notes.txt")


# ------------------------------------------------------------------------------------------ storing
def test_ingest_stores_a_write_once_copy_and_never_touches_the_inbox_file(tmp_path):
    inbox, store = tmp_path / "inbox", tmp_path / "store"
    inbox.mkdir()
    path = inbox / "nov.csv"
    path.write_text(CSV)
    os.utime(path, (1_000_000, 1_000_000))
    digest = _sha(path)
    assert find_inbox_file(inbox, digest) == path and file_digest(path) == digest

    first = ingest_file(path, digest, store)
    assert first.newly_stored and first.original.read_bytes() == path.read_bytes()
    assert first.original.parent == store / digest and len(first.table) == 3
    pd.testing.assert_frame_equal(load_partition(store, digest), first.table)
    stamp = first.original.stat().st_mtime_ns

    # Re-materializing: the copy is kept as it was, even when the inbox file is gone.
    moved = tmp_path / "elsewhere.csv"
    os.replace(path, moved)
    again = ingest_file(None, digest, store)
    assert not again.newly_stored and again.original.stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.table, first.table)
    assert moved.read_text() == CSV and moved.stat().st_mtime == 1_000_000  # only ever read

    # The file changed after the sensor saw it: refused, nothing stored for the new bytes.
    other = inbox / "dec.csv"
    other.write_text(CSV + "u000003,i000007,1709500000,2,w\n")
    with pytest.raises(DataError, match="changed since it was detected"):
        ingest_file(other, digest.replace(digest[0], "0" if digest[0] != "0" else "1", 1), store)
    # A bad file stores nothing at all.
    bad = inbox / "bad.csv"
    bad.write_text("user_id,item_id,timestamp\nu1,i1,soon\n")
    with pytest.raises(DataError, match="row 2 has timestamp 'soon'"):
        ingest_file(bad, _sha(bad), store)
    assert not (store / _sha(bad)).exists()
    with pytest.raises(DataError, match="no stored copy"):
        ingest_file(None, _sha(other), store)

    # A stored copy edited by hand is not trusted.
    first.original.write_text(CSV.replace("4.5", "1.5"))
    with pytest.raises(DataError, match="no longer has that SHA-256"):
        ingest_file(None, digest, store)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        ingest_file(None, "../../etc", store)


# ---------------------------------------------------------------------------------------- appending
def _inter(rows):
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "weight"])
    return frame.astype({"timestamp": np.int64, "weight": np.float32})


def test_append_inbox_keeps_order_marks_origin_and_counts_repeats():
    source = _inter([("u1", "i1", 10, 1.0), ("u1", "i1", 10, 1.0), ("u2", "i2", 20, 1.0)])
    same, stats = append_inbox(source, [])
    assert same is source and ORIGIN_COLUMN not in same.columns and stats.appended == 0

    a, b = "a" * 64, "b" * 64
    part_a = _inter([("u2", "i2", 20, 3.0), ("u3", "i1", 30, 1.0), ("u3", "i1", 30, 1.0)])
    part_b = _inter([("u3", "i1", 30, 1.0), ("u3", "i2", 40, 2.0)])
    combined, stats = append_inbox(source, [(a, part_a), (b, part_b)])
    # The source's own repeated row stays (the duplicates check reports it, the split keeps the first);
    # an inbox row repeating an earlier (user, item, timestamp) is the same event: left out, counted.
    assert combined[ORIGIN_COLUMN].tolist() == ["source"] * 3 + [f"inbox:{a}", f"inbox:{b}"]
    assert combined[["user_id", "item_id", "timestamp"]].values.tolist() == [
        ["u1", "i1", 10],
        ["u1", "i1", 10],
        ["u2", "i2", 20],
        ["u3", "i1", 30],
        ["u3", "i2", 40],
    ]
    assert stats.rows == {a: 3, b: 2} and stats.already_present == {a: 2, b: 1} and stats.appended == 2
    assert combined["timestamp"].dtype == np.int64 and combined["weight"].dtype == np.float32

    with pytest.raises(DataError, match="published split"):
        append_inbox(source, [(a, part_a)], split_column="x_label")


# --------------------------------------------------------------------- the partitions in Dagster
RAW = ["inbox_interactions", "source_dataset", "raw_items", "raw_interactions"]  # the last three: one step


def _materialize(instance, home, selection, partition_key=None, run_config=None):
    return dg.materialize(
        [inbox_interactions, *all_assets()],
        selection=selection,
        partition_key=partition_key,
        instance=instance,
        run_config=run_config or {},
        raise_on_error=False,
        resources=default_resources(home=str(home), dataset="builtin:tiny"),
    )


def _metadata(result, key):
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == key]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_inbox_partitions_feed_raw_interactions(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MM_PIPELINE_HOME", str(home))
    monkeypatch.delenv("MM_PIPELINE_INBOX", raising=False)
    instance = dg.DagsterInstance.ephemeral()

    # No partition (a fresh install): raw_interactions is the source, unchanged.
    fresh = _materialize(instance, home, RAW[1:])
    assert fresh.success
    source = fresh.asset_value("raw_interactions")
    assert ORIGIN_COLUMN not in source.columns and _metadata(fresh, "raw_interactions")["inbox_partitions"] == 0

    inbox = home / "inbox"
    inbox.mkdir()
    new = inbox / "2026-11-01.csv"
    new.write_text(
        "user_id,item_id,timestamp\n"
        "u000001,i000003,1900000000\n"
        "u777777,i000005,1900000100\n"
        f"{source.user_id[0]},{source.item_id[0]},{source.timestamp[0]}\n"
    )  # already in the source
    digest = _sha(new)
    instance.add_dynamic_partitions(INBOX_PARTITIONS_NAME, [digest])
    run = _materialize(
        instance,
        home,
        RAW,
        partition_key=digest,
        run_config={"ops": {"inbox_interactions": {"config": {"file": str(new)}}}},
    )
    assert run.success
    inter = run.asset_value("raw_interactions")
    assert len(inter) == len(source) + 2
    pd.testing.assert_frame_equal(inter.iloc[: len(source)].drop(columns=ORIGIN_COLUMN), source)
    added = inter[inter[ORIGIN_COLUMN] == f"inbox:{digest}"]
    assert added[["user_id", "item_id", "timestamp"]].values.tolist() == [
        ["u000001", "i000003", 1900000000],
        ["u777777", "i000005", 1900000100],
    ]
    meta = _metadata(run, "raw_interactions")
    assert meta["inbox_partitions"] == 1 and meta["inbox_digests"] == [digest]
    assert meta["inbox_rows_appended"] == 2 and meta["inbox_rows_already_present"] == 1
    inbox_meta = _metadata(run, "inbox_interactions")
    assert inbox_meta["sha256"] == digest and inbox_meta["interactions"] == 3 and inbox_meta["newly_stored"]

    # A bad file: its partition fails naming the file and row; the rest keeps working without it.
    bad = inbox / "2026-11-08.csv"
    bad.write_text("user_id,item_id,timestamp\nu000001,i000004,1900000200\nu000002,i000004,next week\n")
    bad_digest = _sha(bad)
    instance.add_dynamic_partitions(INBOX_PARTITIONS_NAME, [bad_digest])
    failed = _materialize(instance, home, RAW, partition_key=bad_digest)  # no file in config: found by digest
    assert not failed.success
    message = str(failed.failure_data_for_node("inbox_interactions").error.message)
    assert str(bad) in message and "row 3 has timestamp 'next week'" in message
    assert bad_digest not in instance.get_materialized_partitions(dg.AssetKey("inbox_interactions"))

    later = _materialize(instance, home, RAW[1:])  # an unpartitioned run (full_pipeline, the schedule)
    assert later.success
    meta = _metadata(later, "raw_interactions")
    assert meta["inbox_digests"] == [digest] and meta["inbox_partitions_not_included"] == [bad_digest]
    assert len(later.asset_value("raw_interactions")) == len(source) + 2
    assert new.exists() and bad.exists()  # the user's inbox files stay where they were

    # Withdrawing a file's data: delete its partition; the next run leaves it out.
    instance.delete_dynamic_partition(INBOX_PARTITIONS_NAME, digest)
    withdrawn = _materialize(instance, home, RAW[1:])
    assert withdrawn.success
    meta = _metadata(withdrawn, "raw_interactions")
    assert meta["inbox_digests"] == [] and meta["inbox_partitions_not_included"] == [bad_digest]
    pd.testing.assert_frame_equal(withdrawn.asset_value("raw_interactions"), source)  # as before any file

import os

import numpy as np
import pandas as pd
import pytest
import torch

from mm_pipeline.storage import load_bundle, save_bundle


def test_bundle_round_trip(tmp_path):
    bundle = {
        "table": pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}),
        "array": np.arange(6).reshape(2, 3),
        "tensor": torch.ones(2, 2),
        "state": {"w": torch.zeros(3), "b.x": np.ones(1)},
        "ids": np.array(["u1", "u2"]),
        "meta": {"k": 1, "names": ["a"]},
        "n": 3,
    }
    path = save_bundle(tmp_path / "asset", bundle)
    out = load_bundle(path)
    pd.testing.assert_frame_equal(out["table"], bundle["table"])
    np.testing.assert_array_equal(out["array"], bundle["array"])
    np.testing.assert_array_equal(out["tensor"], np.ones((2, 2)))
    assert set(out["state"]) == {"w", "b.x"} and out["ids"].tolist() == ["u1", "u2"]
    assert out["meta"] == {"k": 1, "names": ["a"]} and out["n"] == 3


def test_a_bundle_read_by_fields_loads_only_those(tmp_path):
    import dagster as dg

    from mm_pipeline.defs.io_manager import BundleIOManager, lazy_input
    from mm_pipeline.storage import StoredBundle

    bundle = {"table": pd.DataFrame({"a": [1]}), "weights": np.ones((3, 3)), "state": {"w": np.zeros(2)}, "name": "m"}
    path = save_bundle(tmp_path / "asset", bundle)
    assert load_bundle(path, fields=["name", "table"]).keys() == {"name", "table"}
    assert load_bundle(path, fields=["state", "missing"]).keys() == {"state"}
    manager = BundleIOManager(base_dir=str(tmp_path)).create_io_manager(None)
    key = dg.AssetKey("selected_model")
    manager.handle_output(dg.build_output_context(asset_key=key, run_id="run_a"), bundle)
    context = dg.build_input_context(
        asset_key=key,
        definition_metadata=lazy_input().metadata,
        upstream_output=dg.build_output_context(asset_key=key, run_id="run_a"),
    )
    loaded = manager.load_input(context)  # what a report reads of selected_model: the values, not the arrays
    assert isinstance(loaded, StoredBundle) and loaded["name"] == "m" and "weights" not in loaded._loaded


def test_a_stored_bundle_reads_its_arrays_when_looked_up_and_keeps_none(tmp_path, monkeypatch):
    from mm_pipeline import storage
    from mm_pipeline.storage import StoredBundle

    bundle = {"table": pd.DataFrame({"a": [1]}), "weights": np.arange(9.0).reshape(3, 3), "state": {"w": np.zeros(2)}}
    path = save_bundle(tmp_path / "asset", {**bundle, "name": "m"})
    reads = []
    read_array = storage._read_array
    monkeypatch.setattr(storage, "_read_array", lambda folder, key: reads.append(key) or read_array(folder, key))
    lazy = StoredBundle(path)
    assert set(lazy) == {"table", "weights", "state", "name"} and len(lazy) == 4
    assert "weights" in lazy and "missing" not in lazy and lazy.get("missing") is None and not reads
    np.testing.assert_array_equal(lazy["weights"], bundle["weights"])
    np.testing.assert_array_equal(lazy["weights"], bundle["weights"])
    assert reads == ["weights", "weights"]  # read on every lookup, never kept
    pd.testing.assert_frame_equal(lazy["table"], bundle["table"]) and lazy["name"] == "m"
    np.testing.assert_array_equal(lazy["state"]["w"], np.zeros(2))


def test_failed_write_leaves_previous_version(tmp_path):
    save_bundle(tmp_path / "asset", {"n": 1})
    with pytest.raises(TypeError, match="object arrays"):
        save_bundle(tmp_path / "asset", {"n": 2, "bad": np.array([object()], dtype=object)})
    assert load_bundle(tmp_path / "asset")["n"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["asset"]  # no temporary folders left behind


def test_versions_are_published_by_a_pointer_and_read_by_run(tmp_path):
    from mm_pipeline.storage import publish_version, published_version, save_version

    slot = tmp_path / "asset"
    save_version(slot, "run_a", {"n": 1})
    assert published_version(slot) is None  # written, not yet visible to readers of the slot
    with pytest.raises(FileNotFoundError, match="not a stored bundle"):
        load_bundle(slot)
    publish_version(slot, "run_a")
    save_version(slot, "run_b", {"n": 2})  # another run, still writing: readers keep seeing run_a
    assert load_bundle(slot)["n"] == 1 and load_bundle(slot, version="run_b")["n"] == 2
    publish_version(slot, "run_b")
    assert load_bundle(slot)["n"] == 2 and load_bundle(slot, version="run_a")["n"] == 1
    with pytest.raises(FileNotFoundError, match="pruned"):
        load_bundle(slot, version="run_c")
    with pytest.raises(ValueError, match="plain name"):
        save_version(slot, "../escape", {"n": 3})


def test_prune_keeps_the_newest_the_published_and_the_ones_in_use(tmp_path):
    from mm_pipeline.storage import prune_versions, publish_version, save_version, stored_versions

    slot = tmp_path / "asset"
    for i in range(5):
        save_version(slot, f"v{i}", {"n": i})
    publish_version(slot, "v0")  # e.g. a re-published old version
    deleted = prune_versions(slot, keep=2, in_use=lambda version: version == "v1")
    assert sorted(deleted) == ["v2"] and sorted(stored_versions(slot)) == ["v0", "v1", "v3", "v4"]
    assert not [p for p in (slot / "versions").iterdir() if p.name.startswith(".")]  # nothing half-deleted left


def test_leftovers_of_killed_writes_are_ignored_then_cleaned_when_old(tmp_path):
    import os
    import time

    from mm_pipeline.storage import clean_leftovers, publish_version, save_version

    slot = tmp_path / "asset"
    save_version(slot, "run_a", {"n": 1})
    publish_version(slot, "run_a")
    old = slot / "versions" / f".run_b.tmp-{'a' * 32}"  # a write killed long ago
    fresh = slot / "versions" / f".run_c.tmp-{'b' * 32}"  # a write that may still be going
    for leftover in (old, fresh):
        leftover.mkdir()
        (leftover / "features.npy").write_bytes(b"half")
    os.utime(old, (time.time() - 7 * 3600,) * 2)
    assert load_bundle(slot)["n"] == 1  # readers never look at them
    assert clean_leftovers(tmp_path) == [old]
    assert fresh.exists() and not old.exists()


def test_an_object_store_uri_holds_versions_too():
    import uuid

    from mm_pipeline.storage import as_path, publish_version, published_version, save_version

    slot = as_path(f"memory://mm-test-{uuid.uuid4().hex}/asset")  # fsspec's in-memory store: no rename
    save_version(slot, "run_a", {"table": pd.DataFrame({"a": [1]}), "array": np.arange(3), "state": {"w": np.ones(2)}})
    publish_version(slot, "run_a")
    out = load_bundle(slot)
    assert published_version(slot) == "run_a" and out["array"].tolist() == [0, 1, 2]
    assert out["table"]["a"].tolist() == [1] and out["state"]["w"].tolist() == [1.0, 1.0]


def test_point_link_swaps_a_folder_link_atomically(tmp_path):
    from mm_pipeline.storage import atomic_write_text, point_link

    latest = tmp_path / "latest"
    latest.mkdir()
    (latest / "metrics.json").write_text("old layout")  # a real folder from before: replaced
    for run in ("a", "b"):
        atomic_write_text(tmp_path / "runs" / run / "metrics.json", run)
        point_link(latest, tmp_path / "runs" / run)
        assert latest.is_symlink() and (latest / "metrics.json").read_text() == run
    assert os.readlink(latest) == os.path.join("runs", "b")  # relative: the home can move
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "runs"]


def test_the_io_manager_reads_its_run_lineage_not_the_newest_writer(tmp_path):
    import dagster as dg

    from mm_pipeline.defs.io_manager import BundleIOManager
    from mm_pipeline.storage import published_version

    manager = BundleIOManager(base_dir=str(tmp_path)).create_io_manager(None)
    key = dg.AssetKey("interaction_split")
    for run_id, n in (("run_a", 1), ("run_b", 2)):  # run_b publishes while run_a is still going
        manager.handle_output(dg.build_output_context(asset_key=key, run_id=run_id), {"n": n})
    assert published_version(tmp_path / "interaction_split") == "run_b"
    own = dg.build_input_context(asset_key=key, upstream_output=dg.build_output_context(asset_key=key, run_id="run_a"))
    assert manager.load_input(own)["n"] == 1  # run_a's downstream steps read run_a's value
    stored = dg.build_input_context(asset_key=key, upstream_output=dg.build_output_context(asset_key=key))
    assert manager.load_input(stored)["n"] == 2  # an asset outside the run: the published value
    table = pd.DataFrame({"a": [1, 2]})
    manager.handle_output(dg.build_output_context(asset_key=dg.AssetKey("raw_items"), run_id="run_a"), table)
    loaded = manager.load_input(dg.build_input_context(asset_key=dg.AssetKey("raw_items")))
    pd.testing.assert_frame_equal(loaded, table)


def test_prune_run_folders_keeps_the_newest_and_those_in_use(tmp_path):
    import time

    from mm_pipeline.storage import prune_run_folders

    for i, name in enumerate(["r0", "r1", "r2", "r3"]):
        save_bundle(tmp_path / name / "step" / "result", {"n": i})
        os.utime(tmp_path / name, (time.time() - 100 + i, time.time() - 100 + i))
    assert prune_run_folders(tmp_path, keep=2, in_use=lambda run: run == "r0") == ["r1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r0", "r2", "r3"]


def test_the_io_manager_stores_typed_data_field_by_field_without_pickle(tmp_path):
    import json

    import dagster as dg

    from mm_pipeline.data.types import InteractionSplit, from_stored_fields
    from mm_pipeline.defs.io_manager import BundleIOManager

    table = pd.DataFrame(
        {
            "user_idx": [0, 0, 1],
            "item_idx": [1, 2, 0],
            "timestamp": [1, 2, 3],
            "weight": np.ones(3, np.float32),
            "split": ["train", "test", "train"],
        }
    )
    split = InteractionSplit(table, 2, 3, np.array(["u0", "u1"]), "per-user chronological split (8:1:1)")
    manager = BundleIOManager(base_dir=str(tmp_path)).create_io_manager(None)
    key = dg.AssetKey("interaction_split")
    manager.handle_output(dg.build_output_context(asset_key=key, run_id="run_a"), split)
    folder = tmp_path / "interaction_split" / "versions" / "run_a"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "table.parquet", "user_ids.npy"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["values"]["_stored_class"] == "InteractionSplit" and manifest["values"]["n_users"] == 2
    loaded = manager.load_input(dg.build_input_context(asset_key=key))
    assert isinstance(loaded, InteractionSplit) and loaded.split_method == split.split_method
    pd.testing.assert_frame_equal(loaded.table, table)
    np.testing.assert_array_equal(loaded.user_ids, split.user_ids)
    assert loaded.data.train.nnz == 2 and loaded.data.test.nnz == 1  # the sparse views, built on first use
    assert loaded.data is loaded.data
    # Only allow-listed classes are rebuilt from disk; a class that is not a stored type is refused.
    with pytest.raises(TypeError, match="not a stored data type"):
        from_stored_fields("Popen", {})
    with pytest.raises(ValueError, match="n_users"):
        InteractionSplit(table, 1, 3, np.array(["u0"]))


def test_a_runs_split_is_loaded_once_and_an_older_dict_split_still_loads(tmp_path):
    import dagster as dg

    from mm_pipeline.data.types import InteractionSplit
    from mm_pipeline.defs.io_manager import BundleIOManager

    table = pd.DataFrame(
        {
            "user_idx": [0, 1, 1],
            "item_idx": [1, 2, 0],
            "timestamp": [1, 2, 3],
            "weight": np.ones(3, np.float32),
            "split": ["train", "test", "train"],
        }
    )
    manager = BundleIOManager(base_dir=str(tmp_path)).create_io_manager(None)
    key = dg.AssetKey("interaction_split")
    split = InteractionSplit(table, 2, 3, np.array(["u0", "u1"]))
    manager.handle_output(dg.build_output_context(asset_key=key, run_id="run_a"), split)
    upstream = dg.build_output_context(asset_key=key, run_id="run_a")
    first = manager.load_input(dg.build_input_context(asset_key=key, upstream_output=upstream))
    again = manager.load_input(dg.build_input_context(asset_key=key, upstream_output=upstream))
    assert first is again and first.data is again.data  # the sparse views are built once per run and process

    # A home written before the split was typed: a plain dict with the same fields.
    legacy = {"table": table, "n_users": 2, "n_items": 3, "user_ids": np.array(["u0", "u1"]), "split_method": "x"}
    manager.handle_output(dg.build_output_context(asset_key=key, run_id="run_old"), legacy)
    loaded = manager.load_input(dg.build_input_context(asset_key=key))
    assert isinstance(loaded, InteractionSplit) and loaded.split_method == "x" and loaded.data.train.nnz == 2


def test_bundle_digest_is_the_content_of_what_is_stored(tmp_path):
    from mm_pipeline.storage import bundle_digest

    bundle = {
        "table": pd.DataFrame({"a": [1, 2], "b": ["x", None], "c": pd.Categorical(["u", "v"]), "d": [[1], [2]]}),
        "array": np.arange(6).reshape(2, 3),
        "tensor": torch.ones(2, 2),
        "state": {"w": np.zeros(3)},
        "meta": {"k": 1, "names": ["a"]},
    }
    digest = bundle_digest(bundle)
    assert len(digest) == 32 and bundle_digest(dict(reversed(list(bundle.items())))) == digest  # key order
    stored = load_bundle(save_bundle(tmp_path / "asset", {k: v for k, v in bundle.items() if k != "table"}))
    assert bundle_digest(stored) == bundle_digest({k: v for k, v in bundle.items() if k != "table"})
    edited = bundle["table"].copy()
    edited.loc[1, "b"] = "y"
    assert bundle_digest({**bundle, "table": edited}) != digest
    assert bundle_digest({**bundle, "array": np.arange(6).reshape(3, 2)}) != digest  # the shape counts
    assert bundle_digest({**bundle, "meta": {"k": 2, "names": ["a"]}}) != digest
    assert bundle_digest({**bundle, "state": {"w": np.zeros(3), "v": np.ones(1)}}) != digest


def test_bundle_digest_of_a_transposed_array_is_its_values(monkeypatch):
    """A non-contiguous array (an item-item table stored transposed) hashes block by block to the digest of
    its C-ordered copy: the same data version, without a second copy of the table."""
    from mm_pipeline import storage

    table = np.random.default_rng(0).normal(size=(300, 70)).astype(np.float32)
    expected = storage.bundle_digest({"w": np.ascontiguousarray(table.T)})
    monkeypatch.setattr(storage, "DIGEST_BLOCK_BYTES", 1000)  # many blocks
    assert storage.bundle_digest({"w": table.T}) == expected
    assert storage.bundle_digest({"w": table.T[:, ::2]}) == storage.bundle_digest({"w": table.T[:, ::2].copy()})
    assert storage.bundle_digest({"w": table}) != expected

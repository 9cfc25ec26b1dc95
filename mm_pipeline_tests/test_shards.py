"""Item shards (MM_PIPELINE_ITEM_SHARDS): the per-item stages as N shard steps and a merge step."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest

import mm_pipeline.defs.build as build
from mm_pipeline.defs.build import default_resources
from mm_pipeline.defs.shards import SHARDED_ASSETS, item_shards, item_slice, merge_shards, with_item_shards


def test_slices_and_merge_give_back_the_items_in_order():
    bundle = {
        "images": np.arange(10).reshape(5, 2),
        "present": np.array([1, 0, 1, 1, 0], bool),
        "quarantine": pd.DataFrame({"item_id": ["i2"]}),
        "sample_rate": 8000,
    }
    parts = [item_slice(bundle, lo, hi) for lo, hi in ((0, 2), (2, 5))]
    assert parts[1]["images"].shape == (3, 2) and parts[1]["sample_rate"] == 8000
    merged = merge_shards(parts)
    np.testing.assert_array_equal(merged["images"], bundle["images"])
    np.testing.assert_array_equal(merged["present"], bundle["present"])
    assert len(merged["quarantine"]) == 2  # each shard's own records, concatenated
    table = pd.DataFrame({"item_id": list("abcde")})
    assert merge_shards([item_slice(table, 0, 3), item_slice(table, 3, 5)])["item_id"].tolist() == list("abcde")


def test_shard_count_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("MM_PIPELINE_ITEM_SHARDS", raising=False)
    assert item_shards() == 1
    monkeypatch.setenv("MM_PIPELINE_ITEM_SHARDS", "0")
    with pytest.raises(ValueError, match="MM_PIPELINE_ITEM_SHARDS"):
        item_shards()


def test_two_shards_decode_and_extract_exactly_what_one_does(tmp_path):
    values, steps = {}, {}
    for count in (1, 2):
        home = tmp_path / f"shards{count}"
        assets = with_item_shards(dg.load_assets_from_modules(build.ASSET_MODULES), count)
        # raw_interactions comes along: the raw source assets are one step, materialized together.
        selection = (
            dg.AssetSelection.assets("raw_item_images", "audio_features").upstream().required_multi_asset_neighbors()
        )
        result = dg.materialize(
            assets,
            selection=selection,
            instance=dg.DagsterInstance.ephemeral(),
            resources=default_resources(
                home=str(home), dataset="builtin:tiny", tracking_uri=f"sqlite:///{home / 'mlflow.db'}"
            ),
            run_config={"ops": {"raw_item_images": {"config": {"image_size": 16}}}},
        )
        assert result.success
        values[count] = {k: result.output_for_node(k) for k in ("raw_item_images", "raw_item_audio", "audio_features")}
        steps[count] = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
    assert {
        "raw_item_images.raw_item_images_shard_1_of_2",
        "raw_item_images.raw_item_images_merge",
        "audio_features.audio_features_shard_0_of_2",
    } <= steps[2]
    assert values[2]["raw_item_images"]["images"].shape == (360, 16, 16, 3)  # the config reached every shard
    for name in values[1]:
        for key in ("images", "waves", "features", "present"):
            if key in values[1][name]:
                np.testing.assert_array_equal(values[1][name][key], values[2][name][key], err_msg=f"{name}.{key}")
    assert set(SHARDED_ASSETS) <= {k.to_user_string() for a in assets for k in a.keys}

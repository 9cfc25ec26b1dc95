import numpy as np
import pandas as pd
import pytest
import torch

from mm_pipeline.storage import load_bundle, save_bundle


def test_bundle_round_trip(tmp_path):
    bundle = {"table": pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}), "array": np.arange(6).reshape(2, 3),
              "tensor": torch.ones(2, 2), "state": {"w": torch.zeros(3), "b.x": np.ones(1)},
              "ids": np.array(["u1", "u2"]), "meta": {"k": 1, "names": ["a"]}, "n": 3}
    path = save_bundle(tmp_path / "asset", bundle)
    out = load_bundle(path)
    pd.testing.assert_frame_equal(out["table"], bundle["table"])
    np.testing.assert_array_equal(out["array"], bundle["array"])
    np.testing.assert_array_equal(out["tensor"], np.ones((2, 2)))
    assert set(out["state"]) == {"w", "b.x"} and out["ids"].tolist() == ["u1", "u2"]
    assert out["meta"] == {"k": 1, "names": ["a"]} and out["n"] == 3


def test_failed_write_leaves_previous_version(tmp_path):
    save_bundle(tmp_path / "asset", {"n": 1})
    with pytest.raises(TypeError, match="object arrays"):
        save_bundle(tmp_path / "asset", {"n": 2, "bad": np.array([object()], dtype=object)})
    assert load_bundle(tmp_path / "asset")["n"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["asset"]  # no temporary folders left behind

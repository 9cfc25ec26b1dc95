"""Data-parallel training (torchrun, gloo on 127.0.0.1) reaches the quality of one process."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from mm_pipeline.devices import resolve_device
from mm_pipeline.evaluate.split import chronological_split
from mm_pipeline.recommend.parallel import shard
from mm_pipeline.storage import save_bundle


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clustered_home(tmp_path, n_users=400, n_items=300, per_user=20, seed=0):
    """A project home with one stored ``interaction_split``: users take most items from their own cluster,
    the more popular ones more often (so both the clusters and the order within them are to be learned)."""
    rng = np.random.default_rng(seed)
    user_cluster, item_cluster = rng.integers(0, 8, n_users), rng.integers(0, 8, n_items)
    appeal = rng.pareto(1.5, n_items) + 0.05
    rows = []
    for u in range(n_users):  # test data set-up, not a training loop
        own = np.flatnonzero(item_cluster == user_cluster[u])
        chosen = rng.choice(own, min(per_user - 4, len(own)), replace=False, p=appeal[own] / appeal[own].sum())
        items = np.unique(np.concatenate([chosen, rng.integers(0, n_items, 4)]))
        rows.append(pd.DataFrame({"user_idx": u, "item_idx": items, "timestamp": rng.permutation(len(items))}))
    table = pd.concat(rows, ignore_index=True)
    table["weight"] = np.float32(1.0)
    table["split"] = chronological_split(table).to_numpy()
    save_bundle(
        tmp_path / "assets" / "interaction_split",
        {
            "table": table,
            "n_users": n_users,
            "n_items": n_items,
            "user_ids": np.array([f"user{u}" for u in range(n_users)]),
            "split_method": "chronological",
        },
    )
    return tmp_path


def _train(home, out, processes: int) -> dict:
    config = json.dumps({"dim": 32, "epochs": 8, "batch_size": 512, "patience": 8, "lr": 1e-3})
    module = ["-m", "mm_pipeline.recommend.distributed", "--home", str(home), "--model", "lightgcn"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
    launcher += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    command = [*launcher, *module] if processes > 1 else [sys.executable, *module]
    # One thread per process, as torchrun sets it: on a busy machine more threads than cores slow the
    # single process by orders of magnitude.
    done = subprocess.run(
        [*command, "--config", config, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


def test_two_processes_train_as_well_as_one(tmp_path):
    home = _clustered_home(tmp_path)
    one = _train(home, tmp_path / "one", 1)
    two = _train(home, tmp_path / "two", 2)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["device"] == two["device"] == "cpu"
    # Same batches, negatives and summed gradients: the two runs differ only by floating-point order.
    assert one["best_epoch"] > 1 and one["valid_ndcg@20"] > 0.4  # learned: the first epoch is near 0.13
    assert abs(one["valid_ndcg@20"] - two["valid_ndcg@20"]) < 0.01
    assert abs(one["test_recall@20"] - two["test_recall@20"]) < 0.02
    assert (tmp_path / "two" / "model").is_dir()


def test_shards_cover_each_batch_once():
    batch = np.arange(11)
    parts = [shard(batch, rank, 3) for rank in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == batch.tolist()
    assert [len(p) for p in parts] == [4, 4, 3]
    assert len(shard(np.arange(1), 1, 2)) == 0  # a batch smaller than the world leaves a process nothing


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")

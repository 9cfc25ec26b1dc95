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
from mm_pipeline.storage import load_bundle, save_bundle


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


def _with_content(home, seed=0):
    """Adds what ``mm_gcn`` reads to a home: aligned embeddings (two modalities that follow the item
    clusters, with noise) and the raw text and image features (audio: none)."""
    split = load_bundle(home / "assets" / "interaction_split")
    n_items = int(split["n_items"])
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, 2, 16))
    cluster = rng.integers(0, 8, n_items)
    z = centres[cluster] + 0.5 * rng.normal(size=(n_items, 2, 16))
    z = (z / np.linalg.norm(z, axis=2, keepdims=True)).astype(np.float32)
    fused = z.mean(1)
    save_bundle(
        home / "assets" / "aligned_item_embeddings",
        {
            "modalities": np.asarray(["text", "image"]),
            "modality_embeddings": z,
            "fused": (fused / np.linalg.norm(fused, axis=1, keepdims=True)).astype(np.float32),
            "weights": np.full((n_items, 2), 0.5, dtype=np.float32),
            "present": np.ones((n_items, 2), dtype=bool),
        },
    )
    for index, modality in enumerate(("text", "image")):
        save_bundle(
            home / "assets" / f"{modality}_features",
            {
                "features": z[:, index] + 0.1 * rng.normal(size=(n_items, 16)).astype(np.float32),
                "present": np.ones(n_items, dtype=bool),
            },
        )
    save_bundle(
        home / "assets" / "audio_features",
        {"features": np.zeros((n_items, 4), dtype=np.float32), "present": np.zeros(n_items, dtype=bool)},
    )
    return home


def _train(home, out, processes: int, model: str = "lightgcn", settings: dict | None = None) -> dict:
    config = json.dumps(settings or {"dim": 32, "epochs": 8, "batch_size": 512, "patience": 8, "lr": 1e-3})
    module = ["-m", "mm_pipeline.recommend.distributed", "--home", str(home), "--model", model]
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


def test_the_multimodal_gnn_trains_data_parallel_too(tmp_path):
    """mm_gcn (content tower, item graph, its own random draws per process) in two processes: the same
    quality as one, within a margin (each process draws its own cold-item masks, so the runs differ)."""
    home = _with_content(_clustered_home(tmp_path))
    settings = {"dim": 32, "hidden": 32, "epochs": 6, "batch_size": 512, "patience": 6, "lr": 5e-3}
    one = _train(home, tmp_path / "one", 1, "mm_gcn", settings)
    two = _train(home, tmp_path / "two", 2, "mm_gcn", settings)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["valid_ndcg@20"] > 0.3 and two["valid_ndcg@20"] > 0.3
    assert abs(one["valid_ndcg@20"] - two["valid_ndcg@20"]) < 0.05
    assert abs(one["test_recall@20"] - two["test_recall@20"]) < 0.05


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

"""How wall time and peak memory grow from builtin:default to builtin:large to builtin:xl, stage by stage.

    python benchmarks/scaling.py --dataset builtin:default builtin:large builtin:xl \\
        --epochs 1 --max-eval-users 50000 --out scaling.json --plot scaling.png

Per dataset, in a fresh process (so one dataset's allocations never count towards the next one's peak),
each stage is timed (wall clock) while ``pipeline_stages.MemorySampler`` samples the process's resident
memory every 50 ms; a stage's peak RSS is the highest sample (or direct reading) between its start and end.

Stages:

* ``generate``: the built-in generator's latent model (``synthetic.sample_interaction_chunks``: the same
  model as ``generate()``, drawn per combination of item attributes instead of from a dense users x items
  utility matrix), one chunk of 4,096 users at a time, each chunk written as one Parquet row group
  (int32 user and item indices, int64 timestamps) to a temporary folder. No media files.
* ``read``: the Parquet file read back in batches (``iter_batches``) into preallocated int32/int64 arrays;
  no pandas, no string ids.
* ``split``: the pipeline's split rule (``interaction_split``: per-user chronological 8:1:1, ``(timestamp,
  item)`` order, half-up rounding, users with fewer than 3 interactions all train), vectorized over the
  index arrays, then the sparse train/valid/test matrices and the normalised user-item adjacency
  (``SplitData``).
* one stage per model, fit and then evaluated (both inside the stage; ``fit_s`` and ``eval_s`` are its parts):
  ``popularity`` (most popular), ``item_knn`` (cosine item k-NN, k=100 and shrink 10 as the pipeline's
  starting point, no search; similarities computed in item chunks from the sparse training matrix and only
  each item's top k kept, so memory is O(chunk x items) + O(items x k)), ``ease`` (EASE, l2=200, no search;
  a dense items x items inverse, skipped above ``--ease-max-items`` with the reason in its row),
  ``lightgcn`` (``fit_lightgcn``) and ``mm_gcn`` (``fit_multimodal`` on seeded random content of the pipeline's
  shapes, as ``model_training.py``; no attribution): ``--epochs`` epochs each, early stopping off, batch size
  ``--batch-size``; the trainer's mandatory validation after the last epoch runs on a seeded sample of
  ``--valid-users`` validation users. Every BPR step propagates over the whole training graph, so an epoch
  costs (steps) x (graph size), quadratic in the interactions at a fixed batch size; ``--max-steps`` caps
  the steps per epoch (the positives an epoch visits are then a seeded sample of steps x batch size
  training interactions; the graph stays whole) and ``seconds_per_step`` is reported.

Evaluation: test recall@20 and NDCG@20 (``ranking.top_k`` and ``per_user_metrics_from_top_k``: every item
ranked, training items excluded, ties to the lower index) over every user with a test item, or over a
seeded sample of ``--max-eval-users`` of them (the output says which), scored in user chunks.

Output: a markdown table (wall time and peak RSS per stage and dataset, with the growth exponent
d log(time) / d log(interactions) between consecutive sizes; test recall@20 per model), the JSON report
(``--out``) and a log-log plot of wall time and peak RSS per stage against the number of interactions
(``--plot``).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_probe import describe, probe  # noqa: E402
from pipeline_stages import MemorySampler, _rss_mb  # noqa: E402

DATA_STAGES = ("generate", "read", "split")
MODELS = ("popularity", "item_knn", "ease", "lightgcn", "mm_gcn")
STAGES = DATA_STAGES + MODELS
K = 20
CHUNK_USERS = 4096  # users per generated chunk (one Parquet row group)
SCORE_CELLS = 100_000_000  # user x item scores held at once while ranking (400 MB in float32)


# ------------------------------------------------------------------------------------------ data stages
def builtin_spec(dataset: str, seed: int):
    from mm_pipeline.datasets import synthetic

    kind, _, rest = dataset.partition(":")
    if kind != "builtin":
        raise SystemExit(f"the scaling benchmark runs on built-in sizes (builtin:<size>), got {dataset!r}")
    size, _, scenario = (rest or "default").partition(":")
    return synthetic.spec_for(size, scenario or "video", seed=seed)


def generate(spec, folder: Path) -> dict:
    """Draw the interactions chunk by chunk and write each chunk as one Parquet row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mm_pipeline.datasets import synthetic

    rng = np.random.default_rng(spec.seed)
    items = synthetic._item_latents(spec, rng)
    prefs = synthetic._user_preferences(spec, rng)
    schema = pa.schema([("user", pa.int32()), ("item", pa.int32()), ("timestamp", pa.int64())])
    path = folder / "interactions.parquet"
    rows = groups = 0
    with pq.ParquetWriter(path, schema) as writer:
        for chunk in synthetic.sample_interaction_chunks(spec, items, prefs, rng, chunk_users=CHUNK_USERS):
            writer.write_table(pa.table(chunk, schema=schema))
            rows, groups = rows + len(chunk["user"]), groups + 1
    return {"path": str(path), "rows": rows, "row_groups": groups, "file_mb": path.stat().st_size / 2**20}


def read(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The interactions as int32 user, int32 item, int64 timestamp arrays, read in batches."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    n = file.metadata.num_rows
    user, item, stamp = np.empty(n, np.int32), np.empty(n, np.int32), np.empty(n, np.int64)
    at = 0
    for batch in file.iter_batches(batch_size=1 << 20, columns=["user", "item", "timestamp"]):
        m = batch.num_rows
        user[at : at + m] = batch.column(0).to_numpy()
        item[at : at + m] = batch.column(1).to_numpy()
        stamp[at : at + m] = batch.column(2).to_numpy()
        at += m
    return user, item, stamp


def _round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5 + 1e-9).astype(np.int64)


def chronological_labels(
    user: np.ndarray, item: np.ndarray, stamp: np.ndarray, valid_frac: float = 0.1, test_frac: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """``(order, label)``: the interactions sorted by (user, timestamp, item) and their split label
    (0 train, 1 valid, 2 test) in that order; the rule of ``evaluate.split.chronological_split`` (with
    ``min_train=1``) on index arrays instead of a DataFrame."""
    order = np.lexsort((item, stamp, user))
    sorted_user = user[order]
    n_per_user = np.bincount(sorted_user)
    first = np.concatenate([[0], np.cumsum(n_per_user)[:-1]])
    n = n_per_user[sorted_user]
    rank = np.arange(len(order)) - first[sorted_user]
    n_test = np.clip(np.minimum(np.maximum(1, _round_half_up(test_frac * n)), n - 1), 0, None)
    n_valid = np.clip(np.minimum(np.maximum(1, _round_half_up(valid_frac * n)), n - 1 - n_test), 0, None)
    eligible = n >= 3
    n_test, n_valid = np.where(eligible, n_test, 0), np.where(eligible, n_valid, 0)
    from_end = n - rank
    label = np.where(from_end <= n_test, 2, np.where(from_end <= n_test + n_valid, 1, 0)).astype(np.int8)
    return order, label


def split(user: np.ndarray, item: np.ndarray, stamp: np.ndarray, n_users: int, n_items: int):
    """``SplitData`` (binary train/valid/test CSR matrices and the normalised adjacency) of the split."""
    import scipy.sparse as sp

    from mm_pipeline.data.graph import bipartite_edge_index, normalized_adjacency
    from mm_pipeline.data.types import SplitData

    order, label = chronological_labels(user, item, stamp)
    users, items = user[order], item[order]
    del order
    matrices = []
    for code in (0, 1, 2):
        chosen = label == code
        rows, cols = users[chosen], items[chosen]
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n_users), out=indptr[1:])
        matrix = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), cols.astype(np.int32), indptr), shape=(n_users, n_items)
        )
        matrix.sort_indices()
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        matrices.append(matrix)
    del users, items, label
    train = matrices[0]
    coo = train.tocoo()
    adj = normalized_adjacency(bipartite_edge_index(coo.row, coo.col, n_users), n_users + n_items)
    return SplitData(n_users, n_items, train, matrices[1], matrices[2], adj)


# ------------------------------------------------------------------------------------------ evaluation
def restrict_rows(matrix, users: np.ndarray):
    """``matrix`` with every row outside ``users`` emptied."""
    import scipy.sparse as sp

    keep = np.zeros(matrix.shape[0], dtype=np.float32)
    keep[users] = 1.0
    out = sp.csr_matrix(sp.diags(keep) @ matrix)
    out.eliminate_zeros()
    return out


def sample_users(matrix, max_users: int | None, seed: int) -> np.ndarray:
    """The users with a row in ``matrix``: all of them, or a seeded sample of ``max_users`` (sorted)."""
    users = np.flatnonzero(np.diff(matrix.indptr) > 0)
    if max_users is not None and users.size > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, size=max_users, replace=False))
    return users


def scored(name: str, n_users: int, n_items: int, score):
    """An ``EmbeddingRecommender`` whose ``score(users)`` is ``score`` (for models without a dot-product
    form at this size, such as the sparse item k-NN): the project's ranking runs on it unchanged."""
    import torch

    from mm_pipeline.recommend.base import EmbeddingRecommender

    model = EmbeddingRecommender(name, torch.empty((n_users, 0)), torch.empty((n_items, 0)))
    model.score = score  # the instance attribute shadows the method
    return model


def evaluate(model, data, users: np.ndarray, truth) -> dict:
    from mm_pipeline.recommend.ranking import per_user_metrics_from_top_k, top_k

    chunk = int(max(64, min(4096, SCORE_CELLS // max(data.n_items, 1))))
    top = top_k(model, users, data.train, K, chunk_size=chunk)
    metrics = per_user_metrics_from_top_k(top, users, truth, ks=(K,), chunk_size=chunk)
    return {f"test_{m}@{K}": float(metrics[f"{m}@{K}"].mean()) for m in ("recall", "ndcg")}


# ------------------------------------------------------------------------------------------ models
def item_knn_matrix(train, k: int = 100, shrink: float = 10.0, chunk_cells: int = 50_000_000):
    r"""Cosine item k-NN weights :math:`S` (``linear.item_knn_weights``' definition: :math:`S_{ij} =
    G_{ij} / (\sqrt{G_{ii} G_{jj}} + \text{shrink})`, column :math:`j` keeping its ``k`` largest
    entries) as a sparse CSR matrix, from :math:`G = X^\top X` computed one chunk of items at a time:
    memory O(chunk x items) for the dense chunk plus O(items x k) for the result."""
    import scipy.sparse as sp
    import torch

    n_items = train.shape[1]
    k = min(k, n_items - 1)
    x = train.astype(np.float32)
    xt = x.T.tocsr()
    norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel()).astype(np.float32)
    step = max(1, chunk_cells // n_items)
    rows, cols, vals = [], [], []
    for start in range(0, n_items, step):
        stop = min(n_items, start + step)
        gram = (xt[start:stop] @ x).toarray()  # G[j, :] for the chunk's items j (G is symmetric)
        sim = torch.from_numpy(gram)
        sim /= torch.from_numpy(norms[start:stop, None] * norms[None, :] + shrink)
        local = torch.arange(stop - start)
        sim[local, start + local] = 0.0
        values, index = torch.topk(sim, k, dim=1)
        keep = values > 0
        cols.append(np.repeat(np.arange(start, stop), keep.sum(1).numpy()))
        rows.append(index[keep].numpy().astype(np.int32))
        vals.append(values[keep].numpy())
        del gram, sim
    # S[i, j]: item i is among column j's k nearest.
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_items, n_items))


def random_content(n_items: int, n_modalities: int, seed: int) -> tuple[dict, dict]:
    from model_training import random_aligned, random_raw

    return random_aligned(n_items, n_modalities, seed), random_raw(n_items, n_modalities, seed)


def fit_model(name: str, data, args, n_modalities: int):
    """The fitted model (something ``evaluate`` ranks) and notes for the report."""
    import torch

    from mm_pipeline.recommend.baselines import ease, most_popular

    if name == "popularity":
        return most_popular(data.train), {}
    if name == "item_knn":
        weights = item_knn_matrix(data.train, k=100, shrink=10.0)
        train = data.train

        def score(users):
            return torch.from_numpy((train[users.numpy()] @ weights).toarray().astype(np.float32, copy=False))

        model = scored("item_knn", data.n_users, data.n_items, score)
        return model, {"k": 100, "shrink": 10.0, "weights_nnz": int(weights.nnz)}
    if name == "ease":
        return ease(data.train, l2=200.0), {"l2": 200.0}
    from mm_pipeline.recommend.fit import MultimodalConfig, TrainConfig, fit_lightgcn, fit_multimodal

    settings = {
        "epochs": args.epochs,
        "patience": args.epochs + 1,
        "eval_every": args.epochs,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "device": "cpu",
    }
    # The trainer validates after its last epoch (early stopping is off): on a seeded sample of users.
    valid_users = sample_users(data.valid, args.valid_users, args.seed + 1)
    small = dataclasses.replace(data, valid=restrict_rows(data.valid, valid_users))
    notes: dict = {"batch_size": args.batch_size}
    if args.max_steps and data.train.nnz > args.max_steps * args.batch_size:
        # Every step still propagates over the whole training graph (data.adj); only the positives an
        # epoch visits are a seeded sample, so an epoch is max_steps steps.
        positives = subsample_entries(data.train, args.max_steps * args.batch_size, args.seed + 2)
        small = dataclasses.replace(small, train=positives)
        notes["positives_per_epoch"] = int(positives.nnz)
    if name == "lightgcn":
        model, history = fit_lightgcn(small, TrainConfig(**settings))
    else:
        aligned, raw = random_content(data.n_items, n_modalities, args.seed)
        model, history = fit_multimodal(
            small, aligned, MultimodalConfig(**settings), raw_features=raw, attribution=False
        )
    epoch_seconds = history["train_seconds"].astype(float).tolist()
    steps = -(-small.train.nnz // args.batch_size)
    notes.update(epochs=len(history), steps_per_epoch=steps, epoch_seconds=epoch_seconds)
    notes["seconds_per_step"] = float(np.median(epoch_seconds)) / steps
    return model, notes


def subsample_entries(matrix, n: int, seed: int):
    """A seeded sample of ``n`` of the stored entries of a CSR matrix, as a CSR matrix of the same shape."""
    import scipy.sparse as sp

    coo = matrix.tocoo()
    keep = np.sort(np.random.default_rng(seed).choice(coo.nnz, size=n, replace=False))
    out = sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=matrix.shape)
    out.sort_indices()
    return out


# ------------------------------------------------------------------------------------------ runner
class Stages:
    """Times stages and records their peak RSS."""

    def __init__(self, dataset: str, sampler: MemorySampler):
        self.dataset, self.sampler, self.rows = dataset, sampler, []

    def run(self, stage: str, fn, **extra):
        gc.collect()
        before, started, tick = _rss_mb(), time.time(), time.perf_counter()
        print(f"[{self.dataset}] {stage} ...", flush=True)
        out = fn()
        wall = time.perf_counter() - tick
        sampled = self.sampler.peak(started, time.time())
        peak = max([before, _rss_mb()] + ([] if math.isnan(sampled) else [sampled]))
        row = {"dataset": self.dataset, "stage": stage, "wall_s": wall, "peak_rss_mb": peak, "rss_before_mb": before}
        row.update(extra)
        if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict) and out[1].get("_row"):
            out, info = out
            row.update({k: v for k, v in info.items() if k != "_row"})
        self.rows.append(row)
        print(f"[{self.dataset}] {stage}: {wall:.1f} s, peak RSS {peak:.0f} MB", flush=True)
        return out

    def skip(self, stage: str, reason: str) -> None:
        self.rows.append(
            {"dataset": self.dataset, "stage": stage, "skipped": reason, "wall_s": None, "peak_rss_mb": None}
        )
        print(f"[{self.dataset}] {stage}: skipped ({reason})", flush=True)


def run_dataset(dataset: str, args) -> dict:
    from mm_pipeline.datasets import synthetic

    spec = builtin_spec(dataset, args.seed)
    sampler = MemorySampler()
    sampler.start()
    stages = Stages(dataset, sampler)
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="mm_scaling_") as folder:
            written = stages.run("generate", lambda: generate(spec, Path(folder)))
            arrays = [stages.run("read", lambda: read(written["path"]))]
        # Popped inside the stage: the raw arrays are freed once the split holds them.
        data = stages.run("split", lambda: split(*arrays.pop(), spec.n_users, spec.n_items))
        eval_users = sample_users(data.test, args.max_eval_users, args.seed)
        all_test_users = int((np.diff(data.test.indptr) > 0).sum())
        truth = data.test if eval_users.size == all_test_users else restrict_rows(data.test, eval_users)
        n_modalities = len(synthetic.SCENARIOS[spec.scenario])
        for name in MODELS:
            if name in args.skip:
                stages.skip(name, "--skip")
                continue
            if name == "ease" and data.n_items > args.ease_max_items:
                gib = data.n_items**2 * 4 / 2**30
                stages.skip(
                    name,
                    f"EASE inverts a dense {data.n_items:,} x {data.n_items:,} matrix ({gib:.0f} GiB per float32 "
                    f"copy, about four copies at the peak, O(items^3) time): skipped above --ease-max-items "
                    f"{args.ease_max_items:,}",
                )
                continue

            def fit_and_evaluate(name=name):
                tick = time.perf_counter()
                model, notes = fit_model(name, data, args, n_modalities)
                fit_s = time.perf_counter() - tick
                tick = time.perf_counter()
                metrics = evaluate(model, data, eval_users, truth)
                return None, {"_row": True, "fit_s": fit_s, "eval_s": time.perf_counter() - tick, **metrics, **notes}

            stages.run(name, fit_and_evaluate)
    finally:
        sampler.stop()
    samples = [m for _, m in sampler.samples]
    return {
        "dataset": dataset,
        "users": data.n_users,
        "items": data.n_items,
        "interactions": int(written["rows"]),
        "train": int(data.train.nnz),
        "valid": int(data.valid.nnz),
        "test": int(data.test.nnz),
        "parquet_row_groups": written["row_groups"],
        "parquet_mb": written["file_mb"],
        "test_users": all_test_users,
        "eval_users": int(eval_users.size),
        "evaluation": (
            f"all {all_test_users:,} test users"
            if eval_users.size == all_test_users
            else f"a seeded sample of {eval_users.size:,} of {all_test_users:,} test users"
        ),
        "total_s": time.perf_counter() - started,
        "peak_rss_mb": max(samples + [r["peak_rss_mb"] for r in stages.rows if r["peak_rss_mb"] is not None]),
        "rows": stages.rows,
    }


def settings(args) -> dict:
    import torch

    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "max_eval_users": args.max_eval_users,
        "max_steps": args.max_steps,
        "valid_users": args.valid_users,
        "ease_max_items": args.ease_max_items,
        "skip": sorted(args.skip),
        "seed": args.seed,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "split": "per-user chronological 8:1:1 (the pipeline's interaction_split rule), vectorized",
    }


def forwarded(args) -> list[str]:
    out = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    out += ["--valid-users", str(args.valid_users), "--ease-max-items", str(args.ease_max_items)]
    if args.max_eval_users is not None:
        out += ["--max-eval-users", str(args.max_eval_users)]
    if args.max_steps is not None:
        out += ["--max-steps", str(args.max_steps)]
    if args.skip:
        out += ["--skip", *args.skip]
    if args.threads:
        out += ["--threads", str(args.threads)]
    return out


def run(args) -> dict:
    results = []
    if args.in_process or len(args.dataset) == 1:
        results = [run_dataset(d, args) for d in args.dataset]
    else:
        for dataset in args.dataset:  # a fresh process each, so peaks are per dataset
            with tempfile.TemporaryDirectory(prefix="mm_scaling_run_") as tmp:
                out = Path(tmp) / "one.json"
                cmd = [sys.executable, __file__, "--dataset", dataset, "--out", str(out), "--in-process", "--quiet"]
                subprocess.run(cmd + forwarded(args), check=True)
                results.extend(json.loads(out.read_text())["datasets"])
    report = {"settings": settings(args), "datasets": results}
    report["rows"] = [row for entry in results for row in entry["rows"]]
    report["growth"] = growth(results)
    return report


def _slope(a: float | None, b: float | None, n_a: int, n_b: int) -> float | None:
    if not a or not b or n_a == n_b:
        return None
    return math.log(b / a) / math.log(n_b / n_a)


def growth(results: list[dict]) -> list[dict]:
    """Exponents d log(value) / d log(interactions) between consecutive datasets, per stage."""
    out = []
    for left, right in zip(results, results[1:]):
        by_left = {r["stage"]: r for r in left["rows"]}
        for row in right["rows"]:
            other = by_left.get(row["stage"])
            if other is None:
                continue
            out.append(
                {
                    "stage": row["stage"],
                    "from": left["dataset"],
                    "to": right["dataset"],
                    "wall_exponent": _slope(
                        other["wall_s"], row["wall_s"], left["interactions"], right["interactions"]
                    ),
                    "rss_exponent": _slope(
                        other["peak_rss_mb"], row["peak_rss_mb"], left["interactions"], right["interactions"]
                    ),
                }
            )
    return out


def _short(dataset: str) -> str:
    return dataset.split(":", 1)[-1]


def markdown(report: dict) -> str:
    results = report["datasets"]
    names = [_short(e["dataset"]) for e in results]
    exps = {(g["stage"], _short(g["to"])): g for g in report["growth"]}

    def fmt(v, digits=1):
        return "–" if v is None else f"{v:,.{digits}f}"

    lines = [
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
        "| interactions | " + " | ".join(f"{e['interactions']:,}" for e in results) + " |",
        "| users / items | " + " | ".join(f"{e['users']:,} / {e['items']:,}" for e in results) + " |",
        "| evaluated test users | " + " | ".join(f"{e['eval_users']:,}" for e in results) + " |",
        "",
        "| stage | wall s (" + " / ".join(names) + ") | time exponent | peak RSS MB (" + " / ".join(names) + ") "
        "| RSS exponent |",
        "|---|---:|---:|---:|---:|",
    ]
    skipped = []
    for stage in STAGES:
        rows = [next((r for r in e["rows"] if r["stage"] == stage), None) for e in results]
        if all(r is None for r in rows):
            continue
        walls, peaks = [], []
        for name, r in zip(names, rows):
            if r is None or r.get("skipped"):
                walls.append("skipped")
                peaks.append("–")
                if r is not None and r["skipped"] != "--skip":
                    skipped.append(f"{stage} on {name}: {r['skipped']}")
            else:
                walls.append(fmt(r["wall_s"]))
                peaks.append(fmt(r["peak_rss_mb"], 0))
        t_exp = ", ".join(fmt(exps.get((stage, n), {}).get("wall_exponent"), 2) for n in names[1:])
        m_exp = ", ".join(fmt(exps.get((stage, n), {}).get("rss_exponent"), 2) for n in names[1:])
        lines.append(f"| {stage} | {' / '.join(walls)} | {t_exp} | {' / '.join(peaks)} | {m_exp} |")
    lines.append(
        "| whole run | "
        + " / ".join(fmt(e["total_s"]) for e in results)
        + " | | "
        + " / ".join(fmt(e["peak_rss_mb"], 0) for e in results)
        + " | |"
    )
    lines += ["", f"| test recall@{K} (NDCG@{K}) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for stage in MODELS:
        cells = []
        for e in results:
            r = next((r for r in e["rows"] if r["stage"] == stage), None)
            if r is None or r.get("skipped"):
                cells.append("skipped")
            else:
                cells.append(f"{r[f'test_recall@{K}']:.4f} ({r[f'test_ndcg@{K}']:.4f})")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    if skipped:
        lines += [""] + [f"* {s}" for s in skipped]
    lines += [""] + [f"{describe(figures)} ({when})" for when, figures in report.get("machine", {}).items()]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["datasets"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=80)
    for stage in STAGES:
        points = [
            (e["interactions"], r["wall_s"], r["peak_rss_mb"])
            for e in results
            for r in e["rows"]
            if r["stage"] == stage and not r.get("skipped")
        ]
        if not points:
            continue
        n, wall, rss = zip(*points)
        axes[0].plot(n, wall, marker="o", label=stage)
        axes[1].plot(n, rss, marker="o", label=stage)
    for ax, label in zip(axes, ("wall time (s)", "peak RSS (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("interactions")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("scaling: " + " / ".join(_short(e["dataset"]) for e in results))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", nargs="+", default=["builtin:default", "builtin:large", "builtin:xl"])
    parser.add_argument("--epochs", type=int, default=1, help="training epochs of lightgcn and mm_gcn")
    parser.add_argument("--batch-size", type=int, default=4096, help="BPR batch size of lightgcn and mm_gcn")
    parser.add_argument(
        "--max-eval-users", type=int, default=None, help="evaluate a seeded sample of this many test users"
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="at most this many BPR steps per epoch: the positives are then a seeded sample of steps x batch size",
    )
    parser.add_argument("--valid-users", type=int, default=2000, help="users of the trainers' final validation")
    parser.add_argument("--ease-max-items", type=int, default=None, help="skip EASE above this many items")
    parser.add_argument("--skip", nargs="*", default=[], choices=MODELS, help="models not to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--plot", type=Path, help="write the log-log plot (PNG) here")
    parser.add_argument("--in-process", action="store_true", help="run every dataset in this process")
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--probe-scale", type=float, default=1.0, help="size of the machine probe's arrays (1: comparable figures)"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.valid_users < 1:
        parser.error("--epochs, --batch-size and --valid-users must be at least 1")
    if args.ease_max_items is None:
        from mm_pipeline.recommend.baselines import EASE_MAX_ITEMS

        args.ease_max_items = EASE_MAX_ITEMS
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    # The machine's own speed around the run (machine_probe); not in the per-dataset child processes.
    machine_before = None if args.quiet else probe(args.probe_scale)
    report = run(args)
    if machine_before is not None:
        report["machine"] = {"before": machine_before, "after": probe(args.probe_scale)}
    if not args.quiet:
        print()
        print(markdown(report))
    if args.out:
        from mm_pipeline.storage import atomic_write_text

        atomic_write_text(args.out, json.dumps(report, indent=2))
        if not args.quiet:
            print(f"\nwrote {args.out}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return report


if __name__ == "__main__":
    main()

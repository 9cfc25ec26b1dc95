"""Training cost of the primary model (mm_gcn) and LightGCN: epoch time, evaluation time, peak memory.

    python benchmarks/model_training.py --dataset builtin:default builtin:large --epochs 3 --out bench.json

Inputs, per dataset spec (the output says which was used):

* ``builtin:<size>[:scenario]``: the interactions the built-in dataset holds, drawn in memory by the same
  seeded generator (no image/audio files are written), split by the pipeline's own ``interaction_split``.
  The aligned item embeddings would need the text model, the CNN and the alignment training, so they
  are replaced by seeded random unit vectors of the shape that stage produces (one 64-d vector per
  modality, a fused 64-d vector, a presence mask), and the raw modality features the item-item graph
  is built from by seeded Gaussian ones of the feature stages' sizes (text 384, image 64, audio 120):
  the models' cost depends on those shapes only.
* ``folder:`` / ``movielens:`` / ``mmrec:`` specs: read from disk, split the same way, random content.
* ``assets:/path/to/home``: the ``interaction_split``, ``aligned_item_embeddings`` and ``*_features``
  a pipeline run stored in that project home, as they are.

Per model, ``--epochs`` epochs with early stopping off. Epoch time: the trainer's own per-epoch
``train_seconds`` (training only). Evaluation time: ``--eval-repeats`` calls of the trainer's
validation, ``ranking_metrics`` over every validation user with all items ranked and training items
excluded. Peak RSS: the highest sample of ``pipeline_stages.MemorySampler`` (every 50 ms) while the
model is built, trained and evaluated; the RSS just before is printed too, since models run one after
another in one process and memory that the allocator kept is not returned. With ``--rounds R`` the models
are benchmarked R times, in reversed order every other round, and the medians pool every round (the
per-round medians are kept too): on a shared machine a ratio of two models measured once, one after the
other, moves with the machine's drift. Medians are printed as a table and everything is written as JSON
with ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_probe import describe, probe  # noqa: E402
from pipeline_stages import MemorySampler, _rss_mb  # noqa: E402  (the sampler shared with the stage benchmark)

MODELS = ("mm_gcn", "lightgcn")
CONTENT_DIM = 64  # the aligned embedding size (align stage default)


def random_aligned(n_items: int, n_modalities: int, seed: int, dim: int = CONTENT_DIM, missing: float = 0.03) -> dict:
    """Seeded unit vectors shaped like the ``aligned_item_embeddings`` asset."""
    rng = np.random.default_rng(seed)
    present = rng.random((n_items, n_modalities)) > missing
    present[~present.any(1), 0] = True
    modality = rng.normal(size=(n_items, n_modalities, dim)).astype(np.float32)
    modality /= np.linalg.norm(modality, axis=2, keepdims=True)
    modality[~present] = 0.0
    weights = (present / present.sum(1, keepdims=True)).astype(np.float32)
    fused = (weights[:, :, None] * modality).sum(1)
    fused /= np.linalg.norm(fused, axis=1, keepdims=True)
    return {
        "modalities": np.asarray(["text", "image", "audio", "video"][:n_modalities]),
        "modality_embeddings": modality,
        "fused": fused.astype(np.float32),
        "weights": weights,
        "present": present,
    }


RAW_DIMS = {"text": 384, "image": 64, "audio": 120}  # the feature stages' output sizes on the built-in data


def random_raw(n_items: int, n_modalities: int, seed: int) -> dict:
    """Seeded stand-ins for the raw ``*_features`` the item-item graph is built from."""
    rng = np.random.default_rng(seed + 1)
    return {
        m: (rng.normal(size=(n_items, d)).astype(np.float32), rng.random(n_items) > 0.03)
        for m, d in list(RAW_DIMS.items())[:n_modalities]
    }


def builtin_tables(rest: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, int, str]:
    """Items and interactions of ``builtin:<rest>``, drawn in memory: the same draws, in the same order,
    as the first steps of ``synthetic.generate`` (latents, preferences, interactions), with its ids."""
    from mm_pipeline.datasets import synthetic

    size, _, scenario = (rest or "default").partition(":")
    spec = synthetic.spec_for(size, scenario or "video", seed=seed)
    rng = np.random.default_rng(spec.seed)
    latents = synthetic._item_latents(spec, rng)
    prefs = synthetic._user_preferences(spec, rng)
    inter = synthetic._sample_interactions(spec, latents, prefs, rng)
    item_ids = np.array([f"i{i:06d}" for i in range(spec.n_items)])
    user_ids = np.array([f"u{u:06d}" for u in range(spec.n_users)])
    items = pd.DataFrame({"item_id": item_ids})
    interactions = pd.DataFrame(
        {
            "user_id": user_ids[inter["user"].to_numpy()],
            "item_id": item_ids[inter["item"].to_numpy()],
            "timestamp": inter["timestamp"].to_numpy(np.int64),
            "weight": np.ones(len(inter), dtype=np.float32),
        }
    )
    return (
        items,
        interactions,
        len(synthetic.SCENARIOS[spec.scenario]),
        f"built-in {size} ({spec.scenario}) interactions generated in memory, seed {seed}",
    )


def build_inputs(spec: str, seed: int) -> tuple[object, dict, dict, dict]:
    """``(SplitData, aligned embeddings, raw features, description)`` for one dataset spec (see the module doc)."""
    from mm_pipeline.recommend.fit import SplitData
    from mm_pipeline.storage import load_bundle

    kind, _, rest = spec.partition(":")
    if kind == "assets":
        assets = Path(rest).expanduser() / "assets"
        missing = [name for name in ("interaction_split", "aligned_item_embeddings") if not (assets / name).is_dir()]
        if missing:
            raise SystemExit(
                f"{assets} has no stored {', '.join(missing)}: materialize them first "
                f"(make demo with MM_PIPELINE_HOME={rest})"
            )
        split, aligned = load_bundle(assets / "interaction_split"), load_bundle(assets / "aligned_item_embeddings")
        raw = {}
        for modality in RAW_DIMS:
            if (assets / f"{modality}_features").is_dir():
                stored = load_bundle(assets / f"{modality}_features")
                present = np.asarray(stored["present"], dtype=bool)
                if present.any():
                    raw[modality] = (np.asarray(stored["features"]), present)
        about = {"inputs": f"pipeline assets in {rest}", "content": "stored aligned_item_embeddings and *_features"}
    else:
        from mm_pipeline.defs.assets.raw import interaction_split

        if kind == "builtin":
            items, interactions, n_modalities, source = builtin_tables(rest, seed)
            info: dict = {}
        else:
            from mm_pipeline.datasets import load_source, resolve_source

            with tempfile.TemporaryDirectory(prefix="mm_bench_data_") as data_dir:
                data = load_source(resolve_source(spec, data_dir, seed=seed))
            items, interactions, info = data.items, data.interactions, data.info
            n_modalities, source = max(1, len(data.modalities)), f"{spec} read from disk"
        # The pipeline's own split asset, called directly: the same indexing and split as a run.
        split = interaction_split(raw_interactions=interactions, raw_items=items, source_dataset={"info": info}).value
        split = {"table": split.table, "n_users": split.n_users, "n_items": split.n_items}  # as stored
        aligned = random_aligned(int(split["n_items"]), n_modalities, seed)
        raw = random_raw(int(split["n_items"]), n_modalities, seed)
        about = {
            "inputs": source,
            "content": f"seeded random unit vectors, {n_modalities} modalities x "
            f"{CONTENT_DIM}, and random raw features {list(raw)} (no encoders run)",
        }
    data = SplitData.from_frame(split["table"], int(split["n_users"]), int(split["n_items"]))
    about.update(
        users=data.n_users,
        items=data.n_items,
        train_interactions=int(data.train.nnz),
        valid_users=int((np.diff(data.valid.indptr) > 0).sum()),
    )
    return data, aligned, raw, about


def bench_model(
    name: str, data, aligned: dict, raw: dict, epochs: int, eval_repeats: int, seed: int, sampler: MemorySampler
) -> dict:
    from mm_pipeline.recommend.fit import MultimodalConfig, fit_lightgcn, fit_multimodal
    from mm_pipeline.recommend.ranking import validator
    from mm_pipeline.recommend.train import TrainConfig, listening

    # Early stopping off (patience beyond the budget); validate once, after the last epoch.
    settings = {"epochs": epochs, "patience": epochs + 1, "eval_every": epochs, "seed": seed}
    gc.collect()
    rss_before = _rss_mb()
    started = time.time()
    # CPU seconds of this process per epoch (between the trainer's epoch callbacks): on a shared machine the
    # wall time also counts waiting for the cores; with one torch thread the CPU time is the work done.
    cpu_marks = [time.process_time()]
    with listening(lambda _name, _row: cpu_marks.append(time.process_time())):
        if name == "mm_gcn":
            model, history = fit_multimodal(data, aligned, MultimodalConfig(**settings), raw_features=raw)
        elif name == "lightgcn":
            model, history = fit_lightgcn(data, TrainConfig(**settings))
        else:
            raise SystemExit(f"unknown model {name!r}; choose from {MODELS}")
    # The first interval also holds building the model (graphs); the last one the final validation.
    epoch_cpu = list(np.diff(cpu_marks))
    validate = validator(data)
    eval_seconds, metrics = [], {}
    for _ in range(eval_repeats):
        tick = time.perf_counter()
        metrics = validate(model)
        eval_seconds.append(time.perf_counter() - tick)
    # A run shorter than one sampling interval has no sample (NaN): the direct readings still count.
    sampled = sampler.peak(started, time.time())
    peak = max([rss_before, _rss_mb()] + ([] if math.isnan(sampled) else [sampled]))
    epoch_seconds = history["train_seconds"].astype(float).tolist()
    return {
        "epochs": len(epoch_seconds),
        "epoch_seconds": epoch_seconds,
        "epoch_seconds_median": statistics.median(epoch_seconds),
        "epoch_cpu_seconds": epoch_cpu,
        "epoch_cpu_seconds_median": statistics.median(epoch_cpu),
        "eval_seconds": eval_seconds,
        "eval_seconds_median": statistics.median(eval_seconds),
        "peak_rss_mb": peak,
        "rss_before_mb": rss_before,
        **{f"valid_{k}": float(v) for k, v in metrics.items()},
    }


def merge_rounds(runs: list[dict]) -> dict:
    """One model's :func:`bench_model` results of several rounds as one: every epoch and evaluation pooled
    (medians over all of them), the highest peak, the per-round medians kept (``rounds``)."""
    pooled = {key: [v for r in runs for v in r[key]] for key in ("epoch_seconds", "epoch_cpu_seconds", "eval_seconds")}
    return {
        **runs[-1],  # seeded: every round trains the same model to the same metrics
        **pooled,
        **{f"{key}_median": statistics.median(values) for key, values in pooled.items()},
        "epochs": len(pooled["epoch_seconds"]),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "rss_before_mb": runs[0]["rss_before_mb"],
        "rounds": [
            {key: r[f"{key}_median"] for key in ("epoch_seconds", "epoch_cpu_seconds", "eval_seconds")} for r in runs
        ],
    }


def run(
    datasets: list[str],
    models: list[str],
    epochs: int,
    eval_repeats: int,
    seed: int,
    rounds: int = 1,
    probe_scale: float = 1.0,
) -> dict:
    """Each dataset's models benchmarked ``rounds`` times, in reversed order every other round (A B, B A, ...):
    on a shared machine whose speed drifts, a ratio of models measured one after the other once leans with
    the drift (on builtin:large one such run said 1.58x where the models' steps interleaved said 1.4x).
    The machine's own speed (:mod:`machine_probe`, at ``probe_scale``) is measured before and after."""
    import torch

    machine_before = probe(probe_scale)
    sampler = MemorySampler()
    sampler.start()
    results = []
    try:
        for spec in datasets:
            started = time.perf_counter()
            data, aligned, raw, about = build_inputs(spec, seed)
            entry = {"dataset": spec, **about, "prepare_seconds": time.perf_counter() - started, "models": {}}
            runs: dict[str, list[dict]] = {name: [] for name in models}
            for round_ in range(rounds):
                for name in models if round_ % 2 == 0 else models[::-1]:
                    runs[name].append(bench_model(name, data, aligned, raw, epochs, eval_repeats, seed, sampler))
            entry["models"] = {name: merge_rounds(runs[name]) for name in models}
            results.append(entry)
            del data, aligned, raw
    finally:
        sampler.stop()
    return {
        "epochs": epochs,
        "eval_repeats": eval_repeats,
        "rounds": rounds,
        "seed": seed,
        "torch_threads": torch.get_num_threads(),
        "machine": {"before": machine_before, "after": probe(probe_scale)},
        "results": results,
    }


def print_table(report: dict) -> None:
    print(
        f"\nmedian over {report['epochs']} epoch(s) / {report['eval_repeats']} evaluation(s) per model and round, "
        f"{report.get('rounds', 1)} round(s), torch threads={report['torch_threads']}"
    )
    for when, figures in report.get("machine", {}).items():
        print(f"{describe(figures)} ({when})")
    for entry in report["results"]:
        print(
            f"\n{entry['dataset']}: {entry['users']} users, {entry['items']} items, "
            f"{entry['train_interactions']} train interactions, {entry['valid_users']} validation users"
        )
        print(f"  inputs: {entry['inputs']}; content: {entry['content']}")
        print(
            f"  {'model':<10}{'epoch s':>10}{'epoch CPU s':>13}{'eval s':>10}{'peak RSS MB':>14}{'RSS before MB':>16}"
            f"{'valid ndcg@20':>15}"
        )
        for name, m in entry["models"].items():
            print(
                f"  {name:<10}{m['epoch_seconds_median']:>10.3f}{m['epoch_cpu_seconds_median']:>13.3f}"
                f"{m['eval_seconds_median']:>10.3f}{m['peak_rss_mb']:>14.0f}{m['rss_before_mb']:>16.0f}"
                f"{m.get('valid_ndcg@20', float('nan')):>15.4f}"
            )
        if {"mm_gcn", "lightgcn"} <= set(entry["models"]):
            mm, lg = entry["models"]["mm_gcn"], entry["models"]["lightgcn"]
            print(
                f"  mm_gcn / lightgcn epoch: {mm['epoch_seconds_median'] / lg['epoch_seconds_median']:.2f}x wall, "
                f"{mm['epoch_cpu_seconds_median'] / lg['epoch_cpu_seconds_median']:.2f}x CPU"
            )
            if len(mm["rounds"]) > 1:
                each = [a["epoch_seconds"] / b["epoch_seconds"] for a, b in zip(mm["rounds"], lg["rounds"])]
                print(f"  per round (wall): {', '.join(f'{r:.2f}x' for r in each)}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dataset",
        nargs="+",
        default=["builtin:default"],
        help="dataset specs (builtin:default builtin:large, folder:..., assets:/path/to/home)",
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per model (early stopping off)")
    parser.add_argument("--eval-repeats", type=int, default=3, help="timed full-ranking validation passes")
    parser.add_argument(
        "--rounds", type=int, default=1, help="benchmark the models this many times, in alternating order"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--probe-scale", type=float, default=1.0, help="size of the machine probe's arrays (1: comparable figures)"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.eval_repeats < 1 or args.rounds < 1:
        parser.error("--epochs, --eval-repeats and --rounds must be at least 1")
    prepare(args.threads)
    report = run(args.dataset, args.models, args.epochs, args.eval_repeats, args.seed, args.rounds, args.probe_scale)
    print_table(report)
    write_report(report, args.out)
    return report


def prepare(threads: int) -> None:
    """What a model benchmark sets before it starts: no model downloads, ``threads`` torch threads (0: torch's
    default)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def write_report(report: dict, out: Path | None) -> None:
    """``report`` as JSON at ``out`` (atomically), when given."""
    if out:
        from mm_pipeline.storage import atomic_write_text

        atomic_write_text(out, json.dumps(report, indent=2, sort_keys=True))
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()

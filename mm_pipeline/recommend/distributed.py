"""Data-parallel training of LightGCN or the multimodal GNN on a project's stored inputs, with torchrun.

    torchrun --nproc-per-node 2 -m mm_pipeline.recommend.distributed --home .mm_pipeline --model lightgcn

Every process loads the split (and, for ``mm_gcn``, the aligned embeddings and raw features) that a
pipeline run stored under ``<home>/assets``, joins the process group torchrun describes (gloo on CPUs,
NCCL on GPUs) and trains with :func:`~mm_pipeline.recommend.train.train_bpr`, which splits every
mini-batch across the processes and all-reduces the gradients (:mod:`mm_pipeline.recommend.parallel`).
Rank 0 validates, then writes ``result.json`` (validation and test metrics, world size, seconds) and the
embeddings (``model/``, a stored bundle) under ``--out``. Across machines, run the same command on each
with ``--nnodes``, ``--node-rank`` and ``--rdzv-endpoint`` (see docs/deployment.md).

The test split is read only to report the chosen weights' test metrics, as the pipeline's report does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np

MODELS = ("lightgcn", "mm_gcn")


def load_inputs(home: Path, model: str):
    """``(SplitData, aligned embeddings or None, raw features)`` from a project home's stored assets."""
    from mm_pipeline.data.types import as_interaction_split
    from mm_pipeline.recommend.catalog import raw_modality_features
    from mm_pipeline.storage import load_bundle

    assets = home / "assets"
    needed = ["interaction_split"]
    if model == "mm_gcn":
        needed += ["aligned_item_embeddings", "text_features", "image_features", "audio_features"]
    missing = [name for name in needed if not (assets / name).is_dir()]
    if missing:
        raise SystemExit(
            f"{assets} holds no stored {', '.join(missing)}: materialize them first (`mm-pipeline demo` with "
            f"MM_PIPELINE_HOME={home})"
        )
    data = as_interaction_split(load_bundle(assets / "interaction_split")).data
    if model != "mm_gcn":
        return data, None, {}
    aligned = load_bundle(assets / "aligned_item_embeddings")
    raw = raw_modality_features(*(load_bundle(assets / f"{m}_features") for m in ("text", "image", "audio")))
    return data, aligned, raw


def chosen_config(home: Path, model: str, overrides: dict):
    """The model's config: what the pipeline's search chose for it (its stored ``<model>_model``), when
    stored, under ``overrides``."""
    from mm_pipeline.recommend.config import MultimodalConfig, TrainConfig
    from mm_pipeline.storage import load_bundle

    cls = MultimodalConfig if model == "mm_gcn" else TrainConfig
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise SystemExit(f"--config: {cls.__name__} has no field(s) {unknown}")
    stored: dict = {}
    path = home / "assets" / f"{model}_model"
    if path.is_dir():
        stored = {k: v for k, v in (load_bundle(path).get("config") or {}).items() if k in names}
    return cls(**{**stored, **overrides})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", required=True, type=Path, help="the project home whose stored assets to train on")
    parser.add_argument("--model", default="lightgcn", choices=MODELS)
    parser.add_argument("--config", default="{}", help="JSON overrides of the model's config fields")
    parser.add_argument(
        "--out",
        type=Path,
        help="where rank 0 writes result.json and model/ (default: a new folder <home>/distributed/<model>-<time>)",
    )
    args = parser.parse_args(argv)

    import torch.distributed as dist

    from mm_pipeline import settings
    from mm_pipeline.devices import resolve_device
    from mm_pipeline.evaluate.metrics import ranking_metrics
    from mm_pipeline.recommend.fit import fit_lightgcn, fit_multimodal
    from mm_pipeline.recommend.parallel import world
    from mm_pipeline.storage import atomic_write_text, save_bundle

    config = chosen_config(args.home, args.model, json.loads(args.config))
    data, aligned, raw = load_inputs(args.home, args.model)
    started = time.perf_counter()
    device = resolve_device(config.device)
    if not dist.is_initialized() and settings.launched_by_torchrun():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, size = world()
    try:
        if args.model == "mm_gcn":
            model, history = fit_multimodal(data, aligned, config, raw_features=raw)
        else:
            model, history = fit_lightgcn(data, config)
        seconds = time.perf_counter() - started
        if rank == 0:
            test = ranking_metrics(
                model,
                truth=data.test,
                exclude=(data.train + data.valid).tocsr(),
                ks=(20,),
                item_popularity=np.asarray(data.train.sum(axis=0)).ravel(),
                n_train_users=data.n_users,
            )
            out = args.out or args.home / "distributed" / f"{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
            out.mkdir(parents=True, exist_ok=True)
            save_bundle(out / "model", {**model.to_arrays(), "history": history})
            result = {
                "model": args.model,
                "world_size": size,
                "device": str(device),
                "config": asdict(config),
                "valid_ndcg@20": float(model.info["best_valid_ndcg@20"]),
                "best_epoch": int(model.info["best_epoch"]),
                "epochs_run": int(model.info["epochs_run"]),
                "test_recall@20": float(test["recall@20"]),
                "test_ndcg@20": float(test["ndcg@20"]),
                "seconds": round(seconds, 1),
            }
            atomic_write_text(out / "result.json", json.dumps(result, indent=2) + "\n")
            print(json.dumps(result))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

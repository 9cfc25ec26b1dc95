"""Train one model config on a run's stored inputs, over several seeds: how the defaults were chosen.

    python benchmarks/config_compare.py --inputs assets:.mm_pipeline --model mm_gcn \
        --config '{"graph_source": "aligned"}' --seeds 0 1 2

``--inputs`` takes what ``model_training.py`` takes (``assets:/path/to/home`` uses the split, aligned
embeddings and raw ``*_features`` a pipeline run stored; a dataset spec uses seeded random content).
``--model mm_hybrid`` needs ``assets:`` inputs: it re-runs the hybrid's validation search over the stored
``ease_model``, ``item_knn_model``, ``mm_gcn_model`` and ``lightgcn_model`` (those stored)
(``--config`` overrides ``HybridConfig`` fields,
e.g. ``{"decays": [0.0]}``); ``--model ease`` re-runs EASE's L2 search (``{"l2": 100}`` sets the start).
``--config`` overrides fields of the model's config dataclass. Per seed it prints one JSON line with the
best **validation** NDCG@20 (what a choice between configs should read) and, for the record only, the
test recall@20 and NDCG@20 of those weights under the report's protocol (training and validation items
excluded). Choosing a config on the test numbers would leak the test split into the model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_training import build_inputs  # noqa: E402  (the benchmark's input loader)

MODELS = ("mm_gcn", "lightgcn", "freedom", "vbpr", "ease", "mm_hybrid")


def run_config(
    data, aligned: dict, raw: dict, model: str, overrides: dict, seed: int, home: Path | None = None
) -> dict:
    from mm_pipeline.evaluate.metrics import ranking_metrics
    from mm_pipeline.recommend.fit import (
        FreedomConfig,
        MultimodalConfig,
        fit_freedom,
        fit_lightgcn,
        fit_multimodal,
        fit_vbpr,
    )
    from mm_pipeline.recommend.train import TrainConfig

    started = time.perf_counter()
    if model in ("ease", "mm_hybrid"):
        fitted, search = _closed_form(data, raw, model, overrides, seed, home)
        fitted.info = {
            **fitted.info,
            "best_valid_ndcg@20": search.score,
            "best_epoch": 0,
            "epochs_run": 0,
            "chosen": search.params,
        }
    elif model == "mm_gcn":
        fitted, _ = fit_multimodal(data, aligned, MultimodalConfig(**{**overrides, "seed": seed}), raw_features=raw)
    elif model == "lightgcn":
        fitted, _ = fit_lightgcn(data, TrainConfig(**{**overrides, "seed": seed}))
    elif model == "vbpr":  # as the pipeline's vbpr_model asset runs it: no propagation layers, image features
        if "image" not in raw:
            raise SystemExit("vbpr needs stored image_features in the inputs")
        fitted, _ = fit_vbpr(data, *raw["image"], TrainConfig(**{"num_layers": 0, **overrides, "seed": seed}))
    elif model == "freedom":
        fitted, _ = fit_freedom(data, raw, FreedomConfig(**{**overrides, "seed": seed}))
    else:
        raise SystemExit(f"unknown model {model!r}; choose from {MODELS}")
    popularity = np.asarray(data.train.sum(axis=0)).ravel()
    test = ranking_metrics(
        fitted,
        truth=data.test,
        exclude=(data.train + data.valid).tocsr(),
        ks=(20,),
        item_popularity=popularity,
        n_train_users=data.n_users,
    )
    extra = {"chosen": fitted.info["chosen"]} if "chosen" in fitted.info else {}
    return {
        "model": model,
        "config": overrides,
        "seed": seed,
        **extra,
        "valid_ndcg@20": float(fitted.info["best_valid_ndcg@20"]),
        "best_epoch": int(fitted.info["best_epoch"]),
        "epochs_run": int(fitted.info["epochs_run"]),
        "test_recall@20": float(test["recall@20"]),
        "test_ndcg@20": float(test["ndcg@20"]),
        "seconds": round(time.perf_counter() - started, 1),
    }


def _closed_form(data, raw: dict, model: str, overrides: dict, seed: int, home: Path | None):
    """EASE's L2 search, or the hybrid's weight search over a run's stored component models."""
    from mm_pipeline.recommend.tuning import Tuning, tune_ease

    if model == "ease":
        result = tune_ease(data, Tuning(budget_s=1e9, max_trials=20), start=float(overrides.get("l2", 200.0)))
        return result.model, result
    if home is None:
        raise SystemExit("--model mm_hybrid needs --inputs assets:<home> (it reads the stored component models)")
    from mm_pipeline.recommend.catalog import hybrid_parts
    from mm_pipeline.recommend.hybrid import HybridConfig, fit_hybrid
    from mm_pipeline.recommend.ranking import validator
    from mm_pipeline.storage import load_bundle

    config = HybridConfig(
        **{**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}, "seed": seed, "budget_s": 1e9}
    )

    def stored(name: str) -> dict:
        path = home / "assets" / name
        return load_bundle(path) if path.is_dir() else {"name": name, "skipped": "not stored"}

    parts = hybrid_parts(
        data,
        stored("interaction_split"),
        {"ease": stored("ease_model"), "item_knn": stored("item_knn_model")},
        {"mm_gcn": stored("mm_gcn_model"), "lightgcn": stored("lightgcn_model")},
        raw,
        config,
    )
    result = fit_hybrid(parts, validator(data, max_users=config.validation_users, seed=seed), config)
    return result.model, result


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", required=True, help="assets:/path/to/home, or a dataset spec")
    parser.add_argument("--model", default="mm_gcn", choices=MODELS)
    parser.add_argument("--config", default="{}", help="JSON object of config fields to override")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = parser.parse_args(argv)
    try:
        overrides = json.loads(args.config)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--config is not JSON: {exc}") from exc
    if not isinstance(overrides, dict) or "seed" in overrides:
        raise SystemExit("--config must be a JSON object of config fields; give seeds with --seeds")
    data, aligned, raw, _ = build_inputs(args.inputs, seed=0)
    rows = []
    for seed in args.seeds:
        home = Path(args.inputs.partition(":")[2]).expanduser() if args.inputs.startswith("assets:") else None
        row = run_config(data, aligned, raw, args.model, overrides, seed, home)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()

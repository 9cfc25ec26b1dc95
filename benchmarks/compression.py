"""The served artifact's size-quality-latency frontier: fp32 (plain), fp32_compact, fp16, int8, int4_outliers, int4.

    python benchmarks/compression.py --home ~/.mm_pipeline          # the model a pipeline run selected
    python benchmarks/compression.py --dataset builtin:tiny --epochs 5  # a hybrid trained here, in memory

Inputs:

* ``--home PATH``: the ``selected_model``, ``interaction_split`` and ``raw_items`` a pipeline run stored in
  that project home (``make demo`` / ``mm-pipeline demo``): the model that run registered and serves.
* ``--dataset builtin:<size>[:scenario]``: the built-in dataset's interactions drawn in memory and split
  as a run splits them (see ``model_training.py``), random raw content features, and a hybrid of the
  primary model's kind trained here: EASE and item k-NN cores, the content graph, a LightGCN trained for
  ``--epochs`` epochs, the weights searched on validation (one round).

For each variant (:func:`mm_pipeline.compress.frontier.compression_frontier`): the ``.npz`` bytes as
logged, the ratio to fp32, validation and test NDCG@20 / recall@20 and the relative NDCG@20 loss, and the
milliseconds of a ``RecommenderPyfunc.predict`` request of ``--batch`` known users at k = 20 (median and
p90 over ``--requests`` requests; with ``--repeats`` > 1 the whole measurement is repeated and each
latency is the median of the repeats). ``--threads 1`` pins BLAS to one thread: on a busy machine a
multi-threaded BLAS that competes for cores makes small matrix products erratic. The served variant is
the smallest within the validation gate. ``--out`` writes the table as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))


def stored_inputs(home: str):
    """``(model, SplitData, item_ids, about)`` from a project home's stored assets."""
    from mm_pipeline.defs.assets.train import split_data
    from mm_pipeline.defs.io_manager import _from_bundle
    from mm_pipeline.recommend.base import EmbeddingRecommender
    from mm_pipeline.storage import load_bundle

    assets = Path(home).expanduser() / "assets"
    missing = [n for n in ("selected_model", "interaction_split", "raw_items") if not (assets / n).is_dir()]
    if missing:
        raise SystemExit(f"{assets} has no stored {', '.join(missing)}: run `mm-pipeline demo` with this home first")
    selected, split, items = (
        _from_bundle(load_bundle(assets / n)) for n in ("selected_model", "interaction_split", "raw_items")
    )
    data = split_data(split)
    model = EmbeddingRecommender.from_bundle(selected)
    return model, data, items["item_id"].astype(str).tolist(), f"the selected model stored in {home}"


def trained_inputs(spec: str, epochs: int, seed: int):
    """``(model, SplitData, item_ids, about)``: a hybrid trained in memory on a built-in dataset."""
    from model_training import builtin_tables, random_raw

    from mm_pipeline.defs.assets.raw import interaction_split
    from mm_pipeline.recommend.config import TrainConfig
    from mm_pipeline.recommend.fit import SplitData, content_graph, content_graphs, fit_lightgcn
    from mm_pipeline.recommend.hybrid import HybridConfig, HybridParts, fit_hybrid
    from mm_pipeline.recommend.linear import ItemGram, item_knn_weights, training_age
    from mm_pipeline.recommend.ranking import validator

    kind, _, rest = spec.partition(":")
    if kind != "builtin":
        raise SystemExit(f"--dataset takes a builtin:<size> spec, got {spec!r} (use --home for a project's model)")
    items, interactions, n_modalities, source = builtin_tables(rest, seed)
    split = interaction_split(raw_interactions=interactions, raw_items=items, source_dataset={"info": {}}).value
    data = SplitData.from_frame(split.table, split.n_users, split.n_items)
    raw = random_raw(split.n_items, n_modalities, seed)
    gram = ItemGram(data.train)
    cores = {"ease": gram.ease(200.0), "item_knn": item_knn_weights(gram.gram, 100)}
    settings = {"epochs": epochs, "patience": epochs + 1, "seed": seed}
    gnn, _ = fit_lightgcn(data, TrainConfig(**settings))
    config = HybridConfig(rounds=1, budget_s=120.0, seed=seed)
    parts = HybridParts(
        data.train,
        training_age(split.table, data.train),
        cores,
        content_graph(raw, config.knn_k),
        {"lightgcn": gnn},
        content_aware=(),
        seed=seed,
        modality_graphs=content_graphs(raw, config.knn_k),
    )
    search = fit_hybrid(parts, validator(data), config)
    about = f"{source}; hybrid {search.params} (LightGCN {epochs} epochs)"
    return search.model, data, items["item_id"].astype(str).tolist(), about


def measure(model, data, item_ids, args) -> pd.DataFrame:
    from mm_pipeline.compress.frontier import compression_frontier

    tables = []
    for repeat in range(args.repeats):
        frontier = compression_frontier(
            model,
            data,
            item_ids,
            compressions=args.compressions,
            max_relative_loss=args.max_loss,
            latency_batch=args.batch,
            latency_requests=args.requests,
            seed=args.seed + repeat,
        )
        tables.append(frontier.table)
    table = tables[0].copy()
    for column in ("latency_median_ms", "latency_p90_ms"):
        table[column] = np.median(np.stack([t[column].to_numpy() for t in tables]), axis=0)
    return table


def print_table(table: pd.DataFrame, about: str, model, args) -> None:
    print(f"# {model.name} ({model.n_users} users x {model.n_items} items): {about}")
    print(
        f"# latency: RecommenderPyfunc.predict, {args.batch} known users per request, k=20; median / p90 "
        f"over {args.requests} requests (median of {args.repeats} repeats), "
        f"{args.threads or 'default'} BLAS threads"
    )
    shown = table.assign(
        MB=table["bytes"] / 1e6,
        valid_loss=(100 * table["valid_ndcg_loss"]).map("{:+.2f}%".format),
        test_loss=(100 * table["test_ndcg_loss"]).map("{:+.2f}%".format),
    )
    columns = [
        "variant",
        "MB",
        "size_ratio",
        "valid_ndcg@20",
        "valid_loss",
        "test_ndcg@20",
        "test_loss",
        "valid_recall@20",
        "test_recall@20",
        "latency_median_ms",
        "latency_p90_ms",
        "passes_gate",
        "served",
    ]
    print(shown[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def main(argv: list[str] | None = None) -> pd.DataFrame:
    from mm_pipeline.registry.pyfunc import COMPRESSIONS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--home", help="a project home whose pipeline run stored selected_model")
    source.add_argument("--dataset", help="builtin:<size>[:scenario]: train a hybrid in memory")
    parser.add_argument("--epochs", type=int, default=10, help="LightGCN epochs (--dataset only)")
    parser.add_argument("--compressions", nargs="+", default=list(COMPRESSIONS), choices=COMPRESSIONS)
    parser.add_argument("--max-loss", type=float, default=0.01, help="relative validation NDCG@20 loss allowed")
    parser.add_argument("--batch", type=int, default=64, help="known users per request")
    parser.add_argument("--requests", type=int, default=20, help="timed requests per variant")
    parser.add_argument("--repeats", type=int, default=1, help="repeat the measurement; latency medians")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, help="BLAS / torch threads while measuring (default: the libraries' own choice)"
    )
    parser.add_argument("--out", help="write the table here as JSON")
    args = parser.parse_args(argv)

    started = time.time()
    if args.home:
        model, data, item_ids, about = stored_inputs(args.home)
    else:
        model, data, item_ids, about = trained_inputs(args.dataset, args.epochs, args.seed)
    if args.threads:
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        with threadpool_limits(limits=args.threads):
            table = measure(model, data, item_ids, args)
    else:
        table = measure(model, data, item_ids, args)
    print_table(table, about, model, args)
    print(f"# {time.time() - started:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"about": about, "rows": table.to_dict(orient="records")}, indent=1))
    return table


if __name__ == "__main__":
    main()

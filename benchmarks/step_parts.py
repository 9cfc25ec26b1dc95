"""What each part of the primary model costs in a training step: mm_gcn with one part switched off at a time,
against the full model and LightGCN, on the same mini-batches.

    python benchmarks/step_parts.py --dataset builtin:default builtin:large --rounds 3 --threads 1

``make bench-models`` says how much dearer an mm_gcn epoch is than a LightGCN one; this says where the
difference goes. Per dataset (the inputs ``model_training.py`` builds: ``builtin:<size>``, a dataset spec or
``assets:/path/to/home``), the models are built as ``fit_multimodal`` / ``fit_lightgcn`` build them and
trained step by step (forward, backward, fused Adam) on ``--batches`` seeded batches of the size an epoch
of mm_gcn trains with (``epoch_batches``), ``--rounds`` times. Each variant is timed in a pair with a
LightGCN of its own, the two taking turns at every batch, and only the pair is alive: six models stepped in
one process, one block of steps each, said the parts "cost" from -100 to +90 ms of a 390 ms large step from
run to run (the models' memory and the machine's drift, not the parts). Reported: each variant's median step
and its ratio to its pair's LightGCN; a part's cost is the full model's ratio minus the ratio without the
part, times the median LightGCN step. The parts interact (the content tower serves both the cold form and
the alignment term), so the costs do not add up exactly. Switching a part off changes the model, not only
its speed: this measures cost, not whether a part pays for itself (validation NDCG does; see
``config_compare.py``). Not a timing test: run it on a quiet machine and read the ratios.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_training import build_inputs, prepare, write_report  # noqa: E402  (the model benchmark's helpers)

# Variant -> MultimodalConfig overrides. "without cold form": only the warm items stop taking their cold form
# (items without training interactions have no other).
VARIANTS = {
    "mm_gcn": {},
    "without item graph": {"knn_k": 0},
    "without alignment term": {"align_weight": 0.0},
    "without tower dropout": {"dropout": 0.0},
    "without cold form": {"cold_prob": 0.0},
}


class ModelMaker:
    """Builds LightGCN and the :data:`VARIANTS` of mm_gcn as ``fit_lightgcn`` / ``fit_multimodal`` build them
    (``build_multimodal``: content matrix, raw-feature item graph), each from the same seed."""

    def __init__(self, data, aligned: dict, raw: dict, seed: int):
        self.data, self.aligned, self.raw, self.seed = data, aligned, raw, seed

    def lightgcn(self):
        import torch

        from mm_pipeline.recommend.config import TrainConfig
        from mm_pipeline.recommend.models import IDLightGCN

        torch.manual_seed(self.seed)
        return IDLightGCN(self.data.n_users, self.data.n_items, self.data.adj, TrainConfig(seed=self.seed))

    def variant(self, name: str):
        import torch

        from mm_pipeline.recommend.config import MultimodalConfig
        from mm_pipeline.recommend.fit import build_multimodal

        config = MultimodalConfig(**{**VARIANTS[name], "seed": self.seed})
        torch.manual_seed(self.seed)
        return build_multimodal(self.data, self.aligned, config, raw_features=self.raw)


def draw_batches(data, n_batches: int, seed: int) -> tuple[list[tuple], int, float]:
    """``n_batches`` seeded ``(users, positives, negatives)`` batches of mm_gcn's epoch batch size, that size
    and the learning rate that goes with it."""
    import torch

    from mm_pipeline.recommend.config import MultimodalConfig
    from mm_pipeline.recommend.train import TrainingPairs, epoch_batches, sample_negatives

    coo = data.train.tocoo()
    users, items = coo.row.astype(np.int64), coo.col.astype(np.int64)
    size, lr = epoch_batches(MultimodalConfig(), len(users))
    size = min(size, len(users))
    rng = np.random.default_rng(seed)
    pairs = TrainingPairs(data.train)
    batches = []
    for _ in range(n_batches):
        pick = rng.choice(len(users), size, replace=False)
        negatives = sample_negatives(users[pick], data.train, rng, pairs=pairs)
        batches.append(tuple(torch.from_numpy(x) for x in (users[pick], items[pick], negatives)))
    return batches, size, lr


def time_steps(models: dict, batches: list[tuple], lr: float, rounds: int) -> dict[str, list[float]]:
    """Seconds per training step of every model over ``rounds`` passes over ``batches``. The models take turns
    at every batch, in reversed order at every other batch, so a drift of the machine's speed reaches all of them
    alike. Each model's first step is an untimed warm-up."""
    import torch

    optimizers = {name: torch.optim.Adam(m.parameters(), lr=lr, fused=True) for name, m in models.items()}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for model in models.values():
        model.train()
    turn = 0
    for round_ in range(rounds):
        for i, (users, pos, neg) in enumerate(batches):
            for name in names if turn % 2 == 0 else names[::-1]:
                model, optim = models[name], optimizers[name]
                started = time.perf_counter()
                optim.zero_grad()
                loss, _ = model.bpr_loss(users, pos, neg)
                loss.backward()
                optim.step()
                if round_ > 0 or i > 0:
                    seconds[name].append(time.perf_counter() - started)
            turn += 1
    return seconds


def run(datasets: list[str], n_batches: int, rounds: int, seed: int, variants: list[str] | None = None) -> dict:
    """Per dataset, each variant timed in a pair with a LightGCN of its own (see the module doc)."""
    import torch

    results = []
    for spec in datasets:
        data, aligned, raw, about = build_inputs(spec, seed)
        if not raw:
            raise SystemExit(f"{spec}: no raw modality features to build mm_gcn's item graph from")
        batches, size, lr = draw_batches(data, n_batches, seed)
        maker = ModelMaker(data, aligned, raw, seed)
        step_ms, ratio, lightgcn_ms, timed = {}, {}, [], {}
        for name in variants or list(VARIANTS):
            seconds = time_steps({"lightgcn": maker.lightgcn(), name: maker.variant(name)}, batches, lr, rounds)
            step_ms[name] = 1000 * statistics.median(seconds[name])
            lightgcn_ms.append(1000 * statistics.median(seconds["lightgcn"]))
            ratio[name] = step_ms[name] / lightgcn_ms[-1]
            timed[name] = len(seconds[name])
            gc.collect()
        base = statistics.median(lightgcn_ms)
        full = ratio.get("mm_gcn")
        costs = {} if full is None else {n: (full - r) * base for n, r in ratio.items() if n != "mm_gcn"}
        results.append(
            {
                "dataset": spec,
                **about,
                "batch_size": size,
                "lr": lr,
                "timed_steps": timed,
                "lightgcn_step_ms": lightgcn_ms,
                "step_ms": step_ms,
                "ratio_to_lightgcn": ratio,
                "part_cost_ms": costs,
            }
        )
    return {
        "batches": n_batches,
        "rounds": rounds,
        "seed": seed,
        "torch_threads": torch.get_num_threads(),
        "results": results,
    }


def print_table(report: dict) -> None:
    print(
        f"\nmedian training step (forward, backward, Adam) over {report['batches']} batches x {report['rounds']} "
        f"round(s), torch threads={report['torch_threads']}"
    )
    for entry in report["results"]:
        print(
            f"\n{entry['dataset']}: {entry['users']} users, {entry['items']} items, batch {entry['batch_size']}"
            f"\n  {'model':<28}{'step ms':>10}{'x LightGCN':>12}{'part costs ms':>15}"
        )
        lightgcn = entry["lightgcn_step_ms"]
        print(f"  {'lightgcn (median of pairs)':<28}{statistics.median(lightgcn):>10.1f}{1.0:>12.2f}")
        for name, ms in entry["step_ms"].items():
            cost = entry["part_cost_ms"].get(name)
            shown = "" if cost is None else f"{cost:.1f}"
            print(f"  {name:<28}{ms:>10.1f}{entry['ratio_to_lightgcn'][name]:>12.2f}{shown:>15}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dataset", nargs="+", default=["builtin:default"], help="dataset specs (as model_training.py)"
    )
    parser.add_argument("--batches", type=int, default=6, help="mini-batches per round")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the batches")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="mm_gcn variants (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.batches < 2 or args.rounds < 1:
        parser.error("--batches must be at least 2 (one is a warm-up) and --rounds at least 1")
    prepare(args.threads)
    report = run(args.dataset, args.batches, args.rounds, args.seed, args.variants)
    print_table(report)
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()

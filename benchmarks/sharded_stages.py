"""Wall time of the per-item stages split into item shards, run by 1 and by 2 worker processes.

    python benchmarks/sharded_stages.py --dataset builtin:large --shards 2 --workers 1 2 --repeats 1

Each configuration materializes the per-item stages (decode images and audio, the three augmentations,
text and audio features) and what they need (the dataset, the item table) in a fresh project home,
with ``MM_PIPELINE_ITEM_SHARDS`` shards, through Dagster's multiprocess executor limited to ``W``
concurrent step processes: the same steps the Celery workers would take, one per process. The dataset
is generated once, before any timing. Reported per configuration (medians over the repeats):

* ``stages``: from the first sharded step's start to the last one's end (the wall time they cost);
* ``step sum``: the sum of the step durations (the work, whoever did it);
* one line per stage: its shard steps' and merge step's summed durations.

The reference row (``in-process, 1 shard``) is the embedded default (``make demo``'s executor) on the
same selection. Each step of the multiprocess runs starts a Python process that imports torch and the
pipeline: that start-up is part of its cost, and the reason the embedded default stays in-process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = (
    "raw_item_images",
    "raw_item_audio",
    "augmented_images",
    "augmented_text",
    "augmented_audio",
    "text_features",
    "audio_features",
)


def item_stages_job():
    """The job the runs execute (rebuilt by every step process: it must live at module level)."""
    import dagster as dg

    from mm_pipeline.defs.build import all_assets, default_resources

    executor = dg.in_process_executor if os.environ["BENCH_EXECUTOR"] == "in_process" else dg.multiprocess_executor
    job = dg.define_asset_job(
        "item_stages", selection=dg.AssetSelection.assets(*STAGES).upstream(), executor_def=executor
    )
    defs = dg.Definitions(
        assets=all_assets(),
        jobs=[job],
        resources=default_resources(home=os.environ["MM_PIPELINE_HOME"], dataset=os.environ["BENCH_DATASET"]),
    )
    return defs.resolve_job_def("item_stages")


def run_once(dataset: str, shards: int, workers: int | None, data: Path) -> dict:
    """One configuration in a child process (so the shard count and executor are read at import)."""
    home = Path(tempfile.mkdtemp(prefix="mm_shards_"))
    try:
        (home / "data").symlink_to(data, target_is_directory=True)  # the generated dataset, shared
        env = {
            **os.environ,
            "MM_PIPELINE_HOME": str(home),
            "BENCH_DATASET": dataset,
            "MM_PIPELINE_ITEM_SHARDS": str(shards),
            "DAGSTER_HOME": str(home / "dagster"),
            "BENCH_EXECUTOR": "in_process" if workers is None else "multiprocess",
            "BENCH_WORKERS": str(workers or 1),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        (home / "dagster").mkdir()
        out = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"the run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        import json

        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(home, ignore_errors=True)


def child() -> None:
    import json

    import dagster as dg

    workers = int(os.environ["BENCH_WORKERS"])
    run_config = (
        {} if os.environ["BENCH_EXECUTOR"] == "in_process" else {"execution": {"config": {"max_concurrent": workers}}}
    )
    with dg.DagsterInstance.get() as instance:
        started = time.perf_counter()
        result = dg.execute_job(dg.reconstructable(item_stages_job), instance=instance, run_config=run_config)
        total = time.perf_counter() - started
        if not result.success:
            raise SystemExit("the run failed")
        starts, ends, per_stage = [], [], {s: 0.0 for s in STAGES}
        for record in instance.all_logs(result.run_id):
            event = record.dagster_event
            if event is None or not event.step_key:
                continue
            stage = event.step_key.split(".")[0]
            if stage not in STAGES:
                continue
            if event.event_type_value == "STEP_START":
                starts.append(record.timestamp)
            elif event.event_type_value == "STEP_SUCCESS":
                ends.append(record.timestamp)
                per_stage[stage] += event.event_specific_data.duration_ms / 1000
    print(
        json.dumps(
            {
                "stages": max(ends) - min(starts),
                "step_sum": sum(per_stage.values()),
                "per_stage": per_stage,
                "total": total,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="builtin:large")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child()
    from mm_pipeline.datasets.sources import resolve_source

    data = Path(tempfile.mkdtemp(prefix="mm_shards_data_"))
    try:
        resolve_source(args.dataset, data)  # generate once, outside the timings
        configs = [("in-process, 1 shard", 1, None)] + [
            (f"{w} worker(s), {args.shards} shards", args.shards, w) for w in args.workers
        ]
        rows = {}
        for label, shards, workers in configs:
            runs = [run_once(args.dataset, shards, workers, data) for _ in range(args.repeats)]
            rows[label] = {
                "stages": statistics.median(r["stages"] for r in runs),
                "step_sum": statistics.median(r["step_sum"] for r in runs),
                "per_stage": {s: statistics.median(r["per_stage"][s] for r in runs) for s in STAGES},
            }
            print(
                f"{label}: stages {rows[label]['stages']:.1f} s, step sum {rows[label]['step_sum']:.1f} s", flush=True
            )
    finally:
        shutil.rmtree(data, ignore_errors=True)
    print(f"\n{args.dataset}, median of {args.repeats} run(s), {os.cpu_count()} cores")
    labels = list(rows)
    print(f"{'stage (summed step seconds)':<28}" + "".join(f"{label:>26}" for label in labels))
    for stage in STAGES:
        print(f"{stage:<28}" + "".join(f"{rows[label]['per_stage'][stage]:>26.1f}" for label in labels))
    print(f"{'step sum':<28}" + "".join(f"{rows[label]['step_sum']:>26.1f}" for label in labels))
    print(f"{'stages wall':<28}" + "".join(f"{rows[label]['stages']:>26.1f}" for label in labels))
    multi = [label for label in labels if "worker" in label]
    if len(multi) >= 2:
        one, two = rows[multi[0]]["stages"], rows[multi[-1]]["stages"]
        print(f"\nwall {multi[0]} / {multi[-1]}: {one / two:.2f}x")


if __name__ == "__main__":
    main()

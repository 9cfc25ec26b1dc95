"""Wall time per stage and peak memory for one full materialization.

    python benchmarks/pipeline_stages.py --dataset builtin:default --repeats 3

Each repeat runs the whole graph in a fresh project home (so nothing is cached; the built-in dataset
is generated inside the ``source_dataset`` stage) with Dagster's in-process executor, the same path
as ``make demo``. A sampler thread records the process's resident memory every 50 ms; each stage's
peak is the highest sample between its start and end events. Prints medians over the repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class MemorySampler(threading.Thread):
    def __init__(self, interval: float = 0.05):
        super().__init__(daemon=True)
        self.interval, self.samples, self._halt = interval, [], threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.time(), _rss_mb()))
            time.sleep(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def peak(self, start: float, end: float) -> float:
        window = [m for t, m in self.samples if start <= t <= end]
        return max(window) if window else float("nan")


def run_once(dataset: str, home: Path) -> tuple[dict[str, tuple[float, float]], float, float]:
    import dagster as dg

    from mm_pipeline.defs.build import all_assets, default_resources

    instance = dg.DagsterInstance.ephemeral()
    sampler = MemorySampler()
    sampler.start()
    started = time.perf_counter()
    result = dg.materialize(
        all_assets(),
        instance=instance,
        resources=default_resources(home=str(home), dataset=dataset, tracking_uri=f"sqlite:///{home / 'mlflow.db'}"),
    )
    total = time.perf_counter() - started
    sampler.stop()
    if not result.success:
        raise SystemExit("the pipeline failed; run `make demo` for the error")
    starts, stages = {}, {}
    for record in instance.all_logs(result.run_id):
        event = record.dagster_event
        if event is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = record.timestamp
        elif event.event_type_value == "STEP_SUCCESS":
            seconds = event.event_specific_data.duration_ms / 1000
            stages[event.step_key] = (seconds, sampler.peak(starts[event.step_key], record.timestamp))
    return stages, total, max(m for _, m in sampler.samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="builtin:default")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="mm_bench_") as tmp:
            runs.append(run_once(args.dataset, Path(tmp)))
    stages = list(runs[0][0])
    print(f"\n{args.dataset}: median of {args.repeats} run(s), torch threads={__import__('torch').get_num_threads()}")
    print(f"{'stage':<28}{'seconds':>10}{'peak RSS MB':>14}")
    for stage in stages:
        print(
            f"{stage:<28}{statistics.median(r[0][stage][0] for r in runs):>10.2f}"
            f"{statistics.median(r[0][stage][1] for r in runs):>14.0f}"
        )
    print(f"{'sum of stages':<28}{statistics.median(sum(s for s, _ in r[0].values()) for r in runs):>10.2f}")
    print(
        f"{'wall (incl. Dagster)':<28}{statistics.median(r[1] for r in runs):>10.2f}"
        f"{statistics.median(r[2] for r in runs):>14.0f}"
    )


if __name__ == "__main__":
    main()

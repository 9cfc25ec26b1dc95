"""Freed heap memory goes back to the OS between steps (glibc only)."""

import subprocess
import sys

import pytest

from mm_pipeline.memory import _malloc_trim

# Run in a fresh interpreter: the heap of a process that has run other tests has holes of its own.
SCENARIO = """
import numpy as np
from mm_pipeline.memory import release_freed_memory

def rss_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 1e6

big = np.ones(30_000_000 // 8)  # freeing a block this size (under 32 MB) raises glibc's mmap threshold to it
del big
held = []
for _ in range(60):
    held.append((np.ones(1_000_000), np.ones(100)))  # an 8 MB block from the heap, then a small live one
pins = [small for _, small in held]  # the small blocks stay: the heap cannot shrink from its top
del held
before = rss_mb()
assert release_freed_memory()
print(before, rss_mb(), len(pins))
"""


@pytest.mark.skipif(_malloc_trim() is None, reason="not glibc: malloc_trim does not exist")
def test_freed_heap_blocks_are_returned():
    out = subprocess.run([sys.executable, "-c", SCENARIO], capture_output=True, text=True, check=True).stdout
    before, after, _ = map(float, out.split())
    assert before - after > 200, (before, after)  # about 480 MB of freed 8 MB blocks


def test_each_step_hands_back_freed_memory_before_reading_its_inputs(tmp_path, monkeypatch):
    # The pages the steps before freed (their outputs and inputs, dropped after they were stored) are handed
    # back once per step, when it reads its first input; storing an output hands back the step's own.
    import inspect

    import dagster as dg

    from mm_pipeline.defs import io_manager

    calls = []
    monkeypatch.setattr(io_manager, "release_freed_memory", lambda: calls.append(inspect.stack()[1].function))

    @dg.asset
    def first() -> dict:
        return {"x": 1}

    @dg.asset
    def second(first: dict) -> dict:
        return {"x": first["x"] + 1}

    @dg.asset
    def third(first: dict, second: dict) -> dict:  # two inputs: one hand-back
        return {"x": first["x"] + second["x"]}

    result = dg.materialize(
        [first, second, third], resources={"io_manager": io_manager.BundleIOManager(base_dir=str(tmp_path))}
    )
    assert result.success and result.output_for_node("third") == {"x": 3}
    assert calls.count("load_from_path") == 2  # second and third, once each
    assert calls.count("dump_to_path") == 3


def test_the_cycle_collector_frees_what_only_cycles_hold_and_waits_its_interval(monkeypatch):
    import gc
    import weakref

    import numpy as np

    from mm_pipeline import memory

    clock = [100.0]
    monkeypatch.setattr(memory.time, "monotonic", lambda: clock[0])
    collector = memory.CycleCollector(min_interval_s=10.0)
    was_enabled = gc.isenabled()
    gc.disable()  # only the collector collects here
    try:
        table = np.ones(1000)
        holder: dict = {"table": table}
        holder["self"] = holder  # a cycle: nothing else holds the table once the names are gone
        alive = weakref.ref(table)
        del table, holder
        clock[0] += 5.0
        assert not collector.maybe_collect() and alive() is not None  # within the interval: left as it is
        clock[0] += 5.0
        assert collector.maybe_collect() and alive() is None
        assert not collector.maybe_collect()  # the interval starts again
    finally:
        if was_enabled:
            gc.enable()

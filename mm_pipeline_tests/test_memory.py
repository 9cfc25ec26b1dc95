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

"""Freed heap memory goes back to the OS between steps (glibc only)."""

import numpy as np
import pytest

from mm_pipeline.memory import _malloc_trim, release_freed_memory


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 1e6


@pytest.mark.skipif(_malloc_trim() is None, reason="not glibc: malloc_trim does not exist")
def test_freed_heap_blocks_are_returned():
    big = np.ones(30_000_000 // 8)  # freeing a block this size (under 32 MB) raises the mmap threshold to it
    del big
    blocks = [np.ones(1_000_000) for _ in range(60)]  # 8 MB each, now served from the heap
    pins = [np.ones(100) for _ in range(60)]  # small live blocks between them keep the heap from shrinking
    del blocks
    before = _rss_mb()
    assert release_freed_memory()
    after = _rss_mb()
    assert before - after > 200, (before, after)  # about 480 MB of freed blocks
    assert len(pins) == 60

"""Handing freed heap memory back to the operating system between pipeline steps.

glibc serves allocations below its mmap threshold (which rises to 32 MB once a block that large is
freed) from the heap, and keeps the pages of freed heap blocks. In one process running step after step
(the in-process executor, ``mm-pipeline demo``) those pages add up: a ``builtin:large`` run held 8.3 GB
of resident memory of which 6.2 GB was freed blocks (``malloc_trim`` gave it back in well under a second).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import time


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None


def release_freed_memory() -> bool:
    """``malloc_trim(0)``: return the free pages of every malloc arena to the OS; what is still in use is
    untouched. Returns whether the C library has it (False elsewhere, where this does nothing)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class CycleCollector:
    """``gc.collect()`` between steps, at most once every ``min_interval_s`` seconds.

    A step's output (an item-item table of 1.6 GB on ``builtin:large``) was found alive at the start of the
    next step, held only by reference cycles among the objects of the run's event machinery; Python frees
    such cycles only when a full collection happens to run, so they could stay for a whole step and where
    the peak fell moved from run to run. A full collection costs 0.3-0.5 s in a process that has imported
    the pipeline, hence the interval: a step that ran long enough to leave large garbage is always followed
    by one, a string of sub-second asset checks is not."""

    def __init__(self, min_interval_s: float = 10.0):
        self.min_interval_s = float(min_interval_s)
        self._last = time.monotonic()

    def maybe_collect(self) -> bool:
        """Collect when ``min_interval_s`` have passed since the last collection (or since creation)."""
        now = time.monotonic()
        if now - self._last < self.min_interval_s:
            return False
        gc.collect()
        self._last = time.monotonic()
        return True

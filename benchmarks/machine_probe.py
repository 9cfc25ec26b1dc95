"""How fast this machine is right now, in the few kernels the pipeline's time goes to: one-thread figures that
put a benchmark's seconds in context.

    python benchmarks/machine_probe.py            # prints the figures as JSON

The shared machines this project is measured on differ from session to session by far more than most
changes do (the same ``builtin:large`` LightGCN epoch took 2.5 s in one session and 12 s in another, with
the same code). Every benchmark script records these figures beside its own (``"machine"`` in its JSON), so
two results can be compared kernel by kernel, and a slower run can be told apart from a slower machine:

* ``gemm_gflops``: a dense float32 matrix product (the content tower, EASE's Gram, scoring);
* ``copy_gbps``: copying into memory already in use (bandwidth: Adam, the full-table passes);
* ``first_touch_gbps``: writing freshly allocated memory (the page faults of every new large tensor;
  the two differ by 6x on some machines and hardly at all on others);
* ``gather_ms``: gathering 1M random 64-float rows of a table (the embedding lookups of a step: latency);
* ``spmm_ms``: a random sparse CSR graph over 60k nodes with 2M non-zeros times 64 columns (a propagation
  layer the size of ``large``'s, with no locality at all: the real graph's takes a fraction of it).

Each figure is the median of ``repeats`` timings on one torch thread (restored afterwards). ``scale`` shrinks
the arrays (the tests use a small one); only ``scale=1`` figures compare across runs, and they take a few
seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm: the first call pays for allocations and caches the others reuse
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def probe(scale: float = 1.0, repeats: int = 5, seed: int = 0) -> dict[str, float]:
    """The machine's figures (module docstring) at ``scale`` (1: the sizes named there)."""
    import torch

    from mm_pipeline.memory import release_freed_memory

    if not scale > 0 or repeats < 1:
        raise ValueError(f"probe needs scale > 0 and repeats >= 1, got scale={scale}, repeats={repeats}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        figures = _measure(torch, scale, repeats, torch.Generator().manual_seed(seed))
    finally:
        torch.set_num_threads(threads)
        # The arrays (~0.7 GB at scale 1) go back to the OS: a benchmark's memory readings start after the probe.
        release_freed_memory()
    return {**figures, "scale": scale}


def _measure(torch, scale: float, repeats: int, generator) -> dict[str, float]:
    side = max(64, int(1024 * scale**0.5))
    a, b = torch.rand(side, side, generator=generator), torch.rand(side, side, generator=generator)
    gemm = _median_seconds(lambda: a @ b, repeats)

    n_floats = max(1 << 16, int(32_000_000 * scale))  # 128 MB at scale 1: beyond any cache
    source, target = torch.rand(n_floats, generator=generator), torch.empty(n_floats)
    copy = _median_seconds(lambda: target.copy_(source), repeats)
    fresh = _median_seconds(lambda: torch.empty(n_floats).fill_(1.0), repeats)

    n_rows, n_picks = max(1024, int(60_000 * scale)), max(1024, int(1_000_000 * scale))
    table = torch.rand(n_rows, 64, generator=generator)
    picks = torch.randint(0, n_rows, (n_picks,), generator=generator)
    picked = torch.empty(n_picks, 64)
    gather = _median_seconds(lambda: torch.index_select(table, 0, picks, out=picked), repeats)

    nnz = max(4096, int(2_000_000 * scale))
    edges, weights = torch.randint(0, n_rows, (2, nnz), generator=generator), torch.rand(nnz, generator=generator)
    with warnings.catch_warnings():  # torch's "sparse CSR is beta" notice
        warnings.simplefilter("ignore", UserWarning)
        graph = torch.sparse_coo_tensor(edges, weights, (n_rows, n_rows), check_invariants=False)
        graph = graph.coalesce().to_sparse_csr()
    spmm = _median_seconds(lambda: graph @ table, repeats)
    return {
        "gemm_gflops": 2 * side**3 / gemm / 1e9,
        "copy_gbps": 2 * 4 * n_floats / copy / 1e9,  # read and write
        "first_touch_gbps": 4 * n_floats / fresh / 1e9,
        "gather_ms": gather * 1e3,
        "spmm_ms": spmm * 1e3,
    }


def describe(figures: dict[str, float]) -> str:
    """One line of the figures, for a benchmark's printed output."""
    return (
        f"machine (one thread): GEMM {figures['gemm_gflops']:.0f} GFLOP/s, copy {figures['copy_gbps']:.1f} GB/s, "
        f"fresh memory {figures['first_touch_gbps']:.1f} GB/s, gather {figures['gather_ms']:.0f} ms, "
        f"spmm {figures['spmm_ms']:.0f} ms"
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    figures = probe(repeats=args.repeats)
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()

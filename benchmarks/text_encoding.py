"""Text encoding in float32 against bfloat16: seconds (median of repeats), and how far the vectors move.

    python benchmarks/text_encoding.py --dataset builtin:large --items 3000 --repeats 3 --out text.json

Encodes the first ``--items`` non-empty item texts of a dataset (any spec the pipeline reads; a built-in one is
generated under ``--data-dir`` first) with the bundled all-MiniLM-L6-v2, once untimed (model load, warm-up)
and then ``--repeats`` times per precision, and prints per precision the median seconds and the ratio to
float32, plus the lowest and mean cosine between each text's two vectors and the share of each text's ten
nearest neighbours (by cosine, among the encoded texts) that the two precisions agree on. bfloat16 is emulated,
and slower than float32, on a CPU without AVX512-BF16 or AMX: ``text_precision("auto")`` is printed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

NEIGHBOURS = 10


def item_texts(spec: str, data_dir: str, limit: int) -> list[str]:
    from mm_pipeline.datasets.sources import load_source, resolve_source

    items = load_source(resolve_source(spec, data_dir)).items
    texts = [t for t in items["text"].astype(str).tolist() if t.strip()]
    if not texts:
        raise SystemExit(f"{spec} has no item texts to encode")
    return texts[:limit]


def neighbour_overlap(a: np.ndarray, b: np.ndarray, k: int = NEIGHBOURS) -> float:
    """Mean share of each row's ``k`` nearest rows (cosine, itself left out) that ``a`` and ``b`` agree on."""
    k = min(k, len(a) - 1)
    if k < 1:
        return 1.0
    nearest = []
    for x in (a, b):
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        nearest.append(np.argpartition(-sim, k - 1, axis=1)[:, :k])
    return float(np.mean([len(set(p) & set(q)) / k for p, q in zip(*nearest)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="builtin:default")
    parser.add_argument("--data-dir", default=".mm_pipeline/data")
    parser.add_argument("--items", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    from mm_pipeline.features.text import encode_texts, text_precision

    texts = item_texts(args.dataset, args.data_dir, args.items)
    vectors, seconds = {}, {}
    for precision in ("float32", "bfloat16"):
        encode_texts(texts[: args.batch_size], batch_size=args.batch_size, precision=precision)  # warm-up
        runs = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            vectors[precision] = encode_texts(texts, batch_size=args.batch_size, precision=precision)
            runs.append(time.perf_counter() - started)
        seconds[precision] = statistics.median(runs)
    cosine = (vectors["float32"] * vectors["bfloat16"]).sum(1)
    result = {
        "dataset": args.dataset,
        "texts": len(texts),
        "auto_precision": text_precision("auto"),
        "median_seconds": seconds,
        "bfloat16_over_float32": seconds["bfloat16"] / seconds["float32"],
        "cosine_min": float(cosine.min()),
        "cosine_mean": float(cosine.mean()),
        f"neighbour_overlap@{NEIGHBOURS}": neighbour_overlap(vectors["float32"], vectors["bfloat16"]),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(f".{out.name}.partial")
        partial.write_text(json.dumps(result, indent=2))
        partial.replace(out)  # whole or not at all


if __name__ == "__main__":
    main()

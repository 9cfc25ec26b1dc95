"""Compression for serving.

* :mod:`~mm_pipeline.compress.artifact` and :mod:`~mm_pipeline.compress.frontier`: the served MLflow
  artifact in a compact format (fp16, or int8 / int4 rows with per-row scales; narrow indices and keys),
  its size-quality-latency frontier and the variant that ships (``compressed_model``).
* :mod:`~mm_pipeline.compress.measure` and :mod:`~mm_pipeline.compress.serving`: a scorer-level study of
  magnitude pruning and int8 dynamic quantization of a dot-product scorer (PyTorch modules).
"""

from mm_pipeline.compress.artifact import compact_serving_arrays, serving_recommender
from mm_pipeline.compress.frontier import Frontier, compression_frontier
from mm_pipeline.compress.measure import (
    VARIANTS,
    compress_recommender,
    parameter_count,
    scoring_latency_ms,
    serialized_size_bytes,
)
from mm_pipeline.compress.serving import (
    ServingScorer,
    item_weight,
    prune_scorer,
    quantize_scorer,
    scorer_to_recommender,
)

__all__ = [
    "VARIANTS",
    "Frontier",
    "compact_serving_arrays",
    "compression_frontier",
    "serving_recommender",
    "ServingScorer",
    "compress_recommender",
    "item_weight",
    "parameter_count",
    "prune_scorer",
    "quantize_scorer",
    "scorer_to_recommender",
    "scoring_latency_ms",
    "serialized_size_bytes",
]

"""Compression for serving: magnitude pruning and int8 dynamic quantization of the scorer, measured."""

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

"""Evaluation: chronological splits, full-ranking top-k metrics and evaluation reports."""

from mm_pipeline.evaluate.metrics import (
    PAD,
    per_user_metrics,
    per_user_metrics_from_top_k,
    ranking_metrics,
    ranking_metrics_from_top_k,
    top_k,
)
from mm_pipeline.evaluate.report import (
    metrics_table_markdown,
    png_markdown,
    training_curve_png,
    write_report,
)
from mm_pipeline.evaluate.split import chronological_split, cold_items, interaction_matrix

__all__ = [
    "PAD",
    "chronological_split",
    "cold_items",
    "interaction_matrix",
    "metrics_table_markdown",
    "per_user_metrics",
    "per_user_metrics_from_top_k",
    "png_markdown",
    "ranking_metrics",
    "ranking_metrics_from_top_k",
    "top_k",
    "training_curve_png",
    "write_report",
]

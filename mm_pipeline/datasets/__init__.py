"""Datasets: the built-in synthetic generator, readers for on-disk formats, and the table schemas."""

from mm_pipeline.datasets.schema import RawDataset, QuarantineRecord
from mm_pipeline.datasets.sources import resolve_source

__all__ = ["RawDataset", "QuarantineRecord", "resolve_source"]

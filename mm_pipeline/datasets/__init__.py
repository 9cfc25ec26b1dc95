"""Datasets: the built-in synthetic generator, readers for on-disk formats (folder, MovieLens, MMRec),
and the table schemas. No Dagster here: usable from a notebook."""

from mm_pipeline.datasets.schema import DataError, QuarantineRecord, RawDataset
from mm_pipeline.datasets.sources import Source, load_source, resolve_source

__all__ = ["DataError", "QuarantineRecord", "RawDataset", "Source", "load_source", "resolve_source"]

"""Dataset specs (``builtin:default``, ``builtin:tiny:ecommerce``, ``folder:/data/shop``) -> loaded data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mm_pipeline.datasets import synthetic
from mm_pipeline.datasets.folder import load_folder
from mm_pipeline.datasets.schema import DataError, RawDataset


@dataclass(frozen=True)
class Source:
    kind: str          # "builtin" | "folder"
    root: Path
    description: str


def resolve_source(spec: str, data_dir: str | Path, seed: int = 0) -> Source:
    """Turn a dataset spec into a folder on disk, generating the built-in dataset when asked for."""
    kind, _, rest = spec.partition(":")
    if kind == "builtin":
        size, _, scenario = (rest or "default").partition(":")
        gen_spec = synthetic.spec_for(size, scenario or "video", seed=seed)
        root = Path(data_dir) / "builtin" / f"{size}-{gen_spec.scenario}-seed{seed}"
        synthetic.generate(gen_spec, root)
        return Source("builtin", root, f"built-in {size} ({gen_spec.scenario}), seed {seed}")
    if kind == "folder":
        if not rest:
            raise DataError("dataset spec 'folder:' needs a path, e.g. folder:/data/shop")
        return Source("folder", Path(rest).expanduser().resolve(), f"folder {rest}")
    raise DataError(f"unknown dataset spec {spec!r}; use builtin:<tiny|default|large>[:scenario] or folder:<path>")


def load_source(source: Source, text_columns: tuple[str, ...] | None = None) -> RawDataset:
    return load_folder(source.root, text_columns=text_columns)

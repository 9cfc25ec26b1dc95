"""Stores every asset value as a bundle folder under the project home, atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from mm_pipeline.settings import project_paths
from mm_pipeline.storage import load_bundle, save_bundle

_TABLE_KEY = "table"
_KIND_KEY = "_stored_kind"


class BundleIOManager(dg.ConfigurableIOManager):
    """DataFrames and ``dict`` bundles (arrays, tables, JSON values) -> ``<home>/assets/<asset key>/``.

    No pickle: arrays are ``.npy``/``.npz``, tables Parquet, the rest JSON (see ``mm_pipeline.storage``).
    """

    base_dir: str = ""

    def _path(self, context: dg.InputContext | dg.OutputContext) -> Path:
        root = Path(self.base_dir) if self.base_dir else project_paths().assets
        return root.joinpath(*context.asset_key.path)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if isinstance(obj, pd.DataFrame):
            bundle = {_TABLE_KEY: obj, _KIND_KEY: "table"}
        elif isinstance(obj, dict):
            bundle = dict(obj)
        else:
            raise TypeError(f"asset {context.asset_key.to_user_string()} returned {type(obj).__name__}; "
                            "this IO manager stores DataFrames and dict bundles")
        path = save_bundle(self._path(context), bundle)
        context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> Any:
        bundle = load_bundle(self._path(context))
        if bundle.get(_KIND_KEY) == "table":
            return bundle[_TABLE_KEY]
        return bundle

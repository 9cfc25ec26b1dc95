"""The project's own on-disk format.

A dataset folder holds

* ``items.csv`` or ``items.parquet``: ``item_id`` plus any number of text columns (which ones are used
  is configurable; default ``title`` and ``description`` when present), optional ``image`` and
  ``audio`` columns with paths relative to the folder. Extra columns are kept.
* ``interactions.csv`` or ``interactions.parquet``: ``user_id``, ``item_id``, ``timestamp`` (integer
  seconds or an ISO-8601 string), optional ``rating`` or ``weight``.
* optionally ``dataset.json`` with ``{"name": ..., "text_columns": [...]}``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mm_pipeline.datasets.schema import DataError, RawDataset
from mm_pipeline.datasets.tables import line_number, parse_timestamps, require_filled

DEFAULT_TEXT_COLUMNS = ("title", "description")


def _read_table(root: Path, stem: str) -> tuple[pd.DataFrame, Path]:
    for suffix in (".parquet", ".csv"):
        path = root / f"{stem}{suffix}"
        if path.exists():
            try:
                if suffix == ".parquet":
                    return pd.read_parquet(path), path
                frame = pd.read_csv(path, dtype={"item_id": str, "user_id": str}, keep_default_na=False,
                                    na_values=[""], encoding="utf-8", skip_blank_lines=False)
                # Blank lines are dropped but keep their place in the index, so row numbers stay exact.
                return frame[~frame.isna().all(axis=1)], path
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: not valid UTF-8 text ({exc.reason} at byte {exc.start}); "
                                "re-save the file as UTF-8") from exc
            except Exception as exc:  # pyarrow / pandas parse errors
                raise DataError(f"{path}: could not be read as {suffix[1:]} ({exc})") from exc
    raise DataError(f"{root}: no {stem}.csv or {stem}.parquet found; see the folder format in the README")


def _require(frame: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing required column(s) {missing}; found {list(frame.columns)}")


def _parse_weights(inter: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(inter[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        pos = int(bad.argmax())
        line = line_number(int(inter.index[pos]), path.suffix == ".csv")
        raise DataError(f"{path}: row {line} has {column} {str(inter[column].iloc[pos])!r}, which is "
                        f"not a number; fix that row or drop the {column} column (every interaction then weighs 1)")
    return values.astype(np.float32)


def _resolve_media(root: Path, values: pd.Series) -> list[str | None]:
    """Absolute paths for the non-empty entries. Escapes are kept as-is for the decoders to quarantine."""
    out: list[str | None] = []
    for value in values.tolist():
        if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
            out.append(None)
        else:
            out.append(str(root / str(value)))
    return out


def _read_meta(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); fix it or delete it (it is optional)") from exc
    if not isinstance(meta, dict):
        raise DataError(f"{path}: must hold a JSON object such as {{\"name\": \"shop\"}}")
    return meta


def load_folder(root: str | Path, text_columns: tuple[str, ...] | None = None) -> RawDataset:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; check MM_PIPELINE_DATASET or the source config")
    meta = _read_meta(root / "dataset.json")
    items, items_path = _read_table(root, "items")
    _require(items, items_path, ("item_id",))
    inter, inter_path = _read_table(root, "interactions")
    _require(inter, inter_path, ("user_id", "item_id", "timestamp"))
    require_filled(items, items_path, ("item_id",), header=items_path.suffix == ".csv")
    require_filled(inter, inter_path, ("user_id", "item_id"), header=inter_path.suffix == ".csv")
    if len(inter) == 0:
        raise DataError(f"{inter_path}: holds no interactions; the recommender needs at least some")

    text_columns = tuple(text_columns or meta.get("text_columns") or
                         [c for c in DEFAULT_TEXT_COLUMNS if c in items.columns])
    _require(items, items_path, text_columns)
    items = items.copy()
    items["item_id"] = items["item_id"].astype(str)
    if items["item_id"].duplicated().any():
        dup = items.loc[items["item_id"].duplicated(), "item_id"].iloc[0]
        raise DataError(f"{items_path}: item_id {dup!r} appears more than once; item ids must be unique")
    text = items[list(text_columns)].fillna("").astype(str) if text_columns else pd.DataFrame(index=items.index)
    items["text"] = text.apply(lambda row: ". ".join(s.strip() for s in row if s.strip()), axis=1) \
        if text_columns else ""
    has_image = "image" in items.columns
    has_audio = "audio" in items.columns
    items["image"] = _resolve_media(root, items["image"]) if has_image else None
    items["audio"] = _resolve_media(root, items["audio"]) if has_audio else None
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)

    weight_col = "weight" if "weight" in inter.columns else ("rating" if "rating" in inter.columns else None)
    interactions = pd.DataFrame({
        "user_id": inter["user_id"].astype(str).to_numpy(),
        "item_id": inter["item_id"].astype(str).to_numpy(),
        "timestamp": parse_timestamps(inter["timestamp"], inter_path, header=inter_path.suffix == ".csv"),
        "weight": (_parse_weights(inter, weight_col, inter_path) if weight_col
                   else np.ones(len(inter), dtype=np.float32)),
    })
    modalities = tuple(m for m, present in (("text", bool(text_columns)), ("image", has_image),
                                            ("audio", has_audio)) if present)
    return RawDataset(name=meta.get("name", root.name), root=root, items=items, interactions=interactions,
                      modalities=modalities, info={"text_columns": list(text_columns), "format": "folder",
                                                   "items_file": str(items_path),
                                                   "interactions_file": str(inter_path)})

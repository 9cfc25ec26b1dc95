"""The MMRec layout: preprocessed interactions with a fixed split and precomputed item features.

A dataset folder (e.g. ``baby/``) holds

* ``<name>.inter``: tab-separated with the header ``userID itemID rating timestamp x_label``; ids are
  integers, ``x_label`` is the published split (0 train, 1 valid, 2 test);
* ``text_feat.npy`` / ``image_feat.npy`` (and, if present, ``audio_feat.npy``): float arrays
  ``[n_items, d]`` whose row ``i`` belongs to item id ``i``.

The contract with the pipeline (read by the ``interaction_split`` and ``*_features`` assets through
the ``source_dataset`` manifest):

* ``info["precomputed"] = {"text": path, "image": path}``: those features are used as they are, no
  extraction or encoder training happens for them;
* ``info["feature_row_column"] = "feature_row"``: the items table column giving each item's row in
  those arrays (items are sorted by their string id, so row order and item order differ);
* ``info["split_column"] = "x_label"``: the interactions column holding the published split, used
  instead of the chronological split so results are comparable with published tables.

No rating threshold or k-core filtering is applied: MMRec data is already filtered, and changing it
would break that comparability. Files are only read (memory-mapped), never modified.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from mm_pipeline.datasets.schema import DataError, RawDataset
from mm_pipeline.datasets.tables import parse_numbers, read_delimited, require_columns, require_filled

INTER_COLUMNS = ("userID", "itemID", "rating", "timestamp", "x_label")
FEATURE_FILES = {"text": "text_feat.npy", "image": "image_feat.npy", "audio": "audio_feat.npy"}
SPLIT_LABELS = ("train", "valid", "test")  # x_label 0, 1, 2
FEATURE_ROW = "feature_row"
SPLIT_COLUMN = "x_label"


def _inter_file(root: Path, name: str | None) -> Path:
    if name:
        path = root / f"{name}.inter"
        if not path.is_file():
            raise DataError(f"{path} does not exist; the mmrec 'name' option names <name>.inter in {root}")
        return path
    found = sorted(root.glob("*.inter"))
    if not found:
        raise DataError(
            f"{root}: no <name>.inter file; an MMRec dataset folder holds <name>.inter, "
            "text_feat.npy and image_feat.npy"
        )
    if len(found) > 1:
        raise DataError(
            f"{root}: several .inter files {[p.name for p in found]}; choose one with mmrec:{root}?name={found[0].stem}"
        )
    return found[0]


def feature_shape(path: Path) -> tuple[int, int]:
    """Validate a feature file without reading it all: a 2-D numeric array. Returns its shape."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise DataError(
            f"{path}: not a plain numeric .npy array ({exc}); save it with np.save(path, features.astype(np.float32))"
        ) from exc
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as a .npy file ({exc})") from exc
    if array.ndim != 2 or array.dtype.kind not in "fiu":
        raise DataError(
            f"{path}: expected a 2-D numeric array [n_items, dim], found shape {array.shape} and dtype {array.dtype}"
        )
    return int(array.shape[0]), int(array.shape[1])


def load_mmrec(root: str | Path, name: str | None = None) -> RawDataset:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"MMRec folder {root} does not exist; check MM_PIPELINE_DATASET")
    inter_path = _inter_file(root, name)
    raw, blank = read_delimited(inter_path, sep="\t", quoting=csv.QUOTE_NONE)
    raw.columns = [str(c).strip() for c in raw.columns]
    require_columns(raw, inter_path, INTER_COLUMNS, "the first line must be the header " + "\\t".join(INTER_COLUMNS))
    require_filled(raw, inter_path, list(INTER_COLUMNS), header=True)
    users = parse_numbers(raw, "userID", inter_path, True, integer=True)
    item_rows = parse_numbers(raw, "itemID", inter_path, True, integer=True)
    labels = parse_numbers(raw, "x_label", inter_path, True, integer=True, allowed=(0, 1, 2))
    ratings = parse_numbers(raw, "rating", inter_path, True).astype(np.float32)
    timestamps = parse_numbers(raw, "timestamp", inter_path, True, integer=True)
    if len(item_rows) and item_rows.min() < 0:
        pos = int(item_rows.argmin())
        raise DataError(
            f"{inter_path}: line {int(raw.index[pos]) + 2}: itemID {item_rows[pos]} is negative; MMRec "
            "item ids are feature row numbers 0..n_items-1"
        )

    shapes = {m: feature_shape(root / f) for m, f in FEATURE_FILES.items() if (root / f).is_file()}
    if not shapes:
        raise DataError(
            f"{root}: no precomputed features; an MMRec folder needs text_feat.npy and/or image_feat.npy "
            "(row i = item id i)"
        )
    rows = {m: s[0] for m, s in shapes.items()}
    if len(set(rows.values())) > 1:
        raise DataError(
            f"{root}: the feature files disagree on the number of items ({rows}); row i of every file must be item id i"
        )
    n_items = next(iter(rows.values()))
    if len(item_rows) and item_rows.max() >= n_items:
        pos = int(item_rows.argmax())
        raise DataError(
            f"{inter_path}: line {int(raw.index[pos]) + 2}: itemID {item_rows[pos]} has no feature row "
            f"({', '.join(FEATURE_FILES[m] for m in shapes)} hold {n_items} rows, ids 0..{n_items - 1})"
        )

    ids = np.arange(n_items)
    items = pd.DataFrame({"item_id": ids.astype(str), "text": "", "image": None, "audio": None, FEATURE_ROW: ids})
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    interactions = pd.DataFrame(
        {
            "user_id": users.astype(str),
            "item_id": item_rows.astype(str),
            "timestamp": timestamps,
            "weight": ratings,
            SPLIT_COLUMN: labels.astype(np.int8),
        }
    )
    per_split = np.bincount(labels, minlength=3) if len(labels) else np.zeros(3, dtype=np.int64)
    modalities = tuple(m for m in ("text", "image", "audio") if m in shapes)
    info = {
        "format": "mmrec",
        "interactions_file": str(inter_path),
        "blank_lines": blank,
        "precomputed": {m: str(root / FEATURE_FILES[m]) for m in shapes},
        "feature_dims": {m: s[1] for m, s in shapes.items()},
        "feature_row_column": FEATURE_ROW,
        "split_column": SPLIT_COLUMN,
        "split_labels": {str(i): s for i, s in enumerate(SPLIT_LABELS)},
        "counts": {
            "interactions": int(len(interactions)),
            "users": int(len(np.unique(users))),
            "items": n_items,
            **{s: int(c) for s, c in zip(SPLIT_LABELS, per_split)},
        },
        "skipped_modalities": {
            m: f"no {FEATURE_FILES[m]} (and MMRec has no raw {m} files)"
            for m in ("text", "image", "audio")
            if m not in shapes
        },
    }
    return RawDataset(
        name=inter_path.stem, root=root, items=items, interactions=interactions, modalities=modalities, info=info
    )

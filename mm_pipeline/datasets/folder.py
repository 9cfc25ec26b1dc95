"""The project's own on-disk format.

A dataset folder holds

* ``items.csv`` or ``items.parquet``: ``item_id`` plus any number of text columns (which ones are used
  is configurable; default ``title`` and ``description`` when present), optional ``image`` and
  ``audio`` columns with paths relative to the folder. Extra columns are kept.
* ``interactions.csv`` or ``interactions.parquet``: ``user_id``, ``item_id``, ``timestamp`` (integer
  seconds or an ISO-8601 string), optional ``rating`` or ``weight``.
* optionally ``dataset.json`` with ``{"name": ..., "text_columns": [...]}``.

Options (from the dataset spec, ``folder:/data/shop?bad_rows=quarantine&encoding=latin-1``):

* ``bad_rows``: ``error`` (default) stops at the first unusable row, naming its line and column;
  ``quarantine`` sets such rows aside (an empty or repeated ``item_id`` in the catalogue; an empty
  ``user_id``/``item_id``, an unparsable ``timestamp``, a non-numeric ``rating``/``weight`` or an
  ``item_id`` missing from the catalogue in the interactions; in either table a line that is not text
  in the table's encoding) in :attr:`RawDataset.row_quarantine` and loads the rest.
* ``encoding``: the text encoding of CSV tables (default ``utf-8``).
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import numpy as np
import pandas as pd

from mm_pipeline.datasets.schema import DataError, RawDataset
from mm_pipeline.datasets.tables import (
    BAD_ROWS,
    RowQuarantine,
    UndecodableLine,
    decode_table_lines,
    encoding_error,
    line_number,
    number_values,
    timestamp_problem,
    timestamp_seconds,
)

DEFAULT_TEXT_COLUMNS = ("title", "description")
REQUIRED = {"items": ("item_id",), "interactions": ("user_id", "item_id", "timestamp")}
#: Appended to errors about one row: the other way out.
QUARANTINE_HINT = "; or add ?bad_rows=quarantine to the dataset spec to set such rows aside and load the rest"
#: Appended to errors about text that is not in the table's encoding.
ENCODING_HINT = " (or name its encoding in the dataset spec, e.g. folder:/data/shop?encoding=latin-1)"


def _read_table(
    root: Path, stem: str, encoding: str = "utf-8", quarantine: bool = False
) -> tuple[pd.DataFrame, Path, list[UndecodableLine]]:
    """``(frame, path, undecodable lines)``. Lines that are not ``encoding`` text stop the load, or under
    ``quarantine`` are left out and returned for the row-quarantine table."""
    for suffix in (".parquet", ".csv"):
        path = root / f"{stem}{suffix}"
        if path.exists():
            try:
                if suffix == ".parquet":
                    return pd.read_parquet(path), path, []
                try:
                    return _read_csv(path, encoding), path, []
                except UnicodeDecodeError as exc:
                    if not quarantine:
                        raise encoding_error(path, encoding, exc, hint=ENCODING_HINT + QUARANTINE_HINT) from exc
                # Only a table with bad bytes is decoded line by line (in memory) to set those lines aside.
                text, undecodable = decode_table_lines(path, encoding, hint=ENCODING_HINT)
                return _read_csv(text, encoding), path, undecodable
            except DataError:
                raise
            except pd.errors.EmptyDataError as exc:
                raise DataError(
                    f"{path}: the file is empty; it needs a header line naming the columns "
                    f"({', '.join(REQUIRED[stem])}, ...) and one line per row"
                ) from exc
            except pd.errors.ParserError as exc:
                raise DataError(
                    f"{path}: malformed CSV ({str(exc).strip()}); every line needs the same number of "
                    "fields (quote fields that contain commas)"
                ) from exc
            except Exception as exc:  # pyarrow / pandas parse errors
                raise DataError(f"{path}: could not be read as {suffix[1:]} ({exc})") from exc
    raise DataError(f"{root}: no {stem}.csv or {stem}.parquet found; see the folder format in docs/datasets.md")


def _read_csv(source, encoding: str) -> pd.DataFrame:
    frame = pd.read_csv(
        source,
        dtype={"item_id": str, "user_id": str},
        keep_default_na=False,
        na_values=[""],
        encoding=encoding,
        skip_blank_lines=False,
    )
    # Blank lines are dropped but keep their place in the index, so row numbers stay exact.
    return frame[~frame.isna().all(axis=1)]


def _require(frame: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing required column(s) {missing}; found {list(frame.columns)}")


def _blank(values: pd.Series) -> np.ndarray:
    """Empty cells: missing, or only whitespace."""
    return (values.isna() | (values.astype("string").str.strip() == "")).to_numpy(dtype=bool)


def _refuse_first(mask: np.ndarray, frame: pd.DataFrame, path: Path, message: str, header: bool) -> None:
    """Raise a DataError for the first row in ``mask``; ``message`` holds ``{line}``."""
    if mask.any():
        pos = int(mask.argmax())
        raise DataError(f"{path}: " + message.format(line=line_number(int(frame.index[pos]), header)))


def _read_meta(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); fix it or delete it (it is optional)") from exc
    if not isinstance(meta, dict):
        raise DataError(f'{path}: must hold a JSON object such as {{"name": "shop"}}')
    return meta


def _resolve_media(root: Path, values: pd.Series) -> list[str | None]:
    """Absolute paths for the non-empty entries. Escapes are kept as-is for the decoders to quarantine."""
    out: list[str | None] = []
    for value in values.tolist():
        if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
            out.append(None)
        else:
            out.append(str(root / str(value)))
    return out


def _clean_items(items: pd.DataFrame, path: Path, quarantine: bool, rejected: RowQuarantine) -> pd.DataFrame:
    """Rows with an empty or repeated ``item_id``: refused, or quarantined (a repeat keeps the first)."""
    header = path.suffix == ".csv"
    blank = _blank(items["item_id"])
    if not quarantine:
        _refuse_first(
            blank,
            items,
            path,
            "line {line} has no value in column 'item_id' (an empty field or too "
            "few fields on the line); fix or remove that line" + QUARANTINE_HINT,
            header,
        )
    rejected.add(path, items, blank, "item_id", "empty item_id; every catalogue row needs one", header)
    items = items[~blank].copy()
    items["item_id"] = items["item_id"].astype(str)
    repeated = items["item_id"].duplicated(keep="first").to_numpy()
    if repeated.any():
        first_line = (
            pd.Series(line_number(items.index.to_numpy(), header), index=items.index)
            .groupby(items["item_id"].to_numpy())
            .transform("first")
        )
        if not quarantine:
            pos = int(repeated.argmax())
            raise DataError(
                f"{path}: item_id {items['item_id'].iloc[pos]!r} on line "
                f"{line_number(int(items.index[pos]), header)} repeats line {int(first_line.iloc[pos])}; "
                "item ids must be unique" + QUARANTINE_HINT
            )
        reasons = [f"item_id repeats line {int(line)}; the first is kept" for line in first_line[repeated]]
        rejected.add(path, items, repeated, "item_id", reasons, header)
        items = items[~repeated].copy()
    return items


def _interactions(
    inter: pd.DataFrame, path: Path, catalogue: pd.Index, quarantine: bool, rejected: RowQuarantine
) -> pd.DataFrame:
    """The interaction table, typed. Unusable rows raise, or are quarantined and left out."""
    header = path.suffix == ".csv"
    blank_user, blank_item = _blank(inter["user_id"]), _blank(inter["item_id"])
    seconds, bad_time = timestamp_seconds(inter["timestamp"])
    weight_col = "weight" if "weight" in inter.columns else ("rating" if "rating" in inter.columns else None)
    weights, bad_weight = (
        number_values(inter[weight_col]) if weight_col else (np.ones(len(inter)), np.zeros(len(inter), dtype=bool))
    )
    if not quarantine:
        for column, mask in (("user_id", blank_user), ("item_id", blank_item)):
            _refuse_first(
                mask,
                inter,
                path,
                "line {line} has no value in column " + repr(column) + " (an empty "
                "field or too few fields on the line); fix or remove that line" + QUARANTINE_HINT,
                header,
            )
        if bad_time.any():
            pos = int(bad_time.argmax())
            value = inter["timestamp"].iloc[pos]
            line = line_number(int(inter.index[pos]), header)
            problem = timestamp_problem(value)
            raise DataError(
                f"{path}: row {line} has "
                + (
                    f"an {problem}"
                    if problem.startswith("empty")
                    else f"timestamp {str(value)!r}, which is neither integer seconds nor an ISO-8601 date; "
                    "fix or remove that row"
                )
                + QUARANTINE_HINT
            )
        if bad_weight.any():
            pos = int(bad_weight.argmax())
            line = line_number(int(inter.index[pos]), header)
            raise DataError(
                f"{path}: row {line} has {weight_col} {str(inter[weight_col].iloc[pos])!r}, which is "
                f"not a number; fix that row or drop the {weight_col} column (every interaction then "
                "weighs 1)" + QUARANTINE_HINT
            )
        keep = np.ones(len(inter), dtype=bool)
    else:
        unknown = ~blank_item & ~inter["item_id"].astype(str).isin(catalogue).to_numpy()
        rejected.add(path, inter, blank_user, "user_id", "empty user_id", header)
        rejected.add(path, inter, blank_item, "item_id", "empty item_id", header)
        rejected.add(path, inter, unknown, "item_id", "item_id is not in the catalogue (items table)", header)
        if bad_time.any():
            rejected.add(
                path, inter, bad_time, "timestamp", [timestamp_problem(v) for v in inter["timestamp"][bad_time]], header
            )
        if weight_col:
            rejected.add(path, inter, bad_weight, weight_col, f"{weight_col} is not a number", header)
        keep = ~(blank_user | blank_item | unknown | bad_time | bad_weight)
    return pd.DataFrame(
        {
            "user_id": inter["user_id"].astype(str).to_numpy()[keep],
            "item_id": inter["item_id"].astype(str).to_numpy()[keep],
            "timestamp": seconds[keep].astype(np.int64),
            "weight": weights[keep].astype(np.float32),
        }
    )


def folder_options(options: dict[str, str]) -> dict[str, str]:
    """Spec options -> :func:`load_folder` keyword arguments, checked."""
    bad_rows = options.get("bad_rows", "error") or "error"
    if bad_rows not in BAD_ROWS:
        raise DataError(f"dataset spec option bad_rows={bad_rows!r} must be one of {', '.join(BAD_ROWS)}")
    encoding = options.get("encoding", "utf-8") or "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError as exc:
        raise DataError(
            f"dataset spec option encoding={encoding!r} is not a known text encoding (e.g. utf-8, latin-1, cp1252)"
        ) from exc
    return {"bad_rows": bad_rows, "encoding": encoding}


def _summary(rejected: pd.DataFrame, items_path: Path, inter_path: Path) -> dict:
    """JSON-able counts of quarantined rows per table, for the dataset manifest."""
    out = {}
    for name, path in (("items", items_path), ("interactions", inter_path)):
        part = rejected[rejected["file"] == str(path)]
        out[name] = {
            "rows": int(part["row"].nunique()),
            "problems": len(part),
            "by_reason": {
                str(k): int(v)
                for k, v in part["reason"]
                .str.split(";")
                .str[0]
                .str.replace(r"repeats line \d+", "repeats an earlier line", regex=True)
                .value_counts()
                .items()
            },
        }
    return out


def load_folder(
    root: str | Path, text_columns: tuple[str, ...] | None = None, bad_rows: str = "error", encoding: str = "utf-8"
) -> RawDataset:
    folder_options({"bad_rows": bad_rows, "encoding": encoding})
    quarantine = bad_rows == "quarantine"
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"dataset folder {root} does not exist"
            + (" (it is a file)" if root.exists() else "")
            + "; check MM_PIPELINE_DATASET or the source config"
        )
    meta = _read_meta(root / "dataset.json")
    rejected = RowQuarantine()
    items, items_path, undecodable_items = _read_table(root, "items", encoding, quarantine)
    _require(items, items_path, REQUIRED["items"])
    inter, inter_path, undecodable_inter = _read_table(root, "interactions", encoding, quarantine)
    _require(inter, inter_path, REQUIRED["interactions"])
    rejected.add_undecodable(items_path, undecodable_items)
    rejected.add_undecodable(inter_path, undecodable_inter)
    text_columns = tuple(
        text_columns or meta.get("text_columns") or [c for c in DEFAULT_TEXT_COLUMNS if c in items.columns]
    )
    _require(items, items_path, text_columns)
    if len(items) == 0 and not undecodable_items:
        raise DataError(f"{items_path}: holds no items; the catalogue needs at least the interacted items")
    if len(inter) == 0 and not undecodable_inter:
        raise DataError(f"{inter_path}: holds no interactions; the recommender needs at least some")

    items = _clean_items(items, items_path, quarantine, rejected)
    text = items[list(text_columns)].fillna("").astype(str) if text_columns else pd.DataFrame(index=items.index)
    items["text"] = (
        text.apply(lambda row: ". ".join(s.strip() for s in row if s.strip()), axis=1)
        if text_columns and len(items)
        else ""
    )
    has_image = "image" in items.columns
    has_audio = "audio" in items.columns
    items["image"] = _resolve_media(root, items["image"]) if has_image else None
    items["audio"] = _resolve_media(root, items["audio"]) if has_audio else None
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)

    interactions = _interactions(inter, inter_path, pd.Index(items["item_id"]), quarantine, rejected)
    table = rejected.frame()
    for path, frame, what in ((items_path, items, "items"), (inter_path, interactions, "interactions")):
        if len(frame) == 0:
            reasons = table.loc[table["file"] == str(path), "reason"].value_counts().head(3).to_dict()
            raise DataError(
                f"{path}: every row was quarantined, no {what} are left; the most common reasons: "
                f"{reasons}. Fix the table (bad_rows=quarantine only sets some rows aside)"
            )
    modalities = tuple(
        m for m, present in (("text", bool(text_columns)), ("image", has_image), ("audio", has_audio)) if present
    )
    info = {
        "text_columns": list(text_columns),
        "format": "folder",
        "items_file": str(items_path),
        "interactions_file": str(inter_path),
        "bad_rows": bad_rows,
        "encoding": encoding,
    }
    if quarantine:
        info["row_quarantine"] = _summary(table, items_path, inter_path)
    return RawDataset(
        name=meta.get("name", root.name),
        root=root,
        items=items,
        interactions=interactions,
        modalities=modalities,
        info=info,
        row_quarantine=table,
    )

"""Small helpers that turn core outputs into Dagster metadata."""

from __future__ import annotations

import math

import dagster as dg
import numpy as np
import pandas as pd

#: Rows a table in metadata shows by default: metadata is stored in the event log with every run.
TABLE_ROWS = 30


def frame_markdown(frame: pd.DataFrame, max_rows: int = 30, digits: int = 4) -> str:
    """A markdown table (no extra dependency), at most ``max_rows`` rows."""
    if frame.empty:
        return "_empty_"
    shown = frame.head(max_rows)
    cells = [
        [f"{v:.{digits}f}" if isinstance(v, (float, np.floating)) else str(v) for v in row]
        for row in shown.itertuples(index=False)
    ]
    header = "| " + " | ".join(map(str, shown.columns)) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    more = [f"\n_{len(frame) - max_rows} more rows_"] if len(frame) > max_rows else []
    return "\n".join([header, rule, *body, *more])


def _column_type(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    return "string"


def _cell(value, kind: str, digits: int | None):
    """One value as a table-record field: the column's type, ``None`` for missing or non-finite numbers
    (the event log stores metadata as JSON, which has no NaN)."""
    if value is None or (not isinstance(value, (str, bytes)) and np.ndim(value) == 0 and pd.isna(value)):
        return None
    if kind == "bool":
        return bool(value)
    if kind == "int":
        return int(value)
    if kind == "float":
        number = float(value)
        if not math.isfinite(number):
            return None
        return round(number, digits) if digits is not None else number
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def frame_table(frame: pd.DataFrame, max_rows: int = TABLE_ROWS, digits: int | None = 6) -> dg.TableMetadataValue:
    """``frame`` as Dagster table metadata: a schema with each column's type (int, float, bool or
    string) and at most ``max_rows`` rows; floats rounded to ``digits`` decimals, missing values empty.
    A named index becomes the first column. When rows were left out, the schema's table constraint
    says how many."""
    named_index = any(name is not None for name in frame.index.names)
    frame = frame.reset_index(drop=not named_index)  # a named index (e.g. a group-by key) is a column
    names = [str(c) for c in frame.columns]
    if len(set(names)) != len(names):
        raise ValueError(f"frame_table needs unique column names, got {names}")
    kinds = [_column_type(frame[c]) for c in frame.columns]
    shown = frame.head(max_rows)
    records = [
        dg.TableRecord({name: _cell(value, kind, digits) for name, kind, value in zip(names, kinds, row)})
        for row in shown.itertuples(index=False, name=None)
    ]
    constraints = (
        dg.TableConstraints(other=[f"first {len(shown)} of {len(frame)} rows shown"])
        if len(frame) > len(shown)
        else None
    )
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name, kind) for name, kind in zip(names, kinds)], constraints=constraints
    )
    return dg.MetadataValue.table(records, schema=schema)


def quarantine_metadata(table: pd.DataFrame) -> dict:
    return {"quarantined": len(table), "quarantine": frame_table(table, 20)}


def history_metadata(history: pd.DataFrame, columns: list[str], title: str) -> dict:
    """Training curve as an inline PNG plus the per-epoch table."""
    from mm_pipeline.evaluate.report import png_markdown, training_curve_png

    columns = [c for c in columns if c in history.columns]
    meta: dict = {"epochs": len(history), "history": frame_table(history, 200)}
    if columns and len(history):
        meta["training_curve"] = dg.MetadataValue.md(png_markdown(training_curve_png(history, columns, title), title))
    return meta


USER_KEY_CHARS = 16  # enough to tell users apart in a table, short enough to read


def without_user_ids(frame: pd.DataFrame, column: str = "user_id") -> pd.DataFrame:
    """``frame`` with the raw user ids in ``column`` replaced by a ``user_key`` column: the first
    characters of their keyed hash (HMAC under the project's user key secret, as the served model stores
    them). Dagster metadata is readable by everyone with UI access, so raw ids never go there."""
    if column not in frame.columns:
        return frame
    from mm_pipeline.registry.pyfunc import user_key
    from mm_pipeline.registry.user_keys import pipeline_user_key_secret

    secret = pipeline_user_key_secret()
    keys = [("" if pd.isna(u) else user_key(str(u), secret)[:USER_KEY_CHARS]) for u in frame[column]]
    position = list(frame.columns).index(column)
    out = frame.drop(columns=column)
    out.insert(position, "user_key", keys)
    return out

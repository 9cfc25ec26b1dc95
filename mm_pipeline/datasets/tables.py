"""Reading delimited text tables strictly: every problem names the file, the line and the column.

Shared by the readers of on-disk formats (folder, MovieLens, MMRec). Everything is read as strings
first and converted column by column (vectorized), so a bad value is reported where it is instead of
silently turning a whole column into another type.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from mm_pipeline.datasets.schema import DataError


def line_number(position: int, header: bool) -> int:
    """1-based line in the file of the ``position``-th data row (blank lines are kept, so this is exact)."""
    return position + (2 if header else 1)


def read_delimited(path: Path, *, sep: str, names: list[str] | None = None, encoding: str = "utf-8",
                   quoting: int = csv.QUOTE_MINIMAL, what: str = "", numeric: dict[str, str] | None = None
                   ) -> tuple[pd.DataFrame, int]:
    """All cells as strings (empty cells as NaN). ``names`` given: the file has no header line.

    Returns ``(frame, blank_lines)``: entirely blank lines are dropped and counted (the frame keeps
    the original row positions in its index, so :func:`line_number` stays exact).

    ``numeric`` (column -> ``"int64"``/``"float64"``) allows a fast typed read for large tables (tens of
    millions of ratings): it is used only when every cell parses, the table has no blank line and no
    missing or non-finite value; anything else falls back to the string read, whose checks name the line.
    """
    if numeric:
        fast = _read_typed(path, sep=sep, names=names, encoding=encoding, quoting=quoting, numeric=numeric)
        if fast is not None:
            return fast, 0
    header = names is None
    try:
        frame = pd.read_csv(path, sep=sep, header=0 if header else None, names=names, dtype=str,
                            keep_default_na=False, na_values=[""], encoding=encoding, quoting=quoting,
                            skip_blank_lines=False, index_col=False)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid {encoding} text ({exc.reason} at byte {exc.start}); "
                        f"re-save the file as {encoding}") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: the file is empty{'; ' + what if what else ''}") from exc
    except pd.errors.ParserError as exc:
        # pandas names the line ("Expected 4 fields in line 7, saw 5").
        raise DataError(f"{path}: malformed {'tab' if sep == chr(9) else repr(sep)}-separated table ({exc}); "
                        "every line needs the same number of fields") from exc
    blank = frame.isna().all(axis=1)
    if names is not None and frame.shape[1] > len(names):  # pragma: no cover - pandas raises first
        raise DataError(f"{path}: more fields than the expected {names}")
    return frame[~blank], int(blank.sum())


def _read_typed(path: Path, *, sep: str, names: list[str] | None, encoding: str, quoting: int,
                numeric: dict[str, str]) -> pd.DataFrame | None:
    try:
        frame = pd.read_csv(path, sep=sep, header=0 if names is None else None, names=names, dtype=numeric,
                            encoding=encoding, quoting=quoting, skip_blank_lines=False, index_col=False,
                            keep_default_na=False, na_values=[""])
    except Exception:  # any parse problem: the string read finds and names it
        return None
    if any(c not in frame.columns for c in numeric):
        return None
    values = frame[list(numeric)]
    if values.isna().to_numpy().any() or not np.isfinite(values.to_numpy(dtype=np.float64)).all():
        return None
    if frame.isna().all(axis=1).any():
        return None
    return frame


def require_columns(frame: pd.DataFrame, path: Path, columns: tuple[str, ...] | list[str], hint: str = "") -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing required column(s) {missing}; found {list(frame.columns)}"
                        + (f"; {hint}" if hint else ""))


def require_filled(frame: pd.DataFrame, path: Path, columns: tuple[str, ...] | list[str], header: bool) -> None:
    """Every listed column has a value on every row (a short line leaves the last fields empty)."""
    for column in columns:
        empty = frame[column].isna().to_numpy()
        if empty.any():
            pos = int(empty.argmax())
            raise DataError(f"{path}: line {line_number(int(frame.index[pos]), header)} has no value in column "
                            f"{column!r} (an empty field or too few fields on the line); fix or remove that line")


def parse_numbers(frame: pd.DataFrame, column: str, path: Path, header: bool, integer: bool = False,
                  allowed: tuple | None = None) -> np.ndarray:
    """``frame[column]`` as int64 (``integer``) or float64; the first bad cell raises a DataError."""
    raw = frame[column]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if integer:
        with np.errstate(invalid="ignore"):
            bad |= (values != np.round(values)) | (np.abs(values) > 2 ** 62)
    if allowed is not None:
        bad |= ~np.isin(values, np.asarray(allowed, dtype=np.float64))
    if bad.any():
        pos = int(bad.argmax())
        expected = ("one of " + ", ".join(map(str, allowed))) if allowed is not None else \
            ("an integer" if integer else "a number")
        raise DataError(f"{path}: line {line_number(int(frame.index[pos]), header)}, column {column!r}: "
                        f"{raw.iloc[pos]!r} is not {expected}; fix or remove that line")
    return values.astype(np.int64) if integer else values


def parse_timestamps(values: pd.Series, path: Path, header: bool = True, column: str = "timestamp") -> np.ndarray:
    """Integer seconds or ISO-8601 dates (mixed is fine) -> int64 seconds since the epoch.

    The first value that is neither names its line: ``row <line>`` in the file.
    """
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.to_numpy(dtype=np.float64)
        parsed_dates = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    else:
        text = values.astype("string").str.strip()
        numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        parsed_dates = pd.to_datetime(text.where(np.isnan(numbers)), errors="coerce", utc=True, format="ISO8601")
    with np.errstate(invalid="ignore"):
        numeric_ok = np.isfinite(numbers) & (np.abs(numbers) < 2 ** 62)
    date_ok = parsed_dates.notna().to_numpy()
    bad = ~(numeric_ok | date_ok)
    if bad.any():
        pos = int(bad.argmax())
        value = values.iloc[pos]
        line = line_number(int(values.index[pos]), header)
        if value is None or (isinstance(value, float) and np.isnan(value)) or pd.isna(value):
            raise DataError(f"{path}: row {line} has an empty {column}; every interaction needs one")
        raise DataError(f"{path}: row {line} has {column} {str(value)!r}, which is neither integer seconds nor an "
                        "ISO-8601 date; fix or remove that row")
    seconds = np.where(numeric_ok, numbers, 0.0).astype(np.int64)
    from_dates = date_ok & ~numeric_ok
    if from_dates.any():
        seconds[from_dates] = parsed_dates[from_dates].astype("int64").to_numpy() // 1_000_000_000
    return seconds

"""Reading delimited text tables strictly: every problem names the file, the line and the column.

Shared by the readers of on-disk formats (folder, MovieLens, MMRec). Everything is read as strings
first and converted column by column (vectorized), so a bad value is reported where it is instead of
silently turning a whole column into another type.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mm_pipeline.datasets.schema import ROW_QUARANTINE_COLUMNS, DataError

#: What a reader does with a row it cannot use: stop with an error naming it (the default), or set it
#: aside in the row-quarantine table and load the rest.
BAD_ROWS = ("error", "quarantine")


def line_number(position, header: bool):
    """1-based line in the file of the ``position``-th data row (blank lines are kept, so this is exact).

    Works on one position or an array of them. For Parquet (``header=False``) it is the 1-based row.
    """
    return position + (2 if header else 1)


def undecodable_line(path: Path, encoding: str) -> tuple[int, int] | None:
    """``(line, byte offset)`` of the first byte that is not ``encoding`` text, or ``None``."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                decoder.decode(line)
            except UnicodeDecodeError as exc:
                return number, offset + exc.start
            offset += len(line)
    return None


def encoding_error(path: Path, encoding: str, exc: UnicodeDecodeError, hint: str = "") -> DataError:
    """A DataError naming the line and byte where ``path`` stops being ``encoding`` text."""
    where = undecodable_line(path, encoding)
    at = f"line {where[0]} (byte {where[1]})" if where else f"byte {exc.start}"
    return DataError(
        f"{path}: not valid {encoding} text at {at} ({exc.reason}); re-save the file as {encoding}"
        + (f"{hint}" if hint else "")
    )


#: What ``surrogateescape`` decoding turns each undecodable byte into; never part of decoded text.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class UndecodableLine:
    """One line of a table that is not valid text in its encoding, set aside under ``bad_rows=quarantine``."""

    line: int  # 1-based line in the file
    column: str  # the column whose field holds the first bad byte ("" when the line has more fields)
    value: str  # that field, its bad bytes written as \xNN
    reason: str


def decode_table_lines(
    path: Path, encoding: str, sep: str = ",", hint: str = ""
) -> tuple[io.StringIO, list[UndecodableLine]]:
    """The text of ``path`` with each line that is not ``encoding`` text left blank, and one record per such line.

    A blank line keeps the line count, so the other rows keep their line numbers (the readers drop blank
    lines). The first line names the columns: when it is not ``encoding`` text, that is an error. Encodings
    whose newline is not the byte ``\\n`` (UTF-16, UTF-32) cannot be cut into lines this way: the first bad byte
    is then an error too. Rows are taken to be one line each, as :func:`line_number` does.
    """
    raw = path.read_bytes()
    try:
        return io.StringIO(raw.decode(encoding)), []
    except UnicodeDecodeError as exc:
        first_error = exc
    if "\n".encode(encoding) != b"\n":
        raise encoding_error(path, encoding, first_error, hint)
    try:
        text = raw.decode(encoding, errors="surrogateescape")
    except UnicodeDecodeError:  # codecs that cannot escape (a bad byte below 0x80)
        raise encoding_error(path, encoding, first_error, hint) from None
    lines = text.split("\n")
    if _ESCAPED_BYTE.search(lines[0]):
        raise encoding_error(path, encoding, first_error, hint)
    header = next(csv.reader([lines[0]], delimiter=sep), [])
    bad: list[UndecodableLine] = []
    for number, line in enumerate(lines[1:], 2):
        found = _ESCAPED_BYTE.search(line)
        if found is None:
            continue
        byte = len(line[: found.start()].encode(encoding, errors="surrogateescape")) + 1
        fields = next(csv.reader([line], delimiter=sep), [])
        index = next((i for i, field in enumerate(fields) if _ESCAPED_BYTE.search(field)), None)
        column = header[index] if index is not None and index < len(header) else ""
        cell = fields[index] if index is not None else line
        value = cell.rstrip("\r").encode(encoding, "surrogateescape").decode(encoding, "backslashreplace")
        bad.append(
            UndecodableLine(
                number,
                column,
                value,
                (
                    f"not valid {encoding} text; byte {byte} of the line cannot be decoded: re-save the file as "
                    f"{encoding}, or name the table's encoding in the dataset spec (e.g. ?encoding=latin-1)"
                ),
            )
        )
        lines[number - 1] = "\r" if line.endswith("\r") else ""
    return io.StringIO("\n".join(lines)), bad


class RowQuarantine:
    """Rows set aside under ``bad_rows=quarantine``: one record per bad cell.

    Columns ``file``, ``row`` (the line in the file for CSV, counting the header; the 1-based row for
    Parquet), ``column``, ``value`` (the cell as text, empty when missing) and ``reason``.
    """

    def __init__(self) -> None:
        self._parts: list[pd.DataFrame] = []

    def add(self, path: Path, frame: pd.DataFrame, mask: np.ndarray, column: str, reason, header: bool) -> None:
        """Record ``frame``'s rows where ``mask`` is set; ``reason`` is one text or one per masked row."""
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            return
        cells = frame[column][mask] if column in frame.columns else pd.Series([""] * int(mask.sum()))
        values = cells.astype("string").fillna("").to_numpy(dtype=object)
        self._parts.append(
            pd.DataFrame(
                {
                    "file": str(path),
                    "row": line_number(frame.index.to_numpy()[mask].astype(np.int64), header),
                    "column": column,
                    "value": values.astype(str),
                    "reason": reason,
                }
            )
        )

    def add_undecodable(self, path: Path, lines: list[UndecodableLine]) -> None:
        """Record lines that are not text in the table's encoding (see :func:`decode_table_lines`)."""
        if lines:
            self._parts.append(
                pd.DataFrame(
                    {
                        "file": str(path),
                        "row": np.array([b.line for b in lines], dtype=np.int64),
                        "column": [b.column for b in lines],
                        "value": [b.value for b in lines],
                        "reason": [b.reason for b in lines],
                    }
                )
            )

    def frame(self) -> pd.DataFrame:
        if not self._parts:
            return pd.DataFrame(
                {c: pd.Series(dtype=np.int64 if c == "row" else object) for c in ROW_QUARANTINE_COLUMNS}
            )
        table = pd.concat(self._parts, ignore_index=True)[list(ROW_QUARANTINE_COLUMNS)]
        return table.sort_values(["file", "row"], kind="stable").reset_index(drop=True)


def read_delimited(
    path: Path,
    *,
    sep: str,
    names: list[str] | None = None,
    encoding: str = "utf-8",
    quoting: int = csv.QUOTE_MINIMAL,
    what: str = "",
    numeric: dict[str, str] | None = None,
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
        frame = pd.read_csv(
            path,
            sep=sep,
            header=0 if header else None,
            names=names,
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            encoding=encoding,
            quoting=quoting,
            skip_blank_lines=False,
            index_col=False,
        )
    except UnicodeDecodeError as exc:
        raise encoding_error(path, encoding, exc) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: the file is empty{'; ' + what if what else ''}") from exc
    except pd.errors.ParserError as exc:
        # pandas names the line ("Expected 4 fields in line 7, saw 5").
        raise DataError(
            f"{path}: malformed {'tab' if sep == chr(9) else repr(sep)}-separated table ({exc}); "
            "every line needs the same number of fields"
        ) from exc
    blank = frame.isna().all(axis=1)
    if names is not None and frame.shape[1] > len(names):  # pragma: no cover - pandas raises first
        raise DataError(f"{path}: more fields than the expected {names}")
    return frame[~blank], int(blank.sum())


def _read_typed(
    path: Path, *, sep: str, names: list[str] | None, encoding: str, quoting: int, numeric: dict[str, str]
) -> pd.DataFrame | None:
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            header=0 if names is None else None,
            names=names,
            dtype=numeric,
            encoding=encoding,
            quoting=quoting,
            skip_blank_lines=False,
            index_col=False,
            keep_default_na=False,
            na_values=[""],
        )
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
        raise DataError(
            f"{path}: missing required column(s) {missing}; found {list(frame.columns)}" + (f"; {hint}" if hint else "")
        )


def require_filled(frame: pd.DataFrame, path: Path, columns: tuple[str, ...] | list[str], header: bool) -> None:
    """Every listed column has a value on every row (a short line leaves the last fields empty)."""
    for column in columns:
        empty = frame[column].isna().to_numpy()
        if empty.any():
            pos = int(empty.argmax())
            raise DataError(
                f"{path}: line {line_number(int(frame.index[pos]), header)} has no value in column "
                f"{column!r} (an empty field or too few fields on the line); fix or remove that line"
            )


def number_values(values: pd.Series, integer: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(float64 values, bad mask)``: bad where a cell is empty, not a number, infinite or (``integer``)
    not a whole number."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(numbers)
    if integer:
        with np.errstate(invalid="ignore"):
            bad |= (numbers != np.round(numbers)) | (np.abs(numbers) > 2**62)
    return numbers, bad


def parse_numbers(
    frame: pd.DataFrame, column: str, path: Path, header: bool, integer: bool = False, allowed: tuple | None = None
) -> np.ndarray:
    """``frame[column]`` as int64 (``integer``) or float64; the first bad cell raises a DataError."""
    raw = frame[column]
    values, bad = number_values(raw, integer)
    if allowed is not None:
        bad |= ~np.isin(values, np.asarray(allowed, dtype=np.float64))
    if bad.any():
        pos = int(bad.argmax())
        expected = (
            ("one of " + ", ".join(map(str, allowed)))
            if allowed is not None
            else ("an integer" if integer else "a number")
        )
        raise DataError(
            f"{path}: line {line_number(int(frame.index[pos]), header)}, column {column!r}: "
            f"{raw.iloc[pos]!r} is not {expected}; fix or remove that line"
        )
    return values.astype(np.int64) if integer else values


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or bool(pd.isna(value))


def timestamp_seconds(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer seconds or ISO-8601 dates (mixed is fine) -> ``(int64 seconds since the epoch, bad mask)``.

    Bad cells (empty, neither form) are 0 in the seconds.
    """
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.to_numpy(dtype=np.float64)
        parsed_dates = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    else:
        text = values.astype("string").str.strip()
        numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        parsed_dates = pd.to_datetime(text.where(np.isnan(numbers)), errors="coerce", utc=True, format="ISO8601")
    with np.errstate(invalid="ignore"):
        numeric_ok = np.isfinite(numbers) & (np.abs(numbers) < 2**62)
    date_ok = parsed_dates.notna().to_numpy()
    seconds = np.where(numeric_ok, numbers, 0.0).astype(np.int64)
    from_dates = date_ok & ~numeric_ok
    if from_dates.any():
        seconds[from_dates] = parsed_dates[from_dates].astype("int64").to_numpy() // 1_000_000_000
    return seconds, ~(numeric_ok | date_ok)


def timestamp_problem(value, column: str = "timestamp") -> str:
    """Why one cell is not a timestamp (for errors and the row-quarantine table)."""
    if _missing(value) or str(value).strip() == "":
        return f"empty {column}; every interaction needs one"
    return f"{column} is neither integer seconds nor an ISO-8601 date"


def parse_timestamps(
    values: pd.Series, path: Path, header: bool = True, column: str = "timestamp", hint: str = ""
) -> np.ndarray:
    """Integer seconds or ISO-8601 dates (mixed is fine) -> int64 seconds since the epoch.

    The first value that is neither names its line: ``row <line>`` in the file.
    """
    seconds, bad = timestamp_seconds(values)
    if bad.any():
        pos = int(bad.argmax())
        value = values.iloc[pos]
        line = line_number(int(values.index[pos]), header)
        if _missing(value) or str(value).strip() == "":
            raise DataError(f"{path}: row {line} has an empty {column}; every interaction needs one{hint}")
        raise DataError(
            f"{path}: row {line} has {column} {str(value)!r}, which is neither integer seconds nor an "
            f"ISO-8601 date; fix or remove that row{hint}"
        )
    return seconds

"""New interaction files dropped into an *inbox* folder, kept as immutable, content-addressed partitions.

No Dagster here. The Dagster layer (``mm_pipeline.defs.assets.inbox``) makes each distinct file
content (its SHA-256) one partition of the ``inbox_interactions`` asset and appends every stored
partition to the source's interactions in ``raw_interactions``.

* An inbox file is read and checked exactly like the folder format's ``interactions.csv`` /
  ``interactions.parquet``: ``user_id``, ``item_id``, ``timestamp`` (integer seconds or ISO-8601),
  optional ``weight`` or ``rating``; ids are strings named the way the source names them. A bad
  file raises a :class:`DataError` naming the file, row and column; nothing of it is stored.
* The store keeps, per digest, the file's original bytes (written once, never replaced) and the
  parsed table (re-derivable from those bytes), under ``<store>/<digest>/``. The user's inbox file
  is only read: never modified, moved or deleted.
* :func:`append_inbox` puts the stored partitions after the source's rows, with a column saying
  where each row came from; rows repeating an earlier (user, item, timestamp) are counted and left
  out, never silently.
* Forgetting a user (:mod:`mm_pipeline.privacy`) is the one exception to "written once": a stored
  copy that holds rows of a forgotten user is rewritten without them (:func:`redact_partition`, and
  at ingestion when the user was forgotten before the file arrived). ``redaction.json`` next to it
  records the rewritten copy's SHA-256, so the copy is still checked against what was written.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mm_pipeline import settings
from mm_pipeline.datasets.schema import INTERACTION_COLUMNS, DataError
from mm_pipeline.datasets.tables import parse_numbers, parse_timestamps, require_columns, require_filled
from mm_pipeline.storage import atomic_write_bytes, atomic_write_text, load_bundle, save_bundle

INBOX_ENV = settings.INBOX_ENV
INBOX_SUFFIXES = (".csv", ".parquet")
ORIGIN_COLUMN = "origin"
SOURCE_ORIGIN = "source"
INBOX_ORIGIN_PREFIX = "inbox:"
DEDUP_KEY = ("user_id", "item_id", "timestamp")
_ORIGINAL = "original"
_TABLE = "table"
_REDACTION = "redaction.json"
#: Marks the rows of forgotten users: a boolean per value of a ``user_id`` column.
Forgotten = Callable[[pd.Series], np.ndarray]
_DIGEST_CHARS = frozenset("0123456789abcdef")


def inbox_dir(home: str | Path) -> Path:
    """``$MM_PIPELINE_INBOX``, else ``<project home>/inbox``."""
    return settings.inbox_folder(home)


def file_digest(path: str | Path) -> str:
    """SHA-256 of the file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_digest(digest: str) -> str:
    """``digest`` if it is a lowercase hex SHA-256 (it names a folder in the store), else ValueError."""
    if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _DIGEST_CHARS:
        raise ValueError(f"an inbox partition key is the file's SHA-256 as 64 lowercase hex characters, got {digest!r}")
    return digest


def is_inbox_file(path: Path) -> bool:
    """A visible ``*.csv`` / ``*.parquet`` file. Hidden names (``.x.csv``) are uploads still being written."""
    return not path.name.startswith(".") and path.suffix.lower() in INBOX_SUFFIXES and path.is_file()


def find_inbox_file(folder: Path, digest: str) -> Path | None:
    """The first inbox file (by name) whose content has ``digest``, or ``None``."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.iterdir()):
        try:
            if is_inbox_file(path) and file_digest(path) == digest:
                return path
        except FileNotFoundError:  # removed since the listing
            continue
    return None


# ------------------------------------------------------------------------------------------ reading
def read_interaction_file(path: str | Path, data: bytes | None = None, allow_empty: bool = False) -> pd.DataFrame:
    """One inbox file as the interaction table (``user_id``, ``item_id``, ``timestamp``, ``weight``).

    The folder format's rules and messages (:mod:`mm_pipeline.datasets.folder`,
    :mod:`mm_pipeline.datasets.tables`): required columns, no empty id, timestamps as integer
    seconds or ISO-8601, a numeric ``weight`` (else ``rating``, else 1). Any problem raises a
    :class:`DataError` naming this file and the row. ``data``: the file's bytes, already read
    (``path`` then only names the file in messages and gives the format by its suffix). ``allow_empty``:
    a file with no rows is an empty table (a stored copy whose every row belonged to forgotten users)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in INBOX_SUFFIXES:
        raise DataError(f"{path}: inbox files must be .csv or .parquet interaction tables")
    handle = io.BytesIO(data) if data is not None else path
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(handle)
        else:
            frame = pd.read_csv(
                handle,
                dtype={"item_id": str, "user_id": str},
                keep_default_na=False,
                na_values=[""],
                encoding="utf-8",
                skip_blank_lines=False,
            )
            # Blank lines are dropped but keep their place in the index, so row numbers stay exact.
            frame = frame[~frame.isna().all(axis=1)]
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not valid UTF-8 text ({exc.reason} at byte {exc.start}); re-save the file as UTF-8"
        ) from exc
    except Exception as exc:  # pyarrow / pandas parse errors
        raise DataError(f"{path}: could not be read as {suffix[1:]} ({exc})") from exc
    header = suffix == ".csv"
    require_columns(
        frame,
        path,
        ("user_id", "item_id", "timestamp"),
        hint="an inbox file has the columns of the folder format's interactions table",
    )
    require_filled(frame, path, ("user_id", "item_id"), header=header)
    if len(frame) == 0 and not allow_empty:
        raise DataError(f"{path}: holds no interactions; remove it from the inbox or add rows")
    weight_col = "weight" if "weight" in frame.columns else ("rating" if "rating" in frame.columns else None)
    weights = (
        parse_numbers(frame, weight_col, path, header=header).astype(np.float32)
        if weight_col
        else np.ones(len(frame), dtype=np.float32)
    )
    return pd.DataFrame(
        {
            "user_id": frame["user_id"].astype(str).to_numpy(),
            "item_id": frame["item_id"].astype(str).to_numpy(),
            "timestamp": parse_timestamps(frame["timestamp"], path, header=header),
            "weight": weights,
        }
    )


# ------------------------------------------------------------------------------------------ storing
@dataclass(frozen=True)
class StoredPartition:
    """One ingested inbox file: its digest, where its copy lives, its table, whether this call wrote the
    copy (``False``: the same bytes were stored before) and how many rows of forgotten users this call
    left out of the stored copy."""

    digest: str
    folder: Path
    original: Path
    table: pd.DataFrame
    newly_stored: bool
    forgotten_rows: int = 0


def partition_folder(store: str | Path, digest: str) -> Path:
    return Path(store) / check_digest(digest)


def _stored_original(folder: Path) -> Path | None:
    for suffix in INBOX_SUFFIXES:
        path = folder / f"{_ORIGINAL}{suffix}"
        if path.exists():
            return path
    return None


def _redaction(folder: Path) -> dict | None:
    try:
        return json.loads((folder / _REDACTION).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder / _REDACTION}: cannot be read ({exc}); restore it or delete the partition") from exc


def _check_stored(stored: Path, digest: str) -> bool:
    """Whether the stored copy was rewritten without forgotten users; DataError when it matches neither
    the partition's SHA-256 nor the one its redaction record names (changed on disk)."""
    actual = file_digest(stored)
    if actual == digest:
        return False
    redaction = _redaction(stored.parent)
    if redaction is not None and redaction.get("sha256") == actual:
        return True
    raise DataError(
        f"{stored}: the stored copy of inbox partition {digest} no longer has that "
        "SHA-256 (changed on disk); restore it or delete the partition folder deliberately"
    )


def _without_rows(data: bytes, suffix: str, forgotten: Forgotten) -> tuple[bytes, int]:
    """The file's bytes without the rows ``forgotten`` marks, and how many there were (the bytes are
    returned unchanged when there is none). Cells are kept as written; CSV blank lines are dropped."""
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        mask = np.asarray(forgotten(table.column("user_id").to_pandas().astype(str)), dtype=bool)
        if not mask.any():
            return data, 0
        out = io.BytesIO()
        pq.write_table(table.filter(pa.array(~mask)), out)
        return out.getvalue(), int(mask.sum())
    frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, encoding="utf-8")
    mask = np.asarray(forgotten(frame["user_id"]), dtype=bool)
    if not mask.any():
        return data, 0
    return frame[~mask].to_csv(index=False).encode("utf-8"), int(mask.sum())


def _record_redaction(folder: Path, digest: str, data: bytes, removed: int, request: str) -> None:
    """Written *before* the rewritten copy: a crash in between leaves the old copy, which still matches
    the partition's SHA-256 (and is rewritten again next time)."""
    from datetime import UTC, datetime

    record = _redaction(folder) or {"original_sha256": digest, "rows_removed": 0, "redactions": []}
    record["sha256"] = hashlib.sha256(data).hexdigest()
    record["rows_removed"] = int(record.get("rows_removed", 0)) + removed
    at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    record.setdefault("redactions", []).append(
        {"at": at, "rows_removed": removed, **({"request": request} if request else {})}
    )
    record["about"] = "rows of users forgotten since were removed from this copy (mm-pipeline forget)"
    atomic_write_text(folder / _REDACTION, json.dumps(record, indent=1))


def _redact_stored(folder: Path, stored: Path, digest: str, forgotten: Forgotten, request: str = "") -> int:
    data = stored.read_bytes()
    kept, removed = _without_rows(data, stored.suffix.lower(), forgotten)
    if removed:
        _record_redaction(folder, digest, kept, removed, request)
        atomic_write_bytes(stored, kept)
    return removed


def ingest_file(
    path: str | Path | None, digest: str, store: str | Path, forgotten: Forgotten | None = None
) -> StoredPartition:
    """Store the inbox file ``path`` whose content must have SHA-256 ``digest``, and parse it.

    First time: the file is read once, its bytes checked against ``digest`` and parsed (a bad file
    raises before anything is stored), then the bytes are written to ``<store>/<digest>/original.<ext>``
    and the table next to them, both atomically. When the original is already stored (the same
    content arrived before, or the partition is re-materialized) it is not rewritten: the table is
    parsed again from the stored bytes, and ``path`` may be ``None`` (the inbox file may be gone).

    ``forgotten`` (the forget list's filter): the rows of forgotten users are never stored; a stored
    copy that still holds some is rewritten without them (see :func:`redact_partition`).
    """
    folder = partition_folder(store, digest)
    stored = _stored_original(folder)
    if stored is not None:
        redacted = _check_stored(stored, digest)
        removed = _redact_stored(folder, stored, digest, forgotten) if forgotten is not None else 0
        table = read_interaction_file(stored, allow_empty=redacted or removed > 0)
        save_bundle(folder / _TABLE, {_TABLE: table})
        return StoredPartition(digest, folder, stored, table, newly_stored=False, forgotten_rows=removed)
    if path is None:
        raise DataError(
            f"inbox partition {digest} has no stored copy and no inbox file with that content; "
            "put the file back into the inbox (or delete the partition)"
        )
    path = Path(path)
    data = path.read_bytes()  # read once: what is checked, parsed and stored are the same bytes
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise DataError(
            f"{path}: its content changed since it was detected (SHA-256 {actual[:12]}..., "
            f"expected {digest[:12]}...); the new content is picked up as a partition of its own"
        )
    table = read_interaction_file(path, data)
    removed = 0
    if forgotten is not None:
        data, removed = _without_rows(data, path.suffix.lower(), forgotten)
        if removed:
            _record_redaction(folder, digest, data, removed, "")
            table = read_interaction_file(path, data, allow_empty=True)
    original = atomic_write_bytes(folder / f"{_ORIGINAL}{path.suffix.lower()}", data)
    save_bundle(folder / _TABLE, {_TABLE: table})
    return StoredPartition(digest, folder, original, table, newly_stored=True, forgotten_rows=removed)


def stored_digests(store: str | Path) -> list[str]:
    """The digests of every partition folder in the store (whatever the Dagster instance records)."""
    store = Path(store)
    if not store.is_dir():
        return []
    return sorted(p.name for p in store.iterdir() if p.is_dir() and len(p.name) == 64 and set(p.name) <= _DIGEST_CHARS)


def redact_partition(store: str | Path, digest: str, forgotten: Forgotten, request: str = "") -> int:
    """Rewrite partition ``digest``'s stored copy (the original bytes and the parsed table) without the
    rows ``forgotten`` marks, atomically; returns how many rows the original held (0: nothing to do).

    The one exception to "written once": ``redaction.json`` records the new copy's SHA-256 (and the
    request), so :func:`ingest_file` still refuses a copy changed on disk by anything else."""
    folder = partition_folder(store, digest)
    stored = _stored_original(folder)
    if stored is None:
        return 0
    redacted = _check_stored(stored, digest)
    removed = _redact_stored(folder, stored, digest, forgotten, request)
    try:
        table = load_bundle(folder / _TABLE)[_TABLE]
        stale = bool(np.asarray(forgotten(table["user_id"]), dtype=bool).any())
    except (FileNotFoundError, KeyError):
        stale = True
    if removed or stale:
        table = read_interaction_file(stored, allow_empty=redacted or removed > 0)
        save_bundle(folder / _TABLE, {_TABLE: table})
    return removed


def load_partition(store: str | Path, digest: str) -> pd.DataFrame:
    """The stored table of inbox partition ``digest``."""
    folder = partition_folder(store, digest)
    try:
        return load_bundle(folder / _TABLE)[_TABLE]
    except FileNotFoundError as exc:
        raise DataError(
            f"inbox partition {digest} is recorded as materialized but {folder} holds no stored "
            "table; re-materialize that partition of inbox_interactions"
        ) from exc


# ---------------------------------------------------------------------------------------- appending
@dataclass
class AppendStats:
    """What :func:`append_inbox` did: per partition, rows read and rows left out because an earlier row
    (source or an earlier partition) has the same (user, item, timestamp)."""

    rows: dict[str, int] = field(default_factory=dict)
    already_present: dict[str, int] = field(default_factory=dict)

    @property
    def appended(self) -> int:
        return sum(self.rows.values()) - sum(self.already_present.values())


def origin_of(digest: str) -> str:
    return f"{INBOX_ORIGIN_PREFIX}{digest}"


def append_inbox(
    source: pd.DataFrame,
    partitions: Mapping[str, pd.DataFrame] | Sequence[tuple[str, pd.DataFrame]],
    split_column: str | None = None,
) -> tuple[pd.DataFrame, AppendStats]:
    """The source's interactions followed by each inbox partition's, in the given order, with column
    ``origin`` (``"source"`` or ``"inbox:<sha256>"``).

    Rows of a partition that repeat the (user, item, timestamp) of any earlier row are the same event
    delivered twice: they are left out and counted in the returned stats. The source's own rows are
    never touched. With no partition the source frame is returned unchanged (no ``origin`` column).
    A source with a published split (``split_column``) cannot take extra rows: DataError."""
    items = list(partitions.items()) if isinstance(partitions, Mapping) else list(partitions)
    stats = AppendStats()
    if not items:
        return source, stats
    if split_column:
        raise DataError(
            f"the dataset comes with a published split (column {split_column!r}), which inbox "
            f"interactions cannot join; delete the {len(items)} inbox partition(s) "
            f"({', '.join(d[:12] for d, _ in items)}) or use a dataset without a published split"
        )
    frames = [source.assign(**{ORIGIN_COLUMN: SOURCE_ORIGIN})]
    for digest, frame in items:
        missing = [c for c in INTERACTION_COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"inbox partition {digest}: stored table lacks column(s) {missing}; re-materialize it")
        frames.append(frame[list(INTERACTION_COLUMNS)].assign(**{ORIGIN_COLUMN: origin_of(digest)}))
        stats.rows[digest] = len(frame)
    combined = pd.concat(frames, ignore_index=True)
    combined["timestamp"] = combined["timestamp"].astype(np.int64)
    combined["weight"] = combined["weight"].astype(np.float32)
    repeated = combined.duplicated(list(DEDUP_KEY), keep="first").to_numpy()
    repeated &= (combined[ORIGIN_COLUMN] != SOURCE_ORIGIN).to_numpy()
    if repeated.any():
        dropped = combined.loc[repeated, ORIGIN_COLUMN].value_counts()
        for digest in stats.rows:
            stats.already_present[digest] = int(dropped.get(origin_of(digest), 0))
        combined = combined[~repeated].reset_index(drop=True)
    else:
        stats.already_present = {digest: 0 for digest in stats.rows}
    return combined, stats

"""The tables every reader produces, whatever the on-disk format.

``items``: one row per item, sorted by ``item_id``; columns ``item_id`` (str), ``text`` (str, may be
empty), ``image`` and ``audio`` (absolute file path or ``None``), plus any extra columns the source
had. ``interactions``: ``user_id`` (str), ``item_id`` (str), ``timestamp`` (int64, seconds since the
epoch), ``weight`` (float32).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

MODALITIES = ("text", "image", "audio")
ITEM_COLUMNS = ("item_id", "text", "image", "audio")
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "weight")
#: The row-quarantine table (``bad_rows=quarantine``): one record per unusable cell of a table.
ROW_QUARANTINE_COLUMNS = ("file", "row", "column", "value", "reason")


@dataclass(frozen=True)
class QuarantineRecord:
    """One piece of input that could not be used, and why. The rest of the item stays usable."""

    item_id: str
    modality: str
    file: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def quarantine_frame(records: list[QuarantineRecord]) -> pd.DataFrame:
    return pd.DataFrame([r.as_dict() for r in records], columns=["item_id", "modality", "file", "reason"])


@dataclass
class RawDataset:
    name: str
    root: Path
    items: pd.DataFrame
    interactions: pd.DataFrame
    modalities: tuple[str, ...]
    info: dict = field(default_factory=dict)
    #: Table rows set aside instead of loaded (``bad_rows=quarantine``), columns ROW_QUARANTINE_COLUMNS.
    row_quarantine: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(ROW_QUARANTINE_COLUMNS)))


class DataError(ValueError):
    """Input that cannot be used as it is. The message names the file, row or column and the fix."""

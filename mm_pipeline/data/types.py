"""The data types the models and the evaluation share: the interaction split and its sparse views.

Both :mod:`mm_pipeline.recommend` and :mod:`mm_pipeline.evaluate` import these; neither imports the
other's types (evaluation ranks recommenders, so it reads :mod:`mm_pipeline.recommend`'s ranking
kernel; training never reads :mod:`mm_pipeline.evaluate`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from mm_pipeline.data.graph import bipartite_edge_index, normalized_adjacency

SPLITS = ("train", "valid", "test")


def _require_columns(df: pd.DataFrame, name: str, columns: Iterable[str]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} is missing column(s) {missing}; it has {list(df.columns)}")


def _check_split_frame(split_df: pd.DataFrame, n_users: int | None, n_items: int) -> None:
    _require_columns(split_df, "split_df", ("user_idx", "item_idx", "split"))
    if n_users is not None and n_users < 0:
        raise ValueError(f"n_users must be >= 0, got {n_users}")
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    if len(split_df) == 0:
        return
    users = split_df["user_idx"].to_numpy()
    items = split_df["item_idx"].to_numpy()
    if n_users is not None and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(
            f"split_df.user_idx must lie in [0, {n_users}), got range [{users.min()}, {users.max()}]; check n_users"
        )
    if items.min() < 0 or items.max() >= n_items:
        raise ValueError(
            f"split_df.item_idx must lie in [0, {n_items}), got range [{items.min()}, {items.max()}]; check n_items"
        )


def interaction_matrix(
    split_df: pd.DataFrame, n_users: int, n_items: int, splits: Iterable[str] = ("train",)
) -> sp.csr_matrix:
    r"""Binary user-item matrix :math:`R \in \{0,1\}^{n_\text{users} \times n_\text{items}}` (float32).

    :math:`R_{ui} = 1` iff user :math:`u` has at least one interaction with item :math:`i` whose
    ``split`` is in ``splits``; repeated interactions count once. Column sums of the train matrix
    are the item popularities (distinct training users) that novelty expects.
    """
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    unknown = sorted(set(splits) - set(SPLITS))
    if not splits or unknown:
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {splits}")
    _check_split_frame(split_df, n_users, n_items)
    chosen = split_df[split_df["split"].isin(splits)]
    rows = chosen["user_idx"].to_numpy(dtype=np.int64)
    cols = chosen["item_idx"].to_numpy(dtype=np.int64)
    matrix = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_users, n_items), dtype=np.float32
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # binary: duplicates were summed, clamp them back to one
    matrix.sort_indices()
    return matrix


@dataclass(frozen=True)
class SplitData:
    """Sparse views of a split, built once and shared by every model: the binary train / valid / test
    matrices and the normalised user-item adjacency of the training interactions. Validation against it:
    :func:`mm_pipeline.recommend.ranking.validator`."""

    n_users: int
    n_items: int
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    adj: torch.Tensor = field(repr=False)

    @classmethod
    def from_frame(cls, split: pd.DataFrame, n_users: int, n_items: int) -> SplitData:
        train = interaction_matrix(split, n_users, n_items, splits=("train",))
        coo = train.tocoo()
        edge_index = bipartite_edge_index(coo.row, coo.col, n_users)
        return cls(
            n_users,
            n_items,
            train,
            interaction_matrix(split, n_users, n_items, splits=("valid",)),
            interaction_matrix(split, n_users, n_items, splits=("test",)),
            normalized_adjacency(edge_index, n_users + n_items),
        )

    @property
    def warm_items(self) -> np.ndarray:
        """Items with at least one training interaction."""
        return np.asarray(self.train.sum(axis=0)).ravel() > 0


@dataclass(frozen=True)
class InteractionSplit:
    """The indexed interactions with their ``split`` label (the ``interaction_split`` asset's value).

    ``table`` has ``user_idx``, ``item_idx``, ``timestamp``, ``weight`` and ``split``; ``user_ids[u]`` is
    the raw id of user index ``u`` (never logged); ``data`` holds the sparse views, built on first use
    and then shared by every reader of this object.
    """

    table: pd.DataFrame
    n_users: int
    n_items: int
    user_ids: np.ndarray
    split_method: str = ""

    def __post_init__(self) -> None:
        _check_split_frame(self.table, self.n_users, self.n_items)
        if len(self.user_ids) != self.n_users:
            raise ValueError(f"user_ids has {len(self.user_ids)} entries but the split has {self.n_users} users")

    @classmethod
    def from_bundle(cls, bundle: dict[str, Any]) -> InteractionSplit:
        """From the stored ``interaction_split`` value (``table``, ``n_users``, ``n_items``, ``user_ids``,
        ``split_method``)."""
        return cls(
            bundle["table"],
            int(bundle["n_users"]),
            int(bundle["n_items"]),
            np.asarray(bundle["user_ids"]),
            str(bundle.get("split_method", "")),
        )

    @cached_property
    def data(self) -> SplitData:
        return SplitData.from_frame(self.table, self.n_users, self.n_items)


def as_interaction_split(value: InteractionSplit | Mapping[str, Any]) -> InteractionSplit:
    """``value`` itself, or a split stored before it was typed (a dict with the same fields)."""
    return value if isinstance(value, InteractionSplit) else InteractionSplit.from_bundle(dict(value))


# The dataclasses the IO manager may store and load back, by class name (nothing outside this list is
# rebuilt from what is on disk).
STORED_TYPES: dict[str, type] = {cls.__name__: cls for cls in (InteractionSplit,)}


def stored_fields(value: Any) -> tuple[str, dict[str, Any]]:
    """An allow-listed dataclass as ``(class name, {field: value})`` for storage (arrays, tables, JSON
    values and dicts of arrays; the storage layer refuses anything else)."""
    name = type(value).__name__
    if STORED_TYPES.get(name) is not type(value):
        raise TypeError(f"{name} is not a stored data type; stored types: {sorted(STORED_TYPES)}")
    return name, {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


def from_stored_fields(name: str, values: dict[str, Any]) -> Any:
    """The inverse of :func:`stored_fields`: only classes of :data:`STORED_TYPES` are rebuilt."""
    cls = STORED_TYPES.get(name)
    if cls is None:
        raise TypeError(f"stored value names class {name!r}, which is not a stored data type ({sorted(STORED_TYPES)})")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in values]
    if missing:
        raise ValueError(f"stored {name} lacks field(s) {missing}; re-materialize the asset that writes it")
    return cls(**{n: values[n] for n in names})

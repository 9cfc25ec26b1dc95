"""Chronological leave-last-out splits and the sparse matrices evaluation reads from them."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp

SPLITS = ("train", "valid", "test")
_REQUIRED = ("user_idx", "item_idx", "timestamp")


def _require_columns(df: pd.DataFrame, name: str, columns: Iterable[str]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} is missing column(s) {missing}; it has {list(df.columns)}")


def _round_half_up(x: np.ndarray) -> np.ndarray:
    # np.round is round-half-to-even (2.5 -> 2); the split promises half-up, and the tiny slack
    # absorbs products such as 0.1 * 25 that land a hair below the half in binary floating point.
    return np.floor(x + 0.5 + 1e-9).astype(np.int64)


def chronological_split(interactions: pd.DataFrame, valid_frac: float = 0.1, test_frac: float = 0.1,
                        min_train: int = 1) -> pd.Series:
    r"""Label every interaction ``"train"``, ``"valid"`` or ``"test"``, per user and in time order.

    Each user's interactions are ordered by ``(timestamp, item_idx)`` (then by their position in
    ``interactions``, so even exact duplicates have a fixed order). For a user with :math:`n`
    interactions:

    * :math:`n < 3`: everything is ``"train"`` (too short to hold anything out).
    * otherwise, with :math:`\operatorname{rnd}(x) = \lfloor x + 1/2 \rfloor` (round half *up*),

      .. math::
          n_\text{test}  &= \min\big(\max(1, \operatorname{rnd}(f_\text{test}\, n)),\;
                                   n - m\big) \quad (0 \text{ if } f_\text{test} = 0)\\
          n_\text{valid} &= \min\big(\max(1, \operatorname{rnd}(f_\text{valid}\, n)),\;
                                   n - m - n_\text{test}\big) \quad (0 \text{ if } f_\text{valid} = 0)

      clipped below at 0, where :math:`m` is ``min_train``. The last :math:`n_\text{test}`
      interactions are ``"test"``, the :math:`n_\text{valid}` before them ``"valid"``, the rest
      ``"train"``. Test is served first, so a short history keeps its test item before its
      validation item.

    Returns a string Series named ``"split"`` aligned to ``interactions.index``.
    Vectorized: one stable sort, one ``groupby().cumcount()`` and one ``transform("size")``.
    """
    _require_columns(interactions, "interactions", _REQUIRED)
    for name, frac in (("valid_frac", valid_frac), ("test_frac", test_frac)):
        if not 0.0 <= float(frac) < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {frac}")
    if valid_frac + test_frac >= 1.0:
        raise ValueError(f"valid_frac + test_frac must be < 1, got {valid_frac} + {test_frac}")
    if int(min_train) != min_train or min_train < 1:
        raise ValueError(f"min_train must be a positive integer, got {min_train}")
    if interactions[list(_REQUIRED)].isna().to_numpy().any():
        raise ValueError("interactions has missing values in user_idx/item_idx/timestamp")

    if len(interactions) == 0:
        return pd.Series([], index=interactions.index, dtype=object, name="split")

    # Work on positions so a non-unique or unsorted index cannot confuse the alignment.
    frame = pd.DataFrame({
        "user": interactions["user_idx"].to_numpy(),
        "ts": interactions["timestamp"].to_numpy(),
        "item": interactions["item_idx"].to_numpy(),
        "pos": np.arange(len(interactions)),
    })
    # mergesort is stable, so "pos" is the final tie-breaker without being a sort key.
    frame = frame.sort_values(["user", "ts", "item"], kind="mergesort")
    rank = frame.groupby("user", sort=False).cumcount().to_numpy()
    n = frame.groupby("user", sort=False)["user"].transform("size").to_numpy()

    eligible = n >= 3
    n_test = np.where(test_frac > 0, np.maximum(1, _round_half_up(test_frac * n)), 0)
    n_test = np.clip(np.minimum(n_test, n - min_train), 0, None)
    n_valid = np.where(valid_frac > 0, np.maximum(1, _round_half_up(valid_frac * n)), 0)
    n_valid = np.clip(np.minimum(n_valid, n - min_train - n_test), 0, None)
    n_test = np.where(eligible, n_test, 0)
    n_valid = np.where(eligible, n_valid, 0)

    from_end = n - rank  # 1 for the user's most recent interaction
    label = np.where(from_end <= n_test, "test",
                     np.where(from_end <= n_test + n_valid, "valid", "train"))
    out = np.empty(len(frame), dtype=object)
    out[frame["pos"].to_numpy()] = label
    return pd.Series(out, index=interactions.index, name="split")


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
        raise ValueError(f"split_df.user_idx must lie in [0, {n_users}), got range "
                         f"[{users.min()}, {users.max()}]; check n_users")
    if items.min() < 0 or items.max() >= n_items:
        raise ValueError(f"split_df.item_idx must lie in [0, {n_items}), got range "
                         f"[{items.min()}, {items.max()}]; check n_items")


def interaction_matrix(split_df: pd.DataFrame, n_users: int, n_items: int,
                       splits: Iterable[str] = ("train",)) -> sp.csr_matrix:
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
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                           shape=(n_users, n_items), dtype=np.float32)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # binary: duplicates were summed, clamp them back to one
    matrix.sort_indices()
    return matrix


def cold_items(split_df: pd.DataFrame, n_items: int) -> np.ndarray:
    """Boolean mask ``[n_items]``: true for items with no ``"train"`` interaction at all."""
    _check_split_frame(split_df, None, n_items)
    seen = np.zeros(n_items, dtype=bool)
    seen[split_df.loc[split_df["split"] == "train", "item_idx"].to_numpy(dtype=np.int64)] = True
    return ~seen

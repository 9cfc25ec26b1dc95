"""Chronological leave-last-out splits and the sparse matrices evaluation reads from them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mm_pipeline.data.types import (  # noqa: F401 (interaction_matrix and SPLITS are part of this API)
    SPLITS,
    _check_split_frame,
    _require_columns,
    interaction_matrix,
)

_REQUIRED = ("user_idx", "item_idx", "timestamp")


def _round_half_up(x: np.ndarray) -> np.ndarray:
    # np.round is round-half-to-even (2.5 -> 2); the split promises half-up, and the tiny slack
    # absorbs products such as 0.1 * 25 that land a hair below the half in binary floating point.
    return np.floor(x + 0.5 + 1e-9).astype(np.int64)


def chronological_split(
    interactions: pd.DataFrame, valid_frac: float = 0.1, test_frac: float = 0.1, min_train: int = 1
) -> pd.Series:
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
    frame = pd.DataFrame(
        {
            "user": interactions["user_idx"].to_numpy(),
            "ts": interactions["timestamp"].to_numpy(),
            "item": interactions["item_idx"].to_numpy(),
            "pos": np.arange(len(interactions)),
        }
    )
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
    label = np.where(from_end <= n_test, "test", np.where(from_end <= n_test + n_valid, "valid", "train"))
    out = np.empty(len(frame), dtype=object)
    out[frame["pos"].to_numpy()] = label
    return pd.Series(out, index=interactions.index, name="split")


def cold_items(split_df: pd.DataFrame, n_items: int) -> np.ndarray:
    """Boolean mask ``[n_items]``: true for items with no ``"train"`` interaction at all."""
    _check_split_frame(split_df, None, n_items)
    seen = np.zeros(n_items, dtype=bool)
    seen[split_df.loc[split_df["split"] == "train", "item_idx"].to_numpy(dtype=np.int64)] = True
    return ~seen

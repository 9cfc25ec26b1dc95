"""Bootstrap confidence intervals over users, and the paired test between two models."""

from __future__ import annotations

import numpy as np

_CHUNK = 200  # resamples drawn at once: bounds memory at chunk x n_users indices


def _resampled_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of ``values`` (``[n]`` or ``[m, n]``) over ``n_resamples`` resamples of the users.

    Every row sees the same resampled users (the indices depend only on ``seed`` and ``n``), so rows
    of one call are paired, and a row gets the same means whatever the other rows are.
    """
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    n = values.shape[1]
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        index = rng.integers(0, n, size=(size, n))
        # How often each user is drawn in each resample; one matrix product then averages every row
        # (memory chunk x n, whatever the number of rows).
        counts = np.bincount((index + n * np.arange(size)[:, None]).ravel(), minlength=size * n)
        out.append(values @ counts.reshape(size, n).T.astype(np.float64) / n)  # [m, chunk]
    return np.concatenate(out, axis=1)


def _check_rows(values, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError(f"{name} must be a [n_rows, n_users] array with at least one user, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} has NaN or inf per-user values")
    return values


def _check_resampling(n_resamples: int, level: float) -> None:
    if isinstance(n_resamples, bool) or int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")


def bootstrap_intervals(
    per_user: np.ndarray, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> np.ndarray:
    r"""Percentile bootstrap intervals of the means of several per-user metrics: ``[m, 2]`` (lo, hi).

    ``per_user`` is ``[m, n]``: row :math:`r` holds one metric of one model for the same :math:`n`
    users (same order in every row). One set of :math:`B` user resamples serves all rows, so row
    :math:`r`'s interval equals ``bootstrap_ci(per_user[r])`` with the same seed.
    """
    per_user = _check_rows(per_user, "per_user")
    _check_resampling(n_resamples, level)
    means = _resampled_means(per_user, int(n_resamples), seed)
    tail = (1 - level) / 2
    return np.quantile(means, [tail, 1 - tail], axis=1).T


def bootstrap_ci(
    per_user: np.ndarray, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    r"""Percentile bootstrap interval of the mean of a per-user metric.

    Users are resampled with replacement :math:`B` times; the interval is the
    :math:`(1-\text{level})/2` and :math:`(1+\text{level})/2` quantiles of the resampled means.
    """
    per_user = np.asarray(per_user, dtype=np.float64)
    if per_user.ndim != 1 or per_user.size == 0:
        raise ValueError(f"per_user must be a non-empty 1-D array, got shape {per_user.shape}")
    lo, hi = bootstrap_intervals(per_user[None, :], n_resamples, level, seed)[0]
    return float(lo), float(hi)


def paired_bootstraps(
    per_user: np.ndarray, reference: np.ndarray, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> list[dict[str, float | bool | list[float]]]:
    r"""Paired bootstrap of each row of ``per_user`` (``[m, n]``) against ``reference`` (``[n]``).

    Row :math:`r` is tested like ``paired_bootstrap(per_user[r], reference)``: the same resampled
    users for both, so user-level difficulty cancels. A row identical to ``reference`` gives a zero
    difference, interval ``[0, 0]``, p-value 1 and ``significant = False``.
    """
    per_user = _check_rows(per_user, "per_user")
    reference = np.asarray(reference, dtype=np.float64)
    if reference.shape != (per_user.shape[1],):
        raise ValueError(
            f"reference must have shape ({per_user.shape[1]},) like each row of per_user, got {reference.shape}"
        )
    _check_resampling(n_resamples, level)
    differences = per_user - reference
    resampled = _resampled_means(differences, int(n_resamples), seed)  # [m, B]
    tail = (1 - level) / 2
    lo, hi = np.quantile(resampled, [tail, 1 - tail], axis=1)
    below, above = (resampled <= 0).mean(axis=1), (resampled >= 0).mean(axis=1)
    p_values = np.minimum(1.0, 2 * np.minimum(below, above))
    return [
        {
            "difference": float(differences[r].mean()),
            "ci": [float(lo[r]), float(hi[r])],
            "p_value": float(p_values[r]),
            "significant": bool(lo[r] > 0 or hi[r] < 0),
        }
        for r in range(per_user.shape[0])
    ]


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict[str, float | bool]:
    r"""Paired bootstrap of :math:`\bar a - \bar b` where ``a[j]`` and ``b[j]`` belong to the same user.

    The *same* resampled users are used for both models, so user-level difficulty cancels. Returns
    the observed difference, its percentile interval, a two-sided bootstrap p-value
    (:math:`2\min(P(\Delta^* \le 0), P(\Delta^* \ge 0))`) and ``significant`` = the interval
    excludes zero.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"a and b must be equal-length non-empty 1-D arrays, got {a.shape} and {b.shape}")
    return paired_bootstraps(a[None, :], b, n_resamples, level, seed)[0]

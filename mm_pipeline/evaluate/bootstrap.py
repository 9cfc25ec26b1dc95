"""Bootstrap confidence intervals over users, and the paired test between two models."""

from __future__ import annotations

import numpy as np

_CHUNK = 200  # resamples drawn at once: bounds memory at chunk x n_users indices


def _resampled_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of ``values`` (``[n]`` or ``[m, n]``) over ``n_resamples`` resamples of the users."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    n = values.shape[1]
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n_resamples, _CHUNK):
        index = rng.integers(0, n, size=(min(_CHUNK, n_resamples - start), n))
        out.append(values[:, index].mean(axis=2))  # [m, chunk]
    return np.concatenate(out, axis=1)


def bootstrap_ci(per_user: np.ndarray, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
                 ) -> tuple[float, float]:
    r"""Percentile bootstrap interval of the mean of a per-user metric.

    Users are resampled with replacement :math:`B` times; the interval is the
    :math:`(1-\text{level})/2` and :math:`(1+\text{level})/2` quantiles of the resampled means.
    """
    per_user = np.asarray(per_user, dtype=np.float64)
    if per_user.ndim != 1 or per_user.size == 0:
        raise ValueError(f"per_user must be a non-empty 1-D array, got shape {per_user.shape}")
    means = _resampled_means(per_user, n_resamples, seed)[0]
    tail = (1 - level) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(lo), float(hi)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_resamples: int = 1000, level: float = 0.95,
                     seed: int = 0) -> dict[str, float | bool]:
    r"""Paired bootstrap of :math:`\bar a - \bar b` where ``a[j]`` and ``b[j]`` belong to the same user.

    The *same* resampled users are used for both models, so user-level difficulty cancels. Returns
    the observed difference, its percentile interval, a two-sided bootstrap p-value
    (:math:`2\min(P(\Delta^* \le 0), P(\Delta^* \ge 0))`) and ``significant`` = the interval
    excludes zero.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"a and b must be equal-length non-empty 1-D arrays, got {a.shape} and {b.shape}")
    diffs = _resampled_means(a - b, n_resamples, seed)[0]
    tail = (1 - level) / 2
    lo, hi = np.quantile(diffs, [tail, 1 - tail])
    p = min(1.0, 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean())))
    return {"difference": float(a.mean() - b.mean()), "ci": [float(lo), float(hi)], "p_value": p,
            "significant": bool(lo > 0 or hi < 0)}

r"""Each user's interest per modality in the aligned space: what their history has in common, read
by text, image and audio separately, and which modality their taste is most coherent in.

For modality :math:`m`, let :math:`z_m(i)` be item :math:`i`'s aligned embedding (unit length; items
without the modality have none) and :math:`H_m(u)` the user's training items that have it, with weights
:math:`w_{uj}` (the training matrix: 1 per item). The **profile** is the weighted mean

.. math::
    \mu_m(u) = \frac{\sum_{j \in H_m(u)} w_{uj} z_m(j)}{\sum_{j \in H_m(u)} w_{uj}}, \qquad
    p_m(u) = \mu_m(u) / \lVert \mu_m(u) \rVert,

and its **coherence** :math:`R_m(u) = \lVert \mu_m(u) \rVert \in [0, 1]`: 1 when every item of the history
points the same way, small when they scatter. Coherence alone is not comparable across modalities: in a
modality where all items look alike, any history is coherent. So it is measured against a **null** per
modality: random sets of :math:`k` items with that modality (drawn without replacement, ``samples`` sets
per size on a log-spaced grid of sizes, seeded) give the mean :math:`\bar R_m(k)` and standard deviation
:math:`\sigma_m(k)` of their coherence, and the user's **strength** is the z-score

.. math::
    t_m(u) = \frac{R_m(u) - \bar R_m(k_{um})}{\sigma_m(k_{um})}, \qquad
    k_{um} = \frac{(\sum_j w_{uj})^2}{\sum_j w_{uj}^2}

(:math:`k` the effective number of items: the count for a plain history; the null is interpolated in
:math:`\log k` between grid sizes). With fewer than ``MIN_ITEMS`` items in a modality the strength is
undefined (NaN). The **dominant modality** is :math:`\arg\max_m t_m(u)` when it is at least
``THRESHOLD`` and leads the runner-up by ``MARGIN``; ``"mixed"`` when two or more modalities pass the
threshold within the margin; ``"none"`` when none passes it.

An item **matches** the profile in modality :math:`m` when its cosine with the profile is high among the
items that have that modality:

.. math::
    c_m(u, i) = \frac{\langle z_m(i), p_m(u) \rangle - \langle \bar z_m, p_m(u) \rangle}
                     {\sqrt{p_m(u)^\top \Sigma_m\, p_m(u)}}

(:math:`\bar z_m`, :math:`\Sigma_m`: mean and covariance of :math:`z_m` over those items, so the
denominator is the spread of the cosine over the catalogue); the explanation names the user's dominant
modality when :math:`c_m \geq` ``MATCH``.

Everything is computed for all users at once with sparse products. The served model repeats the per-user
part at request time from the stored items, history and null table
(:meth:`mm_pipeline.registry.pyfunc.RecommenderPyfunc.explain`); :class:`InterestSpace` is what it stores.
The aligned space was trained partly on co-consumption, so a coherent modality profile mixes "these
items look alike" with "these items are consumed together": it is a description of taste in that space,
not a causal claim about why the user chose.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

MIN_ITEMS = 2  # a single item is always perfectly coherent: no evidence of taste
THRESHOLD = 2.0  # z above the null for a modality to count as a taste
MARGIN = 1.0  # lead over the runner-up for one modality to dominate
MATCH = 1.5  # z of an item's cosine with the profile for it to "match" the taste
SAMPLES = 256  # random item sets per size in the null
GRID = 16  # sizes in the null's log-spaced grid


@dataclass(frozen=True)
class InterestSpace:
    """The aligned per-modality item embeddings and the null they are measured against.

    ``embeddings`` ``[n_items, M, d]`` (unit rows where ``present``, zeros elsewhere), ``present``
    ``[n_items, M]``; the null of coherence at ``null_sizes`` ``[S]``: ``null_mean`` / ``null_std``
    ``[M, S]``; the catalogue's ``item_mean`` ``[M, d]`` and ``item_cov`` ``[M, d, d]`` per modality."""

    modalities: tuple[str, ...]
    embeddings: np.ndarray
    present: np.ndarray
    null_sizes: np.ndarray
    null_mean: np.ndarray
    null_std: np.ndarray
    item_mean: np.ndarray
    item_cov: np.ndarray

    @classmethod
    def from_aligned(
        cls, aligned: Mapping, max_size: int | None = None, samples: int = SAMPLES, seed: int = 0
    ) -> InterestSpace:
        """From the ``aligned_item_embeddings`` value (``modalities``, ``modality_embeddings``,
        ``present``); ``max_size``: the largest history the null covers (default: the largest catalogue of a
        modality; larger histories use the last size)."""
        z = np.asarray(aligned["modality_embeddings"], dtype=np.float32)
        present = np.asarray(aligned["present"], dtype=bool)
        norms = np.linalg.norm(z, axis=2, keepdims=True)
        z = np.where(present[:, :, None], z / np.maximum(norms, 1e-12), 0.0).astype(np.float32)
        n_modalities, dim = z.shape[1], z.shape[2]
        counts = present.sum(0)
        largest = int(max(counts.max(), MIN_ITEMS))
        top = min(int(max_size), largest) if max_size else largest
        sizes = np.unique(np.round(np.geomspace(MIN_ITEMS, max(top, MIN_ITEMS), GRID)).astype(np.int64))
        rng = np.random.default_rng(seed)
        mean = np.zeros((n_modalities, sizes.size))
        std = np.zeros((n_modalities, sizes.size))
        item_mean = np.zeros((n_modalities, dim))
        item_cov = np.zeros((n_modalities, dim, dim))
        for m in range(n_modalities):
            pool = z[present[:, m], m].astype(np.float64)
            if len(pool) < MIN_ITEMS:
                mean[m], std[m] = 1.0, 1.0  # nobody can have a profile here; any value keeps the z finite
                continue
            item_mean[m] = pool.mean(0)
            item_cov[m] = np.cov(pool, rowvar=False, bias=True)
            for s, k in enumerate(np.minimum(sizes, len(pool))):
                keys = rng.random((samples, len(pool)))
                picks = np.argpartition(keys, k - 1, axis=1)[:, :k] if k < len(pool) else np.argsort(keys, 1)
                chosen = sp.csr_matrix(
                    (np.full(picks.size, 1.0 / k), picks.ravel(), np.arange(0, picks.size + 1, k)),
                    shape=(samples, len(pool)),
                )
                coherence = np.linalg.norm(chosen @ pool, axis=1)  # each random set's mean, one sparse product
                mean[m, s], std[m, s] = coherence.mean(), coherence.std()
        return cls(
            tuple(str(m) for m in aligned["modalities"]),
            z,
            present,
            sizes.astype(np.float64),
            mean,
            np.maximum(std, 1e-3),
            item_mean,
            item_cov,
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat ``interest_*`` arrays (what the served model stores)."""
        return {
            "interest_modalities": np.asarray(self.modalities, dtype=str),
            "interest_embeddings": self.embeddings.astype(np.float32),
            "interest_present": self.present.astype(bool),
            "interest_null_sizes": self.null_sizes.astype(np.float64),
            "interest_null_mean": self.null_mean.astype(np.float64),
            "interest_null_std": self.null_std.astype(np.float64),
            "interest_item_mean": self.item_mean.astype(np.float64),
            "interest_item_cov": self.item_cov.astype(np.float64),
            "interest_thresholds": np.asarray([MIN_ITEMS, THRESHOLD, MARGIN, MATCH], dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> InterestSpace:
        return cls(
            tuple(str(m) for m in np.asarray(arrays["interest_modalities"]).ravel()),
            *(
                np.asarray(arrays[f"interest_{name}"])
                for name in ("embeddings", "present", "null_sizes", "null_mean", "null_std", "item_mean", "item_cov")
            ),
        )


@dataclass(frozen=True)
class Interest:
    """Per user (rows of the history given): ``profile`` ``[U, M, d]`` (unit; zero without items),
    ``coherence``, ``items`` (effective count) and ``strength`` ``[U, M]`` (NaN below ``MIN_ITEMS``), and
    the ``dominant`` modality (or ``"mixed"`` / ``"none"``)."""

    modalities: tuple[str, ...]
    profile: np.ndarray
    coherence: np.ndarray
    items: np.ndarray
    strength: np.ndarray
    dominant: np.ndarray

    def frame(self) -> pd.DataFrame:
        """One row per user: ``strength_<modality>``, ``items_<modality>`` and ``dominant``."""
        return pd.DataFrame(
            {
                **{f"strength_{m}": self.strength[:, k] for k, m in enumerate(self.modalities)},
                **{f"items_{m}": self.items[:, k] for k, m in enumerate(self.modalities)},
                "dominant": self.dominant,
            }
        )


def interest_profiles(space: InterestSpace, history: sp.spmatrix) -> Interest:
    """The profile, coherence, strength and dominant modality of every row of ``history`` (``[U,
    n_items]``, non-negative weights; the training matrix for a plain history), see the module doc."""
    x = sp.csr_matrix(history, dtype=np.float64)
    n_items, n_modalities, dim = space.embeddings.shape
    if x.shape[1] != n_items:
        raise ValueError(f"the history covers {x.shape[1]} items but the aligned space has {n_items}")
    present = space.present.astype(np.float64)
    weight = np.asarray(x @ present)  # [U, M]
    weight_sq = np.asarray(x.multiply(x) @ present)
    sums = np.asarray(x @ space.embeddings.reshape(n_items, -1).astype(np.float64)).reshape(-1, n_modalities, dim)
    mean = sums / np.maximum(weight, 1e-12)[:, :, None]
    coherence = np.linalg.norm(mean, axis=2)
    profile = mean / np.maximum(coherence, 1e-12)[:, :, None]
    items = np.divide(weight**2, weight_sq, out=np.zeros_like(weight), where=weight_sq > 0)
    strength = _strength(space, coherence, items)
    return Interest(
        space.modalities, profile, coherence, items, strength, dominant_modality(strength, space.modalities)
    )


def _strength(space: InterestSpace, coherence: np.ndarray, items: np.ndarray) -> np.ndarray:
    log_sizes = np.log(space.null_sizes)
    log_items = np.log(np.maximum(items, MIN_ITEMS))
    out = np.full(coherence.shape, np.nan)
    for m in range(coherence.shape[1]):
        mean = np.interp(log_items[:, m], log_sizes, space.null_mean[m])
        std = np.interp(log_items[:, m], log_sizes, space.null_std[m])
        out[:, m] = np.where(items[:, m] >= MIN_ITEMS - 1e-9, (coherence[:, m] - mean) / std, np.nan)
    return out


def dominant_modality(
    strength: np.ndarray, modalities: tuple[str, ...], threshold: float = THRESHOLD, margin: float = MARGIN
) -> np.ndarray:
    """Per row of ``strength`` ``[U, M]``: the modality that leads (module doc), ``"mixed"`` or ``"none"``."""
    filled = np.where(np.isnan(strength), -np.inf, strength)
    order = np.argsort(-filled, axis=1, kind="stable")
    rows = np.arange(filled.shape[0])
    best = filled[rows, order[:, 0]]
    second = filled[rows, order[:, 1]] if filled.shape[1] > 1 else np.full(rows.size, -np.inf)
    out = np.asarray(modalities, dtype=object)[order[:, 0]] if filled.shape[1] else np.full(rows.size, "none")
    out = np.where(second >= np.maximum(threshold, best - margin), "mixed", out)
    return np.where(best >= threshold, out, "none").astype(object)


def item_match(space: InterestSpace, interest: Interest, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """:math:`c_m(u, i)` ``[B, M]`` for user rows ``rows`` of ``interest`` and items ``items`` (module doc);
    NaN where the user has no profile in that modality or the item lacks it."""
    p = interest.profile[rows]  # [B, M, d]
    z = space.embeddings[items].astype(np.float64)
    centred = np.einsum("bmd,bmd->bm", z, p) - np.einsum("md,bmd->bm", space.item_mean, p)
    spread = np.sqrt(np.maximum(np.einsum("bmd,mde,bme->bm", p, space.item_cov, p), 1e-12))
    ok = np.isfinite(interest.strength[rows]) & space.present[items]
    return np.where(ok, centred / spread, np.nan)

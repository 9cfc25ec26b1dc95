r"""Closed-form item-item models and the user profiles they score from.

An item-item model scores :math:`s(u, \cdot) = x_u W` from the user's history :math:`x_u` (a row of
the training matrix) and an item-item matrix :math:`W`: EASE's :math:`B`, or a content k-NN graph.
In the dot-product form of :class:`~mm_pipeline.recommend.base.EmbeddingRecommender` the user table is
the (sparse) history and the item table is :math:`W^\top`.

The history can be *recency-weighted*: with training interactions ordered by time,

.. math:: \tilde x_{uj} = \exp(-\tau\, a_{uj}), \qquad a_{uj} = \frac{\#\{\text{items of } u
          \text{ newer than } j\} + \tfrac12 \#\{\text{others tied with } j\}}{n_u} \in [0, 1),

so the newest item counts fully and the oldest about :math:`e^{-\tau}`; :math:`\tau = 0` is the plain
binary history. Ties in time share one weight, so a dataset whose timestamps carry no order (all
equal) gets the binary history whatever :math:`\tau`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import scipy.linalg.lapack as lapack
import scipy.sparse as sp
import torch

# Above this many items the Gram matrix is inverted in float32 (half the memory and time; the
# regularised Gram is well conditioned, cond <= (max eigenvalue + l2) / l2).
FLOAT64_MAX_ITEMS = 5000


def training_age(split: pd.DataFrame, train: sp.csr_matrix) -> np.ndarray:
    r"""Relative age :math:`a_{uj}` of every stored entry of ``train`` (aligned with ``train.data``).

    ``split`` is the interaction split table (``user_idx``, ``item_idx``, ``timestamp``, ``split``);
    an item a user consumed several times in training takes its latest timestamp. Vectorized: one
    group-by for the latest times, one ranking within users.
    """
    rows = split.loc[split["split"] == "train", ["user_idx", "item_idx", "timestamp"]]
    latest = rows.groupby(["user_idx", "item_idx"], sort=True)["timestamp"].max().reset_index()
    # ``latest`` is sorted by (user, item): the entry order of a CSR matrix with sorted indices.
    train = train.tocsr()
    if not train.has_sorted_indices:
        train = train.sorted_indices()
    users = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr))
    if (
        len(latest) != train.nnz
        or not np.array_equal(latest["user_idx"].to_numpy(), users)
        or not np.array_equal(latest["item_idx"].to_numpy(), train.indices)
    ):
        raise ValueError(
            f"the split's {len(latest)} distinct training (user, item) pairs are not the "
            f"{train.nnz} entries of the training matrix: they come from different splits"
        )
    by_user = latest.groupby("user_idx")["timestamp"]
    newer = by_user.rank(method="average", ascending=False).to_numpy() - 1.0  # 0 for the newest
    return (newer / by_user.transform("size").to_numpy()).astype(np.float32)


def recency_profile(train: sp.csr_matrix, age: np.ndarray | None, decay: float) -> sp.csr_matrix:
    r"""The recency-weighted history :math:`\tilde x_{uj} = e^{-\tau a_{uj}}` (``decay`` is :math:`\tau`)."""
    if decay < 0:
        raise ValueError(f"decay must be >= 0, got {decay}")
    profile = train.astype(np.float32, copy=True)
    if decay > 0:
        if age is None or len(age) != train.nnz:
            raise ValueError("a recency decay needs the training age of every entry (training_age)")
        profile.data = np.exp(-decay * np.asarray(age, dtype=np.float32))
    return profile


def item_knn_weights(gram: np.ndarray, k: int, shrink: float = 10.0, block: int = 1024) -> np.ndarray:
    r"""Item-based collaborative k-NN (Sarwar et al., 2001) from the Gram matrix :math:`G = X^\top X`:

    .. math:: S_{ij} = \frac{G_{ij}}{\sqrt{G_{ii} G_{jj}} + \text{shrink}}\ (i \ne j),

    each column :math:`j` keeping its ``k`` largest entries (the ``k`` items most like :math:`j`), so
    :math:`s(u, j) = \sum_{i \in I_u} S_{ij}` sums the similarities of :math:`j` to the user's items.
    Returns :math:`S` as float32 ``[n_items, n_items]``.

    :math:`S` is symmetric before the cut, so column :math:`j`'s largest entries are row :math:`j`'s: they are
    chosen a ``block`` of rows at a time along contiguous memory with ``torch.topk`` (a column-wise
    ``argpartition`` over the whole matrix took 20 s at 12k items, this about 3 s), with no ``n x n``
    temporary besides the result. Ties at the cut are kept as ``torch.topk`` picks them (deterministic).
    """
    if k < 1 or shrink < 0:
        raise ValueError(f"item k-NN needs k >= 1 and shrink >= 0, got k={k}, shrink={shrink}")
    n = gram.shape[0]
    norms = torch.from_numpy(np.sqrt(np.diag(gram).astype(np.float32)))
    grams = torch.from_numpy(gram)
    weights = np.empty((n, n), dtype=np.float32)  # every entry is written below
    columns = torch.from_numpy(weights)
    # Block buffers filled in place, the kept entries scattered along each buffer row and the block written
    # as W's columns by one transposing copy: a fresh n-wide temporary per block and operation, then the
    # entries scattered down W's columns one by one, spent most of the time in page faults and cache misses
    # (10.2 s at 20k items, k = 1600). The same float32 denominators and, for a float64 Gram matrix, the
    # same float64 division rounded to float32: the same weights, bit for bit.
    denominator = torch.empty((min(block, n), n), dtype=torch.float32)
    similarity = torch.empty((min(block, n), n), dtype=torch.float32)
    for start in range(0, n, block):
        stop = min(n, start + block)
        den, sim = denominator[: stop - start], similarity[: stop - start]
        torch.outer(norms[start:stop], norms, out=den)
        den.add_(np.float32(shrink).item())
        if grams.dtype == torch.float32:
            torch.div(grams[start:stop], den, out=sim)
        else:
            sim.copy_(grams[start:stop] / den)
        local = torch.arange(stop - start)
        sim[local, start + local] = 0.0
        if k < n:
            values, nearest = torch.topk(sim, k, dim=1, sorted=False)  # row j: column j's k best
            sim.zero_().scatter_(1, nearest, values)
        columns[:, start:stop].copy_(sim.T)
    return weights


def dense_product(left: sp.spmatrix, right: sp.spmatrix, dtype, block: int = 1024) -> np.ndarray:
    """``(left @ right).toarray()`` as ``dtype``, a ``block`` of rows at a time, the blocks computed in
    ``torch.get_num_threads()`` threads (scipy's sparse product releases the GIL: the large Gram matrix in
    2.5 s rather than 4.0 s on two cores). Each row of a sparse product is computed on its own, so the result
    is the whole product's, bit for bit; no sparse product of the whole is held beside the dense result."""
    # astype, not csr_matrix(..., dtype=...): its entries come in the order the products always summed them in.
    left, right = sp.csr_matrix(left).astype(dtype), sp.csr_matrix(right).astype(dtype)
    out = np.empty((left.shape[0], right.shape[1]), dtype=dtype)

    def fill(start: int) -> None:
        out[start : start + block] = (left[start : start + block] @ right).toarray()

    starts = range(0, left.shape[0], block)
    with ThreadPoolExecutor(max(1, min(torch.get_num_threads(), len(starts)))) as pool:
        list(pool.map(fill, starts))  # list(): a block's error is raised here
    return out


class ItemGram:
    r"""The item-item Gram matrix :math:`G = X^\top X` of a training matrix, computed once and shared by
    every closed-form solve (EASE for several :math:`\lambda`)."""

    def __init__(self, train: sp.csr_matrix):
        self.n_items = train.shape[1]
        self.dtype = np.float64 if self.n_items <= FLOAT64_MAX_ITEMS else np.float32
        x = train.astype(self.dtype)
        self.gram = dense_product(x.T, x, self.dtype)

    def ease(self, l2: float) -> np.ndarray:
        r"""EASE (Steck, 2019): :math:`B = \arg\min \lVert X - XB\rVert_F^2 + \lambda\lVert B\rVert_F^2`
        subject to :math:`\operatorname{diag}(B) = 0`, in closed form

        .. math:: P = (G + \lambda I)^{-1}, \qquad B_{ij} = -P_{ij} / P_{jj}\ (i \ne j),\ B_{jj} = 0.

        The inverse comes from a Cholesky factorisation (LAPACK ``potrf``/``potri``), about half the
        work of a general inverse. Returns :math:`B` as float32 ``[n_items, n_items]``.
        """
        if not l2 > 0:
            raise ValueError(f"the EASE l2 must be > 0, got {l2}")
        g = self.gram.copy()
        g[np.diag_indices_from(g)] += l2
        potrf, potri = (lapack.dpotrf, lapack.dpotri) if self.dtype == np.float64 else (lapack.spotrf, lapack.spotri)
        # LAPACK works in place only on Fortran-ordered memory: g.T is that view of the same symmetric
        # matrix, so neither call copies it (one n x n matrix besides the Gram matrix at the peak).
        factor, info = potrf(g.T, lower=False, overwrite_a=True, clean=True)
        if info != 0:
            raise np.linalg.LinAlgError(f"Cholesky factorisation of the Gram matrix failed (info={info})")
        inverse, info = potri(factor, lower=False, overwrite_c=True)
        if info != 0:
            raise np.linalg.LinAlgError(f"inverting the Gram matrix failed (info={info})")
        b = _symmetric_from_lower(inverse.T)  # potri fills the upper triangle: the lower one of the C view
        del inverse, factor, g
        b /= -np.diag(b).copy()[None, :]
        np.fill_diagonal(b, 0.0)
        return b.astype(np.float32, copy=False)


def _symmetric_from_lower(m: np.ndarray, block: int = 2048) -> np.ndarray:
    """Copy the lower triangle of square ``m`` onto its upper one, in place, a block of rows at a time (no
    second n x n matrix)."""
    n = m.shape[0]
    for start in range(0, n, block):
        stop = min(n, start + block)
        diagonal = m[start:stop, start:stop]
        diagonal[...] = np.tril(diagonal) + np.tril(diagonal, -1).T
        m[start:stop, stop:] = m[stop:, start:stop].T
    return m

"""Non-neural baselines, each reduced to the dot-product form of :class:`EmbeddingRecommender`."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from mm_pipeline.recommend.base import EmbeddingRecommender, sparse_from_scipy
from mm_pipeline.recommend.linear import ItemGram

# EASE inverts a dense n_items x n_items matrix: 20,000 items take 1.6 GB per copy in float32 (about
# four copies at the peak) and minutes of CPU per solve.
EASE_MAX_ITEMS = 20_000


def most_popular(train: sp.csr_matrix) -> EmbeddingRecommender:
    """Scores every item by its number of training interactions, the same for every user."""
    n_users, n_items = train.shape
    counts = np.asarray(train.sum(axis=0), dtype=np.float32).ravel()
    return EmbeddingRecommender(
        "popularity", torch.ones(n_users, 1), torch.from_numpy(counts).unsqueeze(1), {"kind": "most-popular"}
    )


def check_ease_size(n_items: int) -> None:
    if n_items > EASE_MAX_ITEMS:
        raise ValueError(f"EASE needs a dense {n_items}x{n_items} inverse; it is limited to {EASE_MAX_ITEMS} items")


def item_item(name: str, profile: sp.csr_matrix, weights: np.ndarray, info: dict) -> EmbeddingRecommender:
    r"""An item-item model in dot-product form: :math:`s(u, \cdot) = x_u W` with the (sparse) history
    :math:`x_u` as user table and :math:`W^\top` as item table.

    The item table is a transposed view of ``weights`` as laid out (no copy): the sparse history is
    multiplied by :math:`W` itself, row-major, which is what scoring reads (a copy of an ``n x n`` matrix
    in the other order took seconds at 12k items)."""
    weights = np.asarray(weights, dtype=np.float32)
    if not weights.flags.c_contiguous:
        weights = np.ascontiguousarray(weights)
    return EmbeddingRecommender(
        name,
        sparse_from_scipy(profile),
        torch.from_numpy(weights).T,
        info,
        parts={"history_width": int(profile.shape[1])},
    )


def ease(train: sp.csr_matrix, l2: float = 200.0, gram: ItemGram | None = None) -> EmbeddingRecommender:
    r"""EASE (Steck, 2019): the item-item weights :math:`B` minimising
    :math:`\lVert X - XB\rVert_F^2 + \lambda\lVert B\rVert_F^2` with :math:`\operatorname{diag}(B) = 0`
    (see :meth:`~mm_pipeline.recommend.linear.ItemGram.ease`). Scores are :math:`X_u B`: the user table
    is the sparse training matrix :math:`X`, the item table :math:`B^\top`. Pass ``gram`` to reuse one
    Gram matrix across several ``l2``.
    """
    check_ease_size(train.shape[1])
    gram = gram or ItemGram(train)
    return item_item("ease", train, gram.ease(l2), {"kind": "EASE", "l2": float(l2)})


def content_knn(train: sp.csr_matrix, item_embeddings: np.ndarray) -> EmbeddingRecommender:
    r"""Content-based item kNN over all neighbours: :math:`s(u, i) = \sum_{j \in I_u} \cos(f_j, f_i)`.

    With normalised content vectors :math:`\hat f`, this is the dot product of the user profile
    :math:`X_u \hat F` with :math:`\hat f_i`. It needs no interactions for item :math:`i`, so it
    also ranks cold-start items.
    """
    f = np.asarray(item_embeddings, dtype=np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    profiles = np.asarray(train.astype(np.float32) @ f)
    return EmbeddingRecommender(
        "content_knn", torch.from_numpy(profiles), torch.from_numpy(f), {"kind": "content item-kNN (all neighbours)"}
    )

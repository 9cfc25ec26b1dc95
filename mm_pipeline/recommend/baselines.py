"""Non-neural baselines, each reduced to the dot-product form of :class:`EmbeddingRecommender`."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from mm_pipeline.recommend.base import EmbeddingRecommender

EASE_MAX_ITEMS = 12_000  # the closed form inverts an n_items x n_items matrix


def most_popular(train: sp.csr_matrix) -> EmbeddingRecommender:
    """Scores every item by its number of training interactions, the same for every user."""
    n_users, n_items = train.shape
    counts = np.asarray(train.sum(axis=0), dtype=np.float32).ravel()
    return EmbeddingRecommender("popularity", torch.ones(n_users, 1),
                                torch.from_numpy(counts).unsqueeze(1), {"kind": "most-popular"})


def ease(train: sp.csr_matrix, l2: float = 200.0) -> EmbeddingRecommender:
    r"""EASE (Steck, 2019): the item-item weights :math:`B` minimising
    :math:`\lVert X - XB\rVert_F^2 + \lambda\lVert B\rVert_F^2` with :math:`\operatorname{diag}(B) = 0`:

    .. math:: P = (X^\top X + \lambda I)^{-1}, \qquad B_{ij} = -P_{ij} / P_{jj}\ (i \ne j)

    Scores are :math:`X_u B`, i.e. user embeddings :math:`X` and item embeddings :math:`B^\top`.
    """
    n_users, n_items = train.shape
    if n_items > EASE_MAX_ITEMS:
        raise ValueError(f"EASE needs a dense {n_items}x{n_items} inverse; it is limited to "
                         f"{EASE_MAX_ITEMS} items")
    x = train.astype(np.float64)
    gram = (x.T @ x).toarray()
    gram[np.diag_indices_from(gram)] += l2
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    return EmbeddingRecommender("ease", torch.from_numpy(train.toarray().astype(np.float32)),
                                torch.from_numpy(b.T.astype(np.float32)), {"kind": "EASE", "l2": l2})


def content_knn(train: sp.csr_matrix, item_embeddings: np.ndarray) -> EmbeddingRecommender:
    r"""Content-based item kNN over all neighbours: :math:`s(u, i) = \sum_{j \in I_u} \cos(f_j, f_i)`.

    With normalised content vectors :math:`\hat f`, this is the dot product of the user profile
    :math:`X_u \hat F` with :math:`\hat f_i`. It needs no interactions for item :math:`i`, so it
    also ranks cold-start items.
    """
    f = np.asarray(item_embeddings, dtype=np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    profiles = np.asarray(train.astype(np.float32) @ f)
    return EmbeddingRecommender("content_knn", torch.from_numpy(profiles), torch.from_numpy(f),
                                {"kind": "content item-kNN (all neighbours)"})

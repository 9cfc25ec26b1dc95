r"""RP3beta (Paudel et al., 2017; as benchmarked by Dacrema et al., 2019): a three-step random walk
item -> user -> item with a popularity penalty, a strong simple item-item baseline on sparse data.

With the training matrix :math:`X` (users x items), user degrees :math:`d_u` and item degrees
(popularities) :math:`d_i`:

.. math::
    P_{ui} = \left(\frac{X_{ui}}{d_u}\right)^{\alpha}, \qquad
    P_{iu} = \left(\frac{X_{ui}}{d_i}\right)^{\alpha}, \qquad
    W_{ij} = \frac{(P_{iu} P_{ui})_{ij}}{d_j^{\beta}} = \frac{1}{d_j^{\beta}}
             \sum_u \left(\frac{X_{ui}}{d_i}\right)^{\alpha} \left(\frac{X_{uj}}{d_u}\right)^{\alpha},

the row-normalised item-to-user and user-to-item transition matrices (each entry raised to
:math:`\alpha`), their product the probability of walking from item :math:`i` to item :math:`j`
through a user who has both, divided by the destination's popularity to the power :math:`\beta`
(:math:`\beta = 0`: the plain walk, P3alpha). Each row :math:`i` keeps its ``k`` largest entries and
the diagonal is zero (walking back to an item the user already has never ranks it). Scores are
:math:`s(u, j) = \sum_{i \in I_u} W_{ij} = (x_u W)_j`, an item-item model over the binary history.

:math:`\alpha`, :math:`\beta` and ``k`` are chosen on validation (:func:`tune_rp3beta`); like EASE and
item k-NN it holds a dense item x item matrix, so the pipeline skips it above ``EASE_MAX_ITEMS`` items.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.baselines import check_ease_size, item_item
from mm_pipeline.recommend.linear import FLOAT64_MAX_ITEMS, dense_product
from mm_pipeline.recommend.selection import SearchResult, grid, search
from mm_pipeline.recommend.tuning import Tuning


@dataclass
class RP3betaConfig:
    alpha: float = field(default=1.0, metadata={"description": "Exponent of the transition probabilities."})
    beta: float = field(default=0.5, metadata={"description": "Popularity penalty: W_ij is divided by d_j^beta."})
    k: int = field(default=100, metadata={"description": "Neighbours kept per item (row of W)."})


def random_walk(train: sp.spmatrix, alpha: float, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    r"""The dense item-to-item walk :math:`P_{iu} P_{ui}` (before the popularity penalty) and the item
    degrees :math:`d_i`, computed ``block`` rows at a time. Float64 up to ``FLOAT64_MAX_ITEMS`` items, float32
    above (half the memory)."""
    if not alpha > 0:
        raise ValueError(f"RP3beta needs alpha > 0, got {alpha}")
    dtype = np.float64 if train.shape[1] <= FLOAT64_MAX_ITEMS else np.float32
    x = sp.csr_matrix(train, dtype=np.float64)
    x.eliminate_zeros()
    d_user = np.asarray(x.sum(axis=1)).ravel()
    d_item = np.asarray(x.sum(axis=0)).ravel()
    user_to_item = sp.csr_matrix(sp.diags(1.0 / np.maximum(d_user, 1e-12)) @ x)
    item_to_user = sp.csr_matrix(sp.diags(1.0 / np.maximum(d_item, 1e-12)) @ x.T)
    user_to_item.data **= alpha
    item_to_user.data **= alpha
    # A block of rows at a time into the dense result: the whole sparse product (most item pairs share a user
    # on dense data) held as much again as the result while it was densified.
    return dense_product(item_to_user, user_to_item, dtype, block), d_item


def rp3beta_weights(walk: np.ndarray, popularity: np.ndarray, beta: float, k: int, block: int = 1024) -> np.ndarray:
    """:math:`W` (float32 ``[n_items, n_items]``) from :func:`random_walk`'s output (see the module doc).

    Built a ``block`` of rows at a time, keeping each row's ``k`` largest entries (``torch.topk``; ties at the
    cut as it picks them): no ``n x n`` temporary besides the result (selecting the entries to drop over the
    whole matrix held an ``n x n`` index array and took 7 s at 12k items, this about 2 s)."""
    if beta < 0 or k < 1:
        raise ValueError(f"RP3beta needs beta >= 0 and k >= 1, got beta={beta}, k={k}")
    n = walk.shape[1]
    # Items without training interactions have an all-zero column already; the floor only avoids 0 ** -beta.
    penalty = torch.from_numpy(np.power(np.maximum(popularity, 1.0), beta))
    walk_rows = torch.from_numpy(walk)
    weights = np.zeros(walk.shape, dtype=np.float32)
    out = torch.from_numpy(weights)
    # Block buffers reused, in torch (both cores; numpy's division and put_along_axis ran on one): the same
    # float64 division rounded to float32 as before, so the same weights, bit for bit.
    rows = min(block, walk.shape[0])
    quotient, w_buffer = torch.empty((rows, n), dtype=torch.float64), torch.empty((rows, n), dtype=torch.float32)
    for start in range(0, walk.shape[0], block):
        stop = min(walk.shape[0], start + block)
        w = w_buffer[: stop - start]
        w.copy_(quotient[: stop - start].copy_(walk_rows[start:stop]).div_(penalty))  # float64 throughout
        local = torch.arange(stop - start)
        w[local, start + local] = 0.0
        if k < n:
            values, keep = torch.topk(w, k, dim=1, sorted=False)  # per row, its k largest
            out[start:stop].scatter_(1, keep, values)
        else:
            out[start:stop] = w
    return weights


def rp3beta(train: sp.spmatrix, alpha: float = 1.0, beta: float = 0.5, k: int = 100) -> EmbeddingRecommender:
    """The RP3beta recommender on the training matrix ``train`` (see the module doc)."""
    check_ease_size(train.shape[1])
    walk, popularity = random_walk(train, alpha)
    return item_item(
        "rp3beta",
        sp.csr_matrix(train),
        rp3beta_weights(walk, popularity, beta, k),
        {"kind": "RP3beta", "alpha": float(alpha), "beta": float(beta), "k": int(k)},
    )


def tune_rp3beta(data, tuning: Tuning, start: RP3betaConfig, on_trial=None) -> SearchResult:
    """RP3beta with ``alpha``, ``beta`` and ``k`` chosen on validation NDCG@20: ``start``, then one change at
    a time (``beta`` down and up, ``alpha`` halved, ``k`` doubled and halved) while the budget lasts."""
    check_ease_size(data.n_items)
    base = {"alpha": float(start.alpha), "beta": float(start.beta), "k": int(start.k)}
    changes = [
        {},
        {"beta": max(base["beta"] - 0.2, 0.0)},
        {"beta": base["beta"] + 0.2},
        {"alpha": base["alpha"] / 2},
        {"k": base["k"] * 2},
        {"k": max(base["k"] // 2, 1)},
    ]
    candidates = []
    for change in changes:
        candidate = {**base, **change}
        if candidate not in candidates:
            candidates.append(candidate)
    walks: dict[float, tuple[np.ndarray, np.ndarray]] = {}  # the walk depends on alpha only

    def fit(params: dict) -> EmbeddingRecommender:
        alpha = params["alpha"]
        if alpha not in walks:
            walks.clear()  # one dense matrix at a time
            walks[alpha] = random_walk(data.train, alpha)
        weights = rp3beta_weights(*walks[alpha], params["beta"], int(params["k"]))
        return item_item("rp3beta", data.train, weights, {"kind": "RP3beta", **params})

    # A trial is a deterministic table build: the best is built again at the end, not kept beside the next trial's.
    return search(
        grid(candidates),
        fit,
        tuning.validate(data),
        tuning.budget_s,
        tuning.max_trials,
        on_trial=on_trial,
        keep_best=False,
    )

r"""Full-ranking top-:math:`k` evaluation of an :class:`EmbeddingRecommender`.

Every item is scored for every evaluated user (no negative sampling); items the user has already
seen (``exclude``) and items outside ``candidates`` are never recommended. Users are processed in
chunks of ``chunk_size`` rows, so memory is :math:`O(\text{chunk\_size} \cdot n_\text{items})` and
the results do not depend on the chunk size.

Conventions (shared with :mod:`torch_geometric.metrics`, which computes most of them). For a user
with relevant set :math:`T` (``truth`` row) and top-:math:`k` list :math:`L`, :math:`h = |L \cap T|`:

* ``recall@k``    :math:`= h / |T|` (not :math:`h / \min(|T|, k)`, so it can stay below 1 when
  :math:`|T| > k`),
* ``precision@k`` :math:`= h / k` (padding slots count as misses),
* ``f1@k``        per user :math:`2PR/(P+R)`, then averaged,
* ``ndcg@k``      :math:`= \sum_{r \le k} [L_r \in T] / \log_2(r+1)` divided by the ideal DCG of
  :math:`\min(|T|, k)` hits,
* ``map@k``       :math:`= \frac{1}{\min(|T|,k)} \sum_{r \le k} [L_r \in T]\, P@r`,
* ``hit_ratio@k`` :math:`= [h > 0]`,

each averaged over the users with :math:`|T| > 0`; ``coverage@k`` is the fraction of the whole
catalogue recommended to at least one of them, and ``novelty@k`` is defined in
:func:`ranking_metrics`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch_geometric.metrics import (
    LinkPredCoverage,
    LinkPredF1,
    LinkPredHitRatio,
    LinkPredMAP,
    LinkPredMetricCollection,
    LinkPredNDCG,
    LinkPredPrecision,
    LinkPredRecall,
)

from mm_pipeline.recommend.base import EmbeddingRecommender

PAD = -1  # top-k slot with no eligible item left (fewer candidates than k)
_INELIGIBLE = torch.iinfo(torch.int64).min
_TWO_32 = 2**32


# ----------------------------------------------------------------------------------- validation
def _check_model(model: EmbeddingRecommender) -> tuple[int, int]:
    if not isinstance(model, EmbeddingRecommender):
        raise TypeError(f"model must be an EmbeddingRecommender, got {type(model).__name__}")
    return model.n_users, model.n_items


def _check_matrix(name: str, matrix, shape: tuple[int, int], optional: bool = False):
    if matrix is None and optional:
        return None
    if not sp.issparse(matrix):
        raise TypeError(f"{name} must be a scipy.sparse matrix of shape {shape}, "
                        f"got {type(matrix).__name__}")
    if tuple(matrix.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(matrix.shape)}, expected (n_users, n_items) = {shape}")
    matrix = sp.csr_matrix(matrix, copy=True)
    matrix.sum_duplicates()   # canonical rows: each (user, item) once, so |T| counts items
    matrix.eliminate_zeros()  # an explicit 0 is not an interaction
    return matrix


def _check_candidates(candidates, n_items: int) -> torch.Tensor | None:
    if candidates is None:
        return None
    mask = np.asarray(candidates)
    if mask.dtype != bool or mask.shape != (n_items,):
        raise ValueError(f"candidates must be a bool array of shape ({n_items},), "
                         f"got dtype {mask.dtype} and shape {mask.shape}")
    return torch.from_numpy(mask.copy())


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_ks(ks: Sequence[int]) -> list[int]:
    ks = [ks] if isinstance(ks, int) else list(ks)
    if not ks:
        raise ValueError("ks must name at least one cutoff")
    for k in ks:
        _check_positive_int("every entry of ks", k)
    if len(set(ks)) != len(ks):
        raise ValueError(f"ks has duplicates: {ks}")
    return sorted(int(k) for k in ks)


def _check_users(users, n_users: int) -> np.ndarray:
    users = np.asarray(users)
    if users.ndim != 1 or (users.size and not np.issubdtype(users.dtype, np.integer)):
        raise ValueError(f"users must be a 1-D integer array, got dtype {users.dtype} "
                         f"and shape {users.shape}")
    users = users.astype(np.int64)
    if users.size and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(f"users must lie in [0, {n_users}), got range [{users.min()}, {users.max()}]")
    return users


def _rows_coo(matrix: sp.csr_matrix, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(local_row, col)`` of the nonzeros of ``matrix[rows]``; ``local_row`` indexes ``rows``."""
    sub = matrix[rows]
    local = np.repeat(np.arange(len(rows), dtype=np.int64), np.diff(sub.indptr))
    return torch.from_numpy(local), torch.from_numpy(sub.indices.astype(np.int64))


# -------------------------------------------------------------------------------------- ranking
def _ranking_keys(scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    r"""Unique int64 keys ordering entries by (score descending, item index ascending).

    A float32 score's bit pattern, read as int32, orders non-negative floats correctly and negative
    floats backwards; flipping the low 31 bits of negatives fixes that (the usual radix-sort trick).
    Then :math:`\text{key} = \text{bits} \cdot 2^{32} + (2^{32} - 1 - i)` for item index :math:`i`
    (``index``, broadcast against ``scores``): a higher score always wins and, among equal scores,
    the lower index does. Keys are unique per row, so ranking by them is deterministic whatever
    algorithm ``topk``/``sort`` uses internally.
    """
    bits = (scores.to(torch.float32) + 0.0).view(torch.int32)  # -0.0 + 0.0 == +0.0: one zero, one key
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # arithmetic shift: all ones for negatives, else 0
    keys = bits.to(torch.int64)
    keys <<= 32
    keys += _TWO_32 - 1 - index
    return keys


def _exact_top_k(scores: torch.Tensor, ineligible: torch.Tensor, k: int) -> torch.Tensor:
    """Top-``k`` by exact keys over whole rows; ``PAD`` for slots with no eligible item left."""
    keys = _ranking_keys(scores, torch.arange(scores.shape[1]))
    keys.masked_fill_(ineligible, _INELIGIBLE)
    best, index = torch.topk(keys, k, dim=1, largest=True, sorted=True)
    return index.masked_fill(best == _INELIGIBLE, PAD)


def _top_k_chunk(model: EmbeddingRecommender, users: np.ndarray, exclude: sp.csr_matrix | None,
                 k: int, candidates: torch.Tensor | None) -> torch.Tensor:
    """Exact (score desc, index asc) top-``k`` of the eligible items of ``users``.

    Fast path: with ineligible scores set to ``-inf``, a float ``topk`` of ``k + 1`` picks the
    right *set* whenever its k-th value is finite and strictly above its (k+1)-th (so no left-out
    item ties the cut, and no ineligible item is in it); only those ``k`` entries are then
    re-ordered by their exact keys. The remaining rows (a cut inside a tie, or fewer than ``k``
    finite eligible scores) are redone with keys over the whole row.
    """
    n_items = model.n_items
    with torch.no_grad():
        # Always our own copy: it is masked in place below, and score() may return a cached tensor.
        scores = model.score(torch.from_numpy(users)).detach().to("cpu", torch.float32, copy=True)
    if tuple(scores.shape) != (len(users), n_items):
        raise ValueError(f"model.score returned shape {tuple(scores.shape)}, "
                         f"expected {(len(users), n_items)}")
    if torch.isnan(scores.sum()) and torch.isnan(scores).any():  # cheap test first
        raise ValueError(f"model {model.name!r} produced NaN scores; cannot rank")
    # The exact path below tells these -inf entries apart from scores the model itself made -inf.
    if exclude is not None:
        ex_rows, ex_cols = _rows_coo(exclude, users)
        scores[ex_rows, ex_cols] = float("-inf")
    if candidates is not None:
        scores[:, ~candidates] = float("-inf")

    slots, k = k, min(k, n_items)
    values, index = torch.topk(scores, min(k + 1, n_items), dim=1, largest=True, sorted=True)
    kth = values[:, k - 1]
    exact = torch.isneginf(kth)
    if k < n_items:
        exact |= values[:, k] == kth
    values, index = values[:, :k], index[:, :k]
    order = torch.sort(_ranking_keys(values, index), dim=1, descending=True).indices
    index = index.gather(1, order)

    rows = exact.nonzero().flatten()
    if rows.numel():
        ineligible = torch.zeros((rows.numel(), n_items), dtype=torch.bool)
        if exclude is not None:
            sub_rows, sub_cols = _rows_coo(exclude, users[rows.numpy()])
            ineligible[sub_rows, sub_cols] = True
        if candidates is not None:
            ineligible |= ~candidates
        index[rows] = _exact_top_k(scores[rows], ineligible, k)
    if slots > k:  # more slots than items in the catalogue
        index = torch.cat([index, index.new_full((len(users), slots - k), PAD)], dim=1)
    return index


def top_k(model: EmbeddingRecommender, users: np.ndarray, exclude: sp.csr_matrix | None, k: int,
          candidates: np.ndarray | None = None, chunk_size: int = 2048) -> torch.Tensor:
    r"""The ``k`` best items for each of ``users``: a ``LongTensor [len(users), k]``, best first.

    Item :math:`i` is *eligible* for user :math:`u` unless ``exclude[u, i] != 0`` (already seen) or
    ``candidates[i]`` is false. Eligible items are ranked by ``model.score`` (in float32) descending;
    **ties break by the lower item index**, exactly (see :func:`_top_k_chunk`), so the result is
    deterministic and independent of ``chunk_size``. An item the model scores ``-inf`` is still
    eligible (it is ranked last).

    When a user has fewer than ``k`` eligible items the remaining slots hold ``-1`` (:data:`PAD`);
    they are never an item, so they never count as hits.
    """
    n_users, n_items = _check_model(model)
    users = _check_users(users, n_users)
    k = _check_positive_int("k", k)
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    exclude = _check_matrix("exclude", exclude, (n_users, n_items), optional=True)
    cand = _check_candidates(candidates, n_items)
    if users.size == 0:
        return torch.empty((0, k), dtype=torch.long)
    # The only Python loop is over user chunks; everything inside a chunk is vectorized.
    return torch.cat([_top_k_chunk(model, users[start:start + chunk_size], exclude, k, cand)
                      for start in range(0, len(users), chunk_size)])


def _ranked_chunks(model: EmbeddingRecommender, truth, exclude, max_k: int, candidates,
                   chunk_size: int) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(users, top [B, max_k], truth_row, truth_col)`` for users with a non-empty truth row."""
    n_users, n_items = _check_model(model)
    truth = _check_matrix("truth", truth, (n_users, n_items))
    exclude = _check_matrix("exclude", exclude, (n_users, n_items), optional=True)
    cand = _check_candidates(candidates, n_items)
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    users = np.flatnonzero(np.diff(truth.indptr) > 0).astype(np.int64)
    for start in range(0, len(users), chunk_size):
        chunk = users[start:start + chunk_size]
        top = _top_k_chunk(model, chunk, exclude, max_k, cand)
        rows, cols = _rows_coo(truth, chunk)
        yield chunk, top, rows, cols


def _ideal_dcg(max_k: int) -> torch.Tensor:
    """``idcg[j]`` = DCG of ``j`` hits at the top ranks, ``j = 0..max_k`` (float64)."""
    gains = 1.0 / torch.log2(torch.arange(2, max_k + 2, dtype=torch.float64))
    return torch.cat([gains.new_zeros(1), gains.cumsum(0)])


# -------------------------------------------------------------------------------------- metrics
def per_user_metrics(model: EmbeddingRecommender, truth: sp.csr_matrix, exclude: sp.csr_matrix | None,
                     ks: Sequence[int] = (10, 20), candidates: np.ndarray | None = None,
                     chunk_size: int = 2048) -> dict[str, np.ndarray]:
    r"""Per-user ``recall@k`` and ``ndcg@k`` (float64) for the users with a non-empty ``truth`` row.

    Returns ``{"user_idx": int64 [m], "recall@k": [m], "ndcg@k": [m], ...}`` with users in
    ascending order. Same definitions as :func:`ranking_metrics` (module docstring), so the mean of
    each array is that function's value; the arrays are what bootstrap intervals resample.
    Computed independently of PyG: a dense relevance mask per chunk, gathered at the top-k items.
    """
    _, n_items = _check_model(model)
    ks = _check_ks(ks)
    max_k = ks[-1]
    idcg = _ideal_dcg(max_k)
    discount = 1.0 / torch.log2(torch.arange(2, max_k + 2, dtype=torch.float64))
    users_out, recall, ndcg = [], {k: [] for k in ks}, {k: [] for k in ks}
    for users, top, rows, cols in _ranked_chunks(model, truth, exclude, max_k, candidates, chunk_size):
        # Column n_items is a never-relevant sink for PAD slots.
        relevant = torch.zeros((len(users), n_items + 1), dtype=torch.bool)
        relevant[rows, cols] = True
        hits = relevant.gather(1, top.masked_fill(top == PAD, n_items)).to(torch.float64)
        n_true = torch.bincount(rows, minlength=len(users)).to(torch.float64)
        for k in ks:
            recall[k].append((hits[:, :k].sum(1) / n_true).numpy())
            dcg = (hits[:, :k] * discount[:k]).sum(1)
            ndcg[k].append((dcg / idcg[n_true.clamp(max=k).long()]).numpy())
        users_out.append(users)
    out: dict[str, np.ndarray] = {
        "user_idx": np.concatenate(users_out) if users_out else np.zeros(0, dtype=np.int64)}
    for k in ks:
        out[f"recall@{k}"] = np.concatenate(recall[k]) if users_out else np.zeros(0)
        out[f"ndcg@{k}"] = np.concatenate(ndcg[k]) if users_out else np.zeros(0)
    return out


def ranking_metrics(model: EmbeddingRecommender, truth: sp.csr_matrix, exclude: sp.csr_matrix | None,
                    ks: Sequence[int] = (10, 20), item_popularity: np.ndarray | None = None,
                    n_train_users: int | None = None, candidates: np.ndarray | None = None,
                    chunk_size: int = 2048) -> dict[str, float]:
    r"""Top-:math:`k` ranking quality of ``model`` against ``truth`` for every ``k`` in ``ks``.

    Keys: ``recall@k, precision@k, f1@k, ndcg@k, map@k, hit_ratio@k, coverage@k, novelty@k`` and
    ``n_users_evaluated`` (users with at least one ``truth`` item; the others are skipped). A truth
    item that is also in ``exclude`` cannot be recommended and simply counts as missed.

    The first seven come from :mod:`torch_geometric.metrics` (definitions in the module docstring),
    fed chunk by chunk. ``-1`` padding is translated first: PyG finds hits by flattening
    ``row * M + item`` (:math:`M` = largest index + 1), so a raw ``-1`` aliases the *previous* row's
    item :math:`M-1` (a phantom hit) and ``LinkPredCoverage`` would mark the last item as covered.

    Novelty is the mean self-information of the recommended items, pooled over all (user, filled
    slot) pairs:

    .. math::
        \text{novelty@}k = \frac{1}{|S|} \sum_{(u, i) \in S} -\log_2 \frac{\text{pop}_i + 1}{N + 1}

    where :math:`S` is the set of non-padding top-:math:`k` slots, :math:`\text{pop}_i` is
    ``item_popularity[i]`` (distinct training users of item :math:`i`, e.g. the column sums of the
    train :func:`~mm_pipeline.evaluate.split.interaction_matrix`) and :math:`N` is ``n_train_users``.
    The add-one smoothing keeps never-seen items finite (:math:`\log_2(N+1)` bits) and an item every
    user saw at exactly 0 bits. Novelty is 0 when :math:`S` is empty.
    """
    n_users, n_items = _check_model(model)
    ks = _check_ks(ks)
    if item_popularity is None or n_train_users is None:
        raise ValueError("item_popularity and n_train_users are required (novelty@k needs them)")
    pop = np.asarray(item_popularity, dtype=np.float64)
    if pop.shape != (n_items,):
        raise ValueError(f"item_popularity must have shape ({n_items},), got {pop.shape}")
    if isinstance(n_train_users, bool) or int(n_train_users) != n_train_users or n_train_users < 1:
        raise ValueError(f"n_train_users must be a positive integer, got {n_train_users!r}")
    if not np.isfinite(pop).all() or pop.min() < 0 or pop.max() > n_train_users:
        raise ValueError(f"item_popularity must be counts of distinct training users in "
                         f"[0, n_train_users={n_train_users}], got range [{pop.min()}, {pop.max()}]")
    # One extra entry (0 bits) so PAD slots, mapped to index n_items, add nothing.
    self_info = torch.from_numpy(np.append(-np.log2((pop + 1.0) / (n_train_users + 1.0)), 0.0))

    max_k = ks[-1]
    collection = LinkPredMetricCollection({
        name: metric for k in ks for name, metric in (
            (f"recall@{k}", LinkPredRecall(k)), (f"precision@{k}", LinkPredPrecision(k)),
            (f"f1@{k}", LinkPredF1(k)), (f"ndcg@{k}", LinkPredNDCG(k)), (f"map@{k}", LinkPredMAP(k)),
            (f"hit_ratio@{k}", LinkPredHitRatio(k)))})
    coverage = {k: LinkPredCoverage(k, num_dst_nodes=n_items) for k in ks}
    novelty_sum = dict.fromkeys(ks, 0.0)
    novelty_n = dict.fromkeys(ks, 0)
    n_evaluated = 0

    for users, top, rows, cols in _ranked_chunks(model, truth, exclude, max_k, candidates, chunk_size):
        n_evaluated += len(users)
        filled = top != PAD
        # PAD -> n_items: an index no truth entry has, and larger than all of them, so PyG's
        # row * M + item flattening can never alias it onto another user's item.
        sink = top.masked_fill(~filled, n_items)
        collection.update(sink, (rows, cols))
        for k in ks:
            # LinkPredCoverage only accepts real item ids: pass the filled slots as a column.
            coverage[k].update(top[:, :k][filled[:, :k]].view(-1, 1), (rows, cols))
            novelty_sum[k] += float(self_info[sink[:, :k]].sum())
            novelty_n[k] += int(filled[:, :k].sum())

    values = {name: float(value) for name, value in collection.compute().items()}
    out: dict[str, float] = {}
    for k in ks:
        for name in ("recall", "precision", "f1", "ndcg", "map", "hit_ratio"):
            out[f"{name}@{k}"] = values[f"{name}@{k}"]
        out[f"coverage@{k}"] = float(coverage[k].compute()) if n_items else 0.0
        out[f"novelty@{k}"] = novelty_sum[k] / novelty_n[k] if novelty_n[k] else 0.0
    out["n_users_evaluated"] = n_evaluated
    return out

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
catalogue recommended to at least one of them; ``novelty@k``, ``personalization@k``,
``intra_list_diversity@k`` and ``tail_share@k`` are defined in :func:`ranking_metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def _check_truth(truth, shape: tuple[int, int] | None = None) -> sp.csr_matrix:
    if shape is None:
        if not sp.issparse(truth):
            raise TypeError(f"truth must be a scipy.sparse (n_users, n_items) matrix, got {type(truth).__name__}")
        shape = tuple(truth.shape)
    return _check_matrix("truth", truth, shape)


def _check_top(top, n_rows: int, max_k: int, n_items: int) -> torch.Tensor:
    """``top[:, :max_k]`` after checking it is a ranked-list matrix as :func:`top_k` returns it."""
    if not isinstance(top, torch.Tensor):
        top = torch.as_tensor(np.asarray(top))
    if top.dtype != torch.long or top.ndim != 2 or top.shape[0] != n_rows or top.shape[1] < max_k:
        raise ValueError(f"top must be an int64 tensor [len(users)={n_rows}, >= max(ks)={max_k}] as top_k "
                         f"returns it, got dtype {top.dtype} and shape {tuple(top.shape)}")
    top = top[:, :max_k]
    if top.numel() and (int(top.min()) < PAD or int(top.max()) >= n_items):
        raise ValueError(f"top holds item indices outside [0, {n_items}) other than the padding {PAD}")
    ordered = top.sort(dim=1).values
    if bool(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != PAD)).any()):
        raise ValueError("top recommends an item twice in one list; pass the output of top_k")
    return top


def _evaluated_rows(truth: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
    """Rows of ``users`` (and of the top-k matrix) whose truth row is non-empty."""
    if np.unique(users).size != users.size:
        raise ValueError("users has duplicates: each user needs exactly one top-k row")
    n_true = np.diff(truth.indptr)
    has_truth = n_true[users] > 0
    missing = int((n_true > 0).sum() - has_truth.sum())
    if missing:
        raise ValueError(f"truth has items for {missing} users that are not in users (no top-k row); "
                         "rank every user that has a truth row")
    return np.flatnonzero(has_truth)


def _self_information(item_popularity, n_train_users, n_items: int) -> torch.Tensor:
    """Self-information of each item, plus a 0-bit entry at index ``n_items`` for padding."""
    if item_popularity is None or n_train_users is None:
        raise ValueError("item_popularity and n_train_users are required (novelty@k needs them)")
    pop = np.asarray(item_popularity, dtype=np.float64)
    if pop.shape != (n_items,):
        raise ValueError(f"item_popularity must have shape ({n_items},), got {pop.shape}")
    if isinstance(n_train_users, bool) or int(n_train_users) != n_train_users or n_train_users < 1:
        raise ValueError(f"n_train_users must be a positive integer, got {n_train_users!r}")
    if pop.size and (not np.isfinite(pop).all() or pop.min() < 0 or pop.max() > n_train_users):
        raise ValueError(f"item_popularity must be counts of distinct training users in "
                         f"[0, n_train_users={n_train_users}], got range [{pop.min()}, {pop.max()}]")
    return torch.from_numpy(np.append(-np.log2((pop + 1.0) / (n_train_users + 1.0)), 0.0))


def _unit_features(item_features, n_items: int) -> torch.Tensor | None:
    """Row-normalised ``item_features`` (float64) plus an all-zero row at index ``n_items`` for padding.

    An all-zero feature row stays zero: its cosine with every item is 0 (the pair counts as fully
    dissimilar) rather than undefined.
    """
    if item_features is None:
        return None
    features = np.asarray(item_features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] != n_items or features.shape[1] < 1:
        raise ValueError(f"item_features must be a [n_items={n_items}, d] array, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise ValueError(f"item_features has {int((~np.isfinite(features)).any(axis=1).sum())} rows with "
                         "NaN or inf values; intra-list diversity needs finite item features")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)
    return torch.from_numpy(np.vstack([unit, np.zeros((1, features.shape[1]))]))


def _check_item_mask(name: str, mask, n_items: int) -> torch.Tensor | None:
    """Bool ``mask`` as a tensor with an extra ``False`` at index ``n_items`` for padding."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (n_items,):
        raise ValueError(f"{name} must be a bool array of shape ({n_items},), got dtype {mask.dtype} "
                         f"and shape {mask.shape}")
    return torch.from_numpy(np.append(mask, False))


def _ideal_dcg(max_k: int) -> torch.Tensor:
    """``idcg[j]`` = DCG of ``j`` hits at the top ranks, ``j = 0..max_k`` (float64)."""
    gains = 1.0 / torch.log2(torch.arange(2, max_k + 2, dtype=torch.float64))
    return torch.cat([gains.new_zeros(1), gains.cumsum(0)])


# -------------------------------------------------------------------------------------- metrics
def per_user_metrics_from_top_k(top: torch.Tensor, users: np.ndarray, truth: sp.csr_matrix,
                                ks: Sequence[int] = (10, 20), chunk_size: int = 2048) -> dict[str, np.ndarray]:
    r"""Per-user ``recall@k`` and ``ndcg@k`` of precomputed ranked lists (see :func:`per_user_metrics`).

    ``top[j]`` is the ranked list of user ``users[j]`` (as :func:`top_k` returns it). Only the users
    with a non-empty ``truth`` row are evaluated, in the order of ``users``; a user with truth items
    but no row in ``top`` is an error. Computed independently of PyG: a dense relevance mask per
    chunk of users, gathered at the top-k items.
    """
    truth = _check_truth(truth)
    n_users, n_items = truth.shape
    ks = _check_ks(ks)
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    users = _check_users(users, n_users)
    max_k = ks[-1]
    top = _check_top(top, len(users), max_k, n_items)
    evaluated = _evaluated_rows(truth, users)
    idcg = _ideal_dcg(max_k)
    discount = 1.0 / torch.log2(torch.arange(2, max_k + 2, dtype=torch.float64))
    recall, ndcg = {k: [np.zeros(0)] for k in ks}, {k: [np.zeros(0)] for k in ks}
    for start in range(0, len(evaluated), chunk_size):
        selected = evaluated[start:start + chunk_size]
        rows, cols = _rows_coo(truth, users[selected])
        # Column n_items is a never-relevant sink for PAD slots.
        relevant = torch.zeros((len(selected), n_items + 1), dtype=torch.bool)
        relevant[rows, cols] = True
        chunk_top = top[torch.from_numpy(selected)]
        hits = relevant.gather(1, chunk_top.masked_fill(chunk_top == PAD, n_items)).to(torch.float64)
        n_true = torch.bincount(rows, minlength=len(selected)).to(torch.float64)
        for k in ks:
            recall[k].append((hits[:, :k].sum(1) / n_true).numpy())
            dcg = (hits[:, :k] * discount[:k]).sum(1)
            ndcg[k].append((dcg / idcg[n_true.clamp(max=k).long()]).numpy())
    out: dict[str, np.ndarray] = {"user_idx": users[evaluated]}
    for k in ks:
        out[f"recall@{k}"] = np.concatenate(recall[k])
        out[f"ndcg@{k}"] = np.concatenate(ndcg[k])
    return out


def per_user_metrics(model: EmbeddingRecommender, truth: sp.csr_matrix, exclude: sp.csr_matrix | None,
                     ks: Sequence[int] = (10, 20), candidates: np.ndarray | None = None,
                     chunk_size: int = 2048) -> dict[str, np.ndarray]:
    r"""Per-user ``recall@k`` and ``ndcg@k`` (float64) for the users with a non-empty ``truth`` row.

    Returns ``{"user_idx": int64 [m], "recall@k": [m], "ndcg@k": [m], ...}`` with users in
    ascending order. Same definitions as :func:`ranking_metrics` (module docstring), so the mean of
    each array is that function's value; the arrays are what bootstrap intervals resample.
    """
    n_users, n_items = _check_model(model)
    ks = _check_ks(ks)
    truth = _check_truth(truth, (n_users, n_items))
    users = np.flatnonzero(np.diff(truth.indptr) > 0).astype(np.int64)
    top = top_k(model, users, exclude, ks[-1], candidates=candidates, chunk_size=chunk_size)
    return per_user_metrics_from_top_k(top, users, truth, ks, chunk_size=chunk_size)


def ranking_metrics_from_top_k(top: torch.Tensor, users: np.ndarray, truth: sp.csr_matrix,
                               ks: Sequence[int] = (10, 20), item_popularity: np.ndarray | None = None,
                               n_train_users: int | None = None, item_features: np.ndarray | None = None,
                               tail_items: np.ndarray | None = None, chunk_size: int = 2048) -> dict[str, float]:
    r"""The metrics of :func:`ranking_metrics` for precomputed ranked lists.

    ``top[j]`` is the ranked list of user ``users[j]`` (as :func:`top_k` returns it, ``-1``-padded);
    the evaluated users are those with a non-empty ``truth`` row, and each of them must have a row.
    Scoring once and evaluating several truths (all test items, the long-tail ones) on the same lists
    saves a full scoring pass per truth.
    """
    truth = _check_truth(truth)
    n_users, n_items = truth.shape
    ks = _check_ks(ks)
    chunk_size = _check_positive_int("chunk_size", chunk_size)
    self_info = _self_information(item_popularity, n_train_users, n_items)
    features = _unit_features(item_features, n_items)
    tail = _check_item_mask("tail_items", tail_items, n_items)
    users = _check_users(users, n_users)
    max_k = ks[-1]
    top = _check_top(top, len(users), max_k, n_items)
    evaluated = _evaluated_rows(truth, users)

    collection = LinkPredMetricCollection({
        name: metric for k in ks for name, metric in (
            (f"recall@{k}", LinkPredRecall(k)), (f"precision@{k}", LinkPredPrecision(k)),
            (f"f1@{k}", LinkPredF1(k)), (f"ndcg@{k}", LinkPredNDCG(k)), (f"map@{k}", LinkPredMAP(k)),
            (f"hit_ratio@{k}", LinkPredHitRatio(k)))})
    coverage = {k: LinkPredCoverage(k, num_dst_nodes=n_items) for k in ks}
    slots = dict.fromkeys(ks, 0)
    novelty_sum, tail_slots = dict.fromkeys(ks, 0.0), dict.fromkeys(ks, 0)
    diversity_sum, diversity_users = dict.fromkeys(ks, 0.0), dict.fromkeys(ks, 0)
    item_lists = {k: torch.zeros(n_items, dtype=torch.float64) for k in ks}  # lists holding each item

    for start in range(0, len(evaluated), chunk_size):
        selected = evaluated[start:start + chunk_size]
        rows, cols = _rows_coo(truth, users[selected])
        chunk_top = top[torch.from_numpy(selected)]
        filled = chunk_top != PAD
        # PAD -> n_items: an index no truth entry has, and larger than all of them, so PyG's
        # row * M + item flattening can never alias it onto another user's item.
        sink = chunk_top.masked_fill(~filled, n_items)
        collection.update(sink, (rows, cols))
        if features is not None:
            # sum_{i != j} cos(i, j) = |sum_i e_i|^2 - sum_i |e_i|^2 for unit (or zero) e_i: prefix
            # sums over the slots give it for every k at once, O(B k d) instead of O(B k^2 d).
            embedded = features[sink]                                  # [B, max_k, d]
            running_sum = embedded.cumsum(dim=1)
            running_norm = (embedded * embedded).sum(dim=2).cumsum(dim=1)
        for k in ks:
            kept = filled[:, :k]
            # LinkPredCoverage only accepts real item ids: pass the filled slots as a column.
            coverage[k].update(chunk_top[:, :k][kept].view(-1, 1), (rows, cols))
            slots[k] += int(kept.sum())
            novelty_sum[k] += float(self_info[sink[:, :k]].sum())
            item_lists[k] += torch.bincount(chunk_top[:, :k][kept], minlength=n_items).to(torch.float64)
            if tail is not None:
                tail_slots[k] += int(tail[sink[:, :k]].sum())
            if features is not None:
                total = running_sum[:, k - 1]
                pair_similarity = (total * total).sum(dim=1) - running_norm[:, k - 1]
                length = kept.sum(dim=1).to(torch.float64)
                has_pairs = length >= 2
                diversity = 1.0 - pair_similarity / (length * (length - 1)).clamp(min=1.0)
                diversity_sum[k] += float(diversity[has_pairs].sum())
                diversity_users[k] += int(has_pairs.sum())

    values = {name: float(value) for name, value in collection.compute().items()}
    n_evaluated = len(evaluated)
    out: dict[str, float] = {}
    for k in ks:
        for name in ("recall", "precision", "f1", "ndcg", "map", "hit_ratio"):
            out[f"{name}@{k}"] = values[f"{name}@{k}"]
        out[f"coverage@{k}"] = float(coverage[k].compute()) if n_items else 0.0
        out[f"novelty@{k}"] = novelty_sum[k] / slots[k] if slots[k] else 0.0
        # Every pair of lists, through the item counts c_i: sum_pairs |L_u & L_v| = sum_i c_i (c_i - 1) / 2.
        shared = float((item_lists[k] * (item_lists[k] - 1)).sum())
        out[f"personalization@{k}"] = (1.0 - shared / (k * n_evaluated * (n_evaluated - 1))
                                       if n_evaluated >= 2 else 0.0)
        if features is not None:
            out[f"intra_list_diversity@{k}"] = (diversity_sum[k] / diversity_users[k]
                                                if diversity_users[k] else 0.0)
        if tail is not None:
            out[f"tail_share@{k}"] = tail_slots[k] / slots[k] if slots[k] else 0.0
    out["n_users_evaluated"] = n_evaluated
    return out


def ranking_metrics(model: EmbeddingRecommender, truth: sp.csr_matrix, exclude: sp.csr_matrix | None,
                    ks: Sequence[int] = (10, 20), item_popularity: np.ndarray | None = None,
                    n_train_users: int | None = None, candidates: np.ndarray | None = None,
                    chunk_size: int = 2048, item_features: np.ndarray | None = None,
                    tail_items: np.ndarray | None = None) -> dict[str, float]:
    r"""Top-:math:`k` ranking quality of ``model`` against ``truth`` for every ``k`` in ``ks``.

    Keys: ``recall@k, precision@k, f1@k, ndcg@k, map@k, hit_ratio@k, coverage@k, novelty@k,
    personalization@k``, ``intra_list_diversity@k`` (only when ``item_features`` is given),
    ``tail_share@k`` (only when ``tail_items`` is given) and ``n_users_evaluated`` (users with at
    least one ``truth`` item; the others are skipped). A truth item that is also in ``exclude`` cannot
    be recommended and simply counts as missed.

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

    Personalization is one minus the mean overlap of two users' lists, over all pairs of the
    :math:`n` evaluated users (PyG's ``LinkPredPersonalization`` with ``max_src_nodes=None``, whose
    pairwise loop is :math:`O(n^2)`): with :math:`c_i` the number of lists holding item :math:`i`,

    .. math::
        \text{personalization@}k = 1 - \frac{\sum_i c_i (c_i - 1)}{k\, n (n - 1)}

    exactly, in :math:`O(nk)`. Padding slots overlap nothing; 0 when :math:`n < 2`.

    Intra-list diversity is the mean, over users with at least two recommended items, of the mean
    cosine distance :math:`1 - \cos(f_i, f_j)` over the ordered pairs :math:`i \ne j` of their
    top-:math:`k` items, where :math:`f` are the rows of ``item_features`` (one fixed item
    representation for every model, e.g. the fused content embeddings). With one-hot categories as
    features it equals PyG's ``LinkPredDiversity``.

    ``tail_share@k`` is the share of filled top-:math:`k` slots that hold a ``tail_items`` item.
    """
    n_users, n_items = _check_model(model)
    ks = _check_ks(ks)
    _self_information(item_popularity, n_train_users, n_items)  # fail before any scoring
    truth = _check_truth(truth, (n_users, n_items))
    users = np.flatnonzero(np.diff(truth.indptr) > 0).astype(np.int64)
    top = top_k(model, users, exclude, ks[-1], candidates=candidates, chunk_size=chunk_size)
    return ranking_metrics_from_top_k(top, users, truth, ks, item_popularity=item_popularity,
                                      n_train_users=n_train_users, item_features=item_features,
                                      tail_items=tail_items, chunk_size=chunk_size)

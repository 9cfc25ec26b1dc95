r"""Full-ranking top-:math:`k` evaluation of an :class:`EmbeddingRecommender`.

Every item is scored for every evaluated user (no negative sampling); items the user has already
seen (``exclude``) and items outside ``candidates`` are never recommended. Users are processed in
chunks of ``chunk_size`` rows (by default about 16 MB of scores each), so memory is
:math:`O(\text{chunk\_size} \cdot n_\text{items})` and the results do not depend on the chunk size.

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
from mm_pipeline.recommend.ranking import (  # noqa: F401 (PAD, top_k and per_user_metrics are part of this API)
    PAD,
    _check_ks,
    _check_matrix,
    _check_model,
    _check_positive_int,
    _check_top,
    _check_truth,
    _check_users,
    _evaluated_rows,
    _ideal_dcg,
    _rows_coo,
    chunk_lists,
    per_user_metrics,
    per_user_metrics_from_top_k,
    top_k,
)


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
        raise ValueError(
            f"item_popularity must be counts of distinct training users in "
            f"[0, n_train_users={n_train_users}], got range [{pop.min()}, {pop.max()}]"
        )
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
        raise ValueError(
            f"item_features has {int((~np.isfinite(features)).any(axis=1).sum())} rows with "
            "NaN or inf values; intra-list diversity needs finite item features"
        )
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    unit = np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)
    return torch.from_numpy(np.vstack([unit, np.zeros((1, features.shape[1]))]))


def _check_item_mask(name: str, mask, n_items: int) -> torch.Tensor | None:
    """Bool ``mask`` as a tensor with an extra ``False`` at index ``n_items`` for padding."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (n_items,):
        raise ValueError(
            f"{name} must be a bool array of shape ({n_items},), got dtype {mask.dtype} and shape {mask.shape}"
        )
    return torch.from_numpy(np.append(mask, False))


def ranking_metrics_from_top_k(
    top: torch.Tensor,
    users: np.ndarray,
    truth: sp.csr_matrix,
    ks: Sequence[int] = (10, 20),
    item_popularity: np.ndarray | None = None,
    n_train_users: int | None = None,
    item_features: np.ndarray | None = None,
    tail_items: np.ndarray | None = None,
    chunk_size: int | None = None,
) -> dict[str, float]:
    r"""The metrics of :func:`ranking_metrics` for precomputed ranked lists.

    ``top[j]`` is the ranked list of user ``users[j]`` (as :func:`top_k` returns it, ``-1``-padded);
    the evaluated users are those with a non-empty ``truth`` row, and each of them must have a row.
    Scoring once and evaluating several truths (all test items, the long-tail ones) on the same lists
    saves a full scoring pass per truth.
    """
    truth = _check_truth(truth)
    n_users, n_items = truth.shape
    ks = _check_ks(ks)
    chunk_size = chunk_lists(chunk_size)
    self_info = _self_information(item_popularity, n_train_users, n_items)
    features = _unit_features(item_features, n_items)
    tail = _check_item_mask("tail_items", tail_items, n_items)
    users = _check_users(users, n_users)
    max_k = ks[-1]
    top = _check_top(top, len(users), max_k, n_items)
    evaluated = _evaluated_rows(truth, users)

    collection = LinkPredMetricCollection(
        {
            name: metric
            for k in ks
            for name, metric in (
                (f"recall@{k}", LinkPredRecall(k)),
                (f"precision@{k}", LinkPredPrecision(k)),
                (f"f1@{k}", LinkPredF1(k)),
                (f"ndcg@{k}", LinkPredNDCG(k)),
                (f"map@{k}", LinkPredMAP(k)),
                (f"hit_ratio@{k}", LinkPredHitRatio(k)),
            )
        }
    )
    coverage = {k: LinkPredCoverage(k, num_dst_nodes=n_items) for k in ks}
    slots = dict.fromkeys(ks, 0)
    novelty_sum, tail_slots = dict.fromkeys(ks, 0.0), dict.fromkeys(ks, 0)
    diversity_sum, diversity_users = dict.fromkeys(ks, 0.0), dict.fromkeys(ks, 0)
    item_lists = {k: torch.zeros(n_items, dtype=torch.float64) for k in ks}  # lists holding each item

    for start in range(0, len(evaluated), chunk_size):
        selected = evaluated[start : start + chunk_size]
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
            embedded = features[sink]  # [B, max_k, d]
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
        out[f"personalization@{k}"] = 1.0 - shared / (k * n_evaluated * (n_evaluated - 1)) if n_evaluated >= 2 else 0.0
        if features is not None:
            out[f"intra_list_diversity@{k}"] = diversity_sum[k] / diversity_users[k] if diversity_users[k] else 0.0
        if tail is not None:
            out[f"tail_share@{k}"] = tail_slots[k] / slots[k] if slots[k] else 0.0
    out["n_users_evaluated"] = n_evaluated
    return out


def ranking_metrics(
    model: EmbeddingRecommender,
    truth: sp.csr_matrix,
    exclude: sp.csr_matrix | None,
    ks: Sequence[int] = (10, 20),
    item_popularity: np.ndarray | None = None,
    n_train_users: int | None = None,
    candidates: np.ndarray | None = None,
    chunk_size: int | None = None,
    item_features: np.ndarray | None = None,
    tail_items: np.ndarray | None = None,
) -> dict[str, float]:
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
    return ranking_metrics_from_top_k(
        top,
        users,
        truth,
        ks,
        item_popularity=item_popularity,
        n_train_users=n_train_users,
        item_features=item_features,
        tail_items=tail_items,
        chunk_size=chunk_size,
    )

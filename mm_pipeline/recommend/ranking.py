r"""Full-ranking top-:math:`k` lists and the per-user recall/NDCG kernel behind them.

The kernels that both training (early stopping on validation) and evaluation read, so neither
imports the other: :mod:`mm_pipeline.evaluate.metrics` builds the catalogue-level metrics on top and
documents the conventions. Every item is scored for every evaluated user; items in ``exclude`` and
outside ``candidates`` are never recommended; ties break by the lower item index, exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from mm_pipeline.data.types import SplitData
from mm_pipeline.recommend.base import EmbeddingRecommender

PAD = -1  # top-k slot with no eligible item left (fewer candidates than k)
# Score cells per chunk of users when no chunk size is given (16 MB of float32): a buffer this small is
# reused by the allocator from chunk to chunk, where a larger one is a fresh mapping whose pages are
# faulted in again every time (measured: 2,048 users x 12,101 items ran about twice as slow per user).
CHUNK_CELLS = 1 << 22
LIST_CHUNK = 2048  # users per chunk where ranked lists, not scores, are chunked
MAX_EXTRA_SLOTS = 256  # rank_splits: slots beyond k that one pass may rank
LIST_PARTS = ("valid_top", "test_top", "among_top")  # the ranked lists of a SplitRankings
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
        raise TypeError(f"{name} must be a scipy.sparse matrix of shape {shape}, got {type(matrix).__name__}")
    if tuple(matrix.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(matrix.shape)}, expected (n_users, n_items) = {shape}")
    matrix = sp.csr_matrix(matrix, copy=True)
    matrix.sum_duplicates()  # canonical rows: each (user, item) once, so |T| counts items
    matrix.eliminate_zeros()  # an explicit 0 is not an interaction
    return matrix


def _check_candidates(candidates, n_items: int) -> torch.Tensor | None:
    if candidates is None:
        return None
    mask = np.asarray(candidates)
    if mask.dtype != bool or mask.shape != (n_items,):
        raise ValueError(
            f"candidates must be a bool array of shape ({n_items},), got dtype {mask.dtype} and shape {mask.shape}"
        )
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
        raise ValueError(f"users must be a 1-D integer array, got dtype {users.dtype} and shape {users.shape}")
    users = users.astype(np.int64)
    if users.size and (users.min() < 0 or users.max() >= n_users):
        raise ValueError(f"users must lie in [0, {n_users}), got range [{users.min()}, {users.max()}]")
    return users


def chunk_users(n_items: int, chunk_size: int | None = None) -> int:
    """Users per chunk of scores: ``chunk_size`` when given (checked), else as many as fit
    :data:`CHUNK_CELLS` scores (64 to 2,048)."""
    if chunk_size is not None:
        return _check_positive_int("chunk_size", chunk_size)
    return int(min(LIST_CHUNK, max(64, CHUNK_CELLS // max(int(n_items), 1))))


def chunk_lists(chunk_size: int | None = None) -> int:
    """Users per chunk of ranked lists (not scores): ``chunk_size`` when given (checked), else
    :data:`LIST_CHUNK`."""
    return LIST_CHUNK if chunk_size is None else _check_positive_int("chunk_size", chunk_size)


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


def _top_k_chunk(
    model: EmbeddingRecommender,
    users: np.ndarray,
    exclude: sp.csr_matrix | None,
    k: int,
    candidates: torch.Tensor | None,
) -> torch.Tensor:
    """Exact (score desc, index asc) top-``k`` of the eligible items of ``users``: :func:`_select_top_k` of
    the chunk's scores (:func:`_chunk_scores`)."""
    return _select_top_k(_chunk_scores(model, users, exclude), users, exclude, k, candidates)


def _chunk_scores(model: EmbeddingRecommender, users: np.ndarray, exclude: sp.csr_matrix | None) -> torch.Tensor:
    """``model``'s float32 scores of ``users`` against every item, a tensor of our own, with the ``exclude``
    entries at ``-inf``."""
    n_items = model.n_items
    with torch.no_grad():
        scores = model.score(torch.from_numpy(users)).detach()
        # Our own tensor: it is masked in place below. The base class's score() is a new product every
        # call; another score() may return a cached tensor, so that is copied.
        fresh = type(model).score is EmbeddingRecommender.score
        scores = scores.to("cpu", torch.float32, copy=not fresh)
    if tuple(scores.shape) != (len(users), n_items):
        raise ValueError(f"model.score returned shape {tuple(scores.shape)}, expected {(len(users), n_items)}")
    if torch.isnan(scores.sum()) and torch.isnan(scores).any():  # cheap test first
        raise ValueError(f"model {model.name!r} produced NaN scores; cannot rank")
    # The exact path below tells these -inf entries apart from scores the model itself made -inf.
    if exclude is not None:
        ex_rows, ex_cols = _rows_coo(exclude, users)
        scores[ex_rows, ex_cols] = float("-inf")
    return scores


def _select_top_k(
    scores: torch.Tensor, users: np.ndarray, exclude: sp.csr_matrix | None, k: int, candidates: torch.Tensor | None
) -> torch.Tensor:
    """The exact (score desc, index asc) top-``k`` of ``scores`` (:func:`_chunk_scores` of ``users``), the items
    outside ``candidates`` left out (``scores`` is masked in place).

    Fast path: with ineligible scores set to ``-inf``, a float ``topk`` of ``k + 1`` picks the
    right *set* whenever its k-th value is finite and strictly above its (k+1)-th (so no left-out
    item ties the cut, and no ineligible item is in it); only those ``k`` entries are then
    re-ordered by their exact keys. The remaining rows (a cut inside a tie, or fewer than ``k``
    finite eligible scores) are redone with keys over the whole row.
    """
    n_items = scores.shape[1]
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


def top_k(
    model: EmbeddingRecommender,
    users: np.ndarray,
    exclude: sp.csr_matrix | None,
    k: int,
    candidates: np.ndarray | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""The ``k`` best items for each of ``users``: a ``LongTensor [len(users), k]``, best first.

    Item :math:`i` is *eligible* for user :math:`u` unless ``exclude[u, i] != 0`` (already seen) or
    ``candidates[i]`` is false. Eligible items are ranked by ``model.score`` (in float32) descending;
    **ties break by the lower item index**, exactly (see :func:`_top_k_chunk`), so the result is
    deterministic and independent of ``chunk_size`` (default: :func:`chunk_users`). An item the model
    scores ``-inf`` is still eligible (it is ranked last).

    When a user has fewer than ``k`` eligible items the remaining slots hold ``-1`` (:data:`PAD`);
    they are never an item, so they never count as hits.
    """
    n_users, n_items = _check_model(model)
    users = _check_users(users, n_users)
    k = _check_positive_int("k", k)
    chunk_size = chunk_users(n_items, chunk_size)
    exclude = _check_matrix("exclude", exclude, (n_users, n_items), optional=True)
    cand = _check_candidates(candidates, n_items)
    if users.size == 0:
        return torch.empty((0, k), dtype=torch.long)
    # The only Python loop is over user chunks; everything inside a chunk is vectorized.
    return torch.cat(
        [
            _top_k_chunk(model, users[start : start + chunk_size], exclude, k, cand)
            for start in range(0, len(users), chunk_size)
        ]
    )


def _in_order(found: np.ndarray, lists: torch.Tensor, wanted: np.ndarray) -> torch.Tensor:
    """The rows of ``lists`` (ranked lists of the users ``found``, in any order) in the order of ``wanted``."""
    order = np.argsort(found, kind="stable")
    return lists[torch.from_numpy(order[np.searchsorted(found, wanted, sorter=order)])]


def _check_among(users: np.ndarray, among: np.ndarray) -> None:
    if np.unique(users).size != users.size or not np.isin(among, users).all():
        raise ValueError("among must be a subset of users, and users must not repeat")


def top_k_and_among_candidates(
    model: EmbeddingRecommender,
    users: np.ndarray,
    exclude: sp.csr_matrix | None,
    k: int,
    candidates: np.ndarray,
    among: np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(top_k(model, users, exclude, k), top_k(model, among, exclude, k, candidates))`` from one scoring
    pass: each chunk's scores rank the chunk's users over every item and, copied, those of them in ``among``
    (a subset of ``users``) over ``candidates`` alone. The evaluation's full ranking and its cold-start
    ranking (among cold items) scored every test user once each, then cold-start users again."""
    n_users, n_items = _check_model(model)
    users, among = _check_users(users, n_users), _check_users(among, n_users)
    k = _check_positive_int("k", k)
    exclude = _check_matrix("exclude", exclude, (n_users, n_items), optional=True)
    cand = _check_candidates(candidates, n_items)
    _check_among(users, among)
    top, picked, found = _one_pass(model, users, exclude, k, among, exclude, None, cand, k)
    return top, _in_order(found, picked, among)


def _one_pass(
    model: EmbeddingRecommender,
    users: np.ndarray,
    exclude: sp.csr_matrix | None,
    slots: int,
    among: np.ndarray,
    among_exclude: sp.csr_matrix | None,
    among_extra: sp.csr_matrix | None,
    candidates: torch.Tensor | None,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """One scoring pass over ``users`` (``exclude`` masked): their top-``slots`` lists over every item, and
    for the users of ``among`` (in the order met) the top-``k`` over ``candidates`` with ``among_exclude``
    left out (``among_extra``: those entries not already in ``exclude``, masked on the copied rows)."""
    wanted = np.isin(users, among)
    tops, picked, picked_users = [], [], []
    chunk_size = chunk_users(model.n_items)
    for start in range(0, len(users), chunk_size):
        chunk = users[start : start + chunk_size]
        scores = _chunk_scores(model, chunk, exclude)
        rows = np.flatnonzero(wanted[start : start + chunk_size])
        if rows.size:
            chosen = scores[torch.from_numpy(rows)]  # a copy: the full lists below read the unmasked scores
            if among_extra is not None:
                extra_rows, extra_cols = _rows_coo(among_extra, chunk[rows])
                chosen[extra_rows, extra_cols] = float("-inf")
            picked.append(_select_top_k(chosen, chunk[rows], among_exclude, k, candidates))
            picked_users.append(chunk[rows])
        tops.append(_select_top_k(scores, chunk, exclude, slots, None))
    top = torch.cat(tops) if tops else torch.empty((0, slots), dtype=torch.long)
    if not picked:
        return top, torch.empty((0, k), dtype=torch.long), np.zeros(0, dtype=np.int64)
    return top, torch.cat(picked), np.concatenate(picked_users)


def without_items(top: torch.Tensor, users: np.ndarray, removed: sp.csr_matrix, k: int) -> torch.Tensor:
    r"""The first ``k`` entries of each ranked list ``top[j]`` (user ``users[j]``) that are not in row
    ``users[j]`` of ``removed``, in their order; ``PAD`` where fewer are left.

    With ``top`` from :func:`top_k` at ``k + m`` slots, ``m`` at least the largest row count of ``removed``
    among ``users``, this is exactly :func:`top_k` with ``removed`` added to ``exclude`` (dropping items
    keeps the order of the others, ties included), without scoring again: validation and test lists from
    one pass (:func:`rank_splits`).
    """
    n_items, step = removed.shape[1], chunk_users(removed.shape[1])
    out = []
    for start in range(0, len(users), step):
        chunk = top[start : start + step]
        rows, cols = _rows_coo(removed, users[start : start + len(chunk)])
        dropped = torch.zeros((len(chunk), n_items + 1), dtype=torch.bool)  # column n_items: PAD's sink
        dropped[rows, cols] = True
        hit = dropped.gather(1, chunk.masked_fill(chunk == PAD, n_items))
        order = torch.sort(hit.to(torch.uint8), dim=1, stable=True).indices[:, :k]  # kept entries first
        kept = chunk.gather(1, order)
        out.append(kept.masked_fill(hit.gather(1, order), PAD))
    return torch.cat(out) if out else torch.empty((0, k), dtype=torch.long)


@dataclass(frozen=True)
class SplitRankings:
    """A model's ranked lists for both held-out splits, from one scoring pass (:func:`rank_splits`).

    ``users``: every user with a validation or a test item (ascending); ``valid_top[j]``: user ``users[j]``'s
    top-``k`` against validation (training items excluded); ``test_top[j]``: against test (training and
    validation items excluded); ``among_top[j]``: user ``among[j]``'s top-``k`` against test among the
    ``candidates`` items alone (say, cold items), empty when no ``among`` was asked for."""

    users: np.ndarray
    valid_top: torch.Tensor
    test_top: torch.Tensor
    among: np.ndarray
    among_top: torch.Tensor

    @property
    def k(self) -> int:
        return int(self.valid_top.shape[1])

    def test_lists(self, users: np.ndarray) -> torch.Tensor:
        """The test lists of ``users`` (each must have one), in their order."""
        return self.test_top[torch.from_numpy(_positions(self.users, users, "test"))]

    def among_lists(self, users: np.ndarray) -> torch.Tensor:
        """The lists over the candidates of ``users`` (each must be in :attr:`among`), in their order."""
        return self.among_top[torch.from_numpy(_positions(self.among, users, "candidate"))]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays (to store), the lists as int32 (item indices and ``PAD``); :meth:`from_arrays` reads them."""
        lists = {part: getattr(self, part).numpy().astype(np.int32) for part in LIST_PARTS}
        return {"users": self.users, "among": self.among, **lists}

    @classmethod
    def from_arrays(cls, arrays: dict) -> SplitRankings:
        users, among = (np.asarray(arrays[part], np.int64) for part in ("users", "among"))
        lists = {part: torch.from_numpy(np.asarray(arrays[part], np.int64)) for part in LIST_PARTS}
        return cls(users=users, among=among, **lists)

    def validation_metrics(self, valid: sp.csr_matrix) -> dict[str, float]:
        """Mean validation ``recall@k`` and ``ndcg@k`` of the lists (``valid``: the validation split): what
        :func:`validator` gives for the model, without scoring it."""
        metrics = per_user_metrics_from_top_k(self.valid_top, self.users, valid, ks=(self.k,))
        return {m: float(metrics[m].mean()) if metrics[m].size else 0.0 for m in (f"recall@{self.k}", f"ndcg@{self.k}")}


def _positions(held: np.ndarray, users: np.ndarray, kind: str) -> np.ndarray:
    users = np.asarray(users, dtype=np.int64)
    position = np.searchsorted(held, users)
    if users.size and (position.max() >= held.size or not (held[position] == users).all()):
        raise ValueError(f"these rankings hold no {kind} list for some of the requested users; rank them again")
    return position


def pack_rankings(rankings: dict[str, SplitRankings]) -> dict:
    """Several models' :class:`SplitRankings` of one split as plain arrays (to store): the users once, each
    model's lists (:meth:`SplitRankings.to_arrays`) under ``valid_top`` / ``test_top`` / ``among_top``."""
    first = next(iter(rankings.values()), None)
    for name, ranked in rankings.items():
        if not (np.array_equal(ranked.users, first.users) and np.array_equal(ranked.among, first.among)):
            raise ValueError(f"the rankings of {name!r} are of other users than those of {next(iter(rankings))!r}")
    arrays = {name: ranked.to_arrays() for name, ranked in rankings.items()}
    empty = np.zeros(0, np.int64)
    return {
        "models": list(rankings),
        "users": empty if first is None else first.users,
        "among": empty if first is None else first.among,
        **{part: {name: arrays[name][part] for name in rankings} for part in LIST_PARTS},
    }


def unpack_rankings(value: dict) -> dict[str, SplitRankings]:
    """The :class:`SplitRankings` of each model of a :func:`pack_rankings` value."""
    return {
        name: SplitRankings.from_arrays(
            {"users": value["users"], "among": value["among"], **{part: value[part][name] for part in LIST_PARTS}}
        )
        for name in value["models"]
    }


def rank_splits(
    model: EmbeddingRecommender,
    data: SplitData,
    k: int,
    candidates: np.ndarray | None = None,
    among: np.ndarray | None = None,
) -> SplitRankings:
    """Every validation and test list ``model`` is evaluated on, from one scoring pass (see
    :class:`SplitRankings`): the users' top ``k`` + the most validation items any of them has, against
    validation, and the test lists the same lists with the validation items dropped (:func:`without_items`);
    the lists over ``candidates`` for the users ``among`` (test users) from copies of the same scores. Two
    passes when the extra slots exceed :data:`MAX_EXTRA_SLOTS` (the lists would outweigh a second scoring).
    Exactly the lists of separate :func:`top_k` calls."""
    n_users, n_items = _check_model(model)
    k = _check_positive_int("k", k)
    valid, test = _check_truth(data.valid, (n_users, n_items)), _check_truth(data.test, (n_users, n_items))
    train = _check_matrix("train", data.train, (n_users, n_items))
    users = np.flatnonzero((np.diff(valid.indptr) > 0) | (np.diff(test.indptr) > 0)).astype(np.int64)
    among = np.zeros(0, dtype=np.int64) if among is None else _check_users(among, n_users)
    if among.size and candidates is None:
        raise ValueError("among needs candidates: the items its lists are ranked over")
    cand = _check_candidates(candidates, n_items)
    _check_among(users, among)
    test_exclude = (train + valid).tocsr()
    extra = int(np.diff(valid.indptr)[users].max()) if users.size else 0
    if extra > MAX_EXTRA_SLOTS:
        valid_top = top_k(model, users, train, k)
        test_top, picked, found = _one_pass(model, users, test_exclude, k, among, test_exclude, None, cand, k)
    else:
        top, picked, found = _one_pass(model, users, train, k + extra, among, test_exclude, valid, cand, k)
        valid_top, test_top = top[:, :k], without_items(top, users, valid, k)
    among_top = _in_order(found, picked, among) if among.size else torch.empty((0, k), dtype=torch.long)
    return SplitRankings(users, valid_top, test_top, among, among_top)


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
        raise ValueError(
            f"top must be an int64 tensor [len(users)={n_rows}, >= max(ks)={max_k}] as top_k "
            f"returns it, got dtype {top.dtype} and shape {tuple(top.shape)}"
        )
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
        raise ValueError(
            f"truth has items for {missing} users that are not in users (no top-k row); "
            "rank every user that has a truth row"
        )
    return np.flatnonzero(has_truth)


def _ideal_dcg(max_k: int) -> torch.Tensor:
    """``idcg[j]`` = DCG of ``j`` hits at the top ranks, ``j = 0..max_k`` (float64)."""
    gains = 1.0 / torch.log2(torch.arange(2, max_k + 2, dtype=torch.float64))
    return torch.cat([gains.new_zeros(1), gains.cumsum(0)])


# -------------------------------------------------------------------------------------- metrics
def per_user_metrics_from_top_k(
    top: torch.Tensor,
    users: np.ndarray,
    truth: sp.csr_matrix,
    ks: Sequence[int] = (10, 20),
    chunk_size: int | None = None,
) -> dict[str, np.ndarray]:
    r"""Per-user ``recall@k`` and ``ndcg@k`` of precomputed ranked lists (see :func:`per_user_metrics`).

    ``top[j]`` is the ranked list of user ``users[j]`` (as :func:`top_k` returns it). Only the users
    with a non-empty ``truth`` row are evaluated, in the order of ``users``; a user with truth items
    but no row in ``top`` is an error. Computed independently of PyG: a dense relevance mask per
    chunk of users, gathered at the top-k items.
    """
    truth = _check_truth(truth)
    n_users, n_items = truth.shape
    ks = _check_ks(ks)
    chunk_size = chunk_lists(chunk_size)
    users = _check_users(users, n_users)
    max_k = ks[-1]
    top = _check_top(top, len(users), max_k, n_items)
    evaluated = _evaluated_rows(truth, users)
    idcg = _ideal_dcg(max_k)
    discount = 1.0 / torch.log2(torch.arange(2, max_k + 2, dtype=torch.float64))
    recall, ndcg = {k: [np.zeros(0)] for k in ks}, {k: [np.zeros(0)] for k in ks}
    for start in range(0, len(evaluated), chunk_size):
        selected = evaluated[start : start + chunk_size]
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


def per_user_metrics(
    model: EmbeddingRecommender,
    truth: sp.csr_matrix,
    exclude: sp.csr_matrix | None,
    ks: Sequence[int] = (10, 20),
    candidates: np.ndarray | None = None,
    chunk_size: int | None = None,
) -> dict[str, np.ndarray]:
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


def validator(
    data: SplitData, ks: tuple[int, ...] = (20,), max_users: int | None = None, seed: int = 0
) -> Callable[[EmbeddingRecommender], dict[str, float]]:
    """Validation recall and NDCG at ``ks[-1]`` on ``data.valid`` (all items ranked, training items
    excluded); with ``max_users``, on a seeded sample of that many validation users (a cheaper, noisier
    estimate). What early stopping and every validation search read."""
    truth = data.valid
    users = np.flatnonzero(np.diff(truth.indptr) > 0)
    if max_users is not None and users.size > max_users:
        keep = np.zeros(data.n_users, dtype=np.float32)
        keep[np.random.default_rng(seed).choice(users, size=max_users, replace=False)] = 1.0
        truth = sp.csr_matrix(sp.diags(keep) @ truth)
        truth.eliminate_zeros()

    def validate(model: EmbeddingRecommender) -> dict[str, float]:
        # Only the two metrics early stopping and the searches read: the per-user arrays' means, the
        # same definitions as ranking_metrics without its catalogue-level metrics (run every epoch).
        metrics = per_user_metrics(model, truth=truth, exclude=data.train, ks=ks[-1:])
        return {k: float(metrics[k].mean()) if metrics[k].size else 0.0 for k in (f"recall@{ks[-1]}", f"ndcg@{ks[-1]}")}

    return validate

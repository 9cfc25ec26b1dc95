r"""A deletion test of explanations: removing what the explanation names should hurt more than removing
something at random.

For a user :math:`u` and their top recommended item :math:`i`, an item-item model scores
:math:`s(u, \cdot) = x_u Q^\top + g_u` (history block :math:`x_u`, the first ``history_width`` columns
of the user table, plus the rest ``g_u``). Removing one history item :math:`j` gives
:math:`s' = s - x_{uj} Q_{\cdot j}`; removing one modality :math:`m` gives :math:`s' = s - x_u M_m^\top`
(:math:`M_m`: that modality's part of :math:`Q`). Each is done for the *top-attributed* history item
(largest :math:`x_{uj} Q_{ij}`) or modality (largest :math:`|x_u M_{m, i}|`), and for a *random* one
(seeded), and we record how much :math:`s(u, i)` falls and how many places :math:`i` drops in the user's
ranking (training items excluded). A faithful explanation has a positive gap: top minus random.

Embedding models with content inputs (``mm_gcn``, VBPR: ``parts["content"]``, see
:mod:`mm_pipeline.explain.attribution`) are tested on modalities: the top-attributed modality is the one
with the largest :math:`|\mathrm{IG}_m(u, i)|`, and removing it re-scores every item exactly,
:math:`s' = s + \langle p_{u, a:b}, R_{\cdot, m} \rangle` (:math:`R`: the stored ``removal`` vectors, the
model's item vectors without that modality). The item tested is the user's best-ranked item whose score
has a content part at all (for ``mm_gcn`` scoring only cold items by content, its best cold item).
Other embedding models have nothing to delete without retraining: they are reported as not applicable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from mm_pipeline.recommend.base import EmbeddingRecommender


@dataclass(frozen=True)
class DeletionResult:
    """Mean score drop and rank drop of the top item when the top-attributed / a random part is removed."""

    kind: str  # "history" or "modality"
    users: int
    top_score_drop: float
    random_score_drop: float
    top_rank_drop: float
    random_rank_drop: float

    @classmethod
    def from_removals(cls, kind: str, top: tuple[np.ndarray, np.ndarray], random: tuple[np.ndarray, np.ndarray]):
        """From per-user ``(score drops, rank drops)`` of the top-attributed and of the random removal."""
        return cls(
            kind,
            int(top[0].size),
            float(top[0].mean()),
            float(random[0].mean()),
            float(top[1].mean()),
            float(random[1].mean()),
        )

    @property
    def score_gap(self) -> float:
        return self.top_score_drop - self.random_score_drop

    @property
    def rank_gap(self) -> float:
        return self.top_rank_drop - self.random_rank_drop


def _history_table(model: EmbeddingRecommender, users: np.ndarray) -> sp.csr_matrix:
    width = int(model.parts["history_width"])
    table = model.user_rows(torch.from_numpy(users)).numpy()[:, :width]
    return sp.csr_matrix(table)


def _rank(scores: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Places above each row's item (0 = first)."""
    own = scores[np.arange(items.size), items][:, None]
    return (scores > own).sum(axis=1)


def deletion_test(
    model: EmbeddingRecommender, train: sp.csr_matrix, users: np.ndarray, seed: int = 0
) -> dict[str, DeletionResult]:
    """The deletion test on ``users`` (held-out users with a training history): ``{"history": ...,
    "modality": ...}``, a kind absent when the model has no such part (empty for embedding models without
    a content split, and for a content split of fewer than two modalities)."""
    content = (model.parts or {}).get("content")
    if content and len(content["attribution"]) >= 2:
        result = _content_deletion(model, train, np.asarray(users, dtype=np.int64), content, seed)
        return {} if result is None else {"modality": result}
    if not model.parts or not model.parts.get("history_width"):
        return {}
    users = np.asarray(users, dtype=np.int64)
    history = _history_table(model, users)
    users = users[history.getnnz(axis=1) > 0]
    if users.size == 0:
        return {}
    history = _history_table(model, users)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        scores = model.score(torch.from_numpy(users)).numpy().astype(np.float64)
    seen = train[users].tocsr()
    scores[seen.nonzero()] = -np.inf  # training items are never recommended
    top = scores.argmax(axis=1)
    rows = np.arange(users.size)
    # [n_items, d]; history columns first. Read where needed, in float64 there: a float64 copy of a 20k x 20k
    # item-item table was 3.2 GB, the explanations' peak on builtin:large.
    items = model.item_embeddings.numpy()
    before_rank = _rank(scores, top)
    out = {}

    # History: the contribution of each history item j to s(u, top) is x_uj * Q[top, j].
    coo = history.tocoo()
    contribution = coo.data * items[top[coo.row], coo.col].astype(np.float64)
    order = np.lexsort((-contribution, coo.row))
    first = np.searchsorted(coo.row[order], rows)  # each row's largest contribution
    top_j = coo.col[order][first]
    counts = np.bincount(coo.row, minlength=users.size)
    pick = first + (rng.random(users.size) * counts).astype(np.int64)
    random_j = coo.col[order][pick]
    x = history.toarray()

    def remove_item(j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        after = scores - x[rows, j][:, None] * items[:, j].T.astype(np.float64)
        return scores[rows, top] - after[rows, top], _rank(after, top) - before_rank

    out["history"] = DeletionResult.from_removals("history", remove_item(top_j), remove_item(random_j))

    modalities = model.parts.get("modalities") or {}
    if len(modalities) >= 2:
        names = sorted(modalities)
        part_scores = {m: (history @ modalities[m].T).toarray().astype(np.float64) for m in names}
        own = np.stack([np.abs(part_scores[m][rows, top]) for m in names], axis=1)  # [users, modalities]
        top_m = own.argmax(axis=1)
        random_m = rng.integers(0, len(names), size=users.size)

        def remove_modality(choice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            removed = np.stack([part_scores[m] for m in names], axis=0)[choice, rows]  # [users, n_items]
            after = scores - removed
            return scores[rows, top] - after[rows, top], _rank(after, top) - before_rank

        out["modality"] = DeletionResult.from_removals("modality", remove_modality(top_m), remove_modality(random_m))
    return out


def not_tested_reason(model: EmbeddingRecommender) -> str:
    """Why :func:`deletion_test` has no result for ``model`` (when it has none)."""
    content = (model.parts or {}).get("content")
    if not content:
        return "no exact parts: an embedding model"
    if len(content["attribution"]) < 2:
        return "one modality: nothing to compare"
    return "no recommended item has a content part"


def _content_deletion(
    model: EmbeddingRecommender, train: sp.csr_matrix, users: np.ndarray, content: dict, seed: int
) -> DeletionResult | None:
    """The modality deletion test of an embedding model with a content split (module doc)."""
    users = users[train[users].getnnz(axis=1) > 0]
    names = sorted(content["attribution"])
    a, b = content["columns"]
    attribution = np.stack([content["attribution"][m] for m in names]).astype(np.float64)  # [M, n_items, w]
    has_content = np.abs(attribution).sum(axis=(0, 2)) > 0
    if users.size == 0 or not has_content.any():
        return None
    with torch.no_grad():
        scores = model.score(torch.from_numpy(users)).numpy().astype(np.float64)
    scores[train[users].tocsr().nonzero()] = -np.inf
    eligible = np.where(has_content[None, :], scores, -np.inf)
    keep = np.isfinite(eligible).any(axis=1)
    users, scores, eligible = users[keep], scores[keep], eligible[keep]
    if users.size == 0:
        return None
    top = eligible.argmax(axis=1)
    rows = np.arange(users.size)
    p = model.user_rows(torch.from_numpy(users)).numpy().astype(np.float64)[:, a:b]
    own = np.abs(np.einsum("uw,muw->um", p, attribution[:, top]))  # |IG_m(u, top)|
    top_m = own.argmax(axis=1)
    random_m = np.random.default_rng(seed).integers(0, len(names), size=users.size)
    removal = np.stack([p @ content["removal"][m].astype(np.float64).T for m in names])  # [M, users, n_items]
    before_rank = _rank(scores, top)

    def remove(choice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        after = scores + removal[choice, rows]
        return scores[rows, top] - after[rows, top], _rank(after, top) - before_rank

    return DeletionResult.from_removals("modality", remove(top_m), remove(random_m))

"""What every trained recommender reduces to for evaluation, compression and serving."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

# Array names of a sparse user table, prefixed with "user_" (see EmbeddingRecommender.to_arrays).
SPARSE_KEYS = ("crow_indices", "col_indices", "values", "shape")


def select_rows(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``table[rows]`` for a dense tensor or a sparse CSR one (which PyTorch cannot index directly).

    The CSR gather is vectorized: the selected rows' slices of ``col_indices``/``values`` are found
    from ``crow_indices`` with one ``repeat_interleave``; the result is CSR again.
    """
    if table.layout != torch.sparse_csr:
        return table[rows]
    rows = torch.as_tensor(rows, dtype=torch.int64)
    crow = table.crow_indices()
    starts, counts = crow[rows], crow[rows + 1] - crow[rows]
    new_crow = torch.zeros(len(rows) + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=new_crow[1:])
    gather = torch.repeat_interleave(starts - new_crow[:-1], counts) + torch.arange(int(new_crow[-1]))
    return torch.sparse_csr_tensor(
        new_crow, table.col_indices()[gather], table.values()[gather], size=(len(rows), table.shape[1])
    )


def sparse_from_scipy(matrix) -> torch.Tensor:
    """A float32 torch CSR tensor with the same entries as the scipy sparse ``matrix``."""
    csr = matrix.tocsr().astype(np.float32)
    csr.sort_indices()
    return torch.sparse_csr_tensor(
        torch.from_numpy(csr.indptr.astype(np.int64)),
        torch.from_numpy(csr.indices.astype(np.int64)),
        torch.from_numpy(csr.data),
        size=csr.shape,
    )


@dataclass
class EmbeddingRecommender:
    r"""A recommender whose score is a dot product: :math:`s(u, i) = \langle p_u, q_i \rangle`.

    Every model in the project (most-popular included, with :math:`p_u = 1` and :math:`q_i` the item's
    training popularity) exports this form, so one evaluation, one compression step and one serving
    wrapper cover them all.

    The user table may be a sparse CSR tensor: item-item models (EASE, the hybrid) score from the
    user's interaction history, :math:`p_u = x_u`, which is as wide as the catalogue but holds only a
    few nonzeros per user. Scoring then costs :math:`O(\mathrm{nnz}(x_u) \cdot n_\text{items})` per
    user instead of :math:`O(n_\text{items}^2)`.

    ``parts`` (optional) says how the score splits, for explanations: ``history_width`` = :math:`h` when
    the first :math:`h` columns of the user table are the user's weighted item history (item-item
    models; the contribution of history item :math:`j` to :math:`s(u, i)` is then exactly
    :math:`p_{uj} q_{ij}`), and ``modalities`` maps a modality to a scipy CSR ``[n_items, h]`` whose row
    :math:`i` is the part of :math:`q_{i, :h}` that comes from that modality's content graph.
    ``content`` (embedding models with content inputs: ``mm_gcn``, VBPR) says how the item side's content
    splits by modality: ``columns`` = :math:`(a, b)`, the columns of the tables the content enters, and
    per modality ``attribution`` (``[n_items, b - a]``, row :math:`i` the integrated-gradients vector
    :math:`A_{i,m}`, so the modality's part of :math:`s(u, i)` is :math:`\langle p_{u, a:b}, A_{i,m} \rangle`;
    see :mod:`mm_pipeline.explain.attribution`) and ``removal`` (same shape: how :math:`q_{i, a:b}` changes
    when the item loses that modality).
    """

    name: str
    user_embeddings: torch.Tensor  # [n_users, d] float32, dense or sparse CSR
    item_embeddings: torch.Tensor  # [n_items, d] float32
    info: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, Any] = field(default_factory=dict)
    # A trained model's nn.Module parameters (train_bpr sets them; a warm-start checkpoint saves them). Not
    # part of the stored bundle.
    trainable: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)
    # Sparse @ dense is several times faster on a contiguous right-hand side than on a transposed view: cached.
    _item_columns: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)
    # A sparse user table's dense tail (see _split_users): (the table it was cut from, history part, tail).
    _dense_tail: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def n_users(self) -> int:
        return int(self.user_embeddings.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_embeddings.shape[0])

    @property
    def sparse_users(self) -> bool:
        return self.user_embeddings.layout == torch.sparse_csr

    def user_rows(self, users: torch.Tensor) -> torch.Tensor:
        """The dense ``[len(users), d]`` user vectors (gathered and densified for a sparse table)."""
        rows = select_rows(self.user_embeddings, users)
        return rows.to_dense() if self.sparse_users else rows

    def score(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of ``users`` (a 1-D index tensor) against every item: ``[len(users), n_items]``."""
        if not self.sparse_users:
            return self.user_embeddings[users] @ self.item_embeddings.T
        if self._item_columns is None or self._item_columns[0] is not self.item_embeddings:
            self._item_columns = (self.item_embeddings, self.item_embeddings.T.contiguous())
        columns = self._item_columns[1]
        split = self._split_users()
        if split is None:
            return select_rows(self.user_embeddings, users) @ columns
        history, tail = split
        width = history.shape[1]
        return select_rows(history, users) @ columns[:width] + tail[users] @ columns[width:]

    def _split_users(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A sparse user table whose columns from ``parts["history_width"]`` on are mostly filled (the hybrid's
        GNN block: every user has all of them) as ``(history part, dense tail)``, cached; ``None`` otherwise.
        Scored as sparse entries, that tail held 20 times the history's entries on Amazon Beauty; one dense
        product scores it several times faster."""
        width = int(self.parts.get("history_width") or 0)
        total = int(self.user_embeddings.shape[1])
        if not 0 < width < total:
            return None
        if self._dense_tail is None or self._dense_tail[0] is not self.user_embeddings:
            table = self.user_embeddings
            csr = sp.csr_matrix(
                (table.values().numpy(), table.col_indices().numpy(), table.crow_indices().numpy()),
                shape=tuple(table.shape),
            )
            tail = csr[:, width:]
            if tail.nnz < 0.25 * tail.shape[0] * tail.shape[1]:
                self._dense_tail = (table, None, None)  # a sparse tail: scored as it is
            else:
                self._dense_tail = (table, sparse_from_scipy(csr[:, :width]), torch.from_numpy(tail.toarray()))
        _, history, tail = self._dense_tail
        return None if history is None else (history, tail)

    def to_arrays(self) -> dict[str, Any]:
        """The tables as flat arrays: ``user_embeddings`` and ``item_embeddings``, or for a sparse user
        table ``user_crow_indices``, ``user_col_indices``, ``user_values`` and ``user_shape``; the score
        parts (if any) as ``parts_*`` arrays."""
        if not self.sparse_users:
            out = {"user_embeddings": self.user_embeddings.float(), "item_embeddings": self.item_embeddings.float()}
        else:
            users = self.user_embeddings
            out = {
                "user_crow_indices": users.crow_indices(),
                "user_col_indices": users.col_indices(),
                "user_values": users.values().float(),
                "user_shape": np.asarray(users.shape, dtype=np.int64),
                "item_embeddings": self.item_embeddings.float(),
            }
        return {**out, **parts_to_arrays(self.parts)}

    @classmethod
    def from_arrays(cls, name: str, arrays: dict[str, Any], info: dict[str, Any] | None = None) -> EmbeddingRecommender:
        """The inverse of :meth:`to_arrays` (numpy arrays or tensors)."""
        if "user_embeddings" in arrays:
            users = torch.as_tensor(np.asarray(arrays["user_embeddings"], dtype=np.float32))
        else:
            missing = [f"user_{k}" for k in SPARSE_KEYS if f"user_{k}" not in arrays]
            if missing:
                raise ValueError(f"model {name!r} has neither user_embeddings nor a sparse user table ({missing})")
            users = torch.sparse_csr_tensor(
                torch.as_tensor(np.asarray(arrays["user_crow_indices"], dtype=np.int64)),
                torch.as_tensor(np.asarray(arrays["user_col_indices"], dtype=np.int64)),
                torch.as_tensor(np.asarray(arrays["user_values"], dtype=np.float32)),
                size=tuple(int(n) for n in np.asarray(arrays["user_shape"])),
            )
        return cls(
            name=name,
            user_embeddings=users,
            item_embeddings=torch.as_tensor(np.asarray(arrays["item_embeddings"], dtype=np.float32)),
            info=dict(info or {}),
            parts=parts_from_arrays(arrays),
        )

    def to_bundle(self) -> dict[str, Any]:
        return {"name": self.name, **self.to_arrays(), "info": self.info}

    @classmethod
    def from_bundle(cls, bundle: dict[str, Any]) -> EmbeddingRecommender:
        return cls.from_arrays(bundle["name"], bundle, bundle.get("info", {}))


# The array parts_to_arrays writes when a model's parts hold a content split (parts["content"]).
CONTENT_PARTS = "parts_content_columns"


def parts_to_arrays(parts: dict[str, Any]) -> dict[str, np.ndarray]:
    """:attr:`EmbeddingRecommender.parts` as flat arrays: ``parts_history_width``, ``parts_modalities``
    and one CSR triple ``parts_<modality>_{indptr,indices,values}`` per modality, with ``parts_shape``;
    ``parts_content_columns``, ``parts_content_modalities`` and ``parts_content_<modality>_{attribution,
    removal}`` for the content split."""
    if not parts:
        return {}
    import scipy.sparse as sp

    out: dict[str, np.ndarray] = {}
    if "history_width" in parts:
        modalities = dict(parts.get("modalities") or {})
        out["parts_history_width"] = np.asarray(int(parts["history_width"]), dtype=np.int64)
        out["parts_modalities"] = np.asarray(sorted(modalities), dtype=str)
        for name, matrix in sorted(modalities.items()):
            csr = sp.csr_matrix(matrix, dtype=np.float32)
            out[f"parts_{name}_indptr"] = csr.indptr.astype(np.int64)
            out[f"parts_{name}_indices"] = csr.indices.astype(np.int64)
            out[f"parts_{name}_values"] = csr.data.astype(np.float32)
            out["parts_shape"] = np.asarray(csr.shape, dtype=np.int64)
    content = parts.get("content")
    if content:
        names = sorted(content["attribution"])
        out[CONTENT_PARTS] = np.asarray(content["columns"], dtype=np.int64)
        out["parts_content_modalities"] = np.asarray(names, dtype=str)
        for name in names:
            out[f"parts_content_{name}_attribution"] = np.asarray(content["attribution"][name], dtype=np.float32)
            out[f"parts_content_{name}_removal"] = np.asarray(content["removal"][name], dtype=np.float32)
    return out


def parts_from_arrays(arrays: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`parts_to_arrays` (empty when the arrays hold no parts)."""
    out: dict[str, Any] = {}
    if "parts_history_width" in arrays:
        import scipy.sparse as sp

        names = [str(n) for n in np.asarray(arrays["parts_modalities"]).ravel().tolist()]
        shape = tuple(int(n) for n in np.asarray(arrays["parts_shape"])) if names else None
        out["history_width"] = int(np.asarray(arrays["parts_history_width"]))
        out["modalities"] = {
            n: sp.csr_matrix(
                (
                    np.asarray(arrays[f"parts_{n}_values"], dtype=np.float32),
                    np.asarray(arrays[f"parts_{n}_indices"]),
                    np.asarray(arrays[f"parts_{n}_indptr"]),
                ),
                shape=shape,
            )
            for n in names
        }
    if CONTENT_PARTS in arrays:
        names = [str(n) for n in np.asarray(arrays["parts_content_modalities"]).ravel().tolist()]
        out["content"] = {
            "columns": tuple(int(c) for c in np.asarray(arrays[CONTENT_PARTS])),
            "attribution": {n: np.asarray(arrays[f"parts_content_{n}_attribution"], dtype=np.float32) for n in names},
            "removal": {n: np.asarray(arrays[f"parts_content_{n}_removal"], dtype=np.float32) for n in names},
        }
    return out

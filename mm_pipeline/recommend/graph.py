"""Graph layers over the user-item and item-item graphs (the graph construction is in
:mod:`mm_pipeline.data.graph`)."""

from __future__ import annotations

import torch
from torch_geometric.nn import LGConv

from mm_pipeline.data.graph import bipartite_edge_index, normalized_adjacency  # noqa: F401 (imported from here too)


class DegreeSensitivePruning(torch.nn.Module):
    r"""FREEDOM's degree-sensitive edge pruning (Zhou & Shen, 2023) of an undirected bipartite graph.

    Each call keeps a ``1 - dropout`` share of the undirected user-item edges, drawn without
    replacement with probability :math:`\propto 1/\sqrt{d_u d_i}` (edges between popular users and
    items are dropped first), and returns the pruned graph re-normalised as by
    :func:`normalized_adjacency`. Training sees a different sparse graph at every step, which
    regularises the ID embeddings; evaluation uses the full graph.
    """

    def __init__(self, edge_index: torch.Tensor, num_nodes: int, dropout: float):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"edge dropout must be in [0, 1), got {dropout}")
        self.num_nodes, self.dropout = num_nodes, dropout
        half = edge_index.shape[1] // 2  # bipartite_edge_index: user->item edges, then their reverse
        self.register_buffer("edges", edge_index[:, :half].clone(), persistent=False)
        degree = torch.bincount(edge_index[0], minlength=num_nodes).float()
        self.register_buffer(
            "weight", 1.0 / torch.sqrt(degree[self.edges[0]] * degree[self.edges[1]]), persistent=False
        )

    def forward(self) -> torch.Tensor:
        keep = max(1, int(round(self.edges.shape[1] * (1.0 - self.dropout))))
        u, i = self.edges[:, torch.multinomial(self.weight, keep, replacement=False)]
        return normalized_adjacency(torch.stack([torch.cat([u, i]), torch.cat([i, u])]), self.num_nodes)


class _SymmetricSpMM(torch.autograd.Function):
    """``adj @ x`` whose backward reuses ``adj`` itself, valid because ``adj`` is symmetric.

    PyTorch's generic sparse-CSR backward transposes the matrix on every call, which made one
    training step far slower than the forward product (docs/experiments.md).
    """

    @staticmethod
    def forward(ctx, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.adj = adj
        return adj @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return None, ctx.adj @ grad


class SymmetricLGConv(LGConv):
    r"""PyG's :class:`~torch_geometric.nn.conv.LGConv` for a pre-normalised *symmetric* sparse adjacency.

    Same propagation rule (:math:`x' = \hat{A} x`); only the sparse product's backward is specialised.
    Pass the matrix from :func:`normalized_adjacency`.
    """

    def __init__(self) -> None:
        super().__init__(normalize=False)

    def forward(self, x: torch.Tensor, edge_index, edge_weight=None) -> torch.Tensor:  # type: ignore[override]
        if isinstance(edge_index, torch.Tensor) and edge_index.layout == torch.sparse_csr:
            return _SymmetricSpMM.apply(edge_index, x)
        return super().forward(x, edge_index, edge_weight)


def knn_item_adjacency(features: torch.Tensor, k: int, chunk_size: int = 2048) -> torch.Tensor:
    r"""Item-item :math:`k`-nearest-neighbour graph over ``features`` (cosine), normalised like the
    user-item graph: :math:`D^{-1/2} (A \lor A^\top) D^{-1/2}` as a sparse CSR tensor.

    Each item links to its ``k`` most similar other items; the union with the reverse links makes the
    matrix symmetric (so :class:`SymmetricLGConv` can propagate over it). Items whose feature row is
    all zero (no usable modality) get no links. Built once, in chunks of ``chunk_size`` rows, so
    memory is :math:`O(\text{chunk\_size} \cdot n)`; the graph is frozen during training, as in
    FREEDOM (Zhou & Shen, 2023).
    """
    n = features.shape[0]
    if k < 1 or n < 2:
        raise ValueError(f"knn_item_adjacency needs k >= 1 and at least 2 items, got k={k}, n={n}")
    k = min(k, n - 1)
    x = torch.nn.functional.normalize(features.float(), dim=1)
    usable = x.abs().sum(1) > 0
    # By index, not by mask: a boolean column mask over every chunk cost more than the chunk's product for
    # 64-d features (20k items).
    featureless = (~usable).nonzero().squeeze(1)
    rows, cols = [], []
    for start in range(0, n, chunk_size):
        sim = x[start : start + chunk_size] @ x.T
        local = torch.arange(sim.shape[0])
        sim[local, start + local] = -torch.inf  # no self loops
        if len(featureless):
            sim.index_fill_(1, featureless, -torch.inf)  # featureless items are nobody's neighbour
        values, top = sim.topk(k, dim=1)
        keep = usable[start : start + sim.shape[0], None] & torch.isfinite(values)
        rows.append((start + local)[:, None].expand(-1, k)[keep])
        cols.append(top[keep])
    row, col = torch.cat(rows), torch.cat(cols)
    # The distinct links both ways, ordered by (row, col): unique over one int64 key per link gives what
    # unique(dim=1) over the pairs does, without its per-column compares (most of the build at 20k items).
    key = torch.unique(torch.cat([row * n + col, col * n + row]))
    edge_index = torch.stack([key // n, key % n])
    return normalized_adjacency(edge_index, n)

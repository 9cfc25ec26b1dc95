"""The training interactions as a PyG graph: users and items on one node range, items offset by ``n_users``."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch_geometric.nn.conv.gcn_conv import gcn_norm


def bipartite_edge_index(users: np.ndarray, items: np.ndarray, n_users: int) -> torch.Tensor:
    """Undirected user-item graph on ``n_users + n_items`` nodes (items offset by ``n_users``): [2, 2E]."""
    u = torch.as_tensor(users, dtype=torch.long)
    i = torch.as_tensor(items, dtype=torch.long) + n_users
    return torch.stack([torch.cat([u, i]), torch.cat([i, u])])


def normalized_adjacency(edge_index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    r"""Symmetric-normalised adjacency :math:`D^{-1/2} A D^{-1/2}` (no self loops) as a sparse CSR tensor.

    Computed once with PyG's ``gcn_norm`` and reused by every propagation, so ``LGConv`` runs with
    ``normalize=False`` on a sparse matrix product.
    """
    index, weight = gcn_norm(edge_index, None, num_nodes=num_nodes, add_self_loops=False)
    with warnings.catch_warnings():  # torch's "sparse CSR is beta" notices
        warnings.simplefilter("ignore", UserWarning)
        adj_t = torch.sparse_coo_tensor(index.flip(0), weight, (num_nodes, num_nodes), check_invariants=True).coalesce()
        return adj_t.to_sparse_csr()

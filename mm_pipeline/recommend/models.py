"""Trainable recommenders. Each exposes ``bpr_loss(users, pos, neg)`` and ``embeddings()``."""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_geometric.nn.models import LightGCN

from mm_pipeline.recommend.graph import SymmetricLGConv

# Sparse CSR products are stable for this use; the beta notice would repeat every step.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def bpr(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    r"""Bayesian personalised ranking: :math:`-\operatorname{mean}\log\sigma(s_{ui} - s_{uj})`."""
    return -F.logsigmoid(pos_scores - neg_scores).mean()


class IDLightGCN(nn.Module):
    r"""The ID-only baseline: PyG's :class:`~torch_geometric.nn.models.LightGCN` on the user-item graph.

    Nodes ``0 .. n_users-1`` are users and ``n_users ..`` are items. Items without training
    interactions keep their random initial embedding, as in the original model.
    """

    def __init__(self, n_users: int, n_items: int, adj: torch.Tensor, dim: int = 64, num_layers: int = 2,
                 reg: float = 1e-4):
        super().__init__()
        self.n_users, self.n_items, self.reg = n_users, n_items, reg
        self.register_buffer("adj", adj, persistent=False)
        self.lightgcn = LightGCN(n_users + n_items, dim, num_layers, normalize=False)
        # Same layers, with the fast symmetric backward (see SymmetricLGConv).
        self.lightgcn.convs = nn.ModuleList([SymmetricLGConv() for _ in range(num_layers)])

    def _propagate(self) -> torch.Tensor:
        return self.lightgcn.get_embedding(self.adj)

    def bpr_loss(self, users, pos, neg):
        out = self._propagate()
        u, i, j = out[users], out[self.n_users + pos], out[self.n_users + neg]
        rank = bpr((u * i).sum(-1), (u * j).sum(-1))
        ego = self.lightgcn.embedding.weight
        reg = self.reg * (ego[users].pow(2).sum() + ego[self.n_users + pos].pow(2).sum()
                          + ego[self.n_users + neg].pow(2).sum()) / len(users)
        return rank + reg, {"bpr": rank.item()}

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._propagate()
        return out[: self.n_users], out[self.n_users:]


class MultimodalGCN(nn.Module):
    r"""A collaborative score from LightGCN plus a content score from the aligned multimodal embeddings.

    .. math::
        s(u, i) = \langle h_u, g_i \rangle + \langle q_u, c_i \rangle

    * :math:`g = \mathrm{LightGCN}(e)`: ID embeddings propagated by PyG ``LGConv`` layers over the
      normalised user-item graph (the ID-only model);
    * :math:`c_i = \mathrm{MLP}(x_i)`: a content tower over item content :math:`x_i` (fused and
      per-modality aligned embeddings plus the modality mask);
    * :math:`q = \mathrm{LightGCN}([q^{(0)}_u;\, c_i])` restricted to users: a user's content taste
      is its own vector plus the content of the items it consumed, propagated the same way.

    Items with no training interactions (cold start) have no ID embedding and no edges, so
    :math:`g_i = 0` and they are ranked by content alone. To put cold and warm items on one scale,
    training shows each positive and negative item in its cold form (:math:`g_i = 0`) with
    probability ``cold_prob`` (DropoutNet-style), and optionally adds a content-only BPR term
    weighted by ``content_weight``. ``embeddings()`` returns the concatenations
    :math:`[h_u; q_u]` and :math:`[g_i; c_i]`, so the score is one dot product.
    """

    def __init__(self, n_users: int, n_items: int, adj: torch.Tensor, content: torch.Tensor, warm: torch.Tensor,
                 dim: int = 64, num_layers: int = 2, hidden: int = 256, dropout: float = 0.1,
                 reg: float = 1e-4, content_weight: float = 0.0, cold_prob: float = 0.2):
        super().__init__()
        self.n_users, self.n_items, self.num_layers = n_users, n_items, num_layers
        self.reg, self.content_weight, self.cold_prob = reg, content_weight, cold_prob
        self.register_buffer("adj", adj, persistent=False)
        self.register_buffer("content", content.float())
        self.register_buffer("warm", warm.float().unsqueeze(-1))
        self.user_embedding = nn.Embedding(n_users, dim)
        self.item_embedding = nn.Embedding(n_items, dim)
        self.user_content = nn.Embedding(n_users, dim)
        for emb in (self.user_embedding, self.item_embedding, self.user_content):
            nn.init.normal_(emb.weight, std=0.1)
        self.content_tower = nn.Sequential(nn.Linear(content.shape[1], hidden), nn.GELU(), nn.Dropout(dropout),
                                           nn.Linear(hidden, dim))
        self.conv = SymmetricLGConv()

    def _lightgcn(self, x: torch.Tensor) -> torch.Tensor:
        total = x
        for _ in range(self.num_layers):
            x = self.conv(x, self.adj)
            total = total + x
        return total / (self.num_layers + 1)

    def _forward(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        g = self._lightgcn(torch.cat([self.user_embedding.weight, self.item_embedding.weight * self.warm]))
        c = self.content_tower(self.content)
        q = self._lightgcn(torch.cat([self.user_content.weight, c]))[: self.n_users]
        return g[: self.n_users], g[self.n_users:] * self.warm, q, c

    def bpr_loss(self, users, pos, neg):
        h_u, g_i, q_u, c_i = self._forward()
        h, q = h_u[users], q_u[users]
        collab_pos, collab_neg = (h * g_i[pos]).sum(-1), (h * g_i[neg]).sum(-1)
        content_pos, content_neg = (q * c_i[pos]).sum(-1), (q * c_i[neg]).sum(-1)
        if self.training and self.cold_prob > 0:
            collab_pos = collab_pos * (torch.rand_like(collab_pos) >= self.cold_prob)
            collab_neg = collab_neg * (torch.rand_like(collab_neg) >= self.cold_prob)
        rank = bpr(collab_pos + content_pos, collab_neg + content_neg)
        loss = rank
        parts = {"bpr": rank.item()}
        if self.content_weight > 0:
            content = bpr(content_pos, content_neg)
            loss = loss + self.content_weight * content
            parts["content_bpr"] = content.item()
        reg = self.reg * (self.user_embedding.weight[users].pow(2).sum() + self.user_content.weight[users].pow(2).sum()
                          + self.item_embedding.weight[pos].pow(2).sum()
                          + self.item_embedding.weight[neg].pow(2).sum()) / len(users)
        return loss + reg, parts

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        h_u, g_i, q_u, c_i = self._forward()
        return torch.cat([h_u, q_u], 1), torch.cat([g_i, c_i], 1)

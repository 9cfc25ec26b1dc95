"""Trainable recommenders. Each exposes ``bpr_loss(users, pos, neg)`` and ``embeddings()``."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_geometric.nn.models import LightGCN

from mm_pipeline.align.losses import info_nce
from mm_pipeline.recommend.config import FreedomConfig, MultimodalConfig, TrainConfig
from mm_pipeline.recommend.graph import DegreeSensitivePruning, SymmetricLGConv, normalized_adjacency

ALIGN_MAX_ITEMS = 256  # in-batch items per content-collaborative InfoNCE step

# Initialisers of the ID embeddings. "xavier" (FREEDOM's) scales with the table: std sqrt(2 / (n + dim)),
# about 0.02 for 4,000 items against the fixed 0.1 of "normal".
INITS = {"normal": lambda weight: nn.init.normal_(weight, std=0.1), "xavier": nn.init.xavier_uniform_}


def rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` along the first dimension. ``index_select``'s backward is an ``index_add``,
    clearly faster on the CPU than the sort-based ``index_put`` behind ``table[index]`` (it is the
    hot path of every training step: a dozen gathers per batch)."""
    return table.index_select(0, index)


def squared_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_{r \in \text{index}} \lVert \text{table}_r \rVert^2`, repeats counted: the L2 penalty of a
    batch's embedding rows. When the batch has at least as many rows as the table, each row's squared norm is
    weighted by its count in the batch instead of gathering the rows: the same sum, for a fraction of the
    work (on builtin:large a step gathers 106k item rows from 20k; the gather's backward, an ``index_add``
    of 106k x 64 values, cost more than this whole term)."""
    if len(index) < table.shape[0]:
        return rows(table, index).pow(2).sum()
    counts = torch.bincount(index, minlength=table.shape[0]).to(table.dtype)
    return (counts * table.pow(2).sum(1)).sum()


def pair_dots(user_rows: torch.Tensor, item_rows: torch.Tensor) -> torch.Tensor:
    """``[2, n]``: the dot products of ``user_rows`` ``[n, d]`` with the positive, then the negative, ``item_rows``
    ``[2n, d]``. Two ``[n, d]`` products rather than one broadcast over ``[2, n, d]``: the same values, bit for
    bit, and its backward was the slowest elementwise op of a builtin:large mm_gcn step (3% of the step)."""
    pos, neg = item_rows.view(2, len(user_rows), -1)
    return torch.stack([(user_rows * pos).sum(-1), (user_rows * neg).sum(-1)])


def bpr(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    r"""Bayesian personalised ranking: :math:`-\operatorname{mean}\log\sigma(s_{ui} - s_{uj})`."""
    return -F.logsigmoid(pos_scores - neg_scores).mean()


class IDLightGCN(nn.Module):
    r"""The ID-only baseline: PyG's :class:`~torch_geometric.nn.models.LightGCN` on the user-item graph.

    Nodes ``0 .. n_users-1`` are users and ``n_users ..`` are items. Items without training
    interactions keep their random initial embedding, as in the original model.
    """

    def __init__(self, n_users: int, n_items: int, adj: torch.Tensor, config: TrainConfig | None = None):
        super().__init__()
        config = config or TrainConfig()
        dim, num_layers = config.dim, config.num_layers
        self.n_users, self.n_items, self.reg = n_users, n_items, config.reg
        self.register_buffer("adj", adj, persistent=False)
        self.lightgcn = LightGCN(n_users + n_items, dim, num_layers, normalize=False)
        # Same layers, with the fast symmetric backward (see SymmetricLGConv).
        self.lightgcn.convs = nn.ModuleList([SymmetricLGConv() for _ in range(num_layers)])

    def _propagate(self) -> torch.Tensor:
        if not len(self.lightgcn.convs):  # BPR-MF: alpha is 1, the table is its own output (no full-table pass)
            return self.lightgcn.embedding.weight
        return self.lightgcn.get_embedding(self.adj)

    def bpr_loss(self, users, pos, neg):
        r"""BPR over the batch plus L2 on its ego rows. The user, positive and negative rows are read with one
        gather: each gather's backward fills and adds a gradient the size of the whole table, which was most
        of a BPR-MF step (three output gathers and two ego gathers: 5 full-table fills and 4 full-table adds;
        at builtin:large's 40k x 20k, batch 4,096, a step with Adam took 33.0 ms before, 10.2 ms now)."""
        n = len(users)
        out = self._propagate()
        u, i, j = rows(out, torch.cat([users, self.n_users + pos, self.n_users + neg])).view(3, n, -1)
        rank = bpr((u * i).sum(-1), (u * j).sum(-1))
        if len(self.lightgcn.convs):
            ego = self.lightgcn.embedding.weight
            squares = squared_rows(ego[: self.n_users], users) + squared_rows(
                ego[self.n_users :], torch.cat([pos, neg])
            )
        else:  # the output rows are the ego rows
            squares = u.pow(2).sum() + (i.pow(2).sum() + j.pow(2).sum())
        return rank + self.reg * squares / n, {"bpr": rank.item()}

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self._propagate()
        return out[: self.n_users], out[self.n_users :]


class MultimodalGCN(nn.Module):
    r"""A collaborative score from LightGCN plus a content score from the aligned multimodal embeddings.

    .. math::
        s(u, i) = \langle h_u, \tilde g_i \rangle + \langle q_u, \tilde c_i \rangle

    * :math:`g = \mathrm{LightGCN}(e)`: ID embeddings propagated by PyG ``LGConv`` layers over the
      normalised user-item graph (the ID-only model); with ``edge_dropout > 0`` training propagates over
      a degree-sensitively pruned graph at every step (FREEDOM's :class:`DegreeSensitivePruning`);
    * :math:`\bar g = \frac{1}{L'} \sum_{l=1}^{L'} S^l g`: the same item embeddings propagated over a
      frozen item-item :math:`k`-NN graph :math:`S` (``item_adj``, zero when none is given), so an item
      borrows the collaborative signal of the items it looks, reads or sounds like.
      ``graph_mode="pre"``: the graph smooths the item ID embeddings *before* the user-item
      propagation, :math:`g = \mathrm{LightGCN}([e_u;\ e_i + \frac{1}{L'}\sum_l (S^l e)_i])`, so a
      user's embedding also takes in the look-alikes of what it consumed, and
      :math:`\tilde g_i = g_i` for warm items;
      ``"add"``: :math:`\tilde g_i = g_i + \bar g_i` for every item, as FREEDOM does;
      ``"cold"``: :math:`\tilde g_i = g_i` for warm items only. In every mode a cold item scores
      :math:`\tilde g_i = \bar g_i`;
    * :math:`c_i = \mathrm{MLP}(x_i)`: a content tower over item content :math:`x_i` (fused and
      per-modality aligned embeddings plus the modality mask);
    * :math:`q = \mathrm{LightGCN}([q^{(0)}_u;\, c_i])` restricted to users: a user's content taste
      is its own vector plus the content of the items it consumed, propagated the same way.
      ``content_mode="all"``: :math:`\tilde c_i = c_i` for every item; ``"cold"``: only in the item's
      cold form (below), else 0, since scoring warm items by content overfits sparse data.

    Cold-start items have no ID embedding and no user-item edges (:math:`g_i = 0`): they only have
    their *cold form*, :math:`\bar g_i` in place of :math:`g_i`. To put cold and warm items on one
    scale, training also shows each warm item in its cold form with probability ``cold_prob`` at each step,
    in every pair of the batch that holds it (DropoutNet-style).

    Multi-task objective: BPR on :math:`s`, plus ``align_weight`` times an in-batch InfoNCE between
    each positive warm item's content embedding :math:`c_i` and its collaborative embedding :math:`g_i`
    (the content and behaviour views of one item pulled together, other items pushed apart), plus
    optionally ``content_weight`` times a content-only BPR. ``embeddings()`` returns the
    concatenations :math:`[h_u; q_u]` and :math:`[\tilde g_i; \tilde c_i]`, so the score is one dot
    product.

    Training cost: a step propagates the ID embeddings over the whole graph, as LightGCN does, but runs the
    content tower over the batch's items that need it only (those scored in their cold form and those of the
    InfoNCE term), and reads the users' content taste :math:`q_u` from a cache of the other nodes' share,
    refreshed every ``taste_refresh`` steps (the user's own :math:`q^{(0)}_u` stays live).
    ``embeddings()`` computes everything exactly.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        adj: torch.Tensor,
        content: torch.Tensor,
        warm: torch.Tensor,
        config: MultimodalConfig | None = None,
        item_adj: torch.Tensor | None = None,
        edge_index: torch.Tensor | None = None,
    ):
        super().__init__()
        config = config or MultimodalConfig()
        init, graph_mode, content_mode = config.init, config.graph_mode, config.content_mode
        dim, num_layers, edge_dropout = config.dim, config.num_layers, config.edge_dropout
        if init not in INITS:
            raise ValueError(f"init must be one of {sorted(INITS)}, got {init!r}")
        if graph_mode not in ("cold", "add", "pre"):
            raise ValueError(f"graph_mode must be 'pre', 'add' or 'cold', got {graph_mode!r}")
        if content_mode not in ("all", "cold"):
            raise ValueError(f"content_mode must be 'all' or 'cold', got {content_mode!r}")
        self.graph_mode, self.content_mode = graph_mode, content_mode
        self.n_users, self.n_items, self.num_layers = n_users, n_items, num_layers
        self.reg, self.content_weight, self.cold_prob = config.reg, config.content_weight, config.cold_prob
        self.item_layers, self.align_weight = config.item_layers, config.align_weight
        self.align_temperature = config.align_temperature
        self.taste_refresh = config.taste_refresh
        self._taste_cache: torch.Tensor | None = None  # see _user_taste
        self._taste_age = 0
        self.register_buffer("adj", adj, persistent=False)
        self.register_buffer("item_adj", item_adj, persistent=False)
        if edge_dropout > 0 and edge_index is None:
            raise ValueError("edge_dropout needs the user-item edge_index (bipartite_edge_index)")
        self.pruning = DegreeSensitivePruning(edge_index, n_users + n_items, edge_dropout) if edge_dropout > 0 else None
        self.register_buffer("content", content.float())
        self.register_buffer("warm", warm.float().unsqueeze(-1))
        self.user_embedding = nn.Embedding(n_users, dim)
        self.item_embedding = nn.Embedding(n_items, dim)
        self.user_content = nn.Embedding(n_users, dim)
        for emb in (self.user_embedding, self.item_embedding, self.user_content):
            INITS[init](emb.weight)
        self.content_tower = nn.Sequential(
            nn.Linear(content.shape[1], config.hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, dim),
        )
        self.conv = SymmetricLGConv()

    def _lightgcn(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        total = x
        for _ in range(self.num_layers):
            x = self.conv(x, adj)
            total = total + x
        return total / (self.num_layers + 1)

    def _item_graph(self, g: torch.Tensor) -> torch.Tensor:
        if self.item_adj is None or self.item_layers < 1:
            return torch.zeros_like(g)
        # The mean of the layers, without a zero start or a division by one layer (same values, two fewer
        # full-table passes each way at item_layers=1, the default).
        total = x = self.conv(g, self.item_adj)
        for _ in range(self.item_layers - 1):
            x = self.conv(x, self.item_adj)
            total = total + x
        return total / self.item_layers if self.item_layers > 1 else total

    def _collaborative(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ID part: users' h, items' g (zero for cold items) and their item-graph smoothing (the cold form)."""
        e = self.item_embedding.weight * self.warm
        if self.graph_mode == "pre":
            e = e + self._item_graph(e)
        g = self._lightgcn(torch.cat([self.user_embedding.weight, e]), adj)
        g_item = g[self.n_users :] * self.warm
        return g[: self.n_users], g_item, self._item_graph(g_item)

    def _taste(self, c: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        """Users' content taste :math:`q_u`: their own vector and the content of what they consumed, propagated."""
        return self._lightgcn(torch.cat([self.user_content.weight, c]), adj)[: self.n_users]

    def _forward(self, adj: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c = self.content_tower(self.content)
        return (*self._collaborative(adj), self._taste(c, adj), c)

    @torch.no_grad()
    def _refresh_taste(self) -> None:
        """Cache what the other nodes contribute to every user's taste, :math:`q_u - q^{(0)}_u / (L+1)`,
        with the content tower as it is now (no dropout); training adds the live :math:`q^{(0)}_u / (L+1)`."""
        was_training = self.content_tower.training
        self.content_tower.eval()
        q = self._taste(self.content_tower(self.content), self.adj)
        self.content_tower.train(was_training)
        self._taste_cache = q - self.user_content.weight / (self.num_layers + 1)
        self._taste_age = 0

    def bpr_loss(self, users, pos, neg):
        pruned = self.training and self.pruning is not None
        h_u, g_i, n_i = self._collaborative(self.pruning() if pruned else self.adj)
        items = torch.cat([pos, neg])  # positives then negatives: every item-side gather done once
        n = len(users)
        h = rows(h_u, users)
        collab = pair_dots(h, rows(g_i, items))
        # The item's cold form: its own ID embedding is gone; only its content neighbours speak for it.
        # Items without training interactions only have that form; warm ones take it with cold_prob.
        # The draw is per item and step (every pair of the item in this batch takes the same form): the content
        # tower then runs over cold_prob of the batch's items, not over the items of cold_prob of its pairs
        # (on builtin:large, 5.2k rather than 12.3k tower rows for a batch of 53k pairs).
        cold_item = self.warm[:, 0] == 0
        if self.training and self.cold_prob > 0:
            cold_item = cold_item | (torch.rand(self.n_items, device=items.device) < self.cold_prob)
        cold = cold_item[items].view(2, -1)
        # Pairs as positions in ``items``; a pair's user is its position modulo the batch size.
        cold_at = cold.view(-1).nonzero().squeeze(1)
        if self.graph_mode == "add":
            neigh = pair_dots(h, rows(n_i, items))
            collab = torch.where(cold, neigh, collab + neigh)
        else:  # the neighbours' score counts in the cold form only: computed for those pairs alone
            neigh = (rows(h, cold_at % n) * rows(n_i, items[cold_at])).sum(-1)
            collab = collab.view(-1).scatter(0, cold_at, neigh).view(2, n)
        # The content side, on the items this batch needs only: with content_mode "cold" those in their
        # cold form (a content score of 0 needs no content), plus the items of the alignment term.
        align_items = self._align_items(pos) if self.align_weight > 0 else pos[:0]
        scored = items[cold_at] if self.content_mode == "cold" else items
        needed = torch.unique(torch.cat([scored, align_items]))
        c_needed = self.content_tower(rows(self.content, needed))
        slot = torch.zeros(self.n_items, dtype=torch.long, device=items.device)
        slot[needed] = torch.arange(len(needed), device=items.device)
        taste = self._user_taste(users)
        if self.content_mode == "cold":  # the content score speaks for an item in its cold form only
            scores = (rows(taste, cold_at % n) * rows(c_needed, slot[scored])).sum(-1)
            content = torch.zeros_like(collab).view(-1).scatter(0, cold_at, scores).view(2, n)
        else:
            content = pair_dots(taste, rows(c_needed, slot[items]))
        rank = bpr(*(collab + content))
        loss = rank
        parts = {"bpr": rank.item()}
        if self.content_weight > 0:
            content_rank = bpr(*content)
            loss = loss + self.content_weight * content_rank
            parts["content_bpr"] = content_rank.item()
        if self.align_weight > 0:
            # Stop-gradient on the behaviour side: the content tower learns to predict it; pulling the
            # ID embeddings toward content instead cost warm-item accuracy (validation NDCG).
            align = info_nce(rows(c_needed, slot[align_items]), rows(g_i, align_items).detach(), self.align_temperature)
            loss = loss + self.align_weight * align
            parts["align_infonce"] = align.item()
        reg = (
            self.reg
            * (
                squared_rows(self.user_embedding.weight, users)
                + squared_rows(self.user_content.weight, users)
                + squared_rows(self.item_embedding.weight, items)
            )
            / len(users)
        )
        return loss + reg, parts

    def _align_items(self, pos: torch.Tensor) -> torch.Tensor:
        """The warm positives of the batch, at most ``ALIGN_MAX_ITEMS`` (the logits are items x items)."""
        items = torch.unique(pos)
        items = items[self.warm[items, 0] > 0]
        if len(items) > ALIGN_MAX_ITEMS:
            items = items[torch.randperm(len(items), device=items.device)[:ALIGN_MAX_ITEMS]]
        return items

    def _user_taste(self, users: torch.Tensor) -> torch.Tensor:
        """:math:`q_u` for a training batch. Propagating content over the whole graph at every step would
        run the content tower over every item and double the width of the propagation; the other nodes'
        share is cached instead and refreshed every ``taste_refresh`` steps, while the user's own vector
        stays live (it gets its gradient; the tower gets its own from the item side)."""
        if self._taste_cache is None or self._taste_age >= self.taste_refresh:
            self._refresh_taste()
        self._taste_age += 1
        return rows(self._taste_cache, users) + rows(self.user_content.weight, users) / (self.num_layers + 1)

    def content_parts(self, deltas: dict[str, np.ndarray], removed: dict[str, np.ndarray]) -> dict:
        """The modality split of the content columns of :meth:`embeddings` (:math:`\tilde c_i`), by
        integrated gradients through the content tower (:func:`mm_pipeline.explain.attribution.content_parts`;
        ``deltas`` / ``removed``: :func:`mm_pipeline.recommend.fit.content_blocks`)."""
        from mm_pipeline.explain.attribution import content_parts

        self.eval()
        dim = self.item_embedding.embedding_dim
        scale = 1 - self.warm[:, 0] if self.content_mode == "cold" else torch.ones(self.n_items)
        return content_parts(
            self.content_tower,
            (dim, 2 * dim),
            {m: torch.from_numpy(np.asarray(d)) for m, d in deltas.items()},
            {m: torch.from_numpy(np.asarray(r)) for m, r in removed.items()},
            scale,
        )

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        h_u, g_i, n_i, q_u, c_i = self._forward(self.adj)
        collab = g_i + n_i if self.graph_mode == "add" else g_i + n_i * (1 - self.warm)
        if self.content_mode == "cold":
            c_i = c_i * (1 - self.warm)
        return torch.cat([h_u, q_u], 1), torch.cat([collab, c_i], 1)


class VBPR(nn.Module):
    r"""VBPR (He & McAuley, 2016): matrix factorisation plus a visual preference term.

    .. math::
        s(u, i) = \beta_i + \langle \gamma_u, \gamma_i \rangle + \langle \theta_u, E f_i \rangle
                  + \beta'^\top f_i

    :math:`f_i` are the item's (fixed) visual features at unit length, zero where an item has no image;
    :math:`E` projects them to the visual factor space. Cold items keep their (untrained) ID factors,
    as in the original. ``embeddings()`` returns :math:`[\gamma_u; \theta_u; 1; 1]` and
    :math:`[\gamma_i; E f_i; \beta_i; \beta'^\top f_i]`, so the score is one dot product.
    """

    def __init__(self, n_users: int, n_items: int, visual: torch.Tensor, config: TrainConfig | None = None):
        super().__init__()
        config = config or TrainConfig()
        # The visual factors have the ID factors' dimension.
        dim = visual_dim = config.dim
        self.reg = config.reg
        self.register_buffer("visual", visual.float())
        self.user_factors = nn.Embedding(n_users, dim)
        self.item_factors = nn.Embedding(n_items, dim)
        self.user_visual = nn.Embedding(n_users, visual_dim)
        self.item_bias = nn.Embedding(n_items, 1)
        for emb in (self.user_factors, self.item_factors, self.user_visual):
            nn.init.normal_(emb.weight, std=0.1)
        nn.init.zeros_(self.item_bias.weight)
        self.projection = nn.Linear(visual.shape[1], visual_dim, bias=False)
        self.visual_bias = nn.Linear(visual.shape[1], 1, bias=False)

    def bpr_loss(self, users, pos, neg):
        """BPR plus L2 on the batch's rows. Every table is read with one gather (positives and negatives
        together) and the penalty reuses the gathered rows: each gather's backward fills a gradient the size
        of its whole table, and the per-term gathers (14 a step) were most of the step (44.2 -> 23.2 ms with Adam
        at builtin:large's size, batch 4,096)."""
        n = len(users)
        items = torch.cat([pos, neg])
        gamma_u, theta_u = rows(self.user_factors.weight, users), rows(self.user_visual.weight, users)
        gamma_i, beta_i = rows(self.item_factors.weight, items), rows(self.item_bias.weight, items)
        f = rows(self.visual, items)
        scores = (
            beta_i.view(2, n)
            + (gamma_u * gamma_i.view(2, n, -1)).sum(-1)
            + (theta_u * self.projection(f).view(2, n, -1)).sum(-1)
            + self.visual_bias(f).view(2, n)
        )
        rank = bpr(*scores)
        squares = gamma_u.pow(2).sum() + theta_u.pow(2).sum() + gamma_i.pow(2).sum() + beta_i.pow(2).sum()
        return rank + self.reg * squares / n, {"bpr": rank.item()}

    def _visual_columns(self, f: torch.Tensor) -> torch.Tensor:
        """The item table's columns from ``[E f; beta_i; beta'^T f]`` with the ID bias zeroed."""
        return torch.cat([self.projection(f), torch.zeros(f.shape[0], 1), self.visual_bias(f)], 1)

    def content_parts(self) -> dict:
        """The image's part of the score, :math:`\\langle \theta_u, E f_i \rangle + \beta'^\top f_i`, in
        the form of :func:`mm_pipeline.explain.attribution.content_parts` (linear in :math:`f_i`: integrated
        gradients from :math:`f = 0` give it exactly; removing the image sets :math:`f_i = 0`)."""
        from mm_pipeline.explain.attribution import content_parts

        dim = self.user_factors.embedding_dim
        return content_parts(
            self._visual_columns, (dim, 2 * dim + 2), {"image": self.visual}, {"image": torch.zeros_like(self.visual)}
        )

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        ones = torch.ones(self.user_factors.num_embeddings, 2)
        users = torch.cat([self.user_factors.weight, self.user_visual.weight, ones], 1)
        items = torch.cat(
            [
                self.item_factors.weight,
                self.projection(self.visual),
                self.item_bias.weight,
                self.visual_bias(self.visual),
            ],
            1,
        )
        return users, items


class FREEDOM(nn.Module):
    r"""FREEDOM (Zhou & Shen, 2023), the published multimodal baseline: a frozen item-item graph plus
    degree-sensitive pruning of the user-item graph.

    .. math::
        s(u, i) = \langle h_u,\ g_i + (S^{L'} e)_i \rangle, \qquad
        S = \sum_m w_m\, \mathrm{kNN}_k(x^{(m)})

    * :math:`g, h`: LightGCN (PyG ``LGConv``) over the user-item graph, where during training only a
      ``1 - edge_dropout`` share of the edges is kept, drawn with probability
      :math:`\propto 1/\sqrt{d_u d_i}` (popular users' and items' edges are pruned first), re-drawn
      at every step; evaluation uses the whole graph;
    * :math:`S`: the frozen item-item graph, a weighted sum of one normalised :math:`k`-NN graph per
      modality over the raw (un-aligned) features, propagated :math:`L'` times over the item ID
      embeddings :math:`e`;
    * loss: BPR on :math:`s` plus ``feature_weight`` times a BPR of :math:`h_u` against each modality's
      projected features :math:`W_m x^{(m)}_i`, plus L2 on the batch's ID embeddings.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        edge_index: torch.Tensor,
        item_adj: torch.Tensor,
        features: list[torch.Tensor],
        config: FreedomConfig | None = None,
    ):
        super().__init__()
        config = config or FreedomConfig()
        dim = config.dim
        self.n_users, self.n_items = n_users, n_items
        self.num_layers, self.item_layers = config.num_layers, config.item_layers
        self.edge_dropout, self.feature_weight, self.reg = config.edge_dropout, config.feature_weight, config.reg
        self.pruning = DegreeSensitivePruning(edge_index, n_users + n_items, self.edge_dropout)
        self.register_buffer("full_adj", normalized_adjacency(edge_index, n_users + n_items), persistent=False)
        self.register_buffer("item_adj", item_adj, persistent=False)
        for index, x in enumerate(features):
            self.register_buffer(f"features_{index}", x.float(), persistent=False)
        self.n_modalities = len(features)
        self.user_embedding = nn.Embedding(n_users, dim)
        self.item_embedding = nn.Embedding(n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.projections = nn.ModuleList([nn.Linear(x.shape[1], dim) for x in features])
        self.conv = SymmetricLGConv()

    def _forward(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        total = x
        for _ in range(self.num_layers):
            x = self.conv(x, adj)
            total = total + x
        out = total / (self.num_layers + 1)
        e = self.item_embedding.weight
        for _ in range(self.item_layers):
            e = self.conv(e, self.item_adj)
        return out[: self.n_users], out[self.n_users :] + e

    def bpr_loss(self, users, pos, neg):
        adj = self.pruning() if self.training and self.edge_dropout > 0 else self.full_adj
        h_u, g_i = self._forward(adj)
        h = rows(h_u, users)
        rank = bpr((h * rows(g_i, pos)).sum(-1), (h * rows(g_i, neg)).sum(-1))
        feature_loss = torch.zeros(())
        for index, projection in enumerate(self.projections):
            x = getattr(self, f"features_{index}")
            feature_loss = feature_loss + bpr(
                (h * projection(rows(x, pos))).sum(-1), (h * projection(rows(x, neg))).sum(-1)
            )
        reg = (
            self.reg
            * (
                squared_rows(self.user_embedding.weight, users)
                + squared_rows(self.item_embedding.weight, torch.cat([pos, neg]))
            )
            / len(users)
        )
        return rank + self.feature_weight * feature_loss + reg, {"bpr": rank.item(), "feature_bpr": feature_loss.item()}

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward(self.full_adj)

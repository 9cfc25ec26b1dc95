r"""The primary model: a closed-form collaborative core with multimodal content and a GNN on top.

.. math::
    s(u, i) = \tilde x_u \Big(\frac{W}{\sigma_W} + \alpha_K \frac{K}{\sigma_K}\Big)_{:, i}
              + \alpha_G \frac{\langle p_u, q_i \rangle}{\sigma_G}

* :math:`\tilde x_u`: the user's recency-weighted training history (decay :math:`\tau`, see
  :mod:`mm_pipeline.recommend.linear`);
* :math:`W`: an item-item core, the tuned EASE weights :math:`B` or the tuned item k-NN similarities,
  whichever validation prefers: the collaborative core, strong on dense and sparse data alike;
* :math:`K`: the item-item k-NN graph over the items' raw modality features (text, image, audio;
  the mean of one graph per modality), so items the user's recent items look, read or sound like
  score too, cold items (no training interaction, so :math:`W_{:, i} = 0`) included;
* :math:`\langle p_u, q_i \rangle`: a trained GNN, chosen on validation among the candidates given:
  the multimodal ``mm_gcn`` (LightGCN over the user-item graph with the content item graph and the
  aligned content tower, whose cold-item form also ranks items nobody has consumed yet) or the
  ID-only LightGCN. An ID-only GNN knows nothing of cold items (their embeddings are untrained), so
  with it the cold items' GNN score comes from the content-aware one (``mm_gcn``), each at its own scale;
* :math:`\sigma_\cdot`: each part's root-mean-square score over a seeded sample of users, so the
  weights :math:`\alpha` compare like with like across datasets.

The core, :math:`\tau, \alpha_K, \alpha_G` and the GNN are chosen on validation NDCG@20 by coordinate
ascent from EASE with :math:`\tau = \alpha_K = \alpha_G = 0`, which *is* the EASE baseline: the search
can only keep or improve on EASE's validation score, and the trials table shows what each part adds.
(Without a core, for catalogues too large for a dense item x item matrix, the first GNN at weight 1
is the base part instead.) The result is one dot product
(:class:`~mm_pipeline.recommend.base.EmbeddingRecommender` with a sparse user table
:math:`[\tilde x_u;\ \alpha_G p_u / \sigma_G]` and item table
:math:`[(W/\sigma_W + \alpha_K K/\sigma_K)^\top;\ q]`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from mm_pipeline.memory import release_freed_memory
from mm_pipeline.recommend.base import EmbeddingRecommender, sparse_from_scipy
from mm_pipeline.recommend.linear import recency_profile
from mm_pipeline.recommend.selection import Proposer, SearchResult, search

PARAMS = ("core", "decay", "content_weight", "graph_weight", "gnn")


@dataclass
class HybridConfig:
    # Recency decay tau of the user history (0: the plain binary history, as EASE reads it).
    decays: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    # alpha_K: weight of the content neighbours block relative to the core's (both at unit RMS).
    content_weights: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4, 0.8)
    # alpha_G: weight of the GNN score (up to 6.4: where the GNN is much the better, the blend leans on it).
    graph_weights: tuple[float, ...] = (0.0, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4)
    knn_k: int = 10  # neighbours per item in the content graph K
    rounds: int = 2  # coordinate-ascent passes at most (it stops early once a pass changes nothing)
    scale_users: int = 2048  # users sampled to measure each part's RMS score
    validation_users: int = 5000  # validation users the weight search scores (a seeded sample when more)
    budget_s: float = 120.0  # time budget of the weight search
    seed: int = 0
    # Warm start (as the trained models', mm_pipeline.recommend.warm): "auto" starts the search from the
    # previous training's choice with ``warm_rounds`` passes when the run is not forced; "on" also in a
    # forced run (never in a forget); "off" from EASE with ``rounds`` passes.
    warm_start: str = "auto"
    warm_rounds: int = 1


def coordinate_ascent(grids: dict[str, Sequence[Any]], start: dict[str, Any], rounds: int) -> Proposer:
    """Sweep one parameter's grid at a time, the others at their best values so far; stop after a pass
    over every parameter that did not improve the score, or after ``rounds`` passes."""
    names = list(grids)
    for name in names:
        if start[name] not in grids[name]:
            raise ValueError(f"the start value {start[name]} of {name} is not in its grid {list(grids[name])}")

    def key(params: dict) -> tuple:
        return tuple(params[n] for n in names)

    def propose(tried: list[dict]) -> dict | None:
        if not tried:
            return dict(start)
        scores = {key(t): t["score"] for t in tried}
        # Replay the passes: the incumbent after each sweep decides what the next sweep varies.
        best = dict(start)
        for _ in range(rounds):
            before = key(best)
            for name in names:
                for value in grids[name]:
                    candidate = {**best, name: value}
                    if key(candidate) not in scores:
                        return candidate
                best = max(
                    ({**best, name: v} for v in grids[name]),
                    key=lambda c: (scores[key(c)], -list(grids[name]).index(c[name])),
                )
            if key(best) == before:
                return None
        return None

    return propose


class HybridParts:
    """The fixed parts of the hybrid for one split: item-item cores, content graph, candidate GNNs.

    ``cores`` maps a name to an item-item matrix ``W`` (``[n_items, n_items]``, scores ``x_u W``): EASE's
    ``B`` and the item k-NN similarities; the first is the start of the search. ``gnns`` maps a name to
    a trained GNN; names in ``content_aware`` score cold items from content (``mm_gcn``), the others (an
    ID-only LightGCN) have untrained cold-item embeddings, which are zeroed. Without cores (a catalogue
    too large for a dense item x item matrix) the first GNN is the base part. ``modality_graphs`` (one
    graph per modality, whose mean is ``content_graph``) only split the content score for explanations.
    """

    def __init__(
        self,
        train: sp.csr_matrix,
        age: np.ndarray | None,
        cores: dict[str, np.ndarray] | None,
        content_graph: sp.spmatrix | None,
        gnns: dict[str, EmbeddingRecommender] | None = None,
        content_aware: Sequence[str] = (),
        scale_users: int = 2048,
        seed: int = 0,
        modality_graphs: dict[str, sp.spmatrix] | None = None,
    ):
        n_users, n_items = train.shape
        cores = dict(cores or {})
        for name, weights in cores.items():
            if weights.shape != (n_items, n_items):
                raise ValueError(
                    f"the {name} item-item weights have shape {weights.shape}; the split has {n_items} items"
                )
        if content_graph is not None and content_graph.shape != (n_items, n_items):
            raise ValueError(f"the content graph has shape {content_graph.shape}; the split has {n_items} items")
        gnns = dict(gnns or {})
        if not cores and not gnns:
            raise ValueError("the hybrid needs an item-item core (EASE, item k-NN) or at least one GNN")
        for name, gnn in gnns.items():
            if (gnn.n_users, gnn.n_items) != (n_users, n_items):
                raise ValueError(
                    f"the GNN {name!r} covers {gnn.n_users} users x {gnn.n_items} items; the split "
                    f"has {n_users} x {n_items}"
                )
        self.train, self.age = train.tocsr(), age
        self.content_aware = tuple(content_aware)
        self.cores = {name: np.asarray(w, dtype=np.float32) for name, w in cores.items()}
        self.content = None if content_graph is None else sp.csr_matrix(content_graph, dtype=np.float32)
        self.modality_graphs = {m: sp.csr_matrix(g, dtype=np.float32) for m, g in (modality_graphs or {}).items()}
        for modality, graph in self.modality_graphs.items():
            if graph.shape != (n_items, n_items):
                raise ValueError(f"the {modality} graph has shape {graph.shape}; the split has {n_items} items")
        active = np.flatnonzero(self.train.getnnz(axis=1) > 0)
        rng = np.random.default_rng(seed)
        self.sample = np.sort(rng.choice(active, size=min(scale_users, active.size), replace=False))
        self.cold = self.train.getnnz(axis=0) == 0
        self.gnns: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
        for name, gnn in gnns.items():
            users = gnn.user_rows(torch.arange(gnn.n_users)).numpy()
            items = gnn.item_embeddings.numpy().copy()
            if name not in content_aware:
                items[self.cold] = 0.0
            self.gnns[name] = (users, items, _rms(users[self.sample] @ items.T))
        self._profiles: dict[float, sp.csr_matrix] = {}
        self._scales: dict[tuple[str, float], tuple[float, float]] = {}
        self._drop_trial_cache()

    def _drop_trial_cache(self) -> None:
        """Forget what :meth:`trial` cached: (core, decay), its blocks by user chunk, the C-ordered core."""
        self._core_cache: tuple[tuple[str, float] | None, dict[bytes, torch.Tensor], torch.Tensor | None] = (
            None,
            {},
            None,
        )
        self._content_cache: tuple[float | None, dict[bytes, tuple]] = (None, {})

    def grids(self, config: HybridConfig) -> dict[str, tuple]:
        """The search grid of each parameter, restricted to the parts that exist."""
        graph = tuple(config.graph_weights) if self.gnns else (0.0,)
        if not self.cores:
            graph = (1.0,)  # the GNN is the base part, at unit scale
        return {
            "core": tuple(self.cores) or ("none",),
            "decay": tuple(config.decays),
            "content_weight": tuple(config.content_weights) if self.content is not None else (0.0,),
            "graph_weight": graph,
            "gnn": tuple(self.gnns) or ("none",),
        }

    def start(self) -> dict[str, Any]:
        """The first core alone, EASE (or the first GNN alone, without cores)."""
        return {
            "core": next(iter(self.cores), "none"),
            "decay": 0.0,
            "content_weight": 0.0,
            "graph_weight": 0.0 if self.cores else 1.0,
            "gnn": next(iter(self.gnns), "none"),
        }

    def profile(self, decay: float) -> sp.csr_matrix:
        if decay not in self._profiles:
            self._profiles[decay] = recency_profile(self.train, self.age, decay)
        return self._profiles[decay]

    def scales(self, core: str, decay: float) -> tuple[float, float]:
        """RMS score of the core block and of the content block for the sampled users."""
        if (core, decay) not in self._scales:
            sample = self.profile(decay)[self.sample]
            core_rms = _rms(np.asarray(sample @ self.cores[core])) if core in self.cores else 1.0
            content = _rms((sample @ self.content).toarray()) if self.content is not None else 1.0
            self._scales[core, decay] = (core_rms, content)
        return self._scales[core, decay]

    def _info(self, decay: float, content_weight: float, graph_weight: float, gnn: str, core: str) -> dict[str, Any]:
        """Checks one setting of the weights and returns the model's ``info`` (the setting and the scales)."""
        if content_weight and self.content is None:
            raise ValueError("content_weight > 0 needs the content graph")
        if graph_weight and gnn not in self.gnns:
            raise ValueError(f"graph_weight > 0 needs a GNN; {gnn!r} is not one of {sorted(self.gnns)}")
        if core != "none" and core not in self.cores:
            raise ValueError(f"{core!r} is not one of the item-item cores {sorted(self.cores)}")
        core_scale, content_scale = self.scales(core, decay)
        info: dict[str, Any] = {
            "core": core,
            "decay": decay,
            "content_weight": content_weight,
            "graph_weight": graph_weight,
            "gnn": gnn if graph_weight else "none",
            "core_rms": core_scale,
            "content_rms": content_scale,
        }
        if graph_weight:
            info["gnn_rms"] = self.gnns[gnn][2]
            cold_gnn = self._cold_gnn(gnn)
            if cold_gnn is not None:
                info["cold_gnn"] = cold_gnn
        return info

    def _cold_gnn(self, gnn: str) -> str | None:
        """The GNN that scores cold items for ``gnn`` when ``gnn`` cannot (an ID-only one), else ``None``."""
        cold_gnn = next((n for n in self.content_aware if n in self.gnns), None)
        return cold_gnn if gnn not in self.content_aware and cold_gnn is not None and self.cold.any() else None

    def trial(
        self,
        decay: float,
        content_weight: float,
        graph_weight: float,
        gnn: str = "none",
        core: str = "none",
        name: str = "mm_hybrid",
    ) -> EmbeddingRecommender:
        r"""The model of :meth:`model` for a search trial: the same scores up to float rounding, computed for
        the users asked only, as a sum of per-part blocks instead of one product with a built item table.

        The core's block :math:`\tilde x_u W` (the costly part: a sparse-dense product over the catalogue)
        is cached per user chunk for the last (core, decay) asked, so a sweep of the content or GNN weights
        re-weights it instead of recomputing it; the content block :math:`\tilde x_u K` is sparse and the
        GNN's a rank-64 product. On builtin:large (5,000 validation users) the 30 trials of a search took
        33.6 s instead of 66 s, each with the same validation NDCG@20 to ten digits as its built model.
        """
        info = self._info(decay, content_weight, graph_weight, gnn, core)
        n_users, n_items = self.train.shape

        def blend(users: torch.Tensor) -> torch.Tensor:
            rows = users.numpy()
            if core in self.cores:
                scores = self._core_block(core, decay, rows) / np.float32(info["core_rms"])
            else:
                scores = torch.zeros((len(rows), n_items), dtype=torch.float32)
            if content_weight:
                at, values = self._content_block(decay, rows)
                scores.index_put_(at, values * np.float32(content_weight / info["content_rms"]), accumulate=True)
            if graph_weight:
                gnn_users, gnn_items, scale = self.gnns[gnn]
                scores += torch.from_numpy(gnn_users[rows] * np.float32(graph_weight / scale)) @ torch.from_numpy(
                    gnn_items.T
                )
                if "cold_gnn" in info:  # cold items only, at the content-aware GNN's scale
                    cold_users, cold_items, cold_scale = self.gnns[info["cold_gnn"]]
                    cold = torch.from_numpy(np.flatnonzero(self.cold))
                    scores[:, cold] += torch.from_numpy(
                        cold_users[rows] * np.float32(graph_weight / cold_scale)
                    ) @ torch.from_numpy(cold_items[self.cold].T)
            return scores

        return HybridTrial(name, torch.empty((n_users, 0)), torch.empty((n_items, 0)), info, blend=blend)

    def _core_block(self, core: str, decay: float, rows: np.ndarray) -> torch.Tensor:
        """:math:`\tilde x_u W` for the users ``rows``, cached for the last core and decay asked. The product
        reads ``W`` row by row: a core given in another order is copied to C order once (a sparse product
        over a transposed view is several times slower); a stored core is C-ordered already."""
        if self._core_cache[0] != (core, decay):
            contiguous = self._core_cache[2] if self._core_cache[0] and self._core_cache[0][0] == core else None
            self._core_cache = ((core, decay), {}, None)  # the old blocks and copy go before the new copy is made
            release_freed_memory()
            if contiguous is None:
                contiguous = torch.from_numpy(np.ascontiguousarray(self.cores[core]))
            self._core_cache = ((core, decay), {}, contiguous)
        _, chunks, contiguous = self._core_cache
        key = rows.tobytes()
        if key not in chunks:
            chunks[key] = sparse_from_scipy(self.profile(decay)[rows]) @ contiguous
        return chunks[key]

    def _content_block(self, decay: float, rows: np.ndarray) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The entries of :math:`\tilde x_u K` for the users ``rows`` as ``((row, col), value)``, cached for the
        last decay asked (a content-weight sweep re-weights them)."""
        if self._content_cache[0] != decay:
            self._content_cache = (decay, {})
        chunks = self._content_cache[1]
        key = rows.tobytes()
        if key not in chunks:
            block = (self.profile(decay)[rows] @ self.content).tocoo()
            at = (torch.from_numpy(block.row.astype(np.int64)), torch.from_numpy(block.col.astype(np.int64)))
            chunks[key] = (at, torch.from_numpy(block.data.astype(np.float32)))
        return chunks[key]

    def model(
        self,
        decay: float,
        content_weight: float,
        graph_weight: float,
        gnn: str = "none",
        core: str = "none",
        name: str = "mm_hybrid",
    ) -> EmbeddingRecommender:
        info = self._info(decay, content_weight, graph_weight, gnn, core)
        core_scale, content_scale = info["core_rms"], info["content_rms"]
        self._drop_trial_cache()  # what the search's trials cached goes (and its pages) before the tables come
        release_freed_memory()
        # The item table is built as its transpose, the layout scoring multiplies by (one row per user-table
        # column, one column per item): the core's W as it is stored, no n x n transposes per trial.
        blocks_u: list[sp.spmatrix] = []
        columns: list[tuple[int, Any]] = []  # (height, how to fill those rows of the transposed item table)
        parts: dict[str, Any] = {}
        n_items = self.train.shape[1]
        if core in self.cores or content_weight:
            parts["history_width"] = int(n_items)
            if content_weight and self.content is not None and self.modality_graphs:
                share = content_weight / (content_scale * len(self.modality_graphs))
                parts["modalities"] = {m: (g.T * share).tocsr() for m, g in self.modality_graphs.items()}

            def history_rows(out: np.ndarray) -> None:  # row j: what history item j adds to every item
                if core in self.cores:
                    np.divide(self.cores[core], np.float32(core_scale), out=out)
                else:
                    out[...] = 0.0
                if content_weight:
                    neighbours = (self.content * (content_weight / content_scale)).tocsr()
                    rows = np.repeat(np.arange(n_items), np.diff(neighbours.indptr))
                    out[rows, neighbours.indices] += neighbours.data

            blocks_u.append(self.profile(decay))
            columns.append((n_items, history_rows))
        if graph_weight:
            users, items, scale = self.gnns[gnn]
            blocks_u.append(sp.csr_matrix(users * (graph_weight / scale)))
            columns.append((items.shape[1], items.T))
            if "cold_gnn" in info:
                users, items, scale = self.gnns[info["cold_gnn"]]  # cold items only, at its own scale
                blocks_u.append(sp.csr_matrix(users * (graph_weight / scale)))
                columns.append((items.shape[1], np.where(self.cold[None, :], items.T, 0.0)))
        users = sp.hstack(blocks_u, format="csr") if len(blocks_u) > 1 else blocks_u[0].tocsr()
        table = np.empty((sum(height for height, _ in columns), n_items), dtype=np.float32)
        top = 0
        for height, fill in columns:
            if callable(fill):
                fill(table[top : top + height])
            else:
                table[top : top + height] = fill
            top += height
        return EmbeddingRecommender(name, sparse_from_scipy(users), torch.from_numpy(table).T, info, parts)


@dataclass
class HybridTrial(EmbeddingRecommender):
    """A hybrid setting scored without its tables (:meth:`HybridParts.trial`): ``blend(users)`` gives the
    scores; the tables are empty placeholders that only carry the number of users and items."""

    blend: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def score(self, users: torch.Tensor) -> torch.Tensor:
        return self.blend(users)


def _rms(scores: np.ndarray) -> float:
    value = float(np.sqrt(np.mean(np.square(scores, dtype=np.float64))))
    return value if value > 0 else 1.0


def fit_hybrid(
    parts: HybridParts,
    validate,
    config: HybridConfig,
    name: str = "mm_hybrid",
    on_trial=None,
    previous: dict[str, Any] | None = None,
) -> SearchResult:
    """Choose the core, ``decay``, ``content_weight``, ``graph_weight`` and the GNN on validation (module doc).

    A part that is missing (no content graph, no GNN) keeps weight 0. ``validate(model)`` returns the
    validation metrics (``ndcg@20`` decides). ``previous`` (a warm start: the previous training's choice)
    is where the search starts, with ``config.warm_rounds`` passes, when every value of it is in its grid."""
    grids = parts.grids(config)
    for param in ("decay", "content_weight", "graph_weight"):
        if any(v < 0 for v in grids[param]):
            raise ValueError(f"the {param} grid must not hold negative values, got {grids[param]}")
    start, rounds = parts.start(), config.rounds
    if previous is not None and set(previous) == set(start) and all(previous[k] in grids[k] for k in start):
        start, rounds = dict(previous), config.warm_rounds
    for param, value in start.items():
        if value not in grids[param]:
            raise ValueError(f"the {param} grid {grids[param]} must hold {value!r}, where the search starts")
    return search(
        coordinate_ascent(grids, start, rounds),
        lambda params: parts.trial(name=name, **params),
        validate,
        config.budget_s,
        max_trials=10_000,
        on_trial=on_trial,
        keep_best=False,
        final=lambda params: parts.model(name=name, **params),  # the chosen setting's tables, built once
    )


# What each ablation of the hybrid takes away (its other weights are chosen on validation again).
ABLATIONS = {
    "no_content": "no multimodal content: no content-graph block, and only an ID-only GNN (LightGCN)",
    "no_gnn": "no GNN score",
    "no_recency": "the plain binary history (no recency decay)",
    "no_item_item": "no item-item core, EASE or item k-NN (the GNN is the base part)",
}


def ablate(parts: HybridParts, config: HybridConfig, what: str) -> tuple[HybridParts, HybridConfig]:
    """``parts`` and ``config`` with one part of the hybrid removed (see :data:`ABLATIONS`)."""
    if what not in ABLATIONS:
        raise ValueError(f"unknown ablation {what!r}; choose from {sorted(ABLATIONS)}")
    out = copy.copy(parts)
    out._scales = {}  # the scales depend on the parts: not shared with the full model
    out._drop_trial_cache()
    if what == "no_content":
        out.content = None
        out.gnns = {n: g for n, g in parts.gnns.items() if n not in parts.content_aware}
    elif what == "no_gnn":
        out.gnns = {}
    elif what == "no_recency":
        config = dataclasses.replace(config, decays=(0.0,))
    elif what == "no_item_item":
        if not parts.gnns:
            raise ValueError("the hybrid without an item-item core needs a GNN")
        out.cores = {}
    if not out.cores and not out.gnns:
        raise ValueError(f"the hybrid {what} has neither an item-item core nor a GNN left")
    return out, config

"""Fitting every recommender on one interaction split: the entry points the pipeline calls.

The split is a DataFrame with ``user_idx``, ``item_idx``, ``timestamp``, ``weight`` and ``split``
(``train`` / ``valid`` / ``test``). Validation during training ranks all items for users with
validation interactions, excluding their training items, and monitors NDCG@20.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from mm_pipeline.data.types import SplitData
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.config import FreedomConfig, MultimodalConfig, TrainConfig
from mm_pipeline.recommend.graph import bipartite_edge_index, knn_item_adjacency
from mm_pipeline.recommend.models import FREEDOM, VBPR, IDLightGCN, MultimodalGCN
from mm_pipeline.recommend.ranking import validator
from mm_pipeline.recommend.train import train_bpr
from mm_pipeline.recommend.warm import WarmStart


def content_matrix(aligned: dict[str, np.ndarray]) -> np.ndarray:
    """Content input of the multimodal model: fused + per-modality aligned embeddings + modality mask."""
    z = np.asarray(aligned["modality_embeddings"], dtype=np.float32)
    parts = [
        np.asarray(aligned["fused"], dtype=np.float32),
        z.reshape(z.shape[0], -1),
        np.asarray(aligned["present"], dtype=np.float32),
    ]
    return np.concatenate(parts, axis=1)


def content_blocks(aligned: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    r""":func:`content_matrix` split by modality, for attribution: ``(deltas, removed)``.

    ``deltas[m]`` holds modality :math:`m`'s entries of the content matrix: its own aligned embedding
    :math:`z_{i,m}`, its presence flag and its share :math:`\alpha_{i,m} z_{i,m}` of the fused vector
    (the fused vector is :math:`\sum_m \alpha_{i,m} z_{i,m}`), so the blocks sum to the content matrix.
    ``removed[m]`` is the content matrix of the same items without modality :math:`m`: its embedding and
    flag zeroed and the fusion weights renormalised over the other modalities (what the aligner gives an
    item that lacks it: the fusion is a softmax over the modalities an item has)."""
    z = np.asarray(aligned["modality_embeddings"], dtype=np.float32)
    n, n_modalities, dim = z.shape
    present = np.asarray(aligned["present"], dtype=np.float32)
    weights = np.asarray(aligned["weights"], dtype=np.float32) * present
    names = [str(m) for m in aligned["modalities"]]
    deltas, removed = {}, {}
    for k, name in enumerate(names):
        only = np.zeros_like(z)
        only[:, k] = z[:, k]
        flag = np.zeros_like(present)
        flag[:, k] = present[:, k]
        deltas[name] = np.concatenate([weights[:, k : k + 1] * z[:, k], only.reshape(n, -1), flag], axis=1)
        rest = weights.copy()
        rest[:, k] = 0.0
        total = rest.sum(1, keepdims=True)
        rest = np.divide(rest, total, out=np.zeros_like(rest), where=total > 0)
        others = z.copy()
        others[:, k] = 0.0
        flags = present.copy()
        flags[:, k] = 0.0
        fused = (rest[:, :, None] * others).sum(1)
        removed[name] = np.concatenate([fused, others.reshape(n, -1), flags], axis=1).astype(np.float32)
    return deltas, removed


def fit_lightgcn(
    data: SplitData, config: TrainConfig, on_epoch=None, name: str = "lightgcn", warm: WarmStart | None = None
) -> tuple[EmbeddingRecommender, pd.DataFrame]:
    """ID-only LightGCN; with ``config.num_layers = 0`` it is plain BPR matrix factorisation. ``warm``: start
    from a checkpoint's parameters (:mod:`mm_pipeline.recommend.warm`), as every trainer here."""
    torch.manual_seed(config.seed)
    model = IDLightGCN(data.n_users, data.n_items, data.adj, config)
    return _train(model, name, data, config, on_epoch, warm)


def _train(model, name: str, data: SplitData, config: TrainConfig, on_epoch, warm: WarmStart | None):
    """:func:`train_bpr` from the model as built, or warm-started from ``warm`` (then validated first)."""
    if warm is not None:
        warm.apply(model, data.train)
    validate = validator(data, max_users=config.validation_users or None, seed=config.seed)
    return train_bpr(model, name, data.train, validate, config, on_epoch=on_epoch, validate_start=warm is not None)


def item_knn_graph(features: list[np.ndarray], k: int) -> torch.Tensor:
    """The item-item graph: the mean of one normalised k-NN graph per feature matrix (FREEDOM's
    construction; one matrix gives one plain k-NN graph)."""
    if not features:
        raise ValueError("item_knn_graph needs at least one feature matrix")
    return _mean_graph([_knn_graph(x, k) for x in features])


def _knn_graph(features: np.ndarray, k: int) -> torch.Tensor:
    """One feature matrix's normalised k-NN graph, as a sparse COO tensor (what :func:`_mean_graph` adds)."""
    return knn_item_adjacency(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)), k).to_sparse_coo()


def _mean_graph(graphs: list[torch.Tensor]) -> torch.Tensor:
    """The mean of sparse COO graphs of one shape, as a sparse CSR tensor."""
    if len(graphs) == 1:
        return graphs[0].to_sparse_csr()
    return (sum(graphs[1:], graphs[0]) * (1.0 / len(graphs))).coalesce().to_sparse_csr()


RawFeatures = dict[str, tuple[np.ndarray, np.ndarray]]  # modality -> (features [n_items, D_m], present [n_items])


def raw_graph_features(raw_features: RawFeatures) -> list[np.ndarray]:
    """Each modality's raw features, standardised over the items that have them (zeros elsewhere)."""
    return [standardized_features(*raw_features[m]) for m in sorted(raw_features)]


def _scipy_csr(graph: torch.Tensor) -> sp.csr_matrix:
    return sp.csr_matrix(
        (graph.values().numpy(), graph.col_indices().numpy(), graph.crow_indices().numpy()), shape=tuple(graph.shape)
    )


def content_graph(raw_features: RawFeatures, k: int = 10) -> sp.csr_matrix:
    """The item-item k-NN graph over the raw modality features (the mean of one normalised k-NN graph
    per modality, each over the standardised features): the graph ``mm_gcn`` and FREEDOM use, as scipy CSR."""
    return _scipy_csr(item_knn_graph(raw_graph_features(raw_features), k))


def content_graphs(raw_features: RawFeatures, k: int = 10) -> tuple[dict[str, sp.csr_matrix], sp.csr_matrix]:
    """One normalised k-NN graph per modality (what the explanations split the content score by) and their
    mean, :func:`content_graph` exactly, from one build of each modality's graph (the hybrid needs both; on
    builtin:large one build of the three took 12-13 s)."""
    graphs = {m: _knn_graph(standardized_features(*raw_features[m]), k) for m in sorted(raw_features)}
    per_modality = {m: _scipy_csr(_mean_graph([graph])) for m, graph in graphs.items()}
    return per_modality, _scipy_csr(_mean_graph(list(graphs.values())))


def build_multimodal(
    data: SplitData,
    aligned: dict[str, np.ndarray] | None,
    config: MultimodalConfig,
    content: np.ndarray | None = None,
    graph_features: list[np.ndarray] | None = None,
    raw_features: RawFeatures | None = None,
) -> MultimodalGCN:
    """The untrained primary model as :func:`fit_multimodal` trains it: its content matrix and item-item graph
    from the same arguments (the benchmarks build it through here too, so they time what training runs)."""
    if config.graph_source not in ("raw", "aligned"):
        raise ValueError(f"graph_source must be 'raw' or 'aligned', got {config.graph_source!r}")
    if content is None:
        if aligned is None:
            raise ValueError("mm_gcn needs aligned embeddings or explicit content")
        content = content_matrix(aligned)
    if graph_features is None and config.knn_k > 0:
        if config.graph_source == "raw":
            if not raw_features:
                raise ValueError(
                    "graph_source='raw' builds the item graph from the raw modality features: pass "
                    "raw_features={modality: (features, present)}, or set graph_source='aligned'"
                )
            graph_features = raw_graph_features(raw_features)
        elif aligned is None:
            raise ValueError("graph_source='aligned' needs the aligned embeddings (or explicit graph_features)")
        else:
            graph_features = [np.asarray(aligned["fused"])]
    content_t = torch.from_numpy(np.asarray(content, dtype=np.float32))
    if content_t.shape[0] != data.n_items:
        raise ValueError(f"item content covers {content_t.shape[0]} items but the split has {data.n_items}")
    for x in graph_features or []:
        if x.shape[0] != data.n_items:
            raise ValueError(f"graph features cover {x.shape[0]} items but the split has {data.n_items}")
    item_adj = item_knn_graph(graph_features, config.knn_k) if config.knn_k > 0 else None
    # The user-item edge list is only needed to prune the graph at every step.
    coo = data.train.tocoo() if config.edge_dropout > 0 else None
    return MultimodalGCN(
        data.n_users,
        data.n_items,
        data.adj,
        content_t,
        torch.from_numpy(data.warm_items),
        config,
        item_adj=item_adj,
        edge_index=None if coo is None else bipartite_edge_index(coo.row, coo.col, data.n_users),
    )


def fit_multimodal(
    data: SplitData,
    aligned: dict[str, np.ndarray] | None,
    config: MultimodalConfig,
    on_epoch=None,
    name: str = "mm_gcn",
    content: np.ndarray | None = None,
    graph_features: list[np.ndarray] | None = None,
    raw_features: RawFeatures | None = None,
    attribution: bool = True,
    warm: WarmStart | None = None,
) -> tuple[EmbeddingRecommender, pd.DataFrame]:
    """The primary model on the aligned embeddings (``content_matrix(aligned)``) with the item-item graph
    of ``config.graph_source``: over ``raw_features`` (``{modality: (features, present)}``) or the fused
    aligned vectors. ``content`` / ``graph_features`` (a list of matrices, one k-NN graph each, averaged)
    replace those inputs (the ablations do). With ``attribution`` and content from ``aligned``, the model
    carries the modality split of its content (:mod:`mm_pipeline.explain.attribution`) in ``parts``."""
    torch.manual_seed(config.seed)
    attribution = attribution and content is None and aligned is not None and "weights" in aligned
    model = build_multimodal(data, aligned, config, content, graph_features, raw_features)
    trained, history = _train(model, name, data, config, on_epoch, warm)
    if attribution:
        trained.parts = {"content": model.content_parts(*content_blocks(aligned))}
    return trained, history


def standardized_features(features: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Features scaled to zero mean and unit variance over the items that have them; zeros elsewhere."""
    x = np.asarray(features, dtype=np.float32)
    present = np.asarray(present, dtype=bool)
    out = np.zeros_like(x)
    if present.any():
        rows = x[present]
        out[present] = (rows - rows.mean(0)) / np.maximum(rows.std(0), 1e-4)
    return out


def unit_rows(features: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Each item's feature vector scaled to unit L2 norm; zeros where an item lacks the features."""
    x = np.where(np.asarray(present, dtype=bool)[:, None], np.asarray(features, dtype=np.float32), 0.0)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def fit_vbpr(
    data: SplitData,
    visual: np.ndarray,
    present: np.ndarray,
    config: TrainConfig,
    on_epoch=None,
    name: str = "vbpr",
    warm: WarmStart | None = None,
) -> tuple[EmbeddingRecommender, pd.DataFrame]:
    """VBPR on the items' visual features, each item's vector at unit length (items without an image get
    zeros). Not standardised: per-dimension scaling blows rare dimensions of 4,096-d CNN features up to
    outliers, and VBPR scored much lower on validation that way (docs/experiments.md)."""
    torch.manual_seed(config.seed)
    visual = unit_rows(visual, present)
    if visual.shape[0] != data.n_items:
        raise ValueError(f"visual features cover {visual.shape[0]} items but the split has {data.n_items}")
    model = VBPR(data.n_users, data.n_items, torch.from_numpy(visual), config)
    trained, history = _train(model, name, data, config, on_epoch, warm)
    trained.parts = {"content": model.content_parts()}
    return trained, history


def fit_freedom(
    data: SplitData,
    raw_features: RawFeatures,
    config: FreedomConfig,
    on_epoch=None,
    name: str = "freedom",
    warm: WarmStart | None = None,
) -> tuple[EmbeddingRecommender, pd.DataFrame]:
    """FREEDOM on the raw per-modality features ``{modality: (features, present)}`` (standardised;
    zeros where an item lacks the modality). The item-item graph is the mean of one k-NN graph per
    modality."""
    torch.manual_seed(config.seed)
    if not raw_features:
        raise ValueError("FREEDOM needs at least one modality's features")
    standardized = raw_graph_features(raw_features)
    for x in standardized:
        if x.shape[0] != data.n_items:
            raise ValueError(f"features cover {x.shape[0]} items but the split has {data.n_items}")
    features = [torch.from_numpy(x) for x in standardized]
    item_adj = item_knn_graph(standardized, config.knn_k)
    coo = data.train.tocoo()
    model = FREEDOM(
        data.n_users, data.n_items, bipartite_edge_index(coo.row, coo.col, data.n_users), item_adj, features, config
    )
    return _train(model, name, data, config, on_epoch, warm)

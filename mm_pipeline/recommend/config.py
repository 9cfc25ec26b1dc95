"""The trainable models' settings: one dataclass per model family, the only place their defaults live.

Each model takes its config whole (``MultimodalGCN(..., config)``); the Dagster run config classes are
generated from these (:mod:`mm_pipeline.defs.config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    dim: int = 64
    num_layers: int = 2
    epochs: int = 150
    batch_size: int = 4096
    lr: float = 1e-2
    # Steps per epoch at most. Every step propagates over the whole graph, so an epoch costs its steps: where
    # the training interactions need more batches of batch_size, the batch grows to fill max_epoch_steps
    # steps and the learning rate by the square root of that growth (Adam's usual rule), at most twice
    # (the largest growth measured). On Amazon Beauty (36 steps of 4,096 -> 18 of 8,115) LightGCN trained in
    # 0.42x the CPU time to the same validation NDCG@20, mm_gcn in 0.59x (docs: experiments). Data with at
    # most max_epoch_steps * batch_size training interactions trains exactly as configured. 0: no limit.
    max_epoch_steps: int = 18
    reg: float = 1e-4
    patience: int = 8
    eval_every: int = 1
    # Validation users early stopping scores after each epoch: a seeded sample, the same every epoch, when
    # there are more (0: all). On a catalogue like Amazon Beauty's (22k validation users) scoring them all
    # took three times as long as the epoch itself. A search still compares its settings on all of them.
    validation_users: int = 5000
    seed: int = 0
    # "auto": CUDA when a GPU is visible (this process's LOCAL_RANK one under torchrun), else the CPU;
    # or a torch device string ("cpu", "cuda", "cuda:1"). Results are not bit-identical across devices.
    device: str = "auto"
    # Warm start (mm_pipeline.recommend.warm): "auto" starts a retrain from the previous training's
    # checkpoint when a compatible one exists and the run is not forced (--force, forget: from scratch);
    # "on" also in a forced run (never in a forget); "off" always from scratch.
    warm_start: str = "auto"
    # New users' and items' rows in a warm start: "history" (the mean of their history's rows) or "default"
    # (the model's own initialisation).
    warm_init: str = "history"


@dataclass
class MultimodalConfig(TrainConfig):
    # A lower rate than LightGCN's: it did better on validation here (docs: experiments).
    lr: float = 5e-3
    patience: int = 10
    hidden: int = 256
    dropout: float = 0.1
    content_weight: float = 0.0
    cold_prob: float = 0.2
    knn_k: int = 10  # item-item graph neighbours (0: no item-item graph)
    item_layers: int = 1  # propagation steps over the item-item graph
    # The item graph: mean of per-modality k-NN graphs over the raw features ("raw", as FREEDOM builds
    # it) or one k-NN graph over the fused aligned embedding ("aligned"). The aligned space is trained
    # on the training interactions, so its neighbours repeat what the ID embeddings already know; the
    # raw graph adds what they don't (higher validation NDCG@20 on dense and sparse data).
    graph_source: str = "raw"
    # Where the item graph enters: smoothing the item ID embeddings before the user-item propagation
    # ("pre", so users see it too), added to every item's final embedding ("add", FREEDOM's) or for
    # cold items only ("cold"). "pre" led on validation NDCG@20 with xavier init (docs: experiments).
    graph_mode: str = "pre"
    align_weight: float = 0.03  # content <-> collaborative InfoNCE in the multi-task loss (0: off)
    align_temperature: float = 0.2
    # Training steps between refreshes of the users' cached content taste (MultimodalGCN._user_taste).
    taste_refresh: int = 32
    # The content score <q_u, c_i> for every item ("all") or only for an item in its cold form ("cold").
    # On sparse data (5-core, a handful of interactions per user) scoring warm items by content
    # overfits validation; on dense data the two tie.
    content_mode: str = "cold"
    edge_dropout: float = 0.0  # FREEDOM's degree-sensitive pruning of user-item edges per step (0: off)
    # ID embedding initialiser: "xavier" (FREEDOM's; its scale shrinks with the table) or "normal" (std
    # 0.1). With graph_mode "pre" the two are close on validation; xavier no worse on sparse data.
    init: str = "xavier"


@dataclass
class FreedomConfig(TrainConfig):
    lr: float = 5e-3  # the primary model's rate, for a like-for-like comparison
    patience: int = 10
    knn_k: int = 10
    item_layers: int = 1
    edge_dropout: float = 0.8  # share of user-item edges pruned at each training step (FREEDOM's default)
    feature_weight: float = 1e-4


@dataclass
class EaseConfig:
    l2: float = field(default=200.0, metadata={"description": "Where the search for the L2 weight starts."})
    l2_factor: float = field(
        default=2.0, metadata={"description": "The search steps the L2 weight by this factor up or down."}
    )
    search_items: int = field(
        default=4000,
        metadata={
            "description": "Above this many items the L2 weight is searched on the sub-catalogue of the "
            "most popular search_items items, and EASE is fitted once on the whole catalogue with the chosen "
            "weight (a trial is a dense n x n inverse: n^3 work); 0 searches on the whole catalogue."
        },
    )


@dataclass
class ItemKnnConfig:
    k: int = field(default=100, metadata={"description": "Where the search for the neighbourhood size starts."})
    shrink: float = field(
        default=10.0, metadata={"description": "Shrinks similarities of items with few interactions."}
    )

"""The model table: one entry per recommender, from which the pipeline is generated.

Each :class:`ModelSpec` names the model, its role in the comparison, what it is trained on, its settings
dataclass (the run config is generated from it) and the default budget of its validation search. The
Dagster layer builds one training asset per entry, the inputs of the evaluation and research reports,
and the tests' quick run config from :data:`MODEL_TABLE`; adding a model is its trainer here plus one
entry.

A trainer is ``train(inputs, config, tuning, on_trial) -> Trained``: the split and the inputs the spec
asks for, the settings dataclass (``None`` when the spec has none), the search budget (``None`` when
nothing is searched) and a callback for each setting the search tried.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mm_pipeline.data.types import InteractionSplit, SplitData, as_interaction_split
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.baselines import EASE_MAX_ITEMS, content_knn, most_popular
from mm_pipeline.recommend.config import EaseConfig, FreedomConfig, ItemKnnConfig, MultimodalConfig, TrainConfig
from mm_pipeline.recommend.fit import (
    RawFeatures,
    content_graphs,
    fit_freedom,
    fit_lightgcn,
    fit_multimodal,
    fit_vbpr,
)
from mm_pipeline.recommend.hybrid import HybridConfig, HybridParts, fit_hybrid
from mm_pipeline.recommend.linear import training_age
from mm_pipeline.recommend.ranking import validator
from mm_pipeline.recommend.rp3beta import RP3betaConfig, tune_rp3beta
from mm_pipeline.recommend.selection import SearchResult
from mm_pipeline.recommend.tuning import Tuning, tune_ease, tune_item_knn, tune_trained
from mm_pipeline.recommend.warm import WarmStart

ROLES = ("primary", "baseline", "component", "research")
# What a spec may need besides the split (other models are named by their spec name).
ALIGNED, RAW_FEATURES, IMAGE_FEATURES = "aligned", "raw_features", "image_features"
FEATURE_INPUTS = (ALIGNED, RAW_FEATURES, IMAGE_FEATURES)

OnTrial = Callable[[dict], None]


@dataclass(frozen=True)
class ModelInputs:
    """What a trainer reads: the split's sparse views and stored value, and what its spec needs."""

    data: SplitData
    split: InteractionSplit  # the interaction_split value (its table dates the history)
    aligned: Mapping[str, Any] | None = None  # the aligned_item_embeddings value
    raw_features: RawFeatures | None = None  # {modality: (features, present)} for the modalities some item has
    image_features: Mapping[str, Any] | None = None
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # stored bundles of the models it needs
    warm: WarmStart | None = None  # a compatible checkpoint to start from (warm_start specs only)
    previous: Mapping[str, Any] | None = None  # the hybrid's previous choice, where a warm search starts


@dataclass
class Trained:
    """A trainer's result: the model, the params to record, its training curve and its validation search."""

    model: EmbeddingRecommender
    params: dict[str, Any]
    history: pd.DataFrame | None = None
    search: SearchResult | None = None
    note: str = ""  # one line for the run log


Trainer = Callable[[ModelInputs, Any, "Tuning | None", OnTrial], Trained]


@dataclass(frozen=True)
class ModelSpec:
    """One model of the table (see the module doc)."""

    name: str
    role: str
    train: Trainer
    description: str
    config: type | None = None  # the settings dataclass, defaults in one place
    fixed: Mapping[str, Any] = field(default_factory=dict)  # settings the model pins (BPR-MF: no layers)
    tuning: Tuning | None = None  # default budget and trials of its validation search
    needs: tuple[str, ...] = ()  # FEATURE_INPUTS entries and other models' names
    skip: Callable[[ModelInputs], str | None] | None = None  # why it cannot run on this data, or None
    quick: Mapping[str, Any] = field(default_factory=dict)  # run config of a quick run (tests, smoke runs)
    kinds: tuple[str, ...] = ("pytorch", "mlflow")
    code_version: str = "1"
    # BPR-trained: it saves a checkpoint of its parameters and can start a retrain from one (recommend.warm).
    warm_start: bool = False

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"model {self.name!r}: role must be one of {ROLES}, got {self.role!r}")

    @property
    def asset_name(self) -> str:
        return f"{self.name}_model"

    @property
    def model_needs(self) -> tuple[str, ...]:
        return tuple(n for n in self.needs if n not in FEATURE_INPUTS)

    def settings(self, values: Mapping[str, Any], seed: int) -> Any:
        """The settings dataclass from run config ``values`` (fields it lacks, e.g. tuning, are ignored),
        with the pipeline's seed and the pinned settings."""
        if self.config is None:
            return None
        names = {f.name for f in dataclasses.fields(self.config)}
        merged = {**values, "seed": seed, **self.fixed}
        return self.config(**{k: tuple(v) if isinstance(v, list) else v for k, v in merged.items() if k in names})


def raw_modality_features(text_features: Mapping, image_features: Mapping, audio_features: Mapping) -> RawFeatures:
    """``{modality: (features, present)}`` for the modalities some item has."""
    out = {
        m: (np.asarray(f["features"]), np.asarray(f["present"], dtype=bool))
        for m, f in (("text", text_features), ("image", image_features), ("audio", audio_features))
    }
    return {m: value for m, value in out.items() if value[1].any()}


def tuned_training(
    name: str,
    fit,
    config,
    data: SplitData,
    tuning: Tuning,
    on_trial: OnTrial | None = None,
    warm: WarmStart | None = None,
) -> Trained:
    """``fit(data, config, on_epoch, warm) -> (model, history)`` searched over the model's grid on validation:
    the chosen model, its training history, its settings and the search. With ``warm`` (a compatible
    checkpoint) there is no search: the checkpoint's chosen settings are trained again from its parameters,
    stopping on validation as usual."""
    if warm is not None:
        chosen = warm.chosen(config)
        model, history = fit(data, chosen, None, warm)
        report = warm.report.as_dict() if warm.report else {}
        start = model.info.get("start_valid_ndcg@20", float("nan"))
        note = (
            f"{name}: warm start from the previous checkpoint ({report}); validation NDCG@20 "
            f"{start:.4f} at the start, {model.info.get('best_valid_ndcg@20', float('nan')):.4f} after "
            f"{model.info.get('epochs_run')} epoch(s)"
        )
        return Trained(model, chosen.__dict__, history, None, note=note)
    histories: dict[tuple, pd.DataFrame] = {}

    def key(cfg) -> tuple:
        return tuple(sorted(dataclasses.asdict(cfg).items()))

    def fit_one(cfg, on_epoch) -> EmbeddingRecommender:
        model, history = fit(data, cfg, on_epoch, None)
        histories[key(cfg)] = history
        return model

    result = tune_trained(name, fit_one, config, tuning.validate(data), tuning, on_trial=on_trial)
    chosen = dataclasses.replace(config, **result.params)
    return Trained(result.model, chosen.__dict__, histories[key(chosen)], result)


def hybrid_parts(
    data: SplitData,
    interaction_split: InteractionSplit,
    cores: Mapping[str, Mapping],
    gnns: Mapping[str, Mapping],
    raw: RawFeatures,
    hybrid: HybridConfig,
) -> HybridParts:
    """The hybrid's fixed parts from the stored models: the item-item cores (the tuned EASE and item k-NN
    weights, in that order), the content graph over the raw features, and the candidate GNNs (mm_gcn
    scores cold items from content; LightGCN does not). Skipped models are left out."""
    weights = {
        name: EmbeddingRecommender.from_bundle(b).item_embeddings.numpy().T
        for name, b in cores.items()
        if "skipped" not in b
    }
    models = {name: EmbeddingRecommender.from_bundle(b) for name, b in gnns.items() if "skipped" not in b}
    modality_graphs, graph = content_graphs(raw, hybrid.knn_k) if raw else (None, None)
    return HybridParts(
        data.train,
        training_age(as_interaction_split(interaction_split).table, data.train),
        weights,
        graph,
        models,
        content_aware=("mm_gcn",),
        scale_users=hybrid.scale_users,
        seed=hybrid.seed,
        modality_graphs=modality_graphs,
    )


# ----------------------------------------------------------------------------------- trainers
def train_popularity(inputs: ModelInputs, config: None, tuning: None, on_trial: OnTrial) -> Trained:
    return Trained(most_popular(inputs.data.train), {})


def train_ease(inputs: ModelInputs, config: EaseConfig, tuning: Tuning, on_trial: OnTrial) -> Trained:
    result = tune_ease(
        inputs.data,
        tuning,
        start=config.l2,
        factor=config.l2_factor,
        on_trial=on_trial,
        search_items=config.search_items,
    )
    return Trained(result.model, {"l2": result.params["l2"]}, search=result)


def train_item_knn(inputs: ModelInputs, config: ItemKnnConfig, tuning: Tuning, on_trial: OnTrial) -> Trained:
    result = tune_item_knn(inputs.data, tuning, start=config.k, shrink=config.shrink, on_trial=on_trial)
    return Trained(result.model, {"k": int(result.params["k"]), "shrink": config.shrink}, search=result)


def train_rp3beta(inputs: ModelInputs, config: RP3betaConfig, tuning: Tuning, on_trial: OnTrial) -> Trained:
    result = tune_rp3beta(inputs.data, tuning, config, on_trial=on_trial)
    return Trained(result.model, dict(result.params), search=result)


def train_lightgcn(inputs: ModelInputs, config: TrainConfig, tuning: Tuning, on_trial: OnTrial) -> Trained:
    def fit(data: SplitData, cfg: TrainConfig, on_epoch, warm):
        return fit_lightgcn(data, cfg, on_epoch=on_epoch, warm=warm)

    return tuned_training("lightgcn", fit, config, inputs.data, tuning, on_trial, inputs.warm)


def train_bpr_mf(inputs: ModelInputs, config: TrainConfig, tuning: Tuning, on_trial: OnTrial) -> Trained:
    def fit(data: SplitData, cfg: TrainConfig, on_epoch, warm):
        return fit_lightgcn(data, cfg, on_epoch=on_epoch, name="bpr_mf", warm=warm)

    return tuned_training("bpr_mf", fit, config, inputs.data, tuning, on_trial, inputs.warm)


def train_content_knn(inputs: ModelInputs, config: None, tuning: None, on_trial: OnTrial) -> Trained:
    return Trained(content_knn(inputs.data.train, inputs.aligned["fused"]), {})


def train_vbpr(inputs: ModelInputs, config: TrainConfig, tuning: Tuning, on_trial: OnTrial) -> Trained:
    present = np.asarray(inputs.image_features["present"], dtype=bool)
    visual = np.asarray(inputs.image_features["features"])

    def fit(data: SplitData, cfg: TrainConfig, on_epoch, warm):
        return fit_vbpr(data, visual, present, cfg, on_epoch=on_epoch, warm=warm)

    trained = tuned_training("vbpr", fit, config, inputs.data, tuning, on_trial, inputs.warm)
    trained.params = {**trained.params, "visual_items": int(present.sum())}
    return trained


def train_mm_gcn(inputs: ModelInputs, config: MultimodalConfig, tuning: Tuning, on_trial: OnTrial) -> Trained:
    raw = inputs.raw_features

    def fit(data: SplitData, cfg: MultimodalConfig, on_epoch, warm):
        return fit_multimodal(data, inputs.aligned, cfg, on_epoch=on_epoch, raw_features=raw, warm=warm)

    trained = tuned_training("mm_gcn", fit, config, inputs.data, tuning, on_trial, inputs.warm)
    trained.params = {
        **trained.params,
        "modalities": ",".join(inputs.aligned["modalities"]),
        "graph_modalities": ",".join(raw),
    }
    return trained


def train_freedom(inputs: ModelInputs, config: FreedomConfig, tuning: Tuning, on_trial: OnTrial) -> Trained:
    raw = inputs.raw_features

    def fit(data: SplitData, cfg: FreedomConfig, on_epoch, warm):
        return fit_freedom(data, raw, cfg, on_epoch=on_epoch, warm=warm)

    trained = tuned_training("freedom", fit, config, inputs.data, tuning, on_trial, inputs.warm)
    trained.params = {**trained.params, "modalities": ",".join(raw)}
    return trained


def train_mm_hybrid(inputs: ModelInputs, config: HybridConfig, tuning: None, on_trial: OnTrial) -> Trained:
    data, raw, stored = inputs.data, inputs.raw_features, inputs.models
    parts = hybrid_parts(
        data,
        inputs.split,
        {"ease": stored["ease"], "item_knn": stored["item_knn"]},
        {"mm_gcn": stored["mm_gcn"], "lightgcn": stored["lightgcn"]},
        raw,
        config,
    )
    search = fit_hybrid(
        parts,
        validator(data, max_users=config.validation_users, seed=config.seed),
        config,
        on_trial=on_trial,
        previous=dict(inputs.previous) if inputs.previous else None,
    )
    params = {
        **dataclasses.asdict(config),
        **{f"chosen.{k}": v for k, v in search.params.items()},
        "ease_l2": (stored["ease"].get("info") or {}).get("l2"),
        "item_knn_k": (stored["item_knn"].get("info") or {}).get("k"),
        "content_modalities": ",".join(raw),
    }
    return Trained(
        search.model,
        params,
        None,
        search,
        note=f"mm_hybrid: {search.params} (validation NDCG@20 {search.score:.4f}; {search.stopped})",
    )


# ------------------------------------------------------------------------------------- skips
def too_many_items_for(what: str) -> Callable[[ModelInputs], str | None]:
    def skip(inputs: ModelInputs) -> str | None:
        n_items = inputs.data.n_items
        return f"{n_items} items > {EASE_MAX_ITEMS}: {what} is too large" if n_items > EASE_MAX_ITEMS else None

    return skip


def no_images(inputs: ModelInputs) -> str | None:
    if np.asarray(inputs.image_features["present"], dtype=bool).any():
        return None
    return "the dataset has no usable images: VBPR needs visual features"


# ------------------------------------------------------------------------------------ the table
# Quick runs: a few epochs; LightGCN's search tries two settings (the search runs end to end), the other
# trained models one (their search is the same code).
_QUICK_BPR = {"epochs": 8, "patience": 3, "tuning_max_trials": 1}

MODEL_TABLE: tuple[ModelSpec, ...] = (
    ModelSpec(
        "popularity",
        "baseline",
        train_popularity,
        "Most-popular baseline: every user gets the items with the most training interactions.",
    ),
    ModelSpec(
        "ease",
        "baseline",
        train_ease,
        "EASE, the closed-form linear item-item baseline, its L2 weight chosen on validation (skipped "
        "above ``EASE_MAX_ITEMS`` items).",
        config=EaseConfig,
        tuning=Tuning(300.0, 8),
        skip=too_many_items_for("the dense inverse"),
        quick={"tuning_max_trials": 3},
        code_version="4",
    ),
    ModelSpec(
        "item_knn",
        "baseline",
        train_item_knn,
        "Item-based collaborative k-NN (cosine, shrunk), its neighbourhood size chosen on validation "
        "(skipped above ``EASE_MAX_ITEMS`` items, like EASE).",
        config=ItemKnnConfig,
        tuning=Tuning(120.0, 6),
        skip=too_many_items_for("the dense item x item matrix"),
        quick={"tuning_max_trials": 2},
        code_version="2",  # 2: trials scored on Tuning.validation_users
    ),
    ModelSpec(
        "rp3beta",
        "baseline",
        train_rp3beta,
        "RP3beta: a three-step item-user-item random walk with a popularity penalty, its alpha, beta and "
        "neighbourhood size chosen on validation (skipped above ``EASE_MAX_ITEMS`` items, like EASE).",
        config=RP3betaConfig,
        tuning=Tuning(120.0, 6),
        skip=too_many_items_for("the dense item x item matrix"),
        quick={"tuning_max_trials": 2},
        code_version="2",  # 2: trials scored on Tuning.validation_users
    ),
    ModelSpec(
        "bpr_mf",
        "baseline",
        train_bpr_mf,
        "ID-only matrix factorisation with BPR (LightGCN with no propagation layers); rate, "
        "regularisation and dimension searched on validation.",
        config=TrainConfig,
        fixed={"num_layers": 0, "max_epoch_steps": 0},  # no propagation: a step is cheap, epochs as configured
        tuning=Tuning(40.0, 4),
        quick=_QUICK_BPR,
        code_version="5",  # 5: one gather per batch (gradients summed in another order)
        warm_start=True,
    ),
    ModelSpec(
        "lightgcn",
        "baseline",
        train_lightgcn,
        "ID-only baseline: PyG LightGCN with BPR and early stopping on validation NDCG@20; rate, "
        "regularisation and depth searched on validation.",
        config=TrainConfig,
        tuning=Tuning(60.0, 4),
        quick={**_QUICK_BPR, "tuning_max_trials": 2},
        code_version="5",  # 5: one gather per batch (gradients summed in another order)
        warm_start=True,
    ),
    ModelSpec(
        "content_knn",
        "baseline",
        train_content_knn,
        "Content-based item kNN on the fused aligned embeddings: a content baseline that needs no training.",
        needs=(ALIGNED,),
    ),
    ModelSpec(
        "vbpr",
        "baseline",
        train_vbpr,
        "VBPR: BPR matrix factorisation plus a visual term on the image features (ID + visual "
        "baseline); rate and regularisation searched on validation.\n\nSkipped, with the reason in "
        "metadata, when the dataset has no images at all.",
        config=TrainConfig,
        fixed={"num_layers": 0, "max_epoch_steps": 0},  # no propagation: a step is cheap, epochs as configured
        tuning=Tuning(40.0, 4),
        needs=(IMAGE_FEATURES,),
        skip=no_images,
        quick=_QUICK_BPR,
        code_version="6",  # 6: one gather per table and batch (gradients summed in another order)
        warm_start=True,
    ),
    ModelSpec(
        "freedom",
        "research",
        train_freedom,
        "FREEDOM, the published multimodal recommender, as a baseline: frozen item-item k-NN graphs "
        "over the raw modality features, degree-sensitive pruning of the user-item graph, BPR; rate "
        "and regularisation searched on validation like every other model.",
        config=FreedomConfig,
        tuning=Tuning(120.0, 3),
        needs=(RAW_FEATURES,),
        quick=_QUICK_BPR,
        code_version="4",
        warm_start=True,
    ),
    # mm_gcn is the dearest model to train (the content tower and the alignment loss run at every step): a
    # second setting only where the first is quick.
    ModelSpec(
        "mm_gcn",
        "component",
        train_mm_gcn,
        "The multimodal GNN: LightGCN over the user-item graph plus an item-item k-NN graph over the "
        "raw modality features; the aligned content carries cold items; BPR + content-collaborative "
        "InfoNCE. Rate, regularisation and the item graph searched on validation.",
        config=MultimodalConfig,
        tuning=Tuning(30.0, 2),
        needs=(ALIGNED, RAW_FEATURES),
        quick=_QUICK_BPR,
        code_version="9",
        warm_start=True,
    ),
    ModelSpec(
        "mm_hybrid",
        "primary",
        train_mm_hybrid,
        "The primary model: an item-item core (the tuned EASE or item k-NN) over the recency-weighted "
        "history, plus the items that look, read or sound like the user's (the raw-feature k-NN "
        "graph), plus a trained GNN (mm_gcn or LightGCN); the core, the recency decay, the weights and "
        "the GNN chosen on validation.",
        config=HybridConfig,
        needs=(RAW_FEATURES, "ease", "item_knn", "mm_gcn", "lightgcn"),
        quick={"rounds": 1},
        kinds=("scipy", "mlflow"),
    ),
)


def model_spec(name: str) -> ModelSpec:
    for spec in MODEL_TABLE:
        if spec.name == name:
            return spec
    raise KeyError(f"no model {name!r} in the model table; it has {[s.name for s in MODEL_TABLE]}")


def names_with_role(*roles: str) -> tuple[str, ...]:
    return tuple(s.name for s in MODEL_TABLE if s.role in roles)


def _check_table(table: tuple[ModelSpec, ...]) -> None:
    names = [s.name for s in table]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique in the model table, got {names}")
    for index, spec in enumerate(table):
        unknown = [n for n in spec.model_needs if n not in names[:index]]
        if unknown:
            raise ValueError(f"model {spec.name!r} needs {unknown}: models must come after those they need")
    if [s.role for s in table].count("primary") != 1:
        raise ValueError("the model table needs exactly one primary model")


_check_table(MODEL_TABLE)

"""Trained recommenders: the primary hybrid, the multimodal GNN and the baselines they must beat.

Every model's settings are chosen on the validation split within a time budget (``tuning_*`` config
fields; see :mod:`mm_pipeline.recommend.tuning`): the asset's metadata and its MLflow run hold the
table of every setting tried.
"""

import dataclasses

import dagster as dg
import pandas as pd
from pydantic import Field

from mm_pipeline.defs.config import config_from_dataclass, to_dataclass, with_tuning
from mm_pipeline.defs.metadata import frame_markdown, history_metadata
from mm_pipeline.defs.resources import MlflowResource, PipelineResource
from mm_pipeline.registry.tracking import metric_key
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.baselines import EASE_MAX_ITEMS, content_knn, most_popular
from mm_pipeline.recommend.fit import MultimodalConfig, SplitData, fit_lightgcn, fit_multimodal, fit_vbpr
from mm_pipeline.recommend.hybrid import HybridConfig, HybridParts
from mm_pipeline.recommend.selection import SearchResult
from mm_pipeline.recommend.train import TrainConfig
from mm_pipeline.recommend.tuning import Tuning, tune_ease, tune_item_knn, tune_trained

GROUP = "train"

LightGCNRunConfig = with_tuning(config_from_dataclass(TrainConfig, "LightGCNBase"), "LightGCNRunConfig", 60.0, 4)
MFRunConfig = with_tuning(config_from_dataclass(TrainConfig, "MFBase"), "MFRunConfig", 40.0, 4)
# mm_gcn is the dearest model to train (the content tower and the alignment loss run at every step): a
# second setting only where the first takes under 15 s.
MultimodalRunConfig = with_tuning(config_from_dataclass(MultimodalConfig, "MultimodalBase"),
                                  "MultimodalRunConfig", 30.0, 2)
HybridRunConfig = config_from_dataclass(HybridConfig, "HybridRunConfig")


class EaseConfig(dg.Config):
    l2: float = Field(200.0, description="Where the search for the L2 weight starts.")
    l2_factor: float = Field(2.0, description="The search steps the L2 weight by this factor up or down.")
    tuning_budget_s: float = Field(300.0, description="Time budget of the L2 search (seconds).")
    tuning_max_trials: int = Field(8, description="Most L2 values tried (1: just the starting value).")


def tuning(config: dg.Config) -> Tuning:
    return Tuning(budget_s=config.tuning_budget_s, max_trials=config.tuning_max_trials)


def selection_metadata(result: SearchResult) -> dict:
    """The validation search as Dagster metadata: chosen settings, why the search stopped, every trial."""
    return {"valid_ndcg@20": dg.MetadataValue.float(result.score), "chosen": dg.MetadataValue.json(result.params),
            "search_stopped": result.stopped, "search_trials": len(result.trials),
            "search": dg.MetadataValue.md(frame_markdown(result.trials, 60))}


def log_trials(context: dg.AssetExecutionContext, name: str):
    """A per-trial progress line in the run log."""
    def log(row: dict) -> None:
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
        context.log.info(f"{name} search trial: {shown}")
    return log


def tuned_training(context: dg.AssetExecutionContext, name: str, fit, config, data: SplitData,
                   search_config: Tuning) -> tuple[EmbeddingRecommender, pd.DataFrame, dict, SearchResult]:
    """``fit(data, config, on_epoch) -> (model, history)`` searched over the model's grid on validation;
    returns the chosen model, its training history, its config and the search."""
    histories: dict[tuple, pd.DataFrame] = {}

    def key(cfg) -> tuple:
        return tuple(sorted(dataclasses.asdict(cfg).items()))

    def fit_one(cfg, on_epoch) -> EmbeddingRecommender:
        model, history = fit(data, cfg, on_epoch)
        histories[key(cfg)] = history
        return model

    result = tune_trained(name, fit_one, config, data.validator(), search_config, on_trial=log_trials(context, name))
    chosen = dataclasses.replace(config, **result.params)
    return result.model, histories[key(chosen)], chosen.__dict__, result


def split_data(interaction_split: dict) -> SplitData:
    return SplitData.from_frame(interaction_split["table"], int(interaction_split["n_users"]),
                                int(interaction_split["n_items"]))


def _finish(context: dg.AssetExecutionContext, model: EmbeddingRecommender, history: pd.DataFrame | None,
            data: SplitData, interaction_split: dict, raw_items: pd.DataFrame, params: dict,
            mlflow_tracking: MlflowResource, search: SearchResult | None = None) -> dg.Output[dict]:
    """Log params, curves, the validation search and the servable model to MLflow; return the model bundle
    with metadata."""
    import mlflow

    from mm_pipeline.registry.pyfunc import log_recommender
    from mm_pipeline.registry.tracking import log_history, log_split_input, safe_params

    with mlflow_tracking.start_run(context, run_name=model.name) as run:
        mlflow.log_params(safe_params({**params, "model": model.name, "users": data.n_users,
                                       "items": data.n_items, "train_interactions": int(data.train.nnz)}))
        # Lineage: the exact split this model was trained on (indices only, no raw user ids), with MLflow's digest.
        log_split_input(interaction_split["table"], "interaction_split", "training",
                        {"split_method": str(interaction_split.get("split_method", ""))})
        if history is not None and len(history):
            log_history(history)
        if search is not None:
            mlflow.log_params(safe_params({"search.trials": len(search.trials), "search.stopped": search.stopped}))
            mlflow.log_table(search.trials, "search/trials.json")
        final = {k: float(v) for k, v in model.info.items() if isinstance(v, (int, float))}
        if final:
            mlflow.log_metrics({metric_key(k): v for k, v in final.items()})
        # No input example here (MLflow would load the model back to check it): the registered model has one.
        info = log_recommender(model, interaction_split["user_ids"].tolist(),
                               raw_items["item_id"].astype(str).tolist(), data.train, name="recommender",
                               input_example_users=0)
    bundle = {**model.to_bundle(), "history": history if history is not None else pd.DataFrame(),
              "config": {k: v for k, v in params.items() if isinstance(v, (str, int, float, bool, type(None)))}}
    meta = {"mlflow_run_id": run.info.run_id, "mlflow_model": info.model_uri,
            "embedding_dim": int(model.item_embeddings.shape[1]),
            **{k: dg.MetadataValue.float(v) if isinstance(v, float) else v for k, v in final.items()}}
    if history is not None and len(history):
        meta.update(history_metadata(history, [c for c in ("loss", "valid_ndcg@20", "valid_recall@20")],
                                     f"{model.name} training"))
    if search is not None:
        meta.update(selection_metadata(search))
        bundle["search"] = search.trials
    return dg.Output(bundle, metadata=meta)


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="1")
def popularity_model(context: dg.AssetExecutionContext, interaction_split: dict, raw_items: pd.DataFrame,
                     mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """Most-popular baseline: every user gets the items with the most training interactions."""
    data = split_data(interaction_split)
    return _finish(context, most_popular(data.train), None, data, interaction_split, raw_items, {},
                   mlflow_tracking)


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="2")
def ease_model(context: dg.AssetExecutionContext, config: EaseConfig, interaction_split: dict,
               raw_items: pd.DataFrame, mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """EASE, the closed-form linear item-item baseline, its L2 weight chosen on validation (skipped above
    ``EASE_MAX_ITEMS`` items)."""
    data = split_data(interaction_split)
    if data.n_items > EASE_MAX_ITEMS:
        reason = f"{data.n_items} items > {EASE_MAX_ITEMS}: the dense inverse is too large"
        return dg.Output({"name": "ease", "skipped": reason}, metadata={"skipped": reason})
    result = tune_ease(data, tuning(config), start=config.l2, factor=config.l2_factor,
                       on_trial=log_trials(context, "ease"))
    return _finish(context, result.model, None, data, interaction_split, raw_items, {"l2": result.params["l2"]},
                   mlflow_tracking, search=result)


class ItemKnnConfig(dg.Config):
    k: int = Field(100, description="Where the search for the neighbourhood size starts.")
    shrink: float = Field(10.0, description="Shrinks similarities of items with few interactions.")
    tuning_budget_s: float = Field(120.0, description="Time budget of the neighbourhood-size search (seconds).")
    tuning_max_trials: int = Field(6, description="Most neighbourhood sizes tried (1: just the starting one).")


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="1")
def item_knn_model(context: dg.AssetExecutionContext, config: ItemKnnConfig, interaction_split: dict,
                   raw_items: pd.DataFrame, mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """Item-based collaborative k-NN (cosine, shrunk), its neighbourhood size chosen on validation
    (skipped above ``EASE_MAX_ITEMS`` items, like EASE)."""
    data = split_data(interaction_split)
    if data.n_items > EASE_MAX_ITEMS:
        reason = f"{data.n_items} items > {EASE_MAX_ITEMS}: the dense item x item matrix is too large"
        return dg.Output({"name": "item_knn", "skipped": reason}, metadata={"skipped": reason})
    result = tune_item_knn(data, tuning(config), start=config.k, shrink=config.shrink,
                           on_trial=log_trials(context, "item_knn"))
    return _finish(context, result.model, None, data, interaction_split, raw_items,
                   {"k": int(result.params["k"]), "shrink": config.shrink}, mlflow_tracking, search=result)


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="2")
def lightgcn_model(context: dg.AssetExecutionContext, config: LightGCNRunConfig,  # type: ignore[valid-type]
                   interaction_split: dict, raw_items: pd.DataFrame, pipeline: PipelineResource,
                   mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """ID-only baseline: PyG LightGCN with BPR and early stopping on validation NDCG@20; rate,
    regularisation and depth searched on validation."""
    data = split_data(interaction_split)
    model, history, params, search = tuned_training(
        context, "lightgcn", fit_lightgcn, to_dataclass(TrainConfig, config, seed=pipeline.seed), data, tuning(config))
    return _finish(context, model, history, data, interaction_split, raw_items, params, mlflow_tracking, search)


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="2")
def bpr_mf_model(context: dg.AssetExecutionContext, config: MFRunConfig,  # type: ignore[valid-type]
                 interaction_split: dict, raw_items: pd.DataFrame, pipeline: PipelineResource,
                 mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """ID-only matrix factorisation with BPR (LightGCN with no propagation layers); rate, regularisation
    and dimension searched on validation."""
    data = split_data(interaction_split)

    def fit(data: SplitData, cfg: TrainConfig, on_epoch):
        return fit_lightgcn(data, cfg, on_epoch=on_epoch, name="bpr_mf")

    model, history, params, search = tuned_training(
        context, "bpr_mf", fit, to_dataclass(TrainConfig, config, seed=pipeline.seed, num_layers=0), data,
        tuning(config))
    return _finish(context, model, history, data, interaction_split, raw_items, params, mlflow_tracking, search)


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="1")
def content_knn_model(context: dg.AssetExecutionContext, interaction_split: dict,
                      aligned_item_embeddings: dict, raw_items: pd.DataFrame,
                      mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """Content-based item kNN on the fused aligned embeddings: a content baseline that needs no training."""
    data = split_data(interaction_split)
    return _finish(context, content_knn(data.train, aligned_item_embeddings["fused"]), None, data,
                   interaction_split, raw_items, {}, mlflow_tracking)


def raw_modality_features(text_features: dict, image_features: dict, audio_features: dict) -> dict:
    """``{modality: (features, present)}`` for the modalities some item has."""
    import numpy as np

    out = {m: (np.asarray(f["features"]), np.asarray(f["present"], dtype=bool))
           for m, f in (("text", text_features), ("image", image_features), ("audio", audio_features))}
    return {m: value for m, value in out.items() if value[1].any()}


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="5")
def mm_gcn_model(context: dg.AssetExecutionContext, config: MultimodalRunConfig,  # type: ignore[valid-type]
                 interaction_split: dict, aligned_item_embeddings: dict, text_features: dict,
                 image_features: dict, audio_features: dict, raw_items: pd.DataFrame,
                 pipeline: PipelineResource, mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """The multimodal GNN: LightGCN over the user-item graph plus an item-item k-NN graph over the raw
    modality features; the aligned content carries cold items; BPR + content-collaborative InfoNCE.
    Rate, regularisation and the item graph searched on validation."""
    data = split_data(interaction_split)
    raw = raw_modality_features(text_features, image_features, audio_features)

    def fit(data: SplitData, cfg: MultimodalConfig, on_epoch):
        return fit_multimodal(data, aligned_item_embeddings, cfg, on_epoch=on_epoch, raw_features=raw)

    model, history, params, search = tuned_training(
        context, "mm_gcn", fit, to_dataclass(MultimodalConfig, config, seed=pipeline.seed), data, tuning(config))
    return _finish(context, model, history, data, interaction_split, raw_items,
                   {**params, "modalities": ",".join(aligned_item_embeddings["modalities"]),
                    "graph_modalities": ",".join(raw)}, mlflow_tracking, search)


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="3")
def vbpr_model(context: dg.AssetExecutionContext, config: MFRunConfig,  # type: ignore[valid-type]
               interaction_split: dict, image_features: dict, raw_items: pd.DataFrame,
               pipeline: PipelineResource, mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """VBPR: BPR matrix factorisation plus a visual term on the image features (ID + visual baseline);
    rate and regularisation searched on validation.

    Skipped, with the reason in metadata, when the dataset has no images at all."""
    import numpy as np

    present = np.asarray(image_features["present"], dtype=bool)
    if not present.any():
        reason = "the dataset has no usable images: VBPR needs visual features"
        return dg.Output({"name": "vbpr", "skipped": reason}, metadata={"skipped": reason})
    data = split_data(interaction_split)
    visual = np.asarray(image_features["features"])

    def fit(data: SplitData, cfg: TrainConfig, on_epoch):
        return fit_vbpr(data, visual, present, cfg, on_epoch=on_epoch)

    model, history, params, search = tuned_training(
        context, "vbpr", fit, to_dataclass(TrainConfig, config, seed=pipeline.seed, num_layers=0), data,
        tuning(config))
    return _finish(context, model, history, data, interaction_split, raw_items,
                   {**params, "visual_items": int(present.sum())}, mlflow_tracking, search)


def hybrid_parts(data: SplitData, interaction_split: dict, cores: dict[str, dict], gnns: dict[str, dict],
                 raw: dict, hybrid: HybridConfig) -> HybridParts:
    """The hybrid's fixed parts from the stored models: the item-item cores (the tuned EASE and item k-NN
    weights, in that order), the content graph over the raw features, and the candidate GNNs (mm_gcn
    scores cold items from content; LightGCN does not). Skipped models are left out."""
    from mm_pipeline.recommend.fit import content_graph, content_graphs
    from mm_pipeline.recommend.linear import training_age

    weights = {name: EmbeddingRecommender.from_bundle(b).item_embeddings.numpy().T
               for name, b in cores.items() if "skipped" not in b}
    models = {name: EmbeddingRecommender.from_bundle(b) for name, b in gnns.items() if "skipped" not in b}
    return HybridParts(data.train, training_age(interaction_split["table"], data.train), weights,
                       content_graph(raw, hybrid.knn_k) if raw else None, models, content_aware=("mm_gcn",),
                       scale_users=hybrid.scale_users, seed=hybrid.seed,
                       modality_graphs=content_graphs(raw, hybrid.knn_k) if raw else None)


@dg.asset(group_name=GROUP, kinds={"scipy", "mlflow"}, code_version="1")
def mm_hybrid_model(context: dg.AssetExecutionContext, config: HybridRunConfig,  # type: ignore[valid-type]
                    interaction_split: dict, ease_model: dict, item_knn_model: dict, mm_gcn_model: dict,
                    lightgcn_model: dict,
                    text_features: dict, image_features: dict, audio_features: dict, raw_items: pd.DataFrame,
                    pipeline: PipelineResource, mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """The primary model: an item-item core (the tuned EASE or item k-NN) over the recency-weighted history,
    plus the items that look, read or sound like the user's (the raw-feature k-NN graph), plus a trained
    GNN (mm_gcn or LightGCN); the core, the recency decay, the weights and the GNN chosen on validation."""
    from mm_pipeline.recommend.hybrid import fit_hybrid

    hybrid = to_dataclass(HybridConfig, config, seed=pipeline.seed)
    data = split_data(interaction_split)
    raw = raw_modality_features(text_features, image_features, audio_features)
    parts = hybrid_parts(data, interaction_split, {"ease": ease_model, "item_knn": item_knn_model},
                         {"mm_gcn": mm_gcn_model, "lightgcn": lightgcn_model}, raw, hybrid)
    search = fit_hybrid(parts, data.validator(max_users=hybrid.validation_users, seed=hybrid.seed), hybrid,
                        on_trial=log_trials(context, "mm_hybrid"))
    model = search.model
    context.log.info(f"mm_hybrid: {search.params} (validation NDCG@20 {search.score:.4f}; {search.stopped})")
    params = {**dataclasses.asdict(hybrid), **{f"chosen.{k}": v for k, v in search.params.items()},
              "ease_l2": (ease_model.get("info") or {}).get("l2"), "item_knn_k": (item_knn_model.get("info") or {}).get("k"),
              "content_modalities": ",".join(raw)}
    return _finish(context, model, None, data, interaction_split, raw_items, params, mlflow_tracking, search)

"""Trained recommenders: the multimodal GNN and the baselines it must beat."""

import warnings

import dagster as dg
import pandas as pd

from mm_pipeline.defs.config import config_from_dataclass, to_dataclass
from mm_pipeline.defs.metadata import history_metadata
from mm_pipeline.defs.resources import MlflowResource, PipelineResource
from mm_pipeline.registry.tracking import metric_key
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.baselines import EASE_MAX_ITEMS, content_knn, ease, most_popular
from mm_pipeline.recommend.fit import MultimodalConfig, SplitData, fit_lightgcn, fit_multimodal, fit_vbpr
from mm_pipeline.recommend.train import TrainConfig

GROUP = "train"

LightGCNRunConfig = config_from_dataclass(TrainConfig, "LightGCNRunConfig")
MultimodalRunConfig = config_from_dataclass(MultimodalConfig, "MultimodalRunConfig")


class EaseConfig(dg.Config):
    l2: float = 200.0


def split_data(interaction_split: dict) -> SplitData:
    return SplitData.from_frame(interaction_split["table"], int(interaction_split["n_users"]),
                                int(interaction_split["n_items"]))


def _finish(context: dg.AssetExecutionContext, model: EmbeddingRecommender, history: pd.DataFrame | None,
            data: SplitData, interaction_split: dict, raw_items: pd.DataFrame, params: dict,
            mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """Log params, curves and the servable model to MLflow; return the model bundle with metadata."""
    import mlflow

    from mm_pipeline.registry.pyfunc import log_recommender
    from mm_pipeline.registry.tracking import log_history, safe_params

    with mlflow_tracking.start_run(context, run_name=model.name) as run:
        mlflow.log_params(safe_params({**params, "model": model.name, "users": data.n_users,
                                       "items": data.n_items, "train_interactions": int(data.train.nnz)}))
        # Lineage: the exact split this model was trained on (indices only, no raw user ids), with MLflow's digest.
        with warnings.catch_warnings():  # MLflow's hint about integer columns and missing values
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(interaction_split["table"], name="interaction_split")
        mlflow.log_input(dataset, context="training",
                         tags={"split_method": str(interaction_split.get("split_method", ""))})
        if history is not None and len(history):
            log_history(history)
        final = {k: float(v) for k, v in model.info.items() if isinstance(v, (int, float))}
        if final:
            mlflow.log_metrics({metric_key(k): v for k, v in final.items()})
        info = log_recommender(model, interaction_split["user_ids"].tolist(),
                               raw_items["item_id"].astype(str).tolist(), data.train, name="recommender")
    bundle = {**model.to_bundle(), "history": history if history is not None else pd.DataFrame()}
    meta = {"mlflow_run_id": run.info.run_id, "mlflow_model": info.model_uri,
            "embedding_dim": int(model.item_embeddings.shape[1]),
            **{k: dg.MetadataValue.float(v) if isinstance(v, float) else v for k, v in final.items()}}
    if history is not None and len(history):
        meta.update(history_metadata(history, [c for c in ("loss", "valid_ndcg@20", "valid_recall@20")],
                                     f"{model.name} training"))
    return dg.Output(bundle, metadata=meta)


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="1")
def popularity_model(context: dg.AssetExecutionContext, interaction_split: dict, raw_items: pd.DataFrame,
                     mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """Most-popular baseline: every user gets the items with the most training interactions."""
    data = split_data(interaction_split)
    return _finish(context, most_popular(data.train), None, data, interaction_split, raw_items, {},
                   mlflow_tracking)


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="1")
def ease_model(context: dg.AssetExecutionContext, config: EaseConfig, interaction_split: dict,
               raw_items: pd.DataFrame, mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """EASE, the closed-form linear item-item baseline (skipped above ``EASE_MAX_ITEMS`` items)."""
    data = split_data(interaction_split)
    if data.n_items > EASE_MAX_ITEMS:
        reason = f"{data.n_items} items > {EASE_MAX_ITEMS}: the dense inverse is too large"
        return dg.Output({"name": "ease", "skipped": reason}, metadata={"skipped": reason})
    return _finish(context, ease(data.train, l2=config.l2), None, data, interaction_split, raw_items,
                   {"l2": config.l2}, mlflow_tracking)


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="1")
def lightgcn_model(context: dg.AssetExecutionContext, config: LightGCNRunConfig,  # type: ignore[valid-type]
                   interaction_split: dict, raw_items: pd.DataFrame, pipeline: PipelineResource,
                   mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """ID-only baseline: PyG LightGCN with BPR and early stopping on validation NDCG@20."""
    train_config = to_dataclass(TrainConfig, config, seed=pipeline.seed)
    data = split_data(interaction_split)
    model, history = fit_lightgcn(data, train_config)
    return _finish(context, model, history, data, interaction_split, raw_items, train_config.__dict__,
                   mlflow_tracking)


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="1")
def bpr_mf_model(context: dg.AssetExecutionContext, config: LightGCNRunConfig,  # type: ignore[valid-type]
                 interaction_split: dict, raw_items: pd.DataFrame, pipeline: PipelineResource,
                 mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """ID-only matrix factorisation with BPR (LightGCN with no propagation layers)."""
    train_config = to_dataclass(TrainConfig, config, seed=pipeline.seed, num_layers=0)
    data = split_data(interaction_split)
    model, history = fit_lightgcn(data, train_config, name="bpr_mf")
    return _finish(context, model, history, data, interaction_split, raw_items, train_config.__dict__,
                   mlflow_tracking)


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


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="4")
def mm_gcn_model(context: dg.AssetExecutionContext, config: MultimodalRunConfig,  # type: ignore[valid-type]
                 interaction_split: dict, aligned_item_embeddings: dict, text_features: dict,
                 image_features: dict, audio_features: dict, raw_items: pd.DataFrame,
                 pipeline: PipelineResource, mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """The primary model: LightGCN over the user-item graph plus an item-item k-NN graph over the raw
    modality features; the aligned content carries cold items; BPR + content-collaborative InfoNCE."""
    train_config = to_dataclass(MultimodalConfig, config, seed=pipeline.seed)
    data = split_data(interaction_split)
    raw = raw_modality_features(text_features, image_features, audio_features)
    model, history = fit_multimodal(data, aligned_item_embeddings, train_config, raw_features=raw)
    return _finish(context, model, history, data, interaction_split, raw_items,
                   {**train_config.__dict__, "modalities": ",".join(aligned_item_embeddings["modalities"]),
                    "graph_modalities": ",".join(raw)}, mlflow_tracking)


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="2")
def vbpr_model(context: dg.AssetExecutionContext, config: LightGCNRunConfig,  # type: ignore[valid-type]
               interaction_split: dict, image_features: dict, raw_items: pd.DataFrame,
               pipeline: PipelineResource, mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """VBPR: BPR matrix factorisation plus a visual term on the image features (ID + visual baseline).

    Skipped, with the reason in metadata, when the dataset has no images at all."""
    import numpy as np

    present = np.asarray(image_features["present"], dtype=bool)
    if not present.any():
        reason = "the dataset has no usable images: VBPR needs visual features"
        return dg.Output({"name": "vbpr", "skipped": reason}, metadata={"skipped": reason})
    train_config = to_dataclass(TrainConfig, config, seed=pipeline.seed, num_layers=0)
    data = split_data(interaction_split)
    model, history = fit_vbpr(data, np.asarray(image_features["features"]), present, train_config)
    return _finish(context, model, history, data, interaction_split, raw_items,
                   {**train_config.__dict__, "visual_items": int(present.sum())}, mlflow_tracking)

"""Research: FREEDOM as a baseline, ablations of the primary model, and the report with both.

Not part of ``full_pipeline`` (several more minutes of training on the default dataset); the
``research_pipeline`` job materializes them with the rest of the graph.
"""

import dagster as dg
import pandas as pd

from mm_pipeline.defs.assets.evaluate import comparison_report
from mm_pipeline.defs.assets.train import MultimodalRunConfig, _finish, raw_modality_features, split_data
from mm_pipeline.defs.config import config_from_dataclass, to_dataclass
from mm_pipeline.defs.metadata import frame_markdown
from mm_pipeline.defs.resources import MlflowResource, PipelineResource
from mm_pipeline.recommend.ablations import ablations
from mm_pipeline.recommend.fit import FreedomConfig, MultimodalConfig, fit_freedom, fit_multimodal

GROUP = "research"

FreedomRunConfig = config_from_dataclass(FreedomConfig, "FreedomRunConfig")


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="1")
def freedom_model(context: dg.AssetExecutionContext, config: FreedomRunConfig,  # type: ignore[valid-type]
                  interaction_split: dict, text_features: dict, image_features: dict, audio_features: dict,
                  raw_items: pd.DataFrame, pipeline: PipelineResource,
                  mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """FREEDOM, the published multimodal recommender, as a baseline: frozen item-item k-NN graphs over
    the raw modality features, degree-sensitive pruning of the user-item graph, BPR."""
    train_config = to_dataclass(FreedomConfig, config, seed=pipeline.seed)
    data = split_data(interaction_split)
    raw = raw_modality_features(text_features, image_features, audio_features)
    model, history = fit_freedom(data, raw, train_config)
    return _finish(context, model, history, data, interaction_split, raw_items,
                   {**train_config.__dict__, "modalities": ",".join(raw)}, mlflow_tracking)


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="3")
def mm_gcn_ablations(context: dg.AssetExecutionContext, config: MultimodalRunConfig,  # type: ignore[valid-type]
                     interaction_split: dict, aligned_item_embeddings: dict, text_features: dict,
                     image_features: dict, audio_features: dict, pipeline: PipelineResource,
                     mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """The primary model with one part removed at a time (each modality alone, no alignment, no
    item-item graph), same config, seed and split. One nested MLflow run per variant."""
    import mlflow

    from mm_pipeline.registry.tracking import log_history, metric_key, safe_params

    base = to_dataclass(MultimodalConfig, config, seed=pipeline.seed)
    data = split_data(interaction_split)
    variants = ablations(aligned_item_embeddings, raw_modality_features(text_features, image_features, audio_features),
                         graph_source=base.graph_source)
    # Stored flat (the IO manager keeps arrays, tables and JSON, not nested bundles): see ablation_bundles.
    bundle: dict = {"names": [v.name for v in variants], "infos": {}}
    rows = []
    with mlflow_tracking.start_run(context):
        for variant in variants:
            variant_config = variant.config(base)
            with mlflow.start_run(run_name=variant.name, nested=True):
                mlflow.log_params(safe_params({**variant_config.__dict__, "ablation": variant.name,
                                               "description": variant.description}))
                model, history = fit_multimodal(data, None, variant_config, name=variant.name,
                                                content=variant.content, graph_features=variant.graph_features)
                log_history(history)
                mlflow.log_metrics({metric_key(k): float(v) for k, v in model.info.items()})
            index = len(bundle["infos"])
            bundle["infos"][variant.name] = model.info
            bundle[f"embeddings_{index}"] = {"user_embeddings": model.user_embeddings,
                                             "item_embeddings": model.item_embeddings}
            bundle[f"history_{index}"] = history
            rows.append({"ablation": variant.name, "what is removed": variant.description,
                         "best valid ndcg@20": round(float(model.info["best_valid_ndcg@20"]), 4),
                         "epochs": int(model.info["epochs_run"])})
            context.log.info(f"{variant.name}: best valid ndcg@20 {model.info['best_valid_ndcg@20']:.4f}")
    return dg.Output(bundle, metadata={"ablations": dg.MetadataValue.md(frame_markdown(pd.DataFrame(rows))),
                                       "variants": len(variants)})


def ablation_bundles(stored: dict) -> list[dict]:
    """The ``mm_gcn_ablations`` value as model bundles (see :meth:`EmbeddingRecommender.from_bundle`)."""
    return [{"name": name, **stored[f"embeddings_{index}"], "info": stored["infos"][name],
             "history": stored[f"history_{index}"]} for index, name in enumerate(stored["names"])]


@dg.asset(group_name=GROUP, kinds={"pandas"}, code_version="1", deps=["evaluation_report"])
def research_report(context: dg.AssetExecutionContext, source_dataset: dict, interaction_split: dict,
                    popularity_model: dict, ease_model: dict, bpr_mf_model: dict, lightgcn_model: dict,
                    content_knn_model: dict, vbpr_model: dict, freedom_model: dict, mm_gcn_model: dict,
                    compressed_model: dict, aligned_item_embeddings: dict, mm_gcn_ablations: dict,
                    pipeline: PipelineResource) -> dg.Output[dict]:
    """The evaluation report with FREEDOM and the ablations added: the same protocol, split and
    bootstrap, so those rows are directly comparable with ``mm_gcn`` and the baselines. Runs after
    ``evaluation_report`` and replaces ``reports/latest`` with this superset."""
    return comparison_report(context, pipeline, source_dataset, interaction_split,
                             [popularity_model, ease_model, bpr_mf_model, lightgcn_model, content_knn_model,
                              vbpr_model, freedom_model, mm_gcn_model], aligned_item_embeddings,
                             compressed_model=compressed_model, ablation_bundles=ablation_bundles(mm_gcn_ablations),
                             title="Research report (with ablations)")

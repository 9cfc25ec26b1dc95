"""Research: FREEDOM as a baseline, ablations of the primary model and of its GNN, and the report with them.

Not part of ``full_pipeline`` (several more minutes of training on the default dataset); the
``research_pipeline`` job materializes them with the rest of the graph.
"""

import dagster as dg
import pandas as pd

from mm_pipeline.data.types import InteractionSplit
from mm_pipeline.defs.assets.evaluate import comparison_report, report_inputs
from mm_pipeline.defs.assets.train import MODEL_ASSETS, HybridRunConfig, log_trials, split_data
from mm_pipeline.defs.config import to_dataclass
from mm_pipeline.defs.metadata import frame_table
from mm_pipeline.defs.resources import MlflowResource, PipelineResource
from mm_pipeline.recommend.ablations import ablations
from mm_pipeline.recommend.catalog import MODEL_TABLE, hybrid_parts, raw_modality_features
from mm_pipeline.recommend.fit import MultimodalConfig, fit_multimodal
from mm_pipeline.recommend.ranking import validator

GROUP = "research"

# The research-role models of the table (FREEDOM), trained in the research job only.
RESEARCH_MODEL_ASSETS = [MODEL_ASSETS[s.name] for s in MODEL_TABLE if s.role == "research"]


class GnnAblationConfig(dg.Config):
    """Which ``mm_gcn`` ablations to train. Each retrains the GNN from scratch (on a 200k-interaction
    dataset about 20 minutes apiece on two cores), so on large data a subset, or none, keeps the research
    job affordable; the report then lists only the variants trained."""

    variants: list[str] | None = None  # None: every variant; [] none; else these names (e.g. "mm_gcn-no_item_graph")


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="5")
def mm_gcn_ablations(
    context: dg.AssetExecutionContext,
    config: GnnAblationConfig,
    mm_gcn_model: dict,
    interaction_split: InteractionSplit,
    aligned_item_embeddings: dict,
    text_features: dict,
    image_features: dict,
    audio_features: dict,
    pipeline: PipelineResource,
    mlflow_tracking: MlflowResource,
) -> dg.Output[dict]:
    """The multimodal GNN with one part removed at a time (each modality alone, no alignment, no
    item-item graph), with the config ``mm_gcn_model`` chose on validation, same seed and split. One
    nested MLflow run per variant."""
    import dataclasses

    import mlflow

    from mm_pipeline.registry.tracking import log_history, metric_key, safe_params

    fields = {f.name for f in dataclasses.fields(MultimodalConfig)}
    chosen = {k: v for k, v in (mm_gcn_model.get("config") or {}).items() if k in fields}
    base = MultimodalConfig(**{**chosen, "seed": pipeline.seed})
    data = split_data(interaction_split)
    variants = ablations(
        aligned_item_embeddings,
        raw_modality_features(text_features, image_features, audio_features),
        graph_source=base.graph_source,
    )
    if config.variants is not None:
        unknown = sorted(set(config.variants) - {v.name for v in variants})
        if unknown:
            raise ValueError(
                f"mm_gcn_ablations config: unknown variants {unknown}; this dataset has {[v.name for v in variants]}"
            )
        skipped = [v.name for v in variants if v.name not in config.variants]
        if skipped:
            context.log.info(f"ablations not trained (run config 'variants'): {', '.join(skipped)}")
        variants = [v for v in variants if v.name in config.variants]
    # Stored flat (the IO manager keeps arrays, tables and JSON, not nested bundles): see ablation_bundles.
    bundle: dict = {"names": [v.name for v in variants], "infos": {}}
    rows = []
    with mlflow_tracking.start_run(context):
        for variant in variants:
            variant_config = variant.config(base)
            with mlflow.start_run(run_name=variant.name, nested=True):
                mlflow.log_params(
                    safe_params(
                        {**variant_config.__dict__, "ablation": variant.name, "description": variant.description}
                    )
                )
                model, history = fit_multimodal(
                    data,
                    None,
                    variant_config,
                    name=variant.name,
                    content=variant.content,
                    graph_features=variant.graph_features,
                )
                log_history(history)
                mlflow.log_metrics({metric_key(k): float(v) for k, v in model.info.items()})
            index = len(bundle["infos"])
            bundle["infos"][variant.name] = model.info
            bundle[f"embeddings_{index}"] = model.to_arrays()
            bundle[f"history_{index}"] = history
            rows.append(
                {
                    "ablation": variant.name,
                    "what is removed": variant.description,
                    "best valid ndcg@20": round(float(model.info["best_valid_ndcg@20"]), 4),
                    "epochs": int(model.info["epochs_run"]),
                }
            )
            context.log.info(f"{variant.name}: best valid ndcg@20 {model.info['best_valid_ndcg@20']:.4f}")
    return dg.Output(bundle, metadata={"ablations": frame_table(pd.DataFrame(rows)), "variants": len(variants)})


@dg.asset(group_name=GROUP, kinds={"scipy", "mlflow"}, code_version="1")
def mm_hybrid_ablations(
    context: dg.AssetExecutionContext,
    config: HybridRunConfig,  # type: ignore[valid-type]
    interaction_split: InteractionSplit,
    ease_model: dict,
    item_knn_model: dict,
    mm_gcn_model: dict,
    lightgcn_model: dict,
    text_features: dict,
    image_features: dict,
    audio_features: dict,
    pipeline: PipelineResource,
    mlflow_tracking: MlflowResource,
) -> dg.Output[dict]:
    """The primary model with one part taken away at a time (no multimodal content, no GNN, no recency
    weighting, no item-item core), its remaining weights chosen on validation again. One nested MLflow
    run per variant."""
    import mlflow

    from mm_pipeline.recommend.hybrid import ABLATIONS, HybridConfig, ablate, fit_hybrid
    from mm_pipeline.registry.tracking import safe_params

    hybrid = to_dataclass(HybridConfig, config, seed=pipeline.seed)
    data = split_data(interaction_split)
    parts = hybrid_parts(
        data,
        interaction_split,
        {"ease": ease_model, "item_knn": item_knn_model},
        {"mm_gcn": mm_gcn_model, "lightgcn": lightgcn_model},
        raw_modality_features(text_features, image_features, audio_features),
        hybrid,
    )
    validate = validator(data, max_users=hybrid.validation_users, seed=hybrid.seed)
    bundle: dict = {"names": [], "infos": {}}
    rows = []
    with mlflow_tracking.start_run(context):
        for what, description in ABLATIONS.items():
            try:
                ablated, ablated_config = ablate(parts, hybrid, what)
            except ValueError as exc:  # e.g. no GNN to stand in for EASE
                context.log.info(f"mm_hybrid-{what} skipped: {exc}")
                continue
            name = f"mm_hybrid-{what}"
            search = fit_hybrid(ablated, validate, ablated_config, name=name, on_trial=log_trials(context, name))
            with mlflow.start_run(run_name=name, nested=True):
                mlflow.log_params(
                    safe_params(
                        {
                            "ablation": name,
                            "description": description,
                            **{f"chosen.{k}": v for k, v in search.params.items()},
                        }
                    )
                )
                mlflow.log_metric("valid_ndcg_at_20", search.score)
            index = len(bundle["names"])
            bundle["names"].append(name)
            bundle["infos"][name] = search.model.info
            bundle[f"embeddings_{index}"] = search.model.to_arrays()
            bundle[f"history_{index}"] = pd.DataFrame()
            rows.append(
                {
                    "ablation": name,
                    "what is removed": description,
                    "chosen": str(search.params),
                    "valid ndcg@20": round(search.score, 4),
                }
            )
    return dg.Output(bundle, metadata={"ablations": frame_table(pd.DataFrame(rows)), "variants": len(rows)})


def ablation_bundles(stored: dict) -> list[dict]:
    """An ablations value (``mm_gcn_ablations``, ``mm_hybrid_ablations``) as model bundles (see
    :meth:`EmbeddingRecommender.from_bundle`)."""
    return [
        {
            "name": name,
            **stored[f"embeddings_{index}"],
            "info": stored["infos"][name],
            "history": stored[f"history_{index}"],
        }
        for index, name in enumerate(stored["names"])
    ]


@dg.asset(
    group_name=GROUP,
    kinds={"pandas"},
    code_version="5",
    deps=["evaluation_report"],
    ins=report_inputs([*(s.asset_name for s in MODEL_TABLE), "mm_gcn_ablations", "mm_hybrid_ablations"]),
    required_resource_keys={"pipeline", "mlflow_tracking"},
)
def research_report(context: dg.AssetExecutionContext, **stored) -> dg.Output[dict]:
    """The evaluation report with FREEDOM and the ablations added: the same protocol, split and
    bootstrap, so those rows are directly comparable with the primary model and the baselines. Runs
    after ``evaluation_report`` and replaces ``reports/latest`` with this superset."""
    return comparison_report(
        context,
        context.resources.pipeline,
        stored["source_dataset"],
        stored["interaction_split"],
        [stored[s.asset_name] for s in MODEL_TABLE],
        stored["aligned_item_embeddings"],
        compressed_model=stored["compressed_model"],
        ablation_bundles=[
            *ablation_bundles(stored["mm_hybrid_ablations"]),
            *ablation_bundles(stored["mm_gcn_ablations"]),
        ],
        title="Research report (with ablations)",
        selected_model=stored["selected_model"],
        explanations=stored["recommendation_explanations"],
        model_rankings=stored["model_rankings"],
    )

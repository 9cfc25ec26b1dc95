"""Hyper-parameter search for the primary model: an Optuna study logged as one MLflow run with one nested
run per trial. Not part of ``full_pipeline``: launch the ``hyperparameter_search`` job, which reads the
split, the aligned embeddings and the modality features already stored in the project home."""

import dataclasses
import json
from typing import Any

import dagster as dg
from pydantic import Field

from mm_pipeline.data.types import InteractionSplit, as_interaction_split
from mm_pipeline.defs.assets.train import raw_modality_features
from mm_pipeline.defs.metadata import frame_table
from mm_pipeline.defs.resources import MlflowResource, PipelineResource
from mm_pipeline.recommend.fit import MultimodalConfig
from mm_pipeline.recommend.search import (
    DEFAULT_SPACE,
    OBJECTIVE,
    RECALL,
    TrialResult,
    parse_space,
    search_hyperparameters,
    trials_plot_png,
)

GROUP = "research"


class HyperparameterSearchConfig(dg.Config):
    n_trials: int = Field(default=8, description="Number of trials (each one trains mm_gcn once).")
    max_epochs: int = Field(default=20, description="Training budget per trial, in epochs.")
    patience: int = Field(default=5, description="Early-stopping patience within a trial (validation NDCG@20).")
    prune: bool = Field(
        default=True,
        description="Stop a trial early when its validation NDCG@20 is below the "
        "median of earlier trials at the same epoch (Optuna MedianPruner).",
    )
    space: dict[str, Any] = Field(
        default_factory=lambda: json.loads(json.dumps(DEFAULT_SPACE)),
        description="MultimodalConfig field -> list of choices, or {low, high, log?, step?} for a numeric range.",
    )


def _scalar_metrics(trial: TrialResult) -> dict[str, float]:
    from mm_pipeline.registry.tracking import metric_key

    # "best_" keeps the trial's summary apart from the per-epoch curves logged under the history's names.
    values = {
        f"best_{OBJECTIVE}": trial.valid_ndcg,
        f"best_{RECALL}": trial.valid_recall,
        "best_epoch": trial.best_epoch,
        "epochs_run": trial.epochs_run,
        "trial_seconds": trial.seconds,
    }
    return {metric_key(k): float(v) for k, v in values.items()}


@dg.asset(group_name=GROUP, kinds={"optuna", "mlflow"}, code_version="3")
def mm_gcn_hyperparameter_search(
    context: dg.AssetExecutionContext,
    config: HyperparameterSearchConfig,
    interaction_split: InteractionSplit,
    aligned_item_embeddings: dict,
    text_features: dict,
    image_features: dict,
    audio_features: dict,
    pipeline: PipelineResource,
    mlflow_tracking: MlflowResource,
) -> dg.Output[dict]:
    """Optuna TPE search over mm_gcn's hyper-parameters, scored on validation NDCG@20 (never the test split).

    One parent MLflow run holds the search settings and the best parameters; each trial is a nested run
    with its parameters, validation metrics and per-epoch history. Copy ``best_params`` into the
    ``mm_gcn_model`` config to use them.
    """
    import mlflow

    from mm_pipeline.evaluate.report import png_markdown
    from mm_pipeline.registry.tracking import log_history, metric_key, run_tags, safe_params

    try:
        parse_space(config.space)
    except ValueError as exc:
        raise dg.Failure(description=f"invalid search space in the run config: {exc}") from exc
    if config.n_trials < 1 or config.max_epochs < 1:
        raise dg.Failure(
            description=f"n_trials and max_epochs must be positive, got {config.n_trials} and {config.max_epochs}"
        )
    data = as_interaction_split(interaction_split).data
    base = MultimodalConfig(seed=pipeline.seed, patience=config.patience, epochs=config.max_epochs)
    code_version = (context.assets_def.code_versions_by_key or {}).get(context.asset_key)

    with mlflow_tracking.start_run(context, run_name="mm_gcn_search") as parent:
        mlflow.log_params(
            safe_params(
                {
                    "search.objective": OBJECTIVE,
                    "search.n_trials": config.n_trials,
                    "search.max_epochs": config.max_epochs,
                    "search.prune": config.prune,
                    "search.seed": pipeline.seed,
                    "search.sampler": "optuna TPESampler",
                    "search.space": json.dumps(config.space, sort_keys=True),
                    **{f"base.{k}": v for k, v in dataclasses.asdict(base).items() if k not in config.space},
                    "users": data.n_users,
                    "items": data.n_items,
                    "train_interactions": int(data.train.nnz),
                }
            )
        )

        def log_trial(trial: TrialResult) -> None:
            tags = run_tags(
                context.run_id,
                None,
                code_version,
                {
                    "search.parent_asset": context.asset_key.to_user_string(),
                    "search.trial": trial.number,
                    "search.state": trial.state,
                },
            )
            with mlflow.start_run(run_name=f"trial_{trial.number:03d}", nested=True, tags=tags):
                mlflow.log_params(safe_params(dataclasses.asdict(trial.config)))
                mlflow.log_metrics(_scalar_metrics(trial))
                if len(trial.history):
                    log_history(trial.history)
            context.log.info(
                f"trial {trial.number} {trial.state}: {OBJECTIVE} = {trial.valid_ndcg:.4f} "
                f"after {trial.epochs_run} epoch(s), {trial.seconds:.1f} s, params {trial.params}"
            )

        result = search_hyperparameters(
            data,
            aligned_item_embeddings,
            config.space,
            config.n_trials,
            seed=pipeline.seed,
            base_config=base,
            on_trial=log_trial,
            max_epochs=config.max_epochs,
            prune=config.prune,
            raw_features=raw_modality_features(text_features, image_features, audio_features),
        )
        best = result.best
        n_pruned = int((result.trials["state"] == "pruned").sum())
        mlflow.log_params(safe_params({f"best.{k}": v for k, v in best.params.items()}))
        mlflow.log_metrics(
            {
                metric_key(f"best_{OBJECTIVE}"): best.valid_ndcg,
                metric_key(f"best_{RECALL}"): best.valid_recall,
                "best_trial": float(best.number),
                "trials_complete": float(len(result.trials) - n_pruned),
                "trials_pruned": float(n_pruned),
                "search_seconds": float(result.trials["seconds"].sum()),
            }
        )
        mlflow.log_text(result.trials.to_csv(index=False), "search/trials.csv")

    png = trials_plot_png(result.trials, best.number)
    bundle = {
        "trials": result.trials,
        "histories": result.histories(),
        "best_trial": best.number,
        "best_params": best.params,
        "best_config": dataclasses.asdict(best.config),
        OBJECTIVE: best.valid_ndcg,
        RECALL: best.valid_recall,
        "space": config.space,
        "seed": pipeline.seed,
        "mlflow_run_id": parent.info.run_id,
    }
    return dg.Output(
        bundle,
        metadata={
            "mlflow_run_id": parent.info.run_id,
            "best_trial": best.number,
            "best_params": dg.MetadataValue.json(best.params),
            metric_key(f"best_{OBJECTIVE}"): dg.MetadataValue.float(best.valid_ndcg),
            metric_key(f"best_{RECALL}"): dg.MetadataValue.float(best.valid_recall),
            "trials_pruned": n_pruned,
            "trials": frame_table(result.trials, 100),
            "validation_ndcg_per_trial": dg.MetadataValue.md(png_markdown(png, "validation NDCG@20 per trial")),
        },
    )


hyperparameter_search_job = dg.define_asset_job(
    "hyperparameter_search",
    selection=dg.AssetSelection.assets(mm_gcn_hyperparameter_search),
    description="Optuna search for mm_gcn on the stored split, aligned embeddings and modality features "
    "(materialize those first, e.g. with full_pipeline); one nested MLflow run per trial.",
)

SEARCH_JOBS = [hyperparameter_search_job]

"""Trained recommenders, one asset per entry of the model table (:mod:`mm_pipeline.recommend.catalog`).

Every model's settings are chosen on the validation split within a time budget (``tuning_*`` config
fields; see :mod:`mm_pipeline.recommend.tuning`): the asset's metadata and its MLflow run hold the
table of every setting tried.
"""

import dataclasses
import json

import dagster as dg
import pandas as pd

from mm_pipeline.data.types import InteractionSplit, SplitData, as_interaction_split
from mm_pipeline.defs.config import config_from_dataclass, with_tuning
from mm_pipeline.defs.io_manager import lazy_input
from mm_pipeline.defs.metadata import frame_table, history_metadata
from mm_pipeline.defs.tags import from_scratch_reason
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.catalog import (
    ALIGNED,
    IMAGE_FEATURES,
    MODEL_TABLE,
    RAW_FEATURES,
    ModelInputs,
    ModelSpec,
    raw_modality_features,
)
from mm_pipeline.recommend.selection import SearchResult
from mm_pipeline.recommend.train import listening
from mm_pipeline.recommend.tuning import Tuning
from mm_pipeline.recommend.warm import (
    WARM_START_MODES,
    Checkpoint,
    WarmStart,
    as_mapping,
    compatible,
    load_checkpoint,
    model_settings,
    save_checkpoint,
)
from mm_pipeline.registry.tracking import metric_key
from mm_pipeline.storage import atomic_write_text

GROUP = "train"
RESEARCH_GROUP = "research"


def run_config_class(spec: ModelSpec) -> type[dg.Config] | None:
    """The model's Dagster run config: its settings dataclass's fields, plus the search budget when it
    has a search."""
    if spec.config is None:
        return None
    title = "".join(part.title() for part in spec.name.split("_"))
    config = config_from_dataclass(spec.config, f"{title}Settings" if spec.tuning else f"{title}RunConfig")
    if spec.tuning is None:
        return config
    return with_tuning(config, f"{title}RunConfig", spec.tuning)


def tuning(config: dg.Config, seed: int) -> Tuning:
    return Tuning(
        budget_s=config.tuning_budget_s,
        max_trials=config.tuning_max_trials,
        validation_users=config.tuning_validation_users,
        seed=seed,
    )


def selection_metadata(result: SearchResult) -> dict:
    """The validation search as Dagster metadata: chosen settings, why the search stopped, every trial."""
    return {
        "valid_ndcg@20": dg.MetadataValue.float(result.score),
        "chosen": dg.MetadataValue.json(result.params),
        "search_stopped": result.stopped,
        "search_trials": len(result.trials),
        "search": frame_table(result.trials, 60),
    }


def log_trials(context: dg.AssetExecutionContext, name: str):
    """A per-trial progress line in the run log."""

    def log(row: dict) -> None:
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
        context.log.info(f"{name} search trial: {shown}")

    return log


def split_data(interaction_split: InteractionSplit | dict) -> SplitData:
    """The split's sparse views, built once per loaded split (the IO manager hands every step of a run the
    same object in one process)."""
    return as_interaction_split(interaction_split).data


def epoch_progress(context: dg.AssetExecutionContext):
    """Every training epoch as a line in the Dagster run log and as live MLflow metrics (``progress/*``, one
    step per epoch across the search's trials) in the active run, so a long training shows where it is."""
    import mlflow

    step = 0

    def listen(name: str, row: dict) -> None:
        nonlocal step
        step += 1
        values = {
            k: float(v)
            for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "train_seconds")
        context.log.info(f"{name} epoch {row.get('epoch')}: {shown} ({values.get('train_seconds', 0.0):.1f} s)")
        if mlflow.active_run() is not None:
            mlflow.log_metrics({metric_key(f"progress/{k}"): v for k, v in values.items()}, step=step)

    return listen


def _finish(
    context: dg.AssetExecutionContext,
    run,
    model: EmbeddingRecommender,
    history: pd.DataFrame | None,
    data: SplitData,
    interaction_split: InteractionSplit,
    raw_items: pd.DataFrame,
    params: dict,
    search: SearchResult | None = None,
) -> dg.Output[dict]:
    """Log params, curves, the validation search and the servable model to the active MLflow run ``run``;
    return the model bundle with metadata."""
    import mlflow

    from mm_pipeline.registry.pyfunc import log_recommender
    from mm_pipeline.registry.tracking import log_history, log_split_input, safe_params

    # The run was opened before training (live progress metrics): everything goes into it.
    mlflow.log_params(
        safe_params(
            {
                **params,
                "model": model.name,
                "users": data.n_users,
                "items": data.n_items,
                "train_interactions": int(data.train.nnz),
            }
        )
    )
    # Lineage: the exact split this model was trained on (indices only, no raw user ids), with MLflow's digest.
    log_split_input(
        as_interaction_split(interaction_split).table,
        "interaction_split",
        "training",
        {"split_method": as_interaction_split(interaction_split).split_method},
    )
    if history is not None and len(history):
        log_history(history)
    if search is not None:
        mlflow.log_params(safe_params({"search.trials": len(search.trials), "search.stopped": search.stopped}))
        mlflow.log_table(search.trials, "search/trials.json")
    final = {k: float(v) for k, v in model.info.items() if isinstance(v, (int, float))}
    if final:
        mlflow.log_metrics({metric_key(k): v for k, v in final.items()})
    # No input example here (MLflow would load the model back to check it): the registered model has one.
    info = log_recommender(
        model,
        as_interaction_split(interaction_split).user_ids.tolist(),
        raw_items["item_id"].astype(str).tolist(),
        data.train,
        name="recommender",
        input_example_users=0,
    )
    bundle = {
        **model.to_bundle(),
        "history": history if history is not None else pd.DataFrame(),
        "config": {k: v for k, v in params.items() if isinstance(v, (str, int, float, bool, type(None)))},
    }
    meta = {
        "mlflow_run_id": run.info.run_id,
        "mlflow_model": info.model_uri,
        "embedding_dim": int(model.item_embeddings.shape[1]),
        **{k: dg.MetadataValue.float(v) if isinstance(v, float) else v for k, v in final.items()},
    }
    if history is not None and len(history):
        meta.update(
            history_metadata(
                history, [c for c in ("loss", "valid_ndcg@20", "valid_recall@20")], f"{model.name} training"
            )
        )
    if search is not None:
        meta.update(selection_metadata(search))
        bundle["search"] = search.trials
    return dg.Output(bundle, metadata=meta)


def input_asset_names(spec: ModelSpec) -> list[str]:
    """The assets a model's training asset reads besides ``interaction_split`` and ``raw_items``."""
    names: list[str] = []
    if ALIGNED in spec.needs:
        names.append("aligned_item_embeddings")
    if RAW_FEATURES in spec.needs:
        names += ["text_features", "image_features", "audio_features"]
    if IMAGE_FEATURES in spec.needs and "image_features" not in names:
        names.append("image_features")
    return names + [f"{name}_model" for name in spec.model_needs]


def model_inputs(spec: ModelSpec, data: SplitData, interaction_split: InteractionSplit, stored: dict) -> ModelInputs:
    """The trainer's inputs from the loaded upstream values ``stored`` (by asset name)."""
    raw = (
        raw_modality_features(stored["text_features"], stored["image_features"], stored["audio_features"])
        if RAW_FEATURES in spec.needs
        else None
    )
    return ModelInputs(
        data,
        interaction_split,
        aligned=stored.get("aligned_item_embeddings"),
        raw_features=raw,
        image_features=stored.get("image_features") if IMAGE_FEATURES in spec.needs else None,
        models={name: stored[f"{name}_model"] for name in spec.model_needs},
    )


def warm_start_for(
    context: dg.AssetExecutionContext, spec: ModelSpec, settings, user_ids: list[str], item_ids: list[str]
) -> tuple[WarmStart | None, dict]:
    """The checkpoint this training starts from, if any (``warm_start`` setting, the run's tags, the checkpoint's
    compatibility), and metadata saying which and why."""
    mode = settings.warm_start
    if mode not in WARM_START_MODES:
        raise dg.Failure(f"{spec.name}: warm_start must be one of {WARM_START_MODES}, got {mode!r}")
    why = from_scratch_reason(mode, context.run.tags)
    if why is None:
        checkpoint = load_checkpoint(context.resources.pipeline.checkpoints(spec.name))
        why = compatible(checkpoint, spec.name, settings, user_ids)
        if why is None:
            return WarmStart(checkpoint, user_ids, item_ids, settings.warm_init), {"warm_start": True}
    return None, {"warm_start": False, "warm_start_reason": why}


def save_model_checkpoint(
    context: dg.AssetExecutionContext, spec: ModelSpec, settings, trained, user_ids: list[str], item_ids: list[str]
) -> None:
    """The trained parameters, the settings and the ids of their rows: what a later retrain warm-starts from."""
    names = {f.name for f in dataclasses.fields(settings)}
    chosen = {k: v for k, v in trained.params.items() if k in names}
    checkpoint = Checkpoint(
        spec.name,
        as_mapping(model_settings(settings)),
        as_mapping(chosen),
        user_ids,
        item_ids,
        trained.model.trainable,
        {"valid_ndcg@20": float(trained.model.info.get("best_valid_ndcg@20", float("nan"))), "run": context.run_id},
    )
    save_checkpoint(context.resources.pipeline.checkpoints(spec.name), checkpoint)


CHOICE = "choice.json"


def previous_choice(context: dg.AssetExecutionContext, spec: ModelSpec, settings) -> tuple[dict | None, dict]:
    """The search's previous choice to start from (the hybrid's weights), if the run may warm-start and the
    settings are those it was chosen with, and metadata saying which and why."""
    if settings.warm_start not in WARM_START_MODES:
        raise dg.Failure(f"{spec.name}: warm_start must be one of {WARM_START_MODES}, got {settings.warm_start!r}")
    why = from_scratch_reason(settings.warm_start, context.run.tags)
    if why is None:
        path = context.resources.pipeline.checkpoints(spec.name) / CHOICE
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = None
        if saved is None:
            why = "no previous choice"
        elif saved.get("settings") != json.loads(json.dumps(as_mapping(model_settings(settings)))):
            why = "settings changed since the previous choice"
        else:
            return saved["chosen"], {"warm_start": True, "search_started_from": dg.MetadataValue.json(saved["chosen"])}
    return None, {"warm_start": False, "warm_start_reason": why}


def train_model(
    context: dg.AssetExecutionContext, spec: ModelSpec, config: dg.Config | None, stored: dict
) -> dg.Output[dict]:
    """One model of the table: skip it (with the reason) where it cannot run, else train it, search its
    settings on validation and log it to MLflow."""
    interaction_split, raw_items = as_interaction_split(stored.pop("interaction_split")), stored.pop("raw_items")
    data = split_data(interaction_split)
    inputs = model_inputs(spec, data, interaction_split, stored)
    reason = spec.skip(inputs) if spec.skip is not None else None
    if reason:
        return dg.Output({"name": spec.name, "skipped": reason}, metadata={"skipped": reason})
    settings = spec.settings(config.model_dump() if config is not None else {}, context.resources.pipeline.seed)
    warm_meta: dict = {}
    if spec.warm_start:
        user_ids = [str(u) for u in interaction_split.user_ids]
        item_ids = raw_items["item_id"].astype(str).tolist()
        warm, warm_meta = warm_start_for(context, spec, settings, user_ids, item_ids)
        inputs = dataclasses.replace(inputs, warm=warm)
        context.log.info(f"{spec.name}: {'warm start' if warm else 'from scratch: ' + warm_meta['warm_start_reason']}")
    elif settings is not None and hasattr(settings, "warm_start"):  # a search that can start from its last choice
        previous, warm_meta = previous_choice(context, spec, settings)
        inputs = dataclasses.replace(inputs, previous=previous)
    with context.resources.mlflow_tracking.start_run(context, run_name=spec.name) as run:
        with listening(epoch_progress(context)):
            trained = spec.train(
                inputs,
                settings,
                tuning(config, context.resources.pipeline.seed) if spec.tuning is not None else None,
                log_trials(context, spec.name),
            )
        if trained.note:
            context.log.info(trained.note)
        if inputs.warm is not None and inputs.warm.report is not None:
            warm_meta["warm_start_rows"] = dg.MetadataValue.json(inputs.warm.report.as_dict())
        output = _finish(
            context,
            run,
            trained.model,
            trained.history,
            data,
            interaction_split,
            raw_items,
            trained.params,
            trained.search,
        )
    if spec.warm_start and trained.model.trainable is not None:
        save_model_checkpoint(context, spec, settings, trained, user_ids, item_ids)
    elif settings is not None and hasattr(settings, "warm_start") and trained.search is not None:
        atomic_write_text(
            context.resources.pipeline.checkpoints(spec.name) / CHOICE,
            json.dumps({"settings": as_mapping(model_settings(settings)), "chosen": trained.search.params}),
        )
    return dg.Output(output.value, metadata={**output.metadata, **warm_meta})


def model_asset(spec: ModelSpec) -> dg.AssetsDefinition:
    """The training asset ``<name>_model`` of one model of the table."""
    # Upstream models come as stored bundles read on use (the hybrid reads two 1.6 GB item-item cores at 20k
    # items): what the trainer built from them is freed when it returns, before the model is logged and saved.
    models = {f"{name}_model" for name in spec.model_needs}
    ins = {
        name: lazy_input() if name in models else dg.AssetIn()
        for name in ["interaction_split", "raw_items", *input_asset_names(spec)]
    }
    options = dict(
        name=spec.asset_name,
        ins=ins,
        description=spec.description,
        kinds=set(spec.kinds),
        code_version=spec.code_version,
        required_resource_keys={"pipeline", "mlflow_tracking"},
        group_name=RESEARCH_GROUP if spec.role == "research" else GROUP,
    )
    run_config = run_config_class(spec)
    if run_config is None:

        @dg.asset(**options)
        def plain(context: dg.AssetExecutionContext, **stored) -> dg.Output[dict]:
            return train_model(context, spec, None, stored)

        return plain

    @dg.asset(**options)
    def configured(
        context: dg.AssetExecutionContext,
        config: run_config,
        **stored,  # type: ignore[valid-type]
    ) -> dg.Output[dict]:
        return train_model(context, spec, config, stored)

    return configured


MODEL_ASSETS: dict[str, dg.AssetsDefinition] = {spec.name: model_asset(spec) for spec in MODEL_TABLE}
# The assets of full_pipeline (this list is what the module contributes to the graph); research-role
# models run in the research job (mm_pipeline.defs.assets.research).
TRAINING_ASSETS: list[dg.AssetsDefinition] = [MODEL_ASSETS[s.name] for s in MODEL_TABLE if s.role != "research"]
HybridRunConfig = run_config_class(next(s for s in MODEL_TABLE if s.name == "mm_hybrid"))

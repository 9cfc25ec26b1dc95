"""Aligned item embeddings: per-modality projections into one space, InfoNCE, attention fusion."""

import dataclasses

import dagster as dg
import numpy as np
import pandas as pd

from mm_pipeline.align.model import AlignConfig, ConcatenatedAligner, ModalityInput, embed_items, fit_aligner
from mm_pipeline.data.types import InteractionSplit, as_interaction_split
from mm_pipeline.defs.config import config_from_dataclass, to_dataclass
from mm_pipeline.defs.metadata import frame_table, history_metadata
from mm_pipeline.defs.mlflow_models import log_torch_module
from mm_pipeline.defs.resources import MlflowResource, PipelineResource
from mm_pipeline.defs.tags import from_scratch_reason
from mm_pipeline.recommend.warm import (
    WARM_START_MODES,
    Checkpoint,
    as_mapping,
    load_checkpoint,
    model_settings,
    parameters_of,
    save_checkpoint,
)

CHECKPOINT = "aligner"


def aligner_warm_start(
    context: dg.AssetExecutionContext, config: AlignConfig, pipeline: PipelineResource, shape: dict
) -> tuple[dict | None, dict]:
    """The previous aligner's parameters to fine-tune from (None: train from scratch) and metadata saying why."""
    if config.warm_start not in WARM_START_MODES:
        raise dg.Failure(f"aligned_item_embeddings: warm_start must be one of {WARM_START_MODES}")
    why = from_scratch_reason(config.warm_start, context.run.tags)
    if why is None:
        checkpoint = load_checkpoint(pipeline.checkpoints(CHECKPOINT))
        if checkpoint is None:
            why = "no checkpoint"
        elif checkpoint.settings != as_mapping(model_settings(config)) or checkpoint.chosen != shape:
            why = "settings, modalities or feature widths changed since the checkpoint"
        else:
            return checkpoint.state, {"warm_start": True}
    return None, {"warm_start": False, "warm_start_reason": why}


GROUP = "aligned"

AlignRunConfig = config_from_dataclass(AlignConfig, "AlignRunConfig")


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="1")
def aligned_item_embeddings(
    context: dg.AssetExecutionContext,
    config: AlignRunConfig,  # type: ignore[valid-type]
    text_features: dict,
    image_features: dict,
    audio_features: dict,
    interaction_split: InteractionSplit,
    pipeline: PipelineResource,
    mlflow_tracking: MlflowResource,
) -> dg.Output[dict]:
    """Every item in one ``dim``-d space: per-modality embeddings, attention-fused vector and weights.

    Modalities that no item has are skipped (named in metadata). Missing modalities are masked
    out of the contrastive loss and of the fusion softmax.
    """
    import mlflow

    from mm_pipeline.registry.tracking import log_history, safe_params

    align_config = to_dataclass(AlignConfig, config, seed=pipeline.seed)
    candidates = {"text": text_features, "image": image_features, "audio": audio_features}
    inputs = {
        m: ModalityInput(
            np.asarray(f["features"]),
            np.asarray(f["present"], dtype=bool),
            np.asarray(f["augmented"]) if "augmented" in f else None,
        )
        for m, f in candidates.items()
        if np.asarray(f["present"]).any()
    }
    skipped = sorted(set(candidates) - set(inputs))
    table = as_interaction_split(interaction_split).table
    train = table[table["split"] == "train"]
    shape = {"modalities": list(inputs), "widths": [int(inputs[m].features.shape[1]) for m in inputs]}
    initial, warm_meta = aligner_warm_start(context, align_config, pipeline, shape)
    fit_config = dataclasses.replace(align_config, epochs=align_config.warm_epochs) if initial else align_config
    with mlflow_tracking.start_run(context) as run:
        mlflow.log_params(safe_params({**align_config.__dict__, "modalities": ",".join(inputs)}))
        model, history = fit_aligner(
            inputs, train["user_idx"].to_numpy(), train["item_idx"].to_numpy(), fit_config, initial
        )
        log_history(history)
        dims = [inputs[m].features.shape[1] for m in inputs]
        example = np.concatenate(
            [inputs[m].features[:2] for m in inputs] + [np.stack([inputs[m].present[:2] for m in inputs], 1)], 1
        ).astype(np.float32)
        model_uri = log_torch_module(ConcatenatedAligner(model, dims), "aligner", example)
    save_checkpoint(
        pipeline.checkpoints(CHECKPOINT),
        Checkpoint(CHECKPOINT, as_mapping(model_settings(align_config)), shape, [], [], parameters_of(model)),
    )
    out = embed_items(model, inputs)
    weights = pd.DataFrame(out["weights"], columns=list(inputs))
    has = pd.DataFrame(out["present"], columns=list(inputs))
    weight_stats = pd.DataFrame(
        {
            "modality": list(inputs),
            "coverage": [float(has[m].mean()) for m in inputs],
            "mean_weight": [float(weights.loc[has[m], m].mean()) if has[m].any() else 0.0 for m in inputs],
            "p10": [float(weights.loc[has[m], m].quantile(0.1)) if has[m].any() else 0.0 for m in inputs],
            "p90": [float(weights.loc[has[m], m].quantile(0.9)) if has[m].any() else 0.0 for m in inputs],
        }
    )
    return dg.Output(
        {**out, "modalities": list(inputs), "history": history},
        metadata={
            "dimension": align_config.dim,
            "modalities": ", ".join(inputs),
            "skipped_modalities": ", ".join(skipped) or "none",
            "modality_weights": frame_table(weight_stats),
            "mlflow_run_id": run.info.run_id,
            "mlflow_model": model_uri,
            **warm_meta,
            "epochs_run": len(history),
            **history_metadata(history, ["cross_modal", "collaborative"], "alignment losses"),
        },
    )

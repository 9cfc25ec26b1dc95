"""Registry: the selected model (best on validation) registered as a new MLflow model version (alias
``challenger``)."""

import dagster as dg
import numpy as np
import pandas as pd

from mm_pipeline.data.types import InteractionSplit, as_interaction_split
from mm_pipeline.defs.assets.train import split_data
from mm_pipeline.defs.resources import MlflowResource, PipelineResource
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.registry.tracking import metric_key
from mm_pipeline.settings import REGISTERED_MODEL_NAME

GROUP = "registry"


class RegistryConfig(dg.Config):
    registered_model_name: str = REGISTERED_MODEL_NAME
    alias: str = "challenger"


MODEL_DIGEST_TAG = "mm_pipeline.model_digest"


def model_digest(
    model: EmbeddingRecommender,
    interaction_split: InteractionSplit,
    raw_items: pd.DataFrame,
    compression: str = "fp32",
    aligned_item_embeddings: dict | None = None,
) -> str:
    """What a registered version serves, as one hash: the model's arrays, the users and items it knows,
    their training interactions, the user key secret's fingerprint (the served users' keys), how the
    artifact is stored and the interest space its explanations read."""
    import hashlib

    from mm_pipeline.defs.io_manager import value_digest
    from mm_pipeline.registry.pyfunc import secret_fingerprint
    from mm_pipeline.registry.user_keys import pipeline_user_key_secret

    parts = [
        value_digest({"name": model.name, **model.to_arrays()}),  # not `info`: timings differ run to run
        value_digest(as_interaction_split(interaction_split)),
        value_digest(raw_items[["item_id"]]),
        secret_fingerprint(pipeline_user_key_secret()),
        compression,
        value_digest(aligned_item_embeddings or {}),
    ]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


def registered_version_with(client, name: str, digest: str):
    """The newest version of ``name`` registered from a model with ``digest`` (tag ``mm_pipeline.model_digest``)."""
    import mlflow.exceptions

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except mlflow.exceptions.MlflowException:  # no such registered model yet
        return None
    same = [v for v in versions if (v.tags or {}).get(MODEL_DIGEST_TAG) == digest]
    return max(same, key=lambda v: int(v.version), default=None)


@dg.asset(group_name=GROUP, kinds={"mlflow"}, code_version="4")
def registered_model(
    context: dg.AssetExecutionContext,
    config: RegistryConfig,
    selected_model: dict,
    compressed_model: dict,
    interaction_split: InteractionSplit,
    raw_items: pd.DataFrame,
    aligned_item_embeddings: dict,
    evaluation_report: dict,
    mlflow_tracking: MlflowResource,
    pipeline: PipelineResource,
) -> dg.Output[dict]:
    """Logs the selected model (the best validation NDCG@20 among the trained models, see ``selected_model``) as
    a pyfunc with its test metrics and registers a new version; the choice and its reason are tags. The
    artifact is stored as ``compressed_model`` chose (its ``serving`` variant: the smallest within the
    validation quality gate, or what its config forces; ``fp32`` is the plain format). The served model
    also holds the aligned per-modality item embeddings, so its explanations can name each user's
    dominant modality (:mod:`mm_pipeline.explain.interest`).

    A model already registered (the same arrays, users, items, training interactions, storage and
    interest space: tag ``mm_pipeline.model_digest``) is not registered again: that version gets the
    alias, and the metadata says ``reused``. So rerunning the pipeline on unchanged data (say, after the
    report's code changed) makes no new model version."""
    import mlflow

    from mm_pipeline.explain.interest import InterestSpace
    from mm_pipeline.registry.pyfunc import log_recommender, register_alias

    model = EmbeddingRecommender.from_bundle(selected_model)
    compression = str(compressed_model.get("serving", "fp32"))
    # The test metrics of what is logged: the compressed variant's row of the report when one is served.
    reported = evaluation_report["metrics"]["models"]
    test_metrics = reported.get(f"{model.name}[{compression}]", reported[model.name])
    digest = model_digest(model, interaction_split, raw_items, compression, aligned_item_embeddings)
    client = mlflow_tracking.client()
    existing = registered_version_with(client, config.registered_model_name, digest)
    artifact_bytes = 0
    if existing is not None:
        version, run_id, model_uri = str(existing.version), existing.run_id, existing.source
        context.log.info(
            f"{config.registered_model_name} v{version} already serves this model ({model.name}, digest "
            f"{digest[:12]}): not registered again"
        )
    else:
        data = split_data(interaction_split)
        interest = InterestSpace.from_aligned(
            aligned_item_embeddings, max_size=int(np.diff(data.train.tocsr().indptr).max()), seed=pipeline.seed
        )
        with mlflow_tracking.start_run(context, run_name=f"register {model.name}") as run:
            mlflow.log_metrics(
                {f"test_{metric_key(k)}": float(v) for k, v in test_metrics.items() if isinstance(v, (int, float))}
            )
            mlflow.set_tags(
                {
                    "mm_pipeline.selected_model": model.name,
                    "mm_pipeline.selection_reason": selected_model.get("selection_reason", ""),
                    "mm_pipeline.compression": compression,
                }
            )
            info = log_recommender(
                model,
                as_interaction_split(interaction_split).user_ids.tolist(),
                raw_items["item_id"].astype(str).tolist(),
                data.train,
                name="recommender",
                registered_model_name=config.registered_model_name,
                tags={"selected_model": model.name, "compression": compression},
                interest=interest,
                compression=compression,
            )
        version, run_id, model_uri = str(info.registered_model_version), run.info.run_id, info.model_uri
        artifact_bytes = int(info.params.get("artifact_bytes", 0)) if info.params else 0
        client.set_model_version_tag(config.registered_model_name, version, MODEL_DIGEST_TAG, digest)
    register_alias(config.registered_model_name, version, config.alias)
    return dg.Output(
        {
            "name": config.registered_model_name,
            "version": version,
            "model_uri": model_uri,
            "run_id": run_id,
            "compression": compression,
        },
        metadata={
            "registered_model": config.registered_model_name,
            "version": version,
            "reused": existing is not None,
            "model_digest": digest,
            "selected_model": model.name,
            "alias": config.alias,
            "mlflow_run_id": run_id,
            "model_uri": model_uri,
            "compression": compression,
            "artifact_bytes": artifact_bytes,
            "test_recall@20": float(test_metrics["recall@20"]),
        },
    )

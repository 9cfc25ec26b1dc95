"""Batch scoring: the champion's top-k for every user it knows, as one Parquet file under the project home."""

import dagster as dg
from pydantic import Field

from mm_pipeline.defs.metadata import frame_table
from mm_pipeline.defs.resources import MlflowResource, PipelineResource

GROUP = "serve"
BATCH_FILE = ("batch", "recommendations.parquet")


class BatchScoringConfig(dg.Config):
    k: int = Field(default=20, ge=1, description="Recommendations per user.")
    version: str = Field(default="", description="Registered model version to score; empty: the champion.")
    chunk_users: int = Field(
        default=2048, ge=1, description="Users scored per matrix product (memory: chunk_users x items floats)."
    )


@dg.asset(group_name=GROUP, kinds={"parquet", "mlflow"}, code_version="1")
def batch_recommendations(
    context: dg.AssetExecutionContext,
    config: BatchScoringConfig,
    model_promotion: dict,
    pipeline: PipelineResource,
    mlflow_tracking: MlflowResource,
) -> dg.Output[dict]:
    """Top-``k`` items for every user of the champion (after this run's promotion decision) in
    ``<home>/batch/recommendations.parquet``: columns ``user_key`` (the served model's keyed hash of
    the user id, never the raw id), ``rank``, ``item_id``, ``score``; the secret's fingerprint and the
    model URI are in the file's Parquet metadata (:func:`mm_pipeline.registry.scoring.recommendations_for`). Users
    the model does not know are not in the file: serving answers them with the popularity fallback."""
    from mm_pipeline.registry.scoring import champion_model_uri, score_all_users, write_recommendations
    from mm_pipeline.registry.served import load_served_model

    name = model_promotion["name"]
    client = mlflow_tracking.client()
    if config.version:
        version, uri = config.version, f"models:/{name}/{config.version}"
    else:
        version, uri = champion_model_uri(client, name)
    served = load_served_model(uri)
    table = score_all_users(served.arrays, k=config.k, chunk_users=config.chunk_users, secret=served.secret)
    recommender = (client.get_model_version(name, version).tags or {}).get("mm_pipeline.recommender", "")
    path = pipeline.paths().home.joinpath(*BATCH_FILE)
    write_recommendations(
        path,
        table,
        str(served.arrays["key_check"]),
        {"model_uri": uri, "recommender": recommender, "k": config.k, "dagster_run_id": context.run_id},
    )
    users = int(table["user_key"].nunique())
    context.log.info(
        f"scored {users} users with {name} v{version} ({recommender or 'unknown model'}): {len(table)} rows in {path}"
    )
    value = {
        "path": str(path),
        "rows": len(table),
        "users": users,
        "k": config.k,
        "registered_model": name,
        "version": version,
        "model_uri": uri,
        "recommender": recommender,
    }
    preview = table.head(20).assign(user_key=table["user_key"].head(20).astype(str).str[:12])
    return dg.Output(
        value, metadata={**value, "path": dg.MetadataValue.path(str(path)), "preview": frame_table(preview)}
    )

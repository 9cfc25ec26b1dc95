"""MLflow side of the pipeline: tracking helpers, and the pyfunc that serves a trained recommender.

Plain MLflow + numpy/pandas; imports no Dagster (the Dagster layer passes run ids and asset keys in).
"""

from mm_pipeline.registry.pyfunc import (
    RecommenderPyfunc,
    export_serving_arrays,
    log_recommender,
    register_alias,
    user_key,
)
from mm_pipeline.registry.tracking import (
    TAG_CODE_VERSION,
    TAG_DAGSTER_ASSET_KEY,
    TAG_DAGSTER_RUN_ID,
    configure_mlflow,
    is_identifier_key,
    log_history,
    metric_key,
    run_tags,
    safe_params,
)

__all__ = [
    "TAG_CODE_VERSION",
    "TAG_DAGSTER_ASSET_KEY",
    "TAG_DAGSTER_RUN_ID",
    "RecommenderPyfunc",
    "configure_mlflow",
    "export_serving_arrays",
    "is_identifier_key",
    "log_history",
    "log_recommender",
    "metric_key",
    "register_alias",
    "run_tags",
    "safe_params",
    "user_key",
]

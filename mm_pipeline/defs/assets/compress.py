"""Compressed model: the selected model's served artifact at fp32, fp16, int8, int4 with fp16 outliers and
int4, measured, and the variant that ships (the smallest within the validation quality gate)."""

from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from mm_pipeline.compress.frontier import DEFAULT_MAX_RELATIVE_LOSS, compression_frontier
from mm_pipeline.data.types import InteractionSplit
from mm_pipeline.defs.assets.train import split_data
from mm_pipeline.defs.metadata import frame_table
from mm_pipeline.defs.resources import PipelineResource
from mm_pipeline.recommend.base import EmbeddingRecommender

GROUP = "compress"


class CompressConfig(dg.Config):
    serve: Literal["auto", "fp32", "fp32_compact", "fp16", "int8", "int4_outliers", "int4"] = Field(
        default="auto",
        description="The variant registered and served: 'auto' = the smallest whose validation NDCG@20 is "
        "within max_relative_loss of fp32; a name forces it ('fp32' keeps the plain artifact).",
    )
    max_relative_loss: float = Field(
        default=DEFAULT_MAX_RELATIVE_LOSS, description="The quality gate: relative validation NDCG@20 loss."
    )
    latency_batch: int = Field(default=64, description="Known users per timed request (k = 20).")
    latency_requests: int = Field(default=20, description="Timed requests per variant (the median is reported).")


@dg.asset(group_name=GROUP, kinds={"numpy"}, code_version="5")
def compressed_model(
    config: CompressConfig,
    selected_model: dict,
    interaction_split: InteractionSplit,
    raw_items: pd.DataFrame,
    pipeline: PipelineResource,
) -> dg.Output[dict]:
    """The served artifact of the selected model at fp32 (plain), fp16, int8, int4 with fp16 outliers and int4
    (per-row scales):
    its bytes, validation and test NDCG@20 / recall@20 and request latency through the pyfunc, and which
    variant is served (chosen on validation; test is for the record). See ``mm_pipeline.compress.frontier``.
    """
    model = EmbeddingRecommender.from_bundle(selected_model)
    frontier = compression_frontier(
        model,
        split_data(interaction_split),
        raw_items["item_id"].astype(str).tolist(),
        max_relative_loss=config.max_relative_loss,
        serve=config.serve,
        latency_batch=config.latency_batch,
        latency_requests=config.latency_requests,
        seed=pipeline.seed,
    )
    stats = frontier.table
    served = stats.loc[stats["served"]].iloc[0]
    # Only the served variant's tables are stored (the table has every variant's numbers; the registered
    # model is compressed again from the selected one): a variant that does not ship is never read.
    variants = [name for name in frontier.arrays if name != "fp32"]
    return dg.Output(
        {
            "stats": stats,
            "variants": variants,
            "source_model": model.name,
            "serving": frontier.served,
            "max_relative_loss": config.max_relative_loss,
            **{f"variant_{name}": frontier.arrays[name] for name in variants},
            # The served variant's lists as the report names it: it reads them instead of ranking it again.
            **({"served_lists": frontier.rankings.to_arrays()} if variants else {}),
        },
        metadata={
            "compression": frame_table(stats),
            "served_variant": frontier.served,
            "served_bytes": int(served["bytes"]),
            "fp32_bytes": int(stats.loc[0, "bytes"]),
            "served_size_ratio": dg.MetadataValue.float(float(served["size_ratio"])),
            "served_valid_ndcg_loss": dg.MetadataValue.float(float(served["valid_ndcg_loss"])),
            "served_test_ndcg_loss": dg.MetadataValue.float(float(served["test_ndcg_loss"])),
            "served_latency_median_ms": dg.MetadataValue.float(float(served["latency_median_ms"])),
            "fp32_latency_median_ms": dg.MetadataValue.float(float(stats.loc[0, "latency_median_ms"])),
        },
    )

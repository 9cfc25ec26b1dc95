"""Compressed model: magnitude pruning and int8 quantization of the selected model's serving scorer."""

import dagster as dg
import pandas as pd

from mm_pipeline.compress.measure import compress_recommender
from mm_pipeline.data.types import InteractionSplit
from mm_pipeline.defs.assets.train import split_data
from mm_pipeline.defs.metadata import frame_table
from mm_pipeline.defs.resources import PipelineResource
from mm_pipeline.evaluate.metrics import ranking_metrics
from mm_pipeline.recommend.base import EmbeddingRecommender

GROUP = "compress"


class CompressConfig(dg.Config):
    prune_amount: float = 0.3
    latency_users: int = 512


@dg.asset(group_name=GROUP, kinds={"pytorch"}, code_version="2")
def compressed_model(
    config: CompressConfig, selected_model: dict, interaction_split: InteractionSplit, pipeline: PipelineResource
) -> dg.Output[dict]:
    """fp32, pruned, int8 and pruned+int8 variants with parameter count, size, latency and quality.

    The quality change here is measured on the *validation* split; test numbers are in the report.
    """
    model = EmbeddingRecommender.from_bundle(selected_model)
    data = split_data(interaction_split)
    result = compress_recommender(
        model, prune_amount=config.prune_amount, latency_users=config.latency_users, seed=pipeline.seed
    )
    popularity = data.train.sum(axis=0).A1
    quality = []
    for name, rec in result["recommenders"].items():
        m = ranking_metrics(
            rec, truth=data.valid, exclude=data.train, ks=(20,), item_popularity=popularity, n_train_users=data.n_users
        )
        quality.append({"variant": name, "valid_recall@20": m["recall@20"], "valid_ndcg@20": m["ndcg@20"]})
    stats = result["stats"].merge(pd.DataFrame(quality), on="variant")
    base = stats.loc[stats["variant"] == "fp32"].iloc[0]
    stats["valid_recall@20_change"] = stats["valid_recall@20"] - base["valid_recall@20"]
    variants = {name: rec.to_arrays() for name, rec in result["recommenders"].items() if name != "fp32"}
    return dg.Output(
        {
            "stats": stats,
            "variants": list(variants),
            "source_model": model.name,
            **{f"variant_{k}": v for k, v in variants.items()},
        },
        metadata={
            "compression": frame_table(stats),
            "prune_amount": config.prune_amount,
            "int8_size_ratio": float(stats.loc[stats["variant"] == "int8", "size_ratio"].iloc[0]),
        },
    )

"""Augmented data: image views (albumentations), text and audio augmentations."""

import dagster as dg
import pandas as pd

from mm_pipeline.augment.audio import augment_audio
from mm_pipeline.augment.image import augment_images
from mm_pipeline.augment.text import augment_texts
from mm_pipeline.defs.metadata import frame_table
from mm_pipeline.defs.resources import PipelineResource

GROUP = "augmented"


class ImageAugmentConfig(dg.Config):
    n_views: int = 2
    strength: float = 1.0


class TextAugmentConfig(dg.Config):
    word_dropout: float = 0.1
    swap_prob: float = 0.1
    typo_prob: float = 0.05


class AudioAugmentConfig(dg.Config):
    n_views: int = 1
    snr_db: float = 20.0


@dg.asset(group_name=GROUP, kinds={"numpy"}, code_version="1")
def augmented_images(config: ImageAugmentConfig, raw_item_images: dict, pipeline: PipelineResource) -> dg.Output[dict]:
    """``n_views`` albumentations views per item image, ``[N, V, S, S, 3]`` uint8 (absent items stay black)."""
    views = augment_images(
        raw_item_images["images"], n_views=config.n_views, seed=pipeline.seed, strength=config.strength
    )
    return dg.Output(
        {"views": views, "present": raw_item_images["present"]},
        metadata={"shape": str(views.shape), "views_per_item": config.n_views},
    )


@dg.asset(group_name=GROUP, kinds={"pandas"}, code_version="1")
def augmented_text(
    config: TextAugmentConfig, raw_item_text: pd.DataFrame, pipeline: PipelineResource
) -> dg.Output[pd.DataFrame]:
    """One noisy copy of each item text (word dropout, swaps, typos)."""
    out = raw_item_text[["item_id"]].copy()
    out["text"] = augment_texts(
        raw_item_text["text"].tolist(),
        seed=pipeline.seed,
        word_dropout=config.word_dropout,
        swap_prob=config.swap_prob,
        typo_prob=config.typo_prob,
    )
    changed = float((out["text"] != raw_item_text["text"]).mean())
    examples = pd.DataFrame({"original": raw_item_text["text"].head(3), "augmented": out["text"].head(3)})
    return dg.Output(out, metadata={"changed_fraction": changed, "examples": frame_table(examples)})


@dg.asset(group_name=GROUP, kinds={"numpy"}, code_version="1")
def augmented_audio(config: AudioAugmentConfig, raw_item_audio: dict, pipeline: PipelineResource) -> dg.Output[dict]:
    """Shifted, gain-changed, noisy, time-masked views of each clip, ``[N, V, T]``."""
    views = augment_audio(
        raw_item_audio["waves"],
        n_views=config.n_views,
        seed=pipeline.seed,
        sample_rate=int(raw_item_audio["sample_rate"]),
        snr_db=config.snr_db,
    )
    return dg.Output(
        {"views": views, "present": raw_item_audio["present"], "sample_rate": raw_item_audio["sample_rate"]},
        metadata={"shape": str(views.shape), "views_per_item": config.n_views},
    )

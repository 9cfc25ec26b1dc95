"""Raw modalities: the dataset on disk, its catalogue, interactions, and decoded text/images/audio."""

import dagster as dg
import numpy as np
import pandas as pd

from mm_pipeline.datasets import media
from mm_pipeline.datasets.schema import quarantine_frame
from mm_pipeline.datasets.sources import load_source, resolve_source, Source
from mm_pipeline.defs.metadata import quarantine_metadata
from mm_pipeline.defs.resources import PipelineResource

GROUP = "raw"


class MediaConfig(dg.Config):
    """How item media are decoded: images to ``image_size`` squares, audio to mono clips."""

    image_size: int = 32
    sample_rate: int = 8000
    clip_seconds: float = 1.0


def _source(pipeline: PipelineResource) -> Source:
    return resolve_source(pipeline.dataset_spec(), pipeline.paths().data, seed=pipeline.seed)


@dg.asset(group_name=GROUP, kinds={"python"}, code_version="1")
def source_dataset(context: dg.AssetExecutionContext, pipeline: PipelineResource) -> dg.Output[dict]:
    """The dataset folder: generated for ``builtin:*`` specs, checked for user folders."""
    source = _source(pipeline)
    data = load_source(source)
    manifest = {"spec": pipeline.dataset_spec(), "kind": source.kind, "root": str(source.root),
                "name": data.name, "modalities": list(data.modalities), "info": data.info}
    return dg.Output(manifest, metadata={
        "dataset": source.description, "root": dg.MetadataValue.path(str(source.root)),
        "modalities": ", ".join(data.modalities), "items": len(data.items),
        "interactions": len(data.interactions)})


def _load(source_dataset: dict, pipeline: PipelineResource):
    return load_source(_source(pipeline))


@dg.asset(group_name=GROUP, kinds={"pandas"}, code_version="1")
def raw_items(source_dataset: dict, pipeline: PipelineResource) -> dg.Output[pd.DataFrame]:
    """The item catalogue, sorted by ``item_id``: text, image and audio paths, extra columns kept."""
    items = _load(source_dataset, pipeline).items
    coverage = {m: float(items[m].notna().mean()) if m != "text" else float((items["text"] != "").mean())
                for m in ("text", "image", "audio")}
    return dg.Output(items, metadata={"items": len(items), "columns": ", ".join(items.columns),
                                      **{f"has_{m}": round(v, 4) for m, v in coverage.items()}})


@dg.asset(group_name=GROUP, kinds={"pandas"}, code_version="1")
def raw_interactions(source_dataset: dict, pipeline: PipelineResource) -> dg.Output[pd.DataFrame]:
    """User-item interactions with timestamps and weights, as read from the source."""
    inter = _load(source_dataset, pipeline).interactions
    return dg.Output(inter, metadata={
        "interactions": len(inter), "users": int(inter["user_id"].nunique()),
        "items": int(inter["item_id"].nunique()),
        "first": str(pd.to_datetime(inter["timestamp"].min(), unit="s")),
        "last": str(pd.to_datetime(inter["timestamp"].max(), unit="s"))})


@dg.asset(group_name=GROUP, kinds={"pandas"}, code_version="1")
def raw_item_text(raw_items: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """One text per item (the configured text columns joined); empty where the item has none."""
    text = raw_items[["item_id", "text"]].copy()
    text["present"] = text["text"].str.strip() != ""
    return dg.Output(text, metadata={"items": len(text), "with_text": int(text["present"].sum()),
                                     "mean_words": float(text["text"].str.split().str.len().mean())})


@dg.asset(group_name=GROUP, kinds={"numpy"}, code_version="1")
def raw_item_images(config: MediaConfig, source_dataset: dict, raw_items: pd.DataFrame) -> dg.Output[dict]:
    """Decoded RGB images ``[N, S, S, 3]`` uint8; undecodable files go to the quarantine table."""
    images, present, quarantine = media.decode_images(source_dataset["root"], raw_items["item_id"].tolist(),
                                                      raw_items["image"].tolist(), config.image_size)
    table = quarantine_frame(quarantine)
    return dg.Output({"images": images, "present": present, "quarantine": table}, metadata={
        "with_image": int(present.sum()), "shape": str(images.shape),
        **quarantine_metadata(table)})


@dg.asset(group_name=GROUP, kinds={"numpy"}, code_version="1")
def raw_item_audio(config: MediaConfig, source_dataset: dict, raw_items: pd.DataFrame) -> dg.Output[dict]:
    """Decoded mono audio clips ``[N, T]`` float32 at ``sample_rate``; bad files are quarantined."""
    waves, present, quarantine = media.decode_audio(source_dataset["root"], raw_items["item_id"].tolist(),
                                                    raw_items["audio"].tolist(), config.sample_rate,
                                                    config.clip_seconds)
    table = quarantine_frame(quarantine)
    return dg.Output({"waves": waves, "present": present, "sample_rate": config.sample_rate,
                      "quarantine": table}, metadata={
        "with_audio": int(present.sum()), "shape": str(waves.shape),
        **quarantine_metadata(table)})


@dg.asset(group_name=GROUP, kinds={"pandas"}, code_version="1")
def interaction_split(raw_interactions: pd.DataFrame, raw_items: pd.DataFrame) -> dg.Output[dict]:
    """Per-user chronological train/valid/test split (8:1:1) over indexed users and items.

    Interactions naming items missing from the catalogue are not used and are counted in metadata;
    repeated (user, item) pairs keep their first occurrence.
    """
    from mm_pipeline.evaluate.split import chronological_split

    item_index = pd.Series(np.arange(len(raw_items)), index=raw_items["item_id"].to_numpy())
    known = raw_interactions["item_id"].isin(item_index.index)
    inter = raw_interactions[known].sort_values(["user_id", "timestamp"], kind="stable")
    duplicated = inter.duplicated(["user_id", "item_id"], keep="first")
    inter = inter[~duplicated]
    user_ids = np.sort(inter["user_id"].unique())
    frame = pd.DataFrame({
        "user_idx": np.searchsorted(user_ids, inter["user_id"].to_numpy()).astype(np.int64),
        "item_idx": item_index.loc[inter["item_id"].to_numpy()].to_numpy().astype(np.int64),
        "timestamp": inter["timestamp"].to_numpy(np.int64),
        "weight": inter["weight"].to_numpy(np.float32)})
    frame["split"] = chronological_split(frame).to_numpy()
    counts = frame["split"].value_counts()
    train_items = np.zeros(len(raw_items), dtype=bool)
    train_items[frame.loc[frame["split"] == "train", "item_idx"].to_numpy()] = True
    return dg.Output({"table": frame, "user_ids": user_ids.astype(str), "n_users": len(user_ids),
                      "n_items": len(raw_items)}, metadata={
        "users": len(user_ids), "items": len(raw_items),
        **{k: int(counts.get(k, 0)) for k in ("train", "valid", "test")},
        "unknown_item_interactions": int((~known).sum()), "duplicate_interactions": int(duplicated.sum()),
        "cold_items": int((~train_items).sum()),
        "density": float(len(frame) / (len(user_ids) * max(len(raw_items), 1)))})

"""Raw modalities: the dataset on disk, its catalogue, interactions, and decoded text/images/audio."""

import warnings

import dagster as dg
import numpy as np
import pandas as pd

from mm_pipeline.data.types import InteractionSplit
from mm_pipeline.datasets import media
from mm_pipeline.datasets.schema import MODALITIES, quarantine_frame
from mm_pipeline.datasets.sources import Source, load_source, resolve_source, source_fingerprint
from mm_pipeline.defs.assets.inbox import INBOX_ASSET_KEY, forget_filter, with_inbox_interactions
from mm_pipeline.defs.metadata import frame_table, quarantine_metadata
from mm_pipeline.defs.resources import PipelineResource

GROUP = "raw"


class MediaConfig(dg.Config):
    """How item media are decoded: images to ``image_size`` squares, audio to mono clips."""

    image_size: int = 32
    sample_rate: int = 8000
    clip_seconds: float = 1.0
    max_image_pixels: int = media.MAX_IMAGE_PIXELS  # larger images are quarantined, never decoded


def skipped_modalities(data) -> dict[str, str]:
    """Modalities the source lacks entirely, each with the reason (from the reader when it gives one)."""
    reasons = dict(data.info.get("skipped_modalities") or {})
    return {m: reasons.get(m, f"the source has no {m} column or files") for m in MODALITIES if m not in data.modalities}


SOURCE_DATASET_DOC = """The dataset: generated for ``builtin:*`` specs; read and checked for ``folder:``,
``movielens:``, ``mmrec:``. The manifest carries the reader's ``info``: counts before/after filtering, and the
contract for precomputed features (``info["precomputed"]``) and a published split (``info["split_column"]``)."""
RAW_ITEMS_DOC = "The item catalogue, sorted by ``item_id``: text, image and audio paths, extra columns kept."
RAW_INTERACTIONS_DOC = """User-item interactions with timestamps and weights, as read from the source, then every
materialized ``inbox_interactions`` partition appended (column ``origin``; see defs/assets/inbox.py), without the
users on the forget list (``mm-pipeline forget``; the count removed is in ``forgotten_rows_removed``)."""


@dg.multi_asset(
    name="raw_source",
    group_name=GROUP,
    can_subset=False,
    deps=[INBOX_ASSET_KEY],
    outs={
        "source_dataset": dg.AssetOut(kinds={"python"}, code_version="2", description=SOURCE_DATASET_DOC),
        "raw_items": dg.AssetOut(kinds={"pandas"}, code_version="2", description=RAW_ITEMS_DOC),
        "raw_interactions": dg.AssetOut(kinds={"pandas"}, code_version="2", description=RAW_INTERACTIONS_DOC),
    },
    internal_asset_deps={
        "source_dataset": set(),
        "raw_items": {dg.AssetKey("source_dataset")},
        "raw_interactions": {dg.AssetKey("source_dataset"), INBOX_ASSET_KEY},
    },
)
def raw_source(context: dg.AssetExecutionContext, pipeline: PipelineResource):
    """The source read once per run (the dataset of the ``pipeline`` resource), and the three assets taken
    from that one read: ``source_dataset`` (the manifest), ``raw_items`` and ``raw_interactions``. They
    are materialized together (no subset), so they always describe the same version of the source even
    when its folder is edited during the run. ``source_dataset``'s data version is the source's
    fingerprint (spec, seed and the bytes of every file: :func:`~mm_pipeline.datasets.sources.source_fingerprint`),
    the other two carry the content hash of their tables (the IO manager's)."""
    spec = pipeline.dataset_spec()
    forgetting = forget_filter(pipeline, "raw_source")  # before reading: a list it cannot apply stops the run
    source = resolve_source(spec, pipeline.paths().data, seed=pipeline.seed)
    context.log.info(f"reading the dataset {spec} ({source.description})")
    # Before the read: a file edited while it is read leaves the fingerprint of the older content, so the
    # next run sees a change and reads the source again.
    fingerprint = source_fingerprint(spec, source, pipeline.seed)
    data = load_source(source)
    if forgetting is not None and len(data.row_quarantine):
        data.row_quarantine = data.row_quarantine[~forgetting.mentioned(data.row_quarantine["value"])]
    manifest, manifest_metadata = _source_dataset(spec, source, data)
    with warnings.catch_warnings():  # Output's data_version is "beta" in Dagster 1.13 (and long stable)
        warnings.simplefilter("ignore", dg.BetaWarning)
        manifest_output = dg.Output(
            manifest,
            output_name="source_dataset",
            metadata={**manifest_metadata, "source_fingerprint": fingerprint},
            data_version=dg.DataVersion(fingerprint),
        )
    yield manifest_output
    yield dg.Output(data.items, output_name="raw_items", metadata=_items_metadata(data, manifest, pipeline))
    inter, inbox_metadata = with_inbox_interactions(context, pipeline, data.interactions, manifest)
    inter, forget_metadata = _without_forgotten(context, inter, forgetting)
    inbox_metadata = {**inbox_metadata, **forget_metadata}
    yield dg.Output(
        inter, output_name="raw_interactions", metadata=_interactions_metadata(data, inter, inbox_metadata, pipeline)
    )


def _without_forgotten(context, inter: pd.DataFrame, forgetting) -> tuple[pd.DataFrame, dict]:
    """``inter`` without the rows of users on the forget list, and metadata: counts only, never an id."""
    from mm_pipeline.datasets.inbox import ORIGIN_COLUMN, SOURCE_ORIGIN

    if forgetting is None:
        return inter, {"forgotten_users": 0, "forgotten_rows_removed": 0}
    kept, removed = forgetting.drop(inter)
    by_origin = {}
    if removed.any() and ORIGIN_COLUMN in inter.columns:
        origins = inter.loc[removed, ORIGIN_COLUMN]
        by_origin = {
            "source": int((origins == SOURCE_ORIGIN).sum()),
            "inbox": int((origins != SOURCE_ORIGIN).sum()),
        }
    if removed.any():
        context.log.info(
            f"left out {int(removed.sum())} interaction(s) of users on the forget list "
            f"({len(forgetting.hashes)} forgotten user(s))"
        )
    return kept, {
        "forgotten_users": len(forgetting.hashes),
        "forgotten_rows_removed": int(removed.sum()),
        **({"forgotten_rows_removed_by_origin": dg.MetadataValue.json(by_origin)} if by_origin else {}),
    }


def _source_dataset(spec: str, source: Source, data) -> tuple[dict, dict]:
    """``source_dataset``'s value (the manifest) and metadata."""
    skipped = skipped_modalities(data)
    manifest = {
        "spec": spec,
        "kind": source.kind,
        "root": str(source.root),
        "name": data.name,
        "modalities": list(data.modalities),
        "skipped_modalities": skipped,
        "info": data.info,
    }
    counts = data.info.get("counts") or {}
    return manifest, {
        "dataset": source.description,
        "format": str(data.info.get("format", source.kind)),
        "root": dg.MetadataValue.path(str(source.root)),
        "modalities": ", ".join(data.modalities),
        "skipped_modalities": "; ".join(f"{m}: {why}" for m, why in skipped.items()) or "none",
        "precomputed_features": ", ".join(data.info.get("precomputed") or {}) or "none",
        "split": (
            f"published, from column {data.info['split_column']!r}"
            if data.info.get("split_column")
            else "per-user chronological 8:1:1"
        ),
        "items": len(data.items),
        "interactions": len(data.interactions),
        **({"counts": dg.MetadataValue.json(counts)} if counts else {}),
        "info": dg.MetadataValue.json(data.info),
    }


def _row_quarantine_metadata(data, file_key: str, pipeline: PipelineResource, asset: str) -> dict:
    """The rows of one table the source set aside (``bad_rows=quarantine``): count, reasons, the first
    50 in metadata, and the whole table as a bundle under ``<home>/quarantine/<asset>`` (Parquet)."""
    from mm_pipeline.storage import save_bundle

    table = data.row_quarantine
    table = table[table["file"] == str(data.info.get(file_key))] if len(table) else table
    if data.info.get("bad_rows") != "quarantine" and not len(table):
        return {}
    path = save_bundle(pipeline.paths().home / "quarantine" / asset, {"rows": table.reset_index(drop=True)})
    reasons = table["reason"].str.split(";").str[0].value_counts() if len(table) else pd.Series(dtype=int)
    return {
        "rows_quarantined": int(table["row"].nunique()) if len(table) else 0,
        "row_quarantine_by_reason": dg.MetadataValue.json({str(k): int(v) for k, v in reasons.items()}),
        "row_quarantine": frame_table(_user_cells_keyed(table.head(50)), 50),
        "row_quarantine_table": dg.MetadataValue.path(str(path / "rows.parquet")),
    }


def _user_cells_keyed(rows: pd.DataFrame) -> pd.DataFrame:
    """Quarantined cells of the ``user_id`` column shown as keyed hashes: raw ids never reach metadata
    (the whole table, with the cells as read, is in the quarantine Parquet under the project home)."""
    if not len(rows) or "column" not in rows:
        return rows
    from mm_pipeline.defs.metadata import without_user_ids

    rows = rows.copy()
    user = rows["column"] == "user_id"
    if user.any():
        keyed = without_user_ids(pd.DataFrame({"user_id": rows.loc[user, "value"].replace("", None)}))
        rows.loc[user, "value"] = ("user key " + keyed["user_key"]).where(keyed["user_key"] != "", "").to_numpy()
    return rows


def _items_metadata(data, manifest: dict, pipeline: PipelineResource) -> dict:
    items = data.items
    coverage = {
        m: (float(items[m].notna().mean()) if m != "text" else float((items["text"] != "").mean()))
        if len(items)
        else 0.0
        for m in MODALITIES
    }
    precomputed = (manifest.get("info") or {}).get("precomputed") or {}
    return {
        "items": len(items),
        "columns": ", ".join(items.columns),
        **{f"has_{m}": round(v, 4) for m, v in coverage.items()},
        "precomputed_features": ", ".join(precomputed) or "none",
        **_row_quarantine_metadata(data, "items_file", pipeline, "raw_items"),
    }


def _interactions_metadata(data, inter: pd.DataFrame, inbox_metadata: dict, pipeline: PipelineResource) -> dict:
    return {
        **inbox_metadata,
        "interactions": len(inter),
        "users": int(inter["user_id"].nunique()),
        "items": int(inter["item_id"].nunique()),
        "first": _when(inter["timestamp"].min() if len(inter) else None),
        "last": _when(inter["timestamp"].max() if len(inter) else None),
        **_row_quarantine_metadata(data, "interactions_file", pipeline, "raw_interactions"),
    }


def _when(seconds) -> str:
    """A timestamp for metadata; values no calendar can show (e.g. milliseconds read as seconds) stay numbers."""
    if seconds is None:
        return "none"
    try:
        return str(pd.to_datetime(int(seconds), unit="s"))
    except (OverflowError, ValueError, pd.errors.OutOfBoundsDatetime):
        return f"{int(seconds)} s (out of range)"


@dg.asset(group_name=GROUP, kinds={"pandas"}, code_version="1")
def raw_item_text(raw_items: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    """One text per item (the configured text columns joined); empty where the item has none."""
    text = raw_items[["item_id", "text"]].copy()
    text["present"] = text["text"].str.strip() != ""
    return dg.Output(
        text,
        metadata={
            "items": len(text),
            "with_text": int(text["present"].sum()),
            "mean_words": float(text["text"].str.split().str.len().mean()),
        },
    )


@dg.asset(group_name=GROUP, kinds={"numpy"}, code_version="2")
def raw_item_images(config: MediaConfig, source_dataset: dict, raw_items: pd.DataFrame) -> dg.Output[dict]:
    """Decoded RGB images ``[N, S, S, 3]`` uint8; undecodable files go to the quarantine table."""
    images, present, quarantine = media.decode_images(
        source_dataset["root"],
        raw_items["item_id"].tolist(),
        raw_items["image"].tolist(),
        config.image_size,
        max_pixels=config.max_image_pixels,
    )
    table = quarantine_frame(quarantine)
    return dg.Output(
        {"images": images, "present": present, "quarantine": table},
        metadata={
            "with_image": int(present.sum()),
            "shape": str(images.shape),
            **_none_metadata("image", raw_items, present, source_dataset),
            **quarantine_metadata(table),
        },
    )


@dg.asset(group_name=GROUP, kinds={"numpy"}, code_version="2")
def raw_item_audio(config: MediaConfig, source_dataset: dict, raw_items: pd.DataFrame) -> dg.Output[dict]:
    """Decoded mono audio clips ``[N, T]`` float32 at ``sample_rate``; bad files are quarantined."""
    waves, present, quarantine = media.decode_audio(
        source_dataset["root"],
        raw_items["item_id"].tolist(),
        raw_items["audio"].tolist(),
        config.sample_rate,
        config.clip_seconds,
    )
    table = quarantine_frame(quarantine)
    return dg.Output(
        {"waves": waves, "present": present, "sample_rate": config.sample_rate, "quarantine": table},
        metadata={
            "with_audio": int(present.sum()),
            "shape": str(waves.shape),
            **_none_metadata("audio", raw_items, present, source_dataset),
            **quarantine_metadata(table),
        },
    )


def _none_metadata(modality: str, raw_items: pd.DataFrame, present: np.ndarray, source_dataset: dict) -> dict:
    """Say why nothing was decoded when no item ends up with this modality (the modality is skipped)."""
    if present.any():
        return {}
    if ((source_dataset.get("info") or {}).get("precomputed") or {}).get(modality):
        why = f"the source provides precomputed {modality} features; there are no {modality} files to decode"
    elif raw_items[modality].notna().any():
        why = f"no {modality} file could be used (see the quarantine table)"
    else:
        why = (source_dataset.get("skipped_modalities") or {}).get(modality) or f"no item names a {modality} file"
    return {"skipped": why}


@dg.asset(group_name=GROUP, kinds={"pandas"}, code_version="2")
def interaction_split(
    raw_interactions: pd.DataFrame, raw_items: pd.DataFrame, source_dataset: dict
) -> dg.Output[InteractionSplit]:
    """Train/valid/test split over indexed users and items: per-user chronological (8:1:1), or the
    source's published split when it has one (``info["split_column"]``, e.g. MMRec's ``x_label``:
    0 train, 1 valid, 2 test).

    Interactions naming items missing from the catalogue are not used and are counted in metadata;
    repeated (user, item) pairs keep their first occurrence.
    """
    from mm_pipeline.evaluate.split import SPLITS, chronological_split

    split_column = (source_dataset.get("info") or {}).get("split_column")
    if split_column and split_column not in raw_interactions.columns:
        raise dg.Failure(
            f"the source declares its split in column {split_column!r}, but raw_interactions has "
            f"only {list(raw_interactions.columns)}; re-materialize raw_interactions"
        )

    item_index = pd.Series(np.arange(len(raw_items)), index=raw_items["item_id"].to_numpy())
    known = raw_interactions["item_id"].isin(item_index.index)
    inter = raw_interactions[known].sort_values(["user_id", "timestamp"], kind="stable")
    duplicated = inter.duplicated(["user_id", "item_id"], keep="first")
    inter = inter[~duplicated]
    user_ids = np.sort(inter["user_id"].unique())
    frame = pd.DataFrame(
        {
            "user_idx": np.searchsorted(user_ids, inter["user_id"].to_numpy()).astype(np.int64),
            "item_idx": item_index.loc[inter["item_id"].to_numpy()].to_numpy().astype(np.int64),
            "timestamp": inter["timestamp"].to_numpy(np.int64),
            "weight": inter["weight"].to_numpy(np.float32),
        }
    )
    if split_column:
        labels = inter[split_column].to_numpy(np.int64)
        bad = (labels < 0) | (labels >= len(SPLITS))
        if bad.any():
            raise dg.Failure(
                f"column {split_column!r} holds {int(bad.sum())} value(s) outside 0/1/2 "
                f"(train/valid/test), e.g. {int(labels[bad][0])}"
            )
        frame["split"] = np.asarray(SPLITS, dtype=object)[labels]
    else:
        frame["split"] = chronological_split(frame).to_numpy()
    counts = frame["split"].value_counts()
    train_items = np.zeros(len(raw_items), dtype=bool)
    train_items[frame.loc[frame["split"] == "train", "item_idx"].to_numpy()] = True
    split_method = (
        f"published split from column {split_column!r}" if split_column else "per-user chronological split (8:1:1)"
    )
    return dg.Output(
        InteractionSplit(frame, len(user_ids), len(raw_items), user_ids.astype(str), split_method),
        metadata={
            "users": len(user_ids),
            "items": len(raw_items),
            **{k: int(counts.get(k, 0)) for k in ("train", "valid", "test")},
            "unknown_item_interactions": int((~known).sum()),
            "duplicate_interactions": int(duplicated.sum()),
            "cold_items": int((~train_items).sum()),
            "split_method": split_method,
            "density": float(len(frame) / (len(user_ids) * max(len(raw_items), 1))),
        },
    )

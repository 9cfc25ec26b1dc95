"""Per-modality features: MiniLM text embeddings, a self-supervised image CNN, log-mel audio statistics."""

import dagster as dg
import numpy as np
import pandas as pd

from mm_pipeline.defs.config import config_from_dataclass, to_dataclass
from mm_pipeline.defs.metadata import history_metadata
from mm_pipeline.defs.mlflow_models import log_torch_module
from mm_pipeline.defs.resources import MlflowResource, PipelineResource
from mm_pipeline.features.audio import audio_features as pooled_audio_features
from mm_pipeline.features.image import ImageEncoderConfig, embed_images, train_image_encoder
from mm_pipeline.features.text import encode_texts_cached, text_precision

GROUP = "features"

ImageEncoderRunConfig = config_from_dataclass(ImageEncoderConfig, "ImageEncoderRunConfig")


class TextEncoderConfig(dg.Config):
    """``model_path``: a sentence-transformers folder to use instead of the bundled all-MiniLM-L6-v2.
    ``cache``: take the embedding of every text the same model encoded before from the feature cache
    (``<home>/cache/features/text/``), so after items are added or edited only their texts are encoded.
    ``precision``: ``auto`` (bfloat16 products where the CPU or GPU computes them natively, else float32),
    ``float32`` or ``bfloat16`` (:func:`mm_pipeline.features.text.text_precision`)."""

    model_path: str = ""
    batch_size: int = 128
    cache: bool = True
    precision: str = "auto"


def _coverage_metadata(features: np.ndarray, present: np.ndarray) -> dict:
    return {
        "dimension": int(features.shape[1]),
        "items": int(features.shape[0]),
        "coverage": float(present.mean()) if len(present) else 0.0,
    }


def _precomputed_path(source_dataset: dict, modality: str) -> str | None:
    return ((source_dataset.get("info") or {}).get("precomputed") or {}).get(modality)


def precomputed_features(source_dataset: dict, raw_items: pd.DataFrame, modality: str) -> dg.Output[dict]:
    """Features the source ships (``info["precomputed"][modality]``, an ``.npy`` of ``[n, d]``), in catalogue order.

    ``info["feature_row_column"]`` names the ``raw_items`` column holding each item's row in the file
    (default: row ``i`` is the ``i``-th catalogue item). Rows that are all zero or not finite count as
    the item lacking the modality (zeroed, masked downstream) and are counted in metadata.
    """
    info = source_dataset.get("info") or {}
    path = info["precomputed"][modality]
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise dg.Failure(
            f"precomputed {modality} features {path} cannot be read ({exc}); re-materialize "
            "source_dataset to re-check the dataset"
        ) from exc
    row_column = info.get("feature_row_column")
    rows = (
        raw_items[row_column].to_numpy(np.int64)
        if row_column and row_column in raw_items.columns
        else np.arange(len(raw_items))
    )
    if array.ndim != 2 or (len(rows) and (rows.min() < 0 or rows.max() >= array.shape[0])):
        raise dg.Failure(
            f"{path}: shape {array.shape} does not cover the catalogue's feature rows "
            f"(0..{int(rows.max()) if len(rows) else -1}); the file changed after source_dataset was "
            "materialized, re-materialize it"
        )
    features = np.asarray(array[rows], dtype=np.float32)
    finite = np.isfinite(features).all(axis=1)
    features[~finite] = 0.0
    present = finite & (np.abs(features).sum(axis=1) > 0)
    return dg.Output(
        {"features": features, "present": present, "precomputed": str(path)},
        metadata={
            **_coverage_metadata(features, present),
            "source": f"precomputed: {path}",
            "extracted": False,
            "non_finite_rows": int((~finite).sum()),
            "zero_rows": int((finite & ~present).sum()),
            "augmented_views": "none (precomputed features are used as they are)",
        },
    )


@dg.asset(group_name=GROUP, kinds={"pytorch"}, code_version="3")  # 3: bfloat16 where native (precision)
def text_features(
    config: TextEncoderConfig,
    raw_item_text: pd.DataFrame,
    augmented_text: pd.DataFrame,
    source_dataset: dict,
    raw_items: pd.DataFrame,
    pipeline: PipelineResource,
) -> dg.Output[dict]:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised) of the clean and augmented texts.

    Texts the same model encoded before come from the feature cache (config ``cache``): after items are
    added or edited, only their texts are encoded (metadata: ``encoded``, ``from_cache``). When the source
    provides precomputed text features (MMRec ``text_feat.npy``), those are used instead.
    """
    if _precomputed_path(source_dataset, "text"):
        return precomputed_features(source_dataset, raw_items, "text")
    present = raw_item_text["present"].to_numpy(bool)
    texts = raw_item_text["text"].tolist()
    both, hits = encode_texts_cached(
        texts + augmented_text["text"].tolist(),
        feature_cache_root(pipeline) if config.cache else None,
        batch_size=config.batch_size,
        model_path=config.model_path or None,
        precision=config.precision,
    )
    clean, augmented = both[: len(texts)], both[len(texts) :]
    return dg.Output(
        {"features": clean, "augmented": augmented[:, None, :], "present": present},
        metadata={
            **_coverage_metadata(clean, present),
            "encoded": len(both) - hits,
            "from_cache": hits,
            "precision": text_precision(config.precision),
        },
    )


def feature_cache_root(pipeline: PipelineResource):
    """``<home>/cache/features``: the per-item feature cache (:mod:`mm_pipeline.features.cache`)."""
    return pipeline.paths().home / "cache" / "features"


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="2")
def image_features(
    context: dg.AssetExecutionContext,
    config: ImageEncoderRunConfig,  # type: ignore[valid-type]
    raw_item_images: dict,
    augmented_images: dict,
    pipeline: PipelineResource,
    mlflow_tracking: MlflowResource,
    source_dataset: dict,
    raw_items: pd.DataFrame,
) -> dg.Output[dict]:
    """A small CNN trained self-supervised (SimCLR) on the augmented views, or loaded from ``checkpoint``.

    When the source provides precomputed image features (MMRec ``image_feat.npy``), those are used and
    no encoder is trained. With fewer than two usable images the modality is skipped (metadata says so).
    """
    import mlflow

    from mm_pipeline.registry.tracking import log_history, safe_params

    if _precomputed_path(source_dataset, "image"):
        return precomputed_features(source_dataset, raw_items, "image")
    encoder_config = to_dataclass(ImageEncoderConfig, config, seed=pipeline.seed)
    present = np.asarray(raw_item_images["present"], dtype=bool)
    views = augmented_images["views"]
    if present.sum() < 2:  # the dataset has no usable images: the modality is skipped downstream
        empty = np.zeros((len(present), encoder_config.embedding_dim), dtype=np.float32)
        reason = (
            "no item has an image"
            if not present.any()
            else "only one item has a usable image; an encoder cannot be trained on it"
        )
        return dg.Output(
            {"features": empty, "augmented": empty[:, None], "present": np.zeros_like(present)},
            metadata={**_coverage_metadata(empty, present), "skipped": reason},
        )
    with mlflow_tracking.start_run(context) as run:
        mlflow.log_params(safe_params({**encoder_config.__dict__, "items": int(present.sum())}))
        encoder, history = train_image_encoder(views[present], encoder_config)
        if len(history):
            log_history(history)
        images = raw_item_images["images"]
        features = embed_images(encoder, images)
        augmented = np.stack([embed_images(encoder, views[:, v]) for v in range(views.shape[1])], 1)
        example = images[:2].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        model_uri = log_torch_module(encoder, "image_encoder", example)
    return dg.Output(
        {"features": features, "augmented": augmented, "present": present, "history": history},
        metadata={
            **_coverage_metadata(features, present),
            "mlflow_run_id": run.info.run_id,
            "mlflow_model": model_uri,
            "trained": not bool(encoder_config.checkpoint),
            **history_metadata(history, ["loss"], "image encoder (SimCLR) loss"),
        },
    )


class AudioFeatureConfig(dg.Config):
    n_mels: int = 40
    n_fft: int = 256
    hop_length: int = 64


@dg.asset(group_name=GROUP, kinds={"numpy"}, code_version="2")
def audio_features(
    config: AudioFeatureConfig,
    raw_item_audio: dict,
    augmented_audio: dict,
    source_dataset: dict,
    raw_items: pd.DataFrame,
) -> dg.Output[dict]:
    """Log-mel statistics per clip: band means, standard deviations and mean absolute time deltas.

    Precomputed audio features from the source (``audio_feat.npy`` in an MMRec folder) are used as
    they are. With no usable clip at all the modality is skipped (zeros, masked; metadata says so).
    """
    if _precomputed_path(source_dataset, "audio"):
        return precomputed_features(source_dataset, raw_items, "audio")
    rate = int(raw_item_audio["sample_rate"])
    kwargs = dict(n_mels=config.n_mels, n_fft=config.n_fft, hop_length=config.hop_length)
    present = np.asarray(raw_item_audio["present"], dtype=bool)
    n_dims = 3 * config.n_mels
    if not present.any():  # nothing to extract: skip the STFTs, the aligner skips the modality
        empty = np.zeros((len(present), n_dims), dtype=np.float32)
        return dg.Output(
            {"features": empty, "augmented": empty[:, None], "present": present},
            metadata={**_coverage_metadata(empty, present), "skipped": "no item has usable audio"},
        )
    features = pooled_audio_features(raw_item_audio["waves"], rate, **kwargs)
    views = augmented_audio["views"]
    augmented = np.stack([pooled_audio_features(views[:, v], rate, **kwargs) for v in range(views.shape[1])], 1)
    return dg.Output(
        {"features": features, "augmented": augmented, "present": present},
        metadata=_coverage_metadata(features, present),
    )

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
from mm_pipeline.features.text import encode_texts

GROUP = "features"

ImageEncoderRunConfig = config_from_dataclass(ImageEncoderConfig, "ImageEncoderRunConfig")


class TextEncoderConfig(dg.Config):
    """``model_path``: a sentence-transformers folder to use instead of the bundled all-MiniLM-L6-v2."""

    model_path: str = ""
    batch_size: int = 128


def _coverage_metadata(features: np.ndarray, present: np.ndarray) -> dict:
    return {"dimension": int(features.shape[1]), "items": int(features.shape[0]),
            "coverage": float(present.mean()) if len(present) else 0.0}


@dg.asset(group_name=GROUP, kinds={"pytorch"}, code_version="1")
def text_features(config: TextEncoderConfig, raw_item_text: pd.DataFrame, augmented_text: pd.DataFrame
                  ) -> dg.Output[dict]:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised) of the clean and augmented texts."""
    present = raw_item_text["present"].to_numpy(bool)
    texts = raw_item_text["text"].tolist()
    both = encode_texts(texts + augmented_text["text"].tolist(), batch_size=config.batch_size,
                        model_path=config.model_path or None)
    clean, augmented = both[: len(texts)], both[len(texts):]
    return dg.Output({"features": clean, "augmented": augmented[:, None, :], "present": present},
                     metadata=_coverage_metadata(clean, present))


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, code_version="1")
def image_features(context: dg.AssetExecutionContext, config: ImageEncoderRunConfig,  # type: ignore[valid-type]
                   raw_item_images: dict, augmented_images: dict, pipeline: PipelineResource,
                   mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """A small CNN trained self-supervised (SimCLR) on the augmented views, or loaded from ``checkpoint``."""
    import mlflow

    from mm_pipeline.registry.tracking import log_history, safe_params

    encoder_config = to_dataclass(ImageEncoderConfig, config, seed=pipeline.seed)
    present = np.asarray(raw_item_images["present"], dtype=bool)
    views = augmented_images["views"]
    if present.sum() < 2:  # the dataset has no usable images: the modality is skipped downstream
        empty = np.zeros((len(present), encoder_config.embedding_dim), dtype=np.float32)
        return dg.Output({"features": empty, "augmented": empty[:, None], "present": present},
                         metadata={**_coverage_metadata(empty, present), "skipped": "no usable images"})
    with mlflow_tracking.start_run(context) as run:
        mlflow.log_params(safe_params({**encoder_config.__dict__, "items": int(present.sum())}))
        encoder, history = train_image_encoder(views[present], encoder_config)
        if len(history):
            log_history(history)
        images = raw_item_images["images"]
        features = embed_images(encoder, images)
        augmented = np.stack([embed_images(encoder, views[:, v]) for v in range(views.shape[1])], 1)
        example = (images[:2].transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        model_uri = log_torch_module(encoder, "image_encoder", example)
    return dg.Output({"features": features, "augmented": augmented, "present": present,
                      "history": history}, metadata={
        **_coverage_metadata(features, present), "mlflow_run_id": run.info.run_id, "mlflow_model": model_uri,
        "trained": not bool(encoder_config.checkpoint),
        **history_metadata(history, ["loss"], "image encoder (SimCLR) loss")})


class AudioFeatureConfig(dg.Config):
    n_mels: int = 40
    n_fft: int = 256
    hop_length: int = 64


@dg.asset(group_name=GROUP, kinds={"numpy"}, code_version="1")
def audio_features(config: AudioFeatureConfig, raw_item_audio: dict, augmented_audio: dict) -> dg.Output[dict]:
    """Log-mel statistics per clip: band means, standard deviations and mean absolute time deltas."""
    rate = int(raw_item_audio["sample_rate"])
    kwargs = dict(n_mels=config.n_mels, n_fft=config.n_fft, hop_length=config.hop_length)
    present = np.asarray(raw_item_audio["present"], dtype=bool)
    features = pooled_audio_features(raw_item_audio["waves"], rate, **kwargs)
    views = augmented_audio["views"]
    augmented = np.stack([pooled_audio_features(views[:, v], rate, **kwargs) for v in range(views.shape[1])], 1)
    return dg.Output({"features": features, "augmented": augmented, "present": present},
                     metadata=_coverage_metadata(features, present))

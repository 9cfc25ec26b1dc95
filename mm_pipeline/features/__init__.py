"""Features: per-modality item representations as float32 arrays.

* text: L2-normalised sentence embeddings from a local sentence-transformers model (MiniLM by default);
* image: a small CNN trained self-supervised (SimCLR / NT-Xent) on augmented views;
* audio: log-mel spectrograms and pooled per-band statistics.

The text model is imported lazily, so importing this package does not load sentence-transformers.
"""

from mm_pipeline.features.audio import audio_features, hz_to_mel, log_mel_spectrogram, mel_filterbank, mel_to_hz
from mm_pipeline.features.image import (
    ImageEncoder,
    ImageEncoderConfig,
    embed_images,
    load_image_encoder,
    save_image_encoder,
    train_image_encoder,
)
from mm_pipeline.features.text import default_model_path, encode_texts, text_embedding_dim

__all__ = [
    "ImageEncoder",
    "ImageEncoderConfig",
    "audio_features",
    "default_model_path",
    "embed_images",
    "encode_texts",
    "hz_to_mel",
    "load_image_encoder",
    "log_mel_spectrogram",
    "mel_filterbank",
    "mel_to_hz",
    "save_image_encoder",
    "text_embedding_dim",
    "train_image_encoder",
]

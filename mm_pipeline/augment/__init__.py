"""Augmentation: random, seeded views of images, texts and waveforms.

Every function takes arrays (or strings) and a ``seed`` and returns new arrays; the same input and
seed always give the same output. Image views feed the self-supervised image encoder in
:mod:`mm_pipeline.features.image`; text and audio views serve contrastive alignment and robustness checks.
"""

from mm_pipeline.augment.audio import augment_audio
from mm_pipeline.augment.image import augment_images, build_image_augmentation
from mm_pipeline.augment.text import augment_texts

__all__ = ["augment_audio", "augment_images", "augment_texts", "build_image_augmentation"]

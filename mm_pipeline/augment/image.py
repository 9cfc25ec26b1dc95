"""SimCLR-style image augmentation with albumentations, seeded for reproducibility."""

from __future__ import annotations

import math

import albumentations as A
import numpy as np


def _check_strength(strength: float) -> float:
    strength = float(strength)
    if not math.isfinite(strength) or strength < 0:
        raise ValueError(f"strength must be a finite number >= 0, got {strength}")
    return strength


def _size_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, (tuple, list)):
        if len(image_size) != 2:
            raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
        h, w = (int(v) for v in image_size)
    else:
        h = w = int(image_size)
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return h, w


def build_image_augmentation(
    image_size: int | tuple[int, int], strength: float = 1.0, seed: int | None = None
) -> A.Compose:
    r"""The SimCLR view-generation pipeline (Chen et al., 2020), adapted to small RGB images.

    With strength :math:`s \ge 0` every probability is :math:`\min(1, s\,p_0)` and every magnitude
    grows with :math:`s`:

    * random resized crop to ``image_size`` with area fraction in :math:`[\max(0.08, 1 - 0.8 s), 1]`
      and aspect ratio in :math:`[(3/4)^s, (4/3)^s]`, always applied;
    * horizontal flip with :math:`p = 0.5` (not scaled: a flip is not "stronger");
    * colour jitter (brightness, contrast, saturation :math:`0.4 s`, hue :math:`0.1 s`), :math:`p_0 = 0.8`;
    * grayscale, :math:`p_0 = 0.2`;
    * gaussian blur with a kernel of about a tenth of the image side, :math:`p_0 = 0.3`;
    * additive gaussian noise, standard deviation up to :math:`0.1 s` of the pixel range, :math:`p_0 = 0.3`.

    ``s = 0`` is the identity (full-image crop, no other transform fires). ``image_size`` is an int
    (square output) or ``(height, width)``. ``seed`` seeds the pipeline's own random state
    (albumentations ``Compose(seed=)``).
    """
    s = _check_strength(strength)
    h, w = _size_hw(image_size)

    def p(p0: float) -> float:
        return float(min(1.0, p0 * s))

    # Blur kernels must be odd; about a tenth of the side keeps 32x32 images recognisable.
    k_max = max(3, int(round(min(h, w) / 10)) | 1)
    transforms = [
        A.RandomResizedCrop(
            size=(h, w), scale=(max(0.08, 1.0 - 0.8 * min(s, 1.0)), 1.0), ratio=((3 / 4) ** s, (4 / 3) ** s), p=1.0
        ),
        A.HorizontalFlip(p=0.5 if s > 0 else 0.0),
        A.ColorJitter(
            brightness=min(0.9, 0.4 * s),
            contrast=min(0.9, 0.4 * s),
            saturation=min(0.9, 0.4 * s),
            hue=min(0.5, 0.1 * s),
            p=p(0.8),
        ),
        A.ToGray(num_output_channels=3, p=p(0.2)),
        A.GaussianBlur(blur_limit=(3, k_max), sigma_limit=(0.1, 2.0), p=p(0.3)),
        # std_range is a fraction of the maximum pixel value (255 for uint8).
        A.GaussNoise(std_range=(0.0, min(0.5, 0.1 * s)), p=p(0.3)),
    ]
    return A.Compose(transforms, seed=seed)


def augment_images(images: np.ndarray, n_views: int = 2, seed: int = 0, strength: float = 1.0) -> np.ndarray:
    """``n_views`` independent augmented views of each image: uint8 ``[N, H, W, 3]`` -> ``[N, n_views, H, W, 3]``.

    The pipeline is :func:`build_image_augmentation` at the input size. It is rebuilt with ``seed`` on
    every call, so the same images and seed give identical views; views are drawn image by image,
    view by view, in order.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must have shape [N, H, W, 3], got {images.shape}")
    n_views = int(n_views)
    if n_views < 1:
        raise ValueError(f"n_views must be >= 1, got {n_views}")
    n, h, w, _ = images.shape
    out = np.empty((n, n_views, h, w, 3), dtype=np.uint8)
    if n == 0:
        _check_strength(strength)
        return out
    if h < 1 or w < 1:
        raise ValueError(f"images must have non-empty height and width, got {images.shape}")
    pipeline = build_image_augmentation((h, w), strength=strength, seed=int(seed))
    # albumentations works image by image; this loop is the per-image call the library requires.
    for i in range(n):
        image = np.ascontiguousarray(images[i])
        for v in range(n_views):
            out[i, v] = pipeline(image=image)["image"]
    return out

"""Decoding item images and audio into fixed-size arrays, quarantining what cannot be used."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from mm_pipeline.datasets.schema import QuarantineRecord

MAX_IMAGE_PIXELS = 50_000_000  # refuse decompression bombs before decoding


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _check_path(root: Path, item_id: str, modality: str, raw: str) -> tuple[Path | None, QuarantineRecord | None]:
    path = Path(raw)
    if not _inside(root, path):
        return None, QuarantineRecord(item_id, modality, raw, "path leaves the dataset folder (or is a link out "
                                      "of it); keep media files inside the folder")
    if not path.is_file():
        return None, QuarantineRecord(item_id, modality, raw, "file not found")
    return path, None


def decode_images(root: str | Path, item_ids: Sequence[str], paths: Sequence[str | None], size: int
                  ) -> tuple[np.ndarray, np.ndarray, list[QuarantineRecord]]:
    """Return ``(images uint8 [N, size, size, 3], present bool [N], quarantine)``.

    Grayscale, RGBA, palette, CMYK and 16-bit images are converted to 8-bit RGB.
    """
    from PIL import Image, ImageOps

    root = Path(root)
    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    present = np.zeros(len(paths), dtype=bool)
    quarantine: list[QuarantineRecord] = []
    for i, (item_id, raw) in enumerate(zip(item_ids, paths)):
        if raw is None:
            continue
        path, problem = _check_path(root, item_id, "image", raw)
        if problem:
            quarantine.append(problem)
            continue
        try:
            with Image.open(path) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise ValueError(f"{img.width}x{img.height} exceeds {MAX_IMAGE_PIXELS} pixels")
                img.draft("RGB", (size * 2, size * 2))  # JPEG: decode at reduced scale
                img = ImageOps.exif_transpose(img)
                if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.asarray(img, dtype=np.float64)
                    img = Image.fromarray((arr / max(arr.max(), 1) * 255).astype(np.uint8))
                img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "LA", "PA") else img.convert("RGB")
                out[i] = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
                present[i] = True
        except Exception as exc:  # PIL raises many types for corrupt files
            quarantine.append(QuarantineRecord(item_id, "image", raw, f"cannot decode image: {exc}"))
    return out, present, quarantine


def decode_audio(root: str | Path, item_ids: Sequence[str], paths: Sequence[str | None], sample_rate: int,
                 clip_seconds: float) -> tuple[np.ndarray, np.ndarray, list[QuarantineRecord]]:
    """Return ``(waves float32 [N, T], present bool [N], quarantine)``: mono, resampled, cropped/padded."""
    from math import gcd

    from scipy.io import wavfile
    from scipy.signal import resample_poly

    root = Path(root)
    n_samples = int(round(sample_rate * clip_seconds))
    out = np.zeros((len(paths), n_samples), dtype=np.float32)
    present = np.zeros(len(paths), dtype=bool)
    quarantine: list[QuarantineRecord] = []
    for i, (item_id, raw) in enumerate(zip(item_ids, paths)):
        if raw is None:
            continue
        path, problem = _check_path(root, item_id, "audio", raw)
        if problem:
            quarantine.append(problem)
            continue
        try:
            rate, data = wavfile.read(path)
            if data.size == 0:
                raise ValueError("the clip holds no samples")
            data = data.astype(np.float32) / (np.iinfo(data.dtype).max if data.dtype.kind in "iu" else 1.0)
            if data.ndim == 2:
                data = data.mean(axis=1)
            if rate != sample_rate:
                g = gcd(int(rate), sample_rate)
                data = resample_poly(data, sample_rate // g, int(rate) // g).astype(np.float32)
            clip = data[:n_samples]
            out[i, :clip.size] = clip
            present[i] = True
        except Exception as exc:
            quarantine.append(QuarantineRecord(item_id, "audio", raw, f"cannot decode WAV audio: {exc}"))
    return out, present, quarantine

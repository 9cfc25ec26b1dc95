"""Decoding item images and audio into fixed-size arrays, quarantining what cannot be used.

Every file goes through the same gate first (:func:`check_path`): it must be a regular file inside the
dataset folder once ``..`` and symbolic links are resolved. Files that fail it are never opened.

A quarantine reason starts with a short kind before the first colon ("truncated image", "unsupported
audio format", ...), which the asset checks count by; the rest says what was found and what to do.

Audio is WAV (read with scipy) or FLAC, Ogg (Vorbis, Opus) and MP3 (decoded by libsndfile through the
``soundfile`` package), told apart by the file's first bytes, not its name.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mm_pipeline.datasets.schema import QuarantineRecord

#: Images with more pixels are quarantined before any pixel is decoded (a 10,000 x 10,000 RGB image
#: is 300 MB decoded). Raise it with the ``max_image_pixels`` run config of ``raw_item_images``.
MAX_IMAGE_PIXELS = 50_000_000
#: Modes with an alpha channel: composited onto white, so transparent areas do not turn black.
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WAV_MAGIC = (b"RIFF", b"RIFX", b"RF64")
#: Compressed formats decoded with libsndfile (the ``soundfile`` package), by their leading bytes. MP3 is
#: also recognised by its frame sync (11 set bits) when the file has no ID3 tag.
_SNDFILE_SIGNATURES = ((b"fLaC", "FLAC"), (b"OggS", "Ogg"), (b"ID3", "MP3"))
#: Leading bytes of formats that are not decoded: the quarantine reason names what the file is.
_UNSUPPORTED_SIGNATURES = ((b"FORM", "an AIFF file"),)
#: Frames decoded past the clip length, so resampling sees the same context at the clip's end.
_DECODE_MARGIN_FRAMES = 256
_MP3_FRAME = 1152  # samples in one MPEG-1 Layer III frame


def check_path(root: str | Path, item_id: str, modality: str, raw: str) -> tuple[Path | None, QuarantineRecord | None]:
    """``(path, None)`` when ``raw`` is a regular file inside ``root``; else ``(None, record)``.

    Decides from the path alone (``..`` segments, absolute paths, where links point): nothing outside
    the folder is opened. A relative ``raw`` is relative to ``root``.
    """
    folder = Path(os.path.normpath(os.path.abspath(root)))
    real_folder = folder.resolve()
    lexical = Path(os.path.normpath(folder / raw))
    if not (lexical.is_relative_to(folder) or lexical.is_relative_to(real_folder)):
        return None, QuarantineRecord(
            item_id,
            modality,
            raw,
            (
                f"outside the dataset folder: the path leads to {lexical}, outside {folder}; media paths must be "
                "relative to the dataset folder and stay inside it (the file was not read)"
            ),
        )
    resolved = lexical.resolve()
    if not resolved.is_relative_to(real_folder):
        return None, QuarantineRecord(
            item_id,
            modality,
            raw,
            (
                f"outside the dataset folder: a symbolic link to {resolved}; copy the file into the dataset "
                "folder instead of linking to it (the file was not read)"
            ),
        )
    if not resolved.exists():
        return None, QuarantineRecord(
            item_id, modality, raw, ("file not found: fix the path in the items table or add the file")
        )
    if not resolved.is_file():
        return None, QuarantineRecord(item_id, modality, raw, "not a file: the path names a folder or a device")
    return resolved, None


class MediaProblem(ValueError):
    """A file that cannot be used; the message is its quarantine reason."""


def _unreadable(exc: OSError) -> str:
    return f"unreadable file: {exc.strerror}; check the file's permissions"


def _image_problem(exc: Exception) -> str:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.errno is not None:
        return _unreadable(exc)
    if isinstance(exc, UnidentifiedImageError):
        return "not an image: no image format recognised in the file; save it as PNG or JPEG"
    if "truncat" in message.lower():
        return f"truncated image: the file ends early ({message}); download or export it again"
    return f"corrupt image: {message}; export it again as PNG or JPEG"


def _too_large(width: int, height: int, max_pixels: int) -> str:
    return (
        f"image too large: {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
        "(a guard against decompression bombs); shrink the image, or raise max_image_pixels in the "
        "raw_item_images run config"
    )


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: 16/32-bit and float grayscale rescaled, alpha over white, CMYK converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        finite = values[np.isfinite(values)]
        top = float(finite.max()) if finite.size else 0.0
        if img.mode.startswith("I;16") or (img.mode == "I" and finite.size and finite.min() >= 0 and top <= 65535):
            scale = 65535.0  # 16-bit samples: keep the absolute brightness
        else:
            scale = max(top, 1e-12)  # 32-bit or float data has no fixed range
        values = np.nan_to_num(values, nan=0.0, posinf=scale, neginf=0.0)
        img = Image.fromarray(np.clip(np.round(values / scale * 255.0), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(path: Path, size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """One image as uint8 ``[size, size, 3]``. Raises :class:`MediaProblem` with a quarantine reason."""
    try:
        with warnings.catch_warnings():
            # The pixel limit below is ours (and configurable); Pillow's own warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:  # reads the header only
                if img.width * img.height > max_pixels:
                    raise MediaProblem(_too_large(img.width, img.height, max_pixels))
                img.verify()  # PNG: every chunk's checksum and the end marker, without decoding pixels
            with Image.open(path) as img:
                img.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a reduced scale
                img.load()
                img = _to_rgb(ImageOps.exif_transpose(img))
                return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    except MediaProblem:
        raise
    except Image.DecompressionBombError as exc:  # over Pillow's hard limit (2x its warning limit)
        raise MediaProblem(f"image too large: {exc}; shrink the image") from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... for damaged files
        raise MediaProblem(_image_problem(exc)) from exc


def decode_images(
    root: str | Path,
    item_ids: Sequence[str],
    paths: Sequence[str | None],
    size: int,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> tuple[np.ndarray, np.ndarray, list[QuarantineRecord]]:
    """Return ``(images uint8 [N, size, size, 3], present bool [N], quarantine)``.

    Grayscale, palette, RGBA (over white), CMYK and 16-bit images are converted to 8-bit RGB and used.
    """
    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    present = np.zeros(len(paths), dtype=bool)
    quarantine: list[QuarantineRecord] = []
    for i, (item_id, raw) in enumerate(zip(item_ids, paths)):
        if raw is None:
            continue
        path, problem = check_path(root, item_id, "image", raw)
        if problem:
            quarantine.append(problem)
            continue
        try:
            out[i] = decode_image(path, size, max_pixels)
            present[i] = True
        except MediaProblem as exc:
            quarantine.append(QuarantineRecord(item_id, "image", raw, str(exc)))
    return out, present, quarantine


def _sniff_audio(path: Path) -> str:
    """The audio format by the file's first bytes: ``"WAV"``, ``"FLAC"``, ``"Ogg"`` or ``"MP3"``.

    Anything else raises :class:`MediaProblem` naming what the file looks like.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError as exc:
        raise MediaProblem(_unreadable(exc)) from exc
    if not head:
        raise MediaProblem("empty file: 0 bytes; export the clip again")
    if head[:4] in _WAV_MAGIC and head[8:12] == b"WAVE":
        return "WAV"
    fmt = next((name for magic, name in _SNDFILE_SIGNATURES if head.startswith(magic)), None)
    if fmt is None and len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:
        fmt = "MP3"  # an MPEG audio frame header (layer bits set: not AAC's ADTS) without an ID3 tag before it
    if fmt is not None:
        return fmt
    what = next((name for magic, name in _UNSUPPORTED_SIGNATURES if head.startswith(magic)), None)
    if what is None and head[4:8] == b"ftyp":
        what = "an MP4/M4A file"
    if what is None:
        what = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else f"starts with {head[:4]!r}"
    raise MediaProblem(
        f"unsupported audio format: the content is {what}; convert it to WAV, FLAC, Ogg or MP3 "
        "(e.g. ffmpeg -i clip.m4a clip.flac)"
    )


def read_wav(path: Path) -> tuple[int, np.ndarray]:
    """``(rate, mono float32 in [-1, 1])`` of a RIFF/WAVE file. Raises :class:`MediaProblem` with a
    quarantine reason."""
    from scipy.io import wavfile

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", wavfile.WavFileWarning)
            rate, data = wavfile.read(path)
    except Exception as exc:  # scipy raises ValueError/struct.error/EOFError for damaged headers
        text = (str(exc) or type(exc).__name__).rstrip(".")
        kind = "truncated audio" if isinstance(exc, EOFError) or "buffer" in text or "EOF" in text else "corrupt audio"
        raise MediaProblem(f"{kind}: {text}; export the clip again as PCM WAV") from exc
    early = [str(w.message) for w in caught if "prematurely" in str(w.message)]
    if early:
        # scipy returns the samples that are there; a clip cut short is not the clip the catalogue names.
        raise MediaProblem(f"truncated audio: {early[0].rstrip('.')}; export the clip again")
    if data.size == 0:
        raise MediaProblem("no samples: the WAV file holds no audio samples")
    if data.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        samples = (data.astype(np.float32) - 128.0) / 128.0
    elif data.dtype.kind == "i":
        samples = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    else:
        samples = data.astype(np.float32)
        if not np.isfinite(samples).all():
            raise MediaProblem("invalid samples: the WAV file holds NaN or infinite values; export it again")
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    return int(rate), samples


def _libsndfile_message(exc: Exception, path: Path) -> str:
    """libsndfile's error without the path it repeats; a file that exists is never 'missing'."""
    text = str(exc).replace(f"Error opening {str(path)!r}: ", "").removeprefix("Error : ").strip().rstrip(".")
    if "does not exist" in text:  # what libsndfile says when the MP3 decoder finds no frame at all
        text = "no audio frame found"
    return text or type(exc).__name__


def read_compressed(path: Path, fmt: str, max_seconds: float | None = None) -> tuple[int, np.ndarray]:
    """``(rate, mono float32 in [-1, 1])`` of a FLAC, Ogg (Vorbis/Opus) or MP3 file, via libsndfile.

    Decodes at most ``max_seconds`` (plus a little margin) when given: a long track costs only the clip.
    Raises :class:`MediaProblem` with a quarantine reason.
    """
    import soundfile

    try:
        with soundfile.SoundFile(path) as stream:
            rate, frames = int(stream.samplerate), int(stream.frames)
            wanted = (
                frames if max_seconds is None else min(frames, int(np.ceil(max_seconds * rate)) + _DECODE_MARGIN_FRAMES)
            )
            data = stream.read(frames=wanted, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as exc:
        raise MediaProblem(
            f"corrupt audio: not a readable {fmt} stream ({_libsndfile_message(exc, path)}); export the clip again"
        ) from exc
    if frames == 0 or data.size == 0:
        raise MediaProblem(f"no samples: the {fmt} file holds no audio samples")
    if wanted - len(data) > max(_MP3_FRAME, wanted // 20):
        # The header promises more frames than the stream holds: the file was cut short. (Some slack: the
        # length of an MP3 without a Xing header is an estimate.)
        raise MediaProblem(
            f"truncated audio: the {fmt} stream ends after {len(data)} of {frames} frames; export the clip again"
        )
    if not np.isfinite(data).all():
        raise MediaProblem(f"invalid samples: the {fmt} file decodes to NaN or infinite values; export it again")
    return rate, data.mean(axis=1, dtype=np.float32)


def read_audio(path: Path, max_seconds: float | None = None) -> tuple[int, np.ndarray]:
    """``(rate, mono float32 in [-1, 1])`` of a WAV, FLAC, Ogg or MP3 file, told apart by its content
    (not its name). Raises :class:`MediaProblem` with a quarantine reason."""
    fmt = _sniff_audio(path)
    if fmt == "WAV":
        return read_wav(path)
    return read_compressed(path, fmt, max_seconds)


def decode_audio(
    root: str | Path, item_ids: Sequence[str], paths: Sequence[str | None], sample_rate: int, clip_seconds: float
) -> tuple[np.ndarray, np.ndarray, list[QuarantineRecord]]:
    """Return ``(waves float32 [N, T], present bool [N], quarantine)``: mono, resampled, cropped/padded."""
    from math import gcd

    from scipy.signal import resample_poly

    n_samples = int(round(sample_rate * clip_seconds))
    out = np.zeros((len(paths), n_samples), dtype=np.float32)
    present = np.zeros(len(paths), dtype=bool)
    quarantine: list[QuarantineRecord] = []
    for i, (item_id, raw) in enumerate(zip(item_ids, paths)):
        if raw is None:
            continue
        path, problem = check_path(root, item_id, "audio", raw)
        if problem:
            quarantine.append(problem)
            continue
        try:
            rate, data = read_audio(path, max_seconds=clip_seconds)
        except MediaProblem as exc:
            quarantine.append(QuarantineRecord(item_id, "audio", raw, str(exc)))
            continue
        if rate != sample_rate:
            g = gcd(rate, sample_rate)
            data = resample_poly(data, sample_rate // g, rate // g).astype(np.float32)
        clip = data[:n_samples]
        out[i, : clip.size] = clip
        present[i] = True
    return out, present, quarantine

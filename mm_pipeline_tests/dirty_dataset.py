"""A "dirty" folder-format dataset: every per-file and per-row bad-input kind of the catalogue in docs/datasets.md.

Built at test time (no dataset files in the repository). The clean part is big enough for the whole
asset graph to train and evaluate (users with a dozen interactions, new-arrival items for cold start);
the dirty part is one item or row per bad-input kind, each recorded with what must happen to it:

* media files that must be quarantined: ``(item_id, modality, file as in raw_items, reason kind)``;
* media files in unusual formats that must be converted and used (grayscale, RGBA, palette, CMYK,
  16-bit; 8-bit, stereo and 16 kHz WAV; FLAC, Ogg/Vorbis and MP3, one of them named ``.wav``; a link
  that stays inside the folder);
* table rows that ``bad_rows=quarantine`` must set aside: ``(file name, line, column, reason start)``,
  a line with bytes that are not UTF-8 among them.

Global problems (a missing file, a missing column, non-UTF-8 text, empty interactions) stop the load
with an error, so they have their own unit tests instead of living here.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image
from scipy.io import wavfile

SAMPLE_RATE = 8000
N_CATEGORIES = 6
# One strong colour per category, so a converted image is easy to check.
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 220), (230, 200, 30), (160, 50, 200), (30, 190, 200)]


@dataclass
class DirtyDataset:
    root: Path  # the dataset folder
    outside: Path  # files outside it that paths and links point to
    item_ids: list[str]  # every item the catalogue must keep (bad rows excluded)
    image_items: list[str]  # items whose image must decode (converted formats included)
    audio_items: list[str]  # items whose audio must decode
    converted_images: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # item -> expected RGB
    media_quarantine: list[tuple[str, str, str, str]] = field(default_factory=list)
    row_quarantine: list[tuple[str, int, str, str]] = field(default_factory=list)
    n_interactions: int = 0  # interactions that must load

    @property
    def spec(self) -> str:
        return f"folder:{self.root}?bad_rows=quarantine"


def folder_digest(path: Path) -> str:
    """SHA-256 over every name, file content and link target under ``path`` (links are not followed)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            h.update(full.relative_to(path).as_posix().encode() + b"\0")
            if full.is_symlink():
                h.update(b"link:" + os.readlink(full).encode())
            elif full.is_file():
                h.update(full.read_bytes())
    return h.hexdigest()


def _tone(category: int, seconds: float = 1.0, rate: int = SAMPLE_RATE) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.4 * np.sin(2 * np.pi * (220 + 110 * category) * t)).astype(np.float32)


def _pcm16(wave: np.ndarray) -> np.ndarray:
    return np.round(wave * 32767).astype(np.int16)


def _png_bytes(colour, size: int = 16) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _noisy_jpeg(path: Path, seed: int) -> bytes:
    """A JPEG with enough entropy-coded data that cutting or overwriting part of it is noticed."""
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path.read_bytes()


def _noisy_png(path: Path, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path.read_bytes()


def build_dirty_dataset(
    base: Path, n_users: int = 40, n_items: int = 48, per_user: int = 10, seed: int = 0
) -> DirtyDataset:
    """Write the dataset under ``base/shop`` (and its outside targets under ``base/outside``)."""
    rng = np.random.default_rng(seed)
    root, outside = base / "shop", base / "outside"
    for folder in (root / "images", root / "audio", outside):
        folder.mkdir(parents=True)
    item_ids = [f"i{k:03d}" for k in range(n_items)]
    category = {item: k % N_CATEGORIES for k, item in enumerate(item_ids)}
    image_col: dict[str, str] = {}
    audio_col: dict[str, str] = {}
    data = DirtyDataset(root=root, outside=outside, item_ids=list(item_ids), image_items=[], audio_items=[])

    # Clean media for every item first; the dirty kinds below replace some of them.
    for item in item_ids:
        image_col[item] = f"images/{item}.png"
        (root / image_col[item]).write_bytes(_png_bytes(COLOURS[category[item]]))
        audio_col[item] = f"audio/{item}.wav"
        wavfile.write(root / audio_col[item], SAMPLE_RATE, _pcm16(_tone(category[item])))

    # Targets outside the dataset folder (readable, valid: only the path rule keeps them out).
    (outside / "secret.png").write_bytes(_png_bytes((1, 2, 3)))
    wavfile.write(outside / "secret.wav", SAMPLE_RATE, _pcm16(_tone(0)))

    dirty = iter(item_ids[1:-4])  # keep the first item and the new arrivals (last four) clean

    def quarantine_image(rel: str, kind: str) -> None:
        item = next(dirty)
        image_col[item] = rel
        data.media_quarantine.append((item, "image", str(root / rel), kind))

    def quarantine_audio(rel: str, kind: str) -> None:
        item = next(dirty)
        audio_col[item] = rel
        data.media_quarantine.append((item, "audio", str(root / rel), kind))

    images = root / "images"
    jpeg = _noisy_jpeg(images / "noise.jpg", seed)
    png = _noisy_png(images / "noise.png", seed)
    (images / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    quarantine_image("images/truncated.jpg", "truncated image")
    (images / "truncated.png").write_bytes(png[: len(png) // 2])
    quarantine_image("images/truncated.png", "truncated image")
    (images / "corrupt.jpg").write_bytes(jpeg[:200] + bytes(500) + jpeg[700:])  # zeroed coding tables
    quarantine_image("images/corrupt.jpg", "corrupt image")
    (images / "corrupt.png").write_bytes(png[:100] + b"\x00" * 50 + png[150:])  # checksum mismatch
    quarantine_image("images/corrupt.png", "corrupt image")
    (images / "notes.png").write_text("this is a text file with an image name\n")
    quarantine_image("images/notes.png", "not an image")
    # 10,000 x 10,000 one-colour bitmap: ~30 KB on disk, 300 MB if decoded as RGB.
    Image.new("1", (10_000, 10_000), 1).save(images / "huge.png")
    quarantine_image("images/huge.png", "image too large")
    quarantine_image("images/missing.png", "file not found")
    (images / "a_folder.png").mkdir()
    quarantine_image("images/a_folder.png", "not a file")
    quarantine_image("../../etc/passwd", "outside the dataset folder")
    quarantine_image("/etc/passwd", "outside the dataset folder")
    os.symlink(outside / "secret.png", images / "link_out.png")
    quarantine_image("images/link_out.png", "outside the dataset folder")

    audio = root / "audio"
    (audio / "empty.wav").write_bytes(b"")
    quarantine_audio("audio/empty.wav", "empty file")
    whole = (root / audio_col[item_ids[0]]).read_bytes()
    (audio / "truncated.wav").write_bytes(whole[: len(whole) // 2])
    quarantine_audio("audio/truncated.wav", "truncated audio")
    (audio / "readme.wav").write_text("not audio, just text\n")
    quarantine_audio("audio/readme.wav", "unsupported audio format")
    mp3 = b"ID3\x04\x00\x00\x00\x00\x00\x0f" + bytes(64) + b"\xff\xfb\x90\x64" + bytes(400)
    (audio / "song.wav").write_bytes(mp3)  # an MP3 tag and frame header, no audio data
    quarantine_audio("audio/song.wav", "corrupt audio")
    (audio / "clip.wav").write_bytes(b"OggS\x00\x02" + bytes(20) + b"\x01vorbis" + bytes(200))
    quarantine_audio("audio/clip.wav", "corrupt audio")
    wavfile.write(audio / "nan.wav", SAMPLE_RATE, np.full(800, np.nan, np.float32))
    quarantine_audio("audio/nan.wav", "invalid samples")
    os.symlink(outside / "secret.wav", audio / "link_out.wav")
    quarantine_audio("audio/link_out.wav", "outside the dataset folder")
    quarantine_audio("../outside/secret.wav", "outside the dataset folder")
    quarantine_audio("audio/missing.wav", "file not found")

    # Unusual but valid formats: converted and used.
    def convert(item: str, name: str, image: Image.Image, expected, **save) -> None:
        image.save(images / name, **save)
        image_col[item] = f"images/{name}"
        data.converted_images[item] = expected

    colour = {item: COLOURS[category[item]] for item in item_ids}
    spare = iter(dirty)
    item = next(spare)
    grey = int(round(0.299 * colour[item][0] + 0.587 * colour[item][1] + 0.114 * colour[item][2]))
    convert(item, "grey.png", Image.new("L", (20, 12), grey), (grey,) * 3)
    item = next(spare)
    convert(item, "rgba.png", Image.new("RGBA", (16, 16), (*colour[item], 255)), colour[item])
    item = next(spare)
    convert(item, "clear.png", Image.new("RGBA", (16, 16), (0, 0, 0, 0)), (255, 255, 255))  # transparent: white
    item = next(spare)
    convert(item, "palette.png", Image.new("RGB", (16, 16), colour[item]).convert("P"), colour[item])
    item = next(spare)
    cmyk = Image.new("RGB", (16, 16), colour[item]).convert("CMYK")
    convert(item, "cmyk.jpg", cmyk, colour[item], quality=95)
    item = next(spare)
    level = 40_000
    convert(item, "grey16.png", Image.fromarray(np.full((16, 16), level, np.uint16)), (round(level / 65535 * 255),) * 3)
    item = next(spare)
    os.symlink("../" + image_col[item_ids[0]], images / "alias.png")  # a link that stays inside: used
    image_col[item] = "images/alias.png"
    data.converted_images[item] = colour[item_ids[0]]
    item = next(spare)
    wavfile.write(audio / "u8.wav", SAMPLE_RATE, np.round(_tone(1) * 127 + 128).astype(np.uint8))
    audio_col[item] = "audio/u8.wav"
    item = next(spare)
    stereo = np.stack([_tone(2, rate=16_000), _tone(2, rate=16_000)], axis=1)
    wavfile.write(audio / "stereo16k.wav", 16_000, _pcm16(stereo))
    audio_col[item] = "audio/stereo16k.wav"
    # Compressed audio, decoded by content (the MP3 is named .wav).
    for name, fmt, subtype in (
        ("flac.flac", "FLAC", "PCM_16"),
        ("vorbis.ogg", "OGG", "VORBIS"),
        ("mpeg.wav", "MP3", "MPEG_LAYER_III"),
    ):
        item = next(spare)
        soundfile.write(audio / name, _tone(category[item]), SAMPLE_RATE, format=fmt, subtype=subtype)
        audio_col[item] = f"audio/{name}"

    bad_images = {q[0] for q in data.media_quarantine if q[1] == "image"}
    bad_audio = {q[0] for q in data.media_quarantine if q[1] == "audio"}
    data.image_items = [i for i in item_ids if i not in bad_images]
    data.audio_items = [i for i in item_ids if i not in bad_audio]

    # items.csv: the catalogue, plus a row without an id and a repeated id.
    names = ["red", "green", "blue", "gold", "violet", "teal"]
    item_rows = [
        [
            item,
            f"Item {item} in category {category[item]}",
            f"A {names[category[item]]} thing",
            image_col[item],
            audio_col[item],
        ]
        for item in item_ids
    ]
    item_rows.insert(5, ["", "A row without an id", "", "", ""])
    data.row_quarantine.append(("items.csv", 5 + 2, "item_id", "empty item_id"))
    item_rows.append([item_ids[3], "The same id again", "", "", ""])
    data.row_quarantine.append(("items.csv", len(item_rows) + 1, "item_id", f"item_id repeats line {3 + 2}"))
    item_rows.append(["i900", "Caf\u00e9 in Latin-1", "", "", ""])  # its title is re-encoded below
    data.row_quarantine.append(("items.csv", len(item_rows) + 1, "title", "not valid utf-8 text"))
    _write_csv(root / "items.csv", ["item_id", "title", "description", "image", "audio"], item_rows)
    _reencode(root / "items.csv", "Caf\u00e9 in Latin-1", "latin-1")

    # interactions.csv: per_user distinct warm items per user, new arrivals last, then the bad rows.
    warm, new = item_ids[:-4], item_ids[-4:]
    start = 1_600_000_000
    rows = []
    for user in range(n_users):
        picks = rng.choice(len(warm), per_user, replace=False)
        times = np.sort(start + rng.integers(0, 20_000_000, per_user))
        rows += [[f"u{user:03d}", warm[p], str(t), str(int(rng.integers(1, 6)))] for p, t in zip(picks, times)]
        if user < 16:
            rows.append([f"u{user:03d}", new[user % 4], str(start + 30_000_000 + user), "5"])
    data.n_interactions = len(rows)
    bad_rows = [
        (["u001", warm[0], "yesterday", "4"], "timestamp", "timestamp is neither integer seconds"),
        (["u002", warm[1], "", "4"], "timestamp", "empty timestamp"),
        (["", warm[2], str(start), "4"], "user_id", "empty user_id"),
        (["u003", "", str(start), "4"], "item_id", "empty item_id"),
        (["u004", "ghost", str(start), "4"], "item_id", "item_id is not in the catalogue"),
        (["u005", warm[3], str(start), "five"], "rating", "rating is not a number"),
        (["u\u00e9006", warm[4], str(start), "4"], "user_id", "not valid utf-8 text"),
    ]
    for offset, (row, _, _) in enumerate(bad_rows):
        position = 7 + 11 * offset  # spread through the file
        rows.insert(position, row)
    for row, column, reason in bad_rows:
        data.row_quarantine.append(("interactions.csv", rows.index(row) + 2, column, reason))
    _write_csv(root / "interactions.csv", ["user_id", "item_id", "timestamp", "rating"], rows)
    _reencode(root / "interactions.csv", "u\u00e9006", "latin-1")
    return data


def _reencode(path: Path, text: str, encoding: str) -> None:
    """Write ``text`` in ``path`` (UTF-8) in another encoding: a line that is not UTF-8."""
    path.write_bytes(path.read_bytes().replace(text.encode("utf-8"), text.encode(encoding)))


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)

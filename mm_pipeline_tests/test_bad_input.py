"""The bad-input catalogue (docs/datasets.md, Bad input): one test per row, then the dirty dataset
through the whole graph.

Every bad input gets a clear error naming the file, row or column and what to do, or, where the rest
of the item is usable, a quarantine record; nothing is dropped silently and the user's files are
never modified.
"""

from __future__ import annotations

import builtins
import json
import os
import string
import tempfile
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.io import wavfile

from mm_pipeline.datasets import media
from mm_pipeline.datasets.folder import load_folder
from mm_pipeline.datasets.schema import DataError
from mm_pipeline.datasets.sources import load_source, resolve_source
from mm_pipeline.defs import checks
from mm_pipeline.defs.build import all_assets
from mm_pipeline.settings import project_paths

from dirty_dataset import build_dirty_dataset, folder_digest
from fast_config import FASTER_OPS, fast_run_config, materialize_graph

ITEMS = "item_id,title\na,Red hat\nb,Blue shoe\n"
INTERACTIONS = "user_id,item_id,timestamp,rating\nu1,a,1600000000,4\nu2,b,1600000100,5\n"


def _folder(root: Path, items: str | bytes = ITEMS, interactions: str | bytes = INTERACTIONS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in (("items.csv", items), ("interactions.csv", interactions)):
        if content is None:
            continue
        path = root / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return root


def _quarantined(root: Path) -> pd.DataFrame:
    return load_folder(root, bad_rows="quarantine").row_quarantine


def _decode_one_image(root: Path, name: str, size: int = 16, **kw):
    images, present, quarantine = media.decode_images(root, ["x"], [str(root / name)], size, **kw)
    return images[0], bool(present[0]), (quarantine[0].reason if quarantine else None)


def _decode_one_audio(root: Path, name: str):
    waves, present, quarantine = media.decode_audio(root, ["x"], [str(root / name)], 8000, 0.5)
    return waves[0], bool(present[0]), (quarantine[0].reason if quarantine else None)


# ----------------------------------------------------------------------------------------------
# Tables: errors (default) and row quarantine (bad_rows=quarantine)
# ----------------------------------------------------------------------------------------------
def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DataError, match=r"dataset folder .*nope does not exist; check MM_PIPELINE_DATASET"):
        load_folder(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match=r"does not exist \(it is a file\)"):
        load_folder(tmp_path / "file")


def test_missing_table(tmp_path):
    _folder(tmp_path, interactions=None)
    with pytest.raises(DataError, match=r"no interactions.csv or interactions.parquet found; see the folder format"):
        load_folder(tmp_path)
    (tmp_path / "items.csv").unlink()
    with pytest.raises(DataError, match=r"no items.csv or items.parquet found"):
        load_folder(tmp_path)


def test_empty_table_file(tmp_path):
    _folder(tmp_path, interactions="")
    with pytest.raises(
        DataError,
        match=r"interactions.csv: the file is empty; it needs a header line naming the "
        r"columns \(user_id, item_id, timestamp, ...\)",
    ):
        load_folder(tmp_path)


def test_missing_required_column(tmp_path):
    _folder(tmp_path, interactions="user_id,item_id\nu,a\n")
    with pytest.raises(
        DataError,
        match=r"interactions.csv: missing required column\(s\) \['timestamp'\]; "
        r"found \['user_id', 'item_id'\]",
    ):
        load_folder(tmp_path)
    _folder(tmp_path, items="id,title\na,x\n", interactions=INTERACTIONS)
    with pytest.raises(DataError, match=r"items.csv: missing required column\(s\) \['item_id'\]"):
        load_folder(tmp_path)
    _folder(tmp_path, items=ITEMS)
    (tmp_path / "dataset.json").write_text(json.dumps({"text_columns": ["title", "blurb"]}))
    with pytest.raises(DataError, match=r"items.csv: missing required column\(s\) \['blurb'\]"):
        load_folder(tmp_path)


def test_malformed_csv_line(tmp_path):
    _folder(tmp_path, interactions=INTERACTIONS + "u3,a,1600000200,4,extra,fields\n")
    with pytest.raises(
        DataError,
        match=r"interactions.csv: malformed CSV \(.*line 4.*\); every line needs the same "
        r"number of fields",
    ):
        load_folder(tmp_path)


def test_non_utf8_table(tmp_path):
    latin1 = "item_id,title\na,Red hat\nb,Caf\u00e9 chair\n".encode("latin-1")
    _folder(tmp_path, items=latin1)
    with pytest.raises(
        DataError,
        match=r"items.csv: not valid utf-8 text at line 3 \(byte 29\).*re-save the file "
        r"as utf-8.*\?encoding=latin-1",
    ):
        load_folder(tmp_path)
    data = load_source(resolve_source(f"folder:{tmp_path}?encoding=latin-1", tmp_path / "data"))
    assert data.items.set_index("item_id").loc["b", "text"] == "Caf\u00e9 chair"
    assert data.info["encoding"] == "latin-1"


def test_undecodable_table_row(tmp_path):
    items = "item_id,title\na,Red hat\nb,Caf\u00e9 chair\nc,Green cap\n".encode("utf-8").replace(
        "Caf\u00e9".encode("utf-8"), "Caf\u00e9".encode("latin-1")
    )
    interactions = (
        b"user_id,item_id,timestamp,rating\r\nu1,a,1600000000,4\r\nu\xff2,c,1600000100,5\r\nu3,c,1600000200,3\r\n"
    )
    _folder(tmp_path, items=items, interactions=interactions)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    # The default mode stops at the first bad byte, naming the file, the line and the byte.
    with pytest.raises(
        DataError,
        match=r"items.csv: not valid utf-8 text at line 3 \(byte 29\).*\?encoding=latin-1"
        r".*or add \?bad_rows=quarantine",
    ):
        load_folder(tmp_path)
    # Quarantine: only those lines are set aside, named like any other bad row; the rest loads.
    data = load_folder(tmp_path, bad_rows="quarantine")
    assert data.items["item_id"].tolist() == ["a", "c"]
    assert data.interactions[["user_id", "item_id", "timestamp"]].values.tolist() == [
        ["u1", "a", 1600000000],
        ["u3", "c", 1600000200],
    ]
    table = data.row_quarantine
    assert table[["file", "row", "column", "value"]].values.tolist() == [
        [str(tmp_path / "interactions.csv"), 3, "user_id", "u\\xff2"],
        [str(tmp_path / "items.csv"), 3, "title", "Caf\\xe9 chair"],
    ]
    assert table["reason"].tolist() == [
        "not valid utf-8 text; byte 2 of the line cannot be decoded: re-save the file as utf-8, or name the "
        "table's encoding in the dataset spec (e.g. ?encoding=latin-1)",
        "not valid utf-8 text; byte 6 of the line cannot be decoded: re-save the file as utf-8, or name the "
        "table's encoding in the dataset spec (e.g. ?encoding=latin-1)",
    ]
    assert data.info["row_quarantine"]["items"] == {"rows": 1, "problems": 1, "by_reason": {"not valid utf-8 text": 1}}
    # Lines after a set-aside one keep their numbers in other records.
    _folder(tmp_path, items=items + b"d,Blue hat\n", interactions=interactions + b"u4,ghost,1600000300,4\r\n")
    table = load_folder(tmp_path, bad_rows="quarantine").row_quarantine
    assert table[["row", "column"]].values.tolist() == [[3, "user_id"], [5, "item_id"], [3, "title"]]
    # A header that is not text names no columns: an error in both modes.
    _folder(tmp_path, items=b"item_id,t\xeftle\na,x\n", interactions=INTERACTIONS)
    with pytest.raises(DataError, match=r"items.csv: not valid utf-8 text at line 1 \(byte 9\)"):
        load_folder(tmp_path, bad_rows="quarantine")
    # Every row undecodable: nothing is left, said as such.
    _folder(tmp_path, items=b"item_id,title\na,\xff\nb,\xfe\n")
    with pytest.raises(DataError, match=r"items.csv: every row was quarantined, no items are left"):
        load_folder(tmp_path, bad_rows="quarantine")
    _folder(tmp_path, items=items, interactions=interactions)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # the files are only read


def test_unparsable_timestamp(tmp_path):
    _folder(tmp_path, interactions=INTERACTIONS + "u3,a,yesterday,4\nu4,b,,4\nu5,a,2024-01-02T00:00:00Z,3\n")
    with pytest.raises(
        DataError,
        match=r"interactions.csv: row 4 has timestamp 'yesterday', which is neither "
        r"integer seconds nor an ISO-8601 date; fix or remove that row; or add "
        r"\?bad_rows=quarantine",
    ):
        load_folder(tmp_path)
    data = load_folder(tmp_path, bad_rows="quarantine")
    assert data.interactions["user_id"].tolist() == ["u1", "u2", "u5"]
    assert data.interactions["timestamp"].tolist() == [1600000000, 1600000100, 1704153600]
    table = data.row_quarantine
    assert table[["row", "column", "value"]].values.tolist() == [[4, "timestamp", "yesterday"], [5, "timestamp", ""]]
    assert table["reason"].tolist() == [
        "timestamp is neither integer seconds nor an ISO-8601 date",
        "empty timestamp; every interaction needs one",
    ]
    assert (table["file"] == str(tmp_path / "interactions.csv")).all()


def test_missing_user_or_item_id(tmp_path):
    _folder(tmp_path, interactions=INTERACTIONS + ",a,1600000200,4\nu3,,1600000300,4\nu4,b\n")
    with pytest.raises(DataError, match=r"interactions.csv: line 4 has no value in column 'user_id'"):
        load_folder(tmp_path)
    table = _quarantined(tmp_path)
    # A short line leaves its last fields empty: each empty field is named.
    assert table[["row", "column"]].values.tolist() == [[4, "user_id"], [5, "item_id"], [6, "timestamp"], [6, "rating"]]
    assert load_folder(tmp_path, bad_rows="quarantine").interactions["user_id"].tolist() == ["u1", "u2"]


def test_non_numeric_weight(tmp_path):
    _folder(tmp_path, interactions=INTERACTIONS + "u3,a,1600000200,five\nu4,b,1600000300,inf\n")
    with pytest.raises(
        DataError,
        match=r"row 4 has rating 'five', which is not a number; fix that row or drop the "
        r"rating column",
    ):
        load_folder(tmp_path)
    table = _quarantined(tmp_path)
    assert table[["row", "column", "value", "reason"]].values.tolist() == [
        [4, "rating", "five", "rating is not a number"],
        [5, "rating", "inf", "rating is not a number"],
    ]


def test_unknown_item(tmp_path):
    _folder(tmp_path, interactions=INTERACTIONS + "u3,ghost,1600000200,4\n")
    inter = load_folder(tmp_path).interactions  # default: loaded, flagged by a check, not used by the split
    assert len(inter) == 3
    items = load_folder(tmp_path).items
    result = checks.raw_interactions_known_items(inter, items)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert result.metadata["unknown_item_interactions"].value == 1
    data = load_folder(tmp_path, bad_rows="quarantine")
    assert len(data.interactions) == 2
    assert data.row_quarantine[["row", "column", "value"]].values.tolist() == [[4, "item_id", "ghost"]]
    assert data.row_quarantine["reason"].iloc[0].startswith("item_id is not in the catalogue")


def test_empty_or_repeated_item_id(tmp_path):
    _folder(tmp_path, items=ITEMS + ",No id\na,Red hat again\n")
    with pytest.raises(DataError, match=r"items.csv: line 4 has no value in column 'item_id'"):
        load_folder(tmp_path)
    _folder(tmp_path, items=ITEMS + "a,Red hat again\n")
    with pytest.raises(DataError, match=r"items.csv: item_id 'a' on line 4 repeats line 2; item ids must be unique"):
        load_folder(tmp_path)
    _folder(tmp_path, items=ITEMS + ",No id\na,Red hat again\n")
    data = load_folder(tmp_path, bad_rows="quarantine")
    assert data.items["item_id"].tolist() == ["a", "b"]
    assert data.items.set_index("item_id").loc["a", "text"] == "Red hat"  # the first row is kept
    assert data.row_quarantine[["row", "column", "reason"]].values.tolist() == [
        [4, "item_id", "empty item_id; every catalogue row needs one"],
        [5, "item_id", "item_id repeats line 2; the first is kept"],
    ]
    assert data.info["row_quarantine"]["items"] == {
        "rows": 2,
        "problems": 2,
        "by_reason": {"empty item_id": 1, "item_id repeats an earlier line": 1},
    }


def test_empty_interactions(tmp_path):
    _folder(tmp_path, interactions="user_id,item_id,timestamp\n")
    with pytest.raises(DataError, match=r"interactions.csv: holds no interactions"):
        load_folder(tmp_path)
    _folder(tmp_path, interactions="user_id,item_id,timestamp\nu1,a,soon\nu2,ghost,1\n")
    with pytest.raises(DataError, match=r"interactions.csv: every row was quarantined, no interactions are left"):
        load_folder(tmp_path, bad_rows="quarantine")
    # Sources that filter (e.g. a MovieLens rating threshold) can end empty: the blocking check stops the run.
    empty = pd.DataFrame(
        {
            "user_id": pd.Series(dtype=str),
            "item_id": pd.Series(dtype=str),
            "timestamp": pd.Series(dtype=np.int64),
            "weight": pd.Series(dtype=np.float32),
        }
    )
    result = checks.raw_interactions_not_empty(empty, {"info": {}})
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    assert next(iter(checks.raw_interactions_not_empty.check_specs)).blocking


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------
def test_missing_media_file(tmp_path):
    (tmp_path / "adir.png").mkdir()
    _, present, reason = _decode_one_image(tmp_path, "nope.png")
    assert not present and reason == "file not found: fix the path in the items table or add the file"
    _, present, reason = _decode_one_image(tmp_path, "adir.png")
    assert not present and reason.startswith("not a file:")
    _, present, reason = _decode_one_audio(tmp_path, "nope.wav")
    assert not present and reason.startswith("file not found:")


def _noise(size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_image(tmp_path, fmt):
    Image.fromarray(_noise()).save(tmp_path / "whole", format=fmt)
    data = (tmp_path / "whole").read_bytes()
    for name, cut in (("half", len(data) // 2), ("tail", len(data) - 12)):
        (tmp_path / name).write_bytes(data[:cut])
        image, present, reason = _decode_one_image(tmp_path, name)
        assert not present and reason.startswith("truncated image: the file ends early"), (name, reason)
        assert not image.any()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_corrupt_image(tmp_path, fmt):
    Image.fromarray(_noise()).save(tmp_path / "whole", format=fmt)
    data = (tmp_path / "whole").read_bytes()
    # JPEG: zeroed tables (damaged entropy-coded data alone can decode to garbled pixels, which no decoder
    # can tell from a real image); PNG: damaged pixel data, caught by the chunk checksum.
    start = 200 if fmt == "JPEG" else len(data) // 3
    (tmp_path / "bad").write_bytes(data[:start] + bytes(500) + data[start + 500 :])
    _, present, reason = _decode_one_image(tmp_path, "bad")
    assert not present and reason.startswith("corrupt image:") and "export it again" in reason
    (tmp_path / "text.png").write_text("hello")
    _, present, reason = _decode_one_image(tmp_path, "text.png")
    assert not present and reason.startswith("not an image:")


def test_grayscale_rgba_cmyk_16bit_images_are_converted(tmp_path):
    red = (200, 30, 40)
    cases = {
        "grey.png": (Image.new("L", (30, 20), 90), (90, 90, 90)),
        "rgba.png": (Image.new("RGBA", (16, 16), (*red, 255)), red),
        "clear.png": (Image.new("RGBA", (16, 16), (0, 0, 0, 0)), (255, 255, 255)),  # transparent: over white
        "la.png": (Image.new("LA", (16, 16), (10, 0)), (255, 255, 255)),
        "palette.png": (Image.new("P", (16, 16), 0), (0, 0, 0)),
        "cmyk.jpg": (Image.new("RGB", (16, 16), red).convert("CMYK"), red),
        "grey16.png": (Image.fromarray(np.full((16, 16), 65535 // 2, np.uint16)), (127, 127, 127)),
        "wide.jpg": (Image.new("RGB", (80, 8), red), red),
    }
    for name, (image, _) in cases.items():
        image.save(tmp_path / name, quality=95) if name.endswith(".jpg") else image.save(tmp_path / name)
    assert Image.open(tmp_path / "grey16.png").mode == "I;16" and Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    names = list(cases)
    images, present, quarantine = media.decode_images(tmp_path, names, [str(tmp_path / n) for n in names], 24)
    assert quarantine == [] and present.all()
    assert images.shape == (len(names), 24, 24, 3) and images.dtype == np.uint8
    for k, name in enumerate(names):
        np.testing.assert_allclose(images[k].reshape(-1, 3).mean(0), cases[name][1], atol=4, err_msg=name)


def test_huge_image(tmp_path, monkeypatch):
    Image.new("1", (10_000, 10_000), 1).save(tmp_path / "huge.png")
    assert (tmp_path / "huge.png").stat().st_size < 200_000  # one colour: tiny on disk, 300 MB as RGB
    loads = []
    original_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(self.size) or original_load(self))
    start = time.perf_counter()
    image, present, reason = _decode_one_image(tmp_path, "huge.png")
    assert time.perf_counter() - start < 2.0
    assert not present and not image.any() and (10_000, 10_000) not in loads  # refused from the header
    assert reason == (
        "image too large: 10000x10000 = 100,000,000 pixels, over the limit of 50,000,000 (a guard "
        "against decompression bombs); shrink the image, or raise max_image_pixels in the "
        "raw_item_images run config"
    )
    # The limit is the max_image_pixels config; Pillow's own hard limit is reported the same way.
    Image.new("RGB", (300, 300), (5, 6, 7)).save(tmp_path / "mid.png")
    assert _decode_one_image(tmp_path, "mid.png", max_pixels=50_000)[2].startswith("image too large: 300x300")
    assert _decode_one_image(tmp_path, "mid.png")[1]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert _decode_one_image(tmp_path, "mid.png")[2].startswith("image too large: Image size (90000 pixels)")


# ----------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------
def _tone(rate: int = 8000, seconds: float = 0.5) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 440 * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def test_zero_length_audio(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    _, present, reason = _decode_one_audio(tmp_path, "empty.wav")
    assert not present and reason == "empty file: 0 bytes; export the clip again"
    wavfile.write(tmp_path / "silent.wav", 8000, np.zeros(0, np.int16))  # a valid header, no samples
    _, present, reason = _decode_one_audio(tmp_path, "silent.wav")
    assert not present and reason.startswith("no samples:")


def test_truncated_audio(tmp_path):
    wavfile.write(tmp_path / "whole.wav", 8000, np.round(_tone() * 32767).astype(np.int16))
    data = (tmp_path / "whole.wav").read_bytes()
    (tmp_path / "half.wav").write_bytes(data[: len(data) // 2])
    (tmp_path / "header.wav").write_bytes(data[:30])
    for name in ("half.wav", "header.wav"):
        wave, present, reason = _decode_one_audio(tmp_path, name)
        assert not present and reason.startswith("truncated audio:") and not wave.any(), (name, reason)
    assert "Reached EOF prematurely" in _decode_one_audio(tmp_path, "half.wav")[2]


def test_non_wav_audio(tmp_path):
    # Formats that are not decoded: named, with how to convert them.
    files = {
        "text.wav": (b"just some text\n", "text"),
        "track.wav": (bytes(4) + b"ftypM4A " + bytes(100), "an MP4/M4A file"),
        "sound.aiff": (b"FORM\x00\x00\x10\x00AIFF" + bytes(100), "an AIFF file"),
        "aac.wav": (b"\xff\xf1\x50\x80" + bytes(100), "starts with b'\\xff\\xf1P\\x80'"),
    }
    for name, (content, what) in files.items():
        (tmp_path / name).write_bytes(content)
        _, present, reason = _decode_one_audio(tmp_path, name)
        assert not present and reason == (
            f"unsupported audio format: the content is {what}; convert it to WAV, "
            "FLAC, Ogg or MP3 (e.g. ffmpeg -i clip.m4a clip.flac)"
        ), name
    # MP3, Ogg and FLAC signatures with no stream behind them: decoded, found corrupt.
    files = {
        "song.wav": (b"ID3\x04\x00" + bytes(100), "MP3"),
        "frame.wav": (b"\xff\xfb\x90\x64" + bytes(100), "MP3"),
        "clip.wav": (b"OggS\x00\x02" + bytes(100), "Ogg"),
        "lossless.wav": (b"fLaC" + bytes(100), "FLAC"),
    }
    for name, (content, fmt) in files.items():
        (tmp_path / name).write_bytes(content)
        wave, present, reason = _decode_one_audio(tmp_path, name)
        assert not present and not wave.any(), name
        assert reason.startswith(f"corrupt audio: not a readable {fmt} stream (") and reason.endswith(
            "); export the clip again"
        ), (name, reason)


# (format, subtype, largest sample error): FLAC is lossless at 16 bits; the lossy codecs are compared by shape.
COMPRESSED_AUDIO = {
    "flac": ("FLAC", "PCM_16", 1e-4),
    "ogg": ("OGG", "VORBIS", 0.1),
    "opus": ("OGG", "OPUS", 0.2),
    "mp3": ("MP3", "MPEG_LAYER_III", 0.15),
}


@pytest.mark.parametrize("ext", sorted(COMPRESSED_AUDIO))
def test_compressed_audio_is_decoded(tmp_path, ext):
    fmt, subtype, tolerance = COMPRESSED_AUDIO[ext]
    if fmt not in soundfile.available_formats():  # pragma: no cover - the pinned wheel has them all
        pytest.skip(f"this libsndfile has no {fmt} support")
    tone = _tone()
    soundfile.write(tmp_path / f"clip.{ext}", tone, 8000, format=fmt, subtype=subtype)
    (tmp_path / "named.wav").write_bytes((tmp_path / f"clip.{ext}").read_bytes())  # told apart by content
    for name in (f"clip.{ext}", "named.wav"):
        wave, present, reason = _decode_one_audio(tmp_path, name)
        assert present and reason is None, (name, reason)
        assert np.abs(wave - tone).max() < tolerance and np.corrcoef(wave, tone)[0, 1] > 0.99, name
    # Stereo at another rate: mixed down to mono and resampled, like WAV.
    soundfile.write(tmp_path / f"stereo.{ext}", np.stack([_tone(16000)] * 2, 1), 16000, format=fmt, subtype=subtype)
    wave, present, reason = _decode_one_audio(tmp_path, f"stereo.{ext}")
    assert present and np.corrcoef(wave[100:-100], tone[100:-100])[0, 1] > 0.99, reason
    # Only the clip is decoded from a long track: the same samples as decoding all of it.
    long = np.tile(tone, 40)
    soundfile.write(tmp_path / f"long.{ext}", long, 8000, format=fmt, subtype=subtype)
    rate, full = media.read_audio(tmp_path / f"long.{ext}")
    rate_clip, clip = media.read_audio(tmp_path / f"long.{ext}", max_seconds=0.5)
    assert rate == rate_clip == 8000 and len(full) == len(long) and 4000 <= len(clip) < len(full)
    np.testing.assert_allclose(clip, full[: len(clip)], atol=1e-6)


def test_damaged_compressed_audio(tmp_path):
    tone = _tone()
    for ext, (fmt, subtype, _) in COMPRESSED_AUDIO.items():
        soundfile.write(tmp_path / f"whole.{ext}", tone, 8000, format=fmt, subtype=subtype)
        data = (tmp_path / f"whole.{ext}").read_bytes()
        (tmp_path / f"half.{ext}").write_bytes(data[: len(data) // 2])
        (tmp_path / f"header.{ext}").write_bytes(data[:40])
        for name in (f"half.{ext}", f"header.{ext}"):
            wave, present, reason = _decode_one_audio(tmp_path, name)
            assert not present and not wave.any(), (name, reason)
            assert reason.startswith(("truncated audio: ", "corrupt audio: not a readable")), (name, reason)
    # MP3 states its length up front, so a cut file is told as such.
    assert _decode_one_audio(tmp_path, "half.mp3")[2].startswith("truncated audio: the MP3 stream ends after ")
    soundfile.write(tmp_path / "silent.ogg", np.zeros(0, np.float32), 8000, format="OGG", subtype="VORBIS")
    _, present, reason = _decode_one_audio(tmp_path, "silent.ogg")  # valid headers, no samples
    assert not present and reason == "no samples: the Ogg file holds no audio samples"


def test_unusual_wav_samples(tmp_path):
    wavfile.write(tmp_path / "nan.wav", 8000, np.full(100, np.nan, np.float32))
    _, present, reason = _decode_one_audio(tmp_path, "nan.wav")
    assert not present and reason.startswith("invalid samples: the WAV file holds NaN")
    # 8-bit (unsigned), stereo, float and other sample rates are converted to mono float at 8 kHz.
    tone = _tone()
    wavfile.write(tmp_path / "u8.wav", 8000, np.round(tone * 127 + 128).astype(np.uint8))
    wavfile.write(tmp_path / "stereo16k.wav", 16000, np.round(np.stack([_tone(16000)] * 2, 1) * 32767).astype(np.int16))
    wavfile.write(tmp_path / "float.wav", 8000, tone)
    for name in ("u8.wav", "stereo16k.wav", "float.wav"):
        wave, present, reason = _decode_one_audio(tmp_path, name)
        assert present and reason is None, name
        assert abs(float(wave.mean())) < 0.02 and 0.45 < float(np.abs(wave).max()) < 0.55, name


# ----------------------------------------------------------------------------------------------
# Paths out of the dataset folder: quarantined, never opened
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def opened(monkeypatch):
    """Every path opened through ``open`` or ``PIL.Image.open`` while the test runs (resolved)."""
    seen: list[Path] = []
    real_open, real_image_open = builtins.open, Image.open

    def spy_open(file, *args, **kwargs):
        if isinstance(file, (str, Path)):
            seen.append(Path(file).resolve())
        return real_open(file, *args, **kwargs)

    def spy_image_open(fp, *args, **kwargs):
        if isinstance(fp, (str, Path)):
            seen.append(Path(fp).resolve())
        return real_image_open(fp, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(Image, "open", spy_image_open)
    return seen


def _outside_targets(tmp_path: Path) -> tuple[Path, Path]:
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(outside / "secret.png")
    wavfile.write(outside / "secret.wav", 8000, np.ones(100, np.int16))
    root = tmp_path / "shop"
    (root / "media").mkdir(parents=True)
    return root, outside


def test_path_escaping_the_folder(tmp_path, opened):
    root, outside = _outside_targets(tmp_path)
    opened.clear()
    paths = [
        str(root / "../outside/secret.png"),
        str(root / "media/../../outside/secret.png"),
        str(outside / "secret.png"),
        str(root / "../../etc/passwd"),
        "/etc/passwd",
    ]
    images, present, quarantine = media.decode_images(root, list("abcde"), paths, 8)
    assert not present.any() and [q.item_id for q in quarantine] == list("abcde")
    for record in quarantine:
        assert record.reason.startswith("outside the dataset folder: the path leads to") and "not read" in record.reason
    waves, present, quarantine = media.decode_audio(root, ["a"], [str(root / "../outside/secret.wav")], 8000, 0.1)
    assert not present.any() and quarantine[0].reason.startswith("outside the dataset folder:")
    assert not any(p.is_relative_to(outside) or p == Path("/etc/passwd") for p in opened)


def test_symlink_out_of_the_folder(tmp_path, opened):
    root, outside = _outside_targets(tmp_path)
    (root / "media" / "img.png").symlink_to(outside / "secret.png")
    (root / "media" / "clip.wav").symlink_to(outside / "secret.wav")
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    Image.new("RGB", (8, 8), (9, 9, 9)).save(root / "media" / "real.png")
    (root / "media" / "alias.png").symlink_to("real.png")  # a link that stays inside is followed
    opened.clear()
    names = ["media/img.png", "linked_dir/secret.png", "media/alias.png"]
    images, present, quarantine = media.decode_images(root, names, [str(root / n) for n in names], 8)
    assert present.tolist() == [False, False, True]
    for record in quarantine:
        assert record.reason == (
            f"outside the dataset folder: a symbolic link to {outside / 'secret.png'}; copy the "
            "file into the dataset folder instead of linking to it (the file was not read)"
        )
    _, present, quarantine = media.decode_audio(root, ["c"], [str(root / "media/clip.wav")], 8000, 0.1)
    assert not present.any() and "symbolic link" in quarantine[0].reason
    assert not any(p.is_relative_to(outside) for p in opened)


def test_bad_spec_option(tmp_path):
    _folder(tmp_path / "shop")
    for spec, message in (
        (
            f"folder:{tmp_path / 'shop'}?bad_rows=skip",
            r"bad_rows='skip' must be one of error, "
            r"quarantine",
        ),
        (f"folder:{tmp_path / 'shop'}?encoding=klingon", r"encoding='klingon' is not a known"),
        (
            f"folder:{tmp_path / 'shop'}?min_rating=4",
            r"option\(s\) \['min_rating'\] are not "
            r"understood by 'folder:' \(options: bad_rows, "
            r"encoding\)",
        ),
    ):
        with pytest.raises(DataError, match=message):
            load_source(resolve_source(spec, tmp_path / "data"))


# ----------------------------------------------------------------------------------------------
# Leftovers of interrupted writes: cleaned on the next start
# ----------------------------------------------------------------------------------------------
def test_leftovers_of_interrupted_writes_are_cleaned(tmp_path):
    from mm_pipeline.cli import clean_written_leftovers
    from mm_pipeline.datasets.inbox import inbox_dir

    paths = project_paths(tmp_path / "home").ensure()
    hex_ = "0123456789abcdef" * 2
    # What a killed write leaves in each folder the pipeline writes: staging folders and files.
    leftovers = [
        paths.assets / "raw_items" / "versions" / f".run1.tmp-{hex_}",  # an asset version
        paths.assets / "inbox_interactions" / f".{'ab' * 32}.tmp-{hex_}",  # an inbox copy
        paths.reports / "latest" / f".metrics.json.tmp-{hex_}",  # a report file
        paths.home / "quarantine" / f".raw_items.tmp-{hex_}",  # a row-quarantine table
        paths.home / "quarantine" / f".raw_items.old-{hex_}",  # one being replaced
        paths.data / f".default.tmp-{hex_}",
    ]  # a generated dataset
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name.startswith(".metrics"):
            path.write_text("{")
        else:
            (path / "part").mkdir(parents=True)
    young = paths.data / f".tiny.tmp-{'f' * 32}"  # may belong to a live writer: kept
    young.mkdir()
    kept = [
        paths.data / "shop" / "items.csv",
        paths.reports / "latest" / "metrics.json",
        paths.data / "shop" / ".notes.tmp-draft",  # a user's file that only looks like one
        inbox_dir(paths.home) / f".drop.csv.tmp-{hex_}",
    ]  # the inbox is the user's: never cleaned
    for path in kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    old = time.time() - 7 * 3600
    for path in [*leftovers, kept[-1]]:
        os.utime(path, (old, old))
    clean_written_leftovers(paths)
    assert not any(p.exists() for p in leftovers)
    assert young.exists() and all(p.exists() for p in kept)


# ----------------------------------------------------------------------------------------------
# Property-based: the row quarantine keeps exactly the good rows and names exactly the bad lines
# ----------------------------------------------------------------------------------------------
BAD_KINDS = {  # kind -> (row given a good row, the column named, whether the default mode refuses it)
    "timestamp": (lambda u, i, t, r: [u, i, "not-a-date", r], "timestamp", True),
    "empty_timestamp": (lambda u, i, t, r: [u, i, "", r], "timestamp", True),
    "user": (lambda u, i, t, r: ["", i, t, r], "user_id", True),
    "item": (lambda u, i, t, r: [u, "", t, r], "item_id", True),
    "unknown": (lambda u, i, t, r: [u, "ghost-item", t, r], "item_id", False),
    "rating": (lambda u, i, t, r: [u, i, t, "lots"], "rating", True),
}
user_ids = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=6)
good_rows = st.tuples(
    user_ids, st.sampled_from(["a", "b", "c"]), st.integers(0, 2_000_000_000).map(str), st.integers(1, 5).map(str)
)
table_rows = st.lists(
    st.tuples(good_rows, st.one_of(st.none(), st.sampled_from(sorted(BAD_KINDS)))), min_size=1, max_size=30
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=table_rows)
def test_row_quarantine_keeps_good_rows_and_names_bad_lines(rows):
    lines, good, bad = [], [], {}
    for line, (row, kind) in enumerate(rows, start=2):
        if kind is None:
            lines.append(list(row))
            good.append(row)
        else:
            make, column, _ = BAD_KINDS[kind]
            lines.append(make(*row))
            bad[line] = column
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "items.csv").write_text("item_id,title\na,x\nb,y\nc,z\n")
        pd.DataFrame(lines, columns=["user_id", "item_id", "timestamp", "rating"]).to_csv(
            root / "interactions.csv", index=False
        )
        if not good:
            with pytest.raises(DataError, match="every row was quarantined"):
                load_folder(root, bad_rows="quarantine")
            return
        data = load_folder(root, bad_rows="quarantine")
        refused = [line for line, (row, kind) in enumerate(rows, start=2) if kind and BAD_KINDS[kind][2]]
        if refused:
            with pytest.raises(DataError, match=r"interactions.csv: (row|line) (\d+)") as info:
                load_folder(root)
            assert int(info.value.args[0].split("interactions.csv: ")[1].split()[1]) in refused
        else:
            assert len(load_folder(root).interactions) == len(rows)  # unknown items load in the default mode
    inter = data.interactions
    assert inter[["user_id", "item_id"]].values.tolist() == [[u, i] for u, i, _, _ in good]
    assert inter["timestamp"].tolist() == [int(t) for _, _, t, _ in good]
    assert inter["weight"].tolist() == [float(r) for _, _, _, r in good]
    table = data.row_quarantine
    assert dict(zip(table["row"], table["column"])) == bad and len(table) == len(bad)
    assert data.info["row_quarantine"]["interactions"]["rows"] == len(bad)


# ----------------------------------------------------------------------------------------------
# The dirty dataset through the whole graph
# ----------------------------------------------------------------------------------------------
def test_dirty_dataset_runs_to_an_evaluation_report(tmp_path):
    dirty = build_dirty_dataset(tmp_path / "user")
    before = folder_digest(tmp_path / "user")
    home = tmp_path / "home"
    result = materialize_graph(home, dirty.spec, fast_run_config(FASTER_OPS))
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {key.to_user_string() for a in all_assets() for key in a.keys}
    metrics = json.loads((home / "reports" / "latest" / "metrics.json").read_text())
    assert metrics["dataset"]["items"] == len(dirty.item_ids) and "mm_gcn" in metrics["models"]

    # Every bad media file is in a quarantine table, with the right item, modality, file and reason.
    images, audio = result.output_for_node("raw_item_images"), result.output_for_node("raw_item_audio")
    quarantine = pd.concat([images["quarantine"], audio["quarantine"]], ignore_index=True)
    got = {(r.item_id, r.modality, r.file): r.reason for r in quarantine.itertuples()}
    assert set(got) == {q[:3] for q in dirty.media_quarantine} and len(quarantine) == len(dirty.media_quarantine)
    for item, modality, file, kind in dirty.media_quarantine:
        assert got[(item, modality, file)].startswith(kind + ":"), (item, file, got[(item, modality, file)])

    # Every bad table row is in the row quarantine of raw_items / raw_interactions, nothing else is.
    events = {
        e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()
    }
    n_item_rows = sum(1 for q in dirty.row_quarantine if q[0] == "items.csv")
    assert events["raw_items"]["rows_quarantined"].value == n_item_rows
    assert events["raw_interactions"]["rows_quarantined"].value == len(dirty.row_quarantine) - n_item_rows
    for name, line, column, reason in dirty.row_quarantine:
        table = events["raw_items" if name == "items.csv" else "raw_interactions"]["row_quarantine"]
        shown = [
            r.data
            for r in table.records
            if (r.data["file"], str(r.data["row"]), r.data["column"]) == (str(dirty.root / name), str(line), column)
        ]
        assert any(reason in r["reason"] for r in shown), (name, line, shown)
    manifest = result.asset_value("source_dataset")
    assert sum(p["rows"] for p in manifest["info"]["row_quarantine"].values()) == len(dirty.row_quarantine)
    # The whole row-quarantine table is stored too, not only the first rows shown in metadata.
    stored = pd.concat(
        [pd.read_parquet(events[a]["row_quarantine_table"].value) for a in ("raw_items", "raw_interactions")]
    )
    assert {(Path(f).name, int(r)) for f, r in zip(stored["file"], stored["row"])} == {
        (name, line) for name, line, _, _ in dirty.row_quarantine
    }

    # No good item is lost: all in raw_items, in the aligned embeddings and in the split.
    items = result.asset_value("raw_items")
    assert items["item_id"].tolist() == sorted(dirty.item_ids)
    assert len(result.asset_value("raw_interactions")) == dirty.n_interactions
    aligned = result.output_for_node("aligned_item_embeddings")
    assert aligned["fused"].shape[0] == len(dirty.item_ids) and np.isfinite(aligned["fused"]).all()
    assert result.output_for_node("interaction_split").n_items == len(dirty.item_ids)
    ids = items["item_id"].to_numpy()
    assert ids[images["present"]].tolist() == sorted(dirty.image_items)
    assert ids[audio["present"]].tolist() == sorted(dirty.audio_items)
    position = {item: k for k, item in enumerate(ids)}
    for item, colour in dirty.converted_images.items():
        np.testing.assert_allclose(
            images["images"][position[item]].reshape(-1, 3).mean(0), colour, atol=6, err_msg=item
        )
    present = pd.DataFrame(aligned["present"], columns=aligned["modalities"], index=ids)
    assert present["image"].sum() == len(dirty.image_items) and present["audio"].sum() == len(dirty.audio_items)

    # The checks make it visible; the run still goes on.
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    for name, n in (
        ("raw_item_images_decoded", sum(q[1] == "image" for q in dirty.media_quarantine)),
        ("raw_item_audio_decoded", sum(q[1] == "audio" for q in dirty.media_quarantine)),
        ("raw_rows_quarantined", len(dirty.row_quarantine)),
    ):
        check = evaluations[name]
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN, name
        assert check.metadata["quarantined" if name != "raw_rows_quarantined" else "rows_quarantined"].value == n
    assert evaluations["raw_interactions_known_items"].passed  # unknown items went to the row quarantine

    assert folder_digest(tmp_path / "user") == before  # the user's files (and link targets) are untouched


def test_datasets_doc_catalogue_has_a_test_per_row():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()
    after = doc.split("**Bad input → what happens.**", 1)[1].split("\n\n", 1)[1]
    table = after.split("\n\n", 1)[0].splitlines()
    assert table[0] == "| input | what happens | test |"
    named = [line.rsplit("|", 2)[1].strip().strip("`") for line in table[2:]]
    assert len(named) >= 20 and len(set(named)) == len(named)
    for name in named:
        assert callable(globals().get(name)), f"docs/datasets.md names {name}, which is not a test here"

"""Tests for mm_pipeline.features: text embeddings, the SimCLR image encoder and audio features."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from mm_pipeline.augment import augment_images
from mm_pipeline.features import (
    ImageEncoder,
    ImageEncoderConfig,
    audio_features,
    embed_images,
    encode_texts,
    hz_to_mel,
    load_image_encoder,
    log_mel_spectrogram,
    mel_filterbank,
    mel_to_hz,
    save_image_encoder,
    train_image_encoder,
)

SR = 8000


def tone(freq: float, seconds: float = 0.5, sr: int = SR, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return np.sin(2 * np.pi * freq * t + phase).astype(np.float32)


# ------------------------------------------------------------------------------------------------- text


def test_encode_texts_shape_norm_and_semantics():
    texts = [
        "a relaxing piano piece for falling asleep",
        "calm piano music to help you sleep",
        "how to change the oil in a diesel truck engine",
        "",
    ]
    emb = encode_texts(texts, batch_size=2, precision="float32")
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert sim[1, 0] > sim[1, 2] + 0.3
    # batch size does not matter
    np.testing.assert_allclose(encode_texts(texts[:2], precision="float32"), emb[:2], atol=1e-5)


def test_encode_texts_in_bfloat16_is_float32_up_to_rounding():
    from mm_pipeline.features.text import text_precision

    texts = ["a relaxing piano piece for falling asleep", "how to change the oil in a diesel truck engine", ""]
    exact = encode_texts(texts, precision="float32")
    bf16 = encode_texts(texts, precision="bfloat16")  # emulated where the CPU lacks it: slower, same values
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    assert (exact * bf16).sum(1).min() > 0.999
    assert text_precision("auto") in ("float32", "bfloat16") and text_precision("float32") == "float32"
    with pytest.raises(ValueError, match="precision"):
        encode_texts(texts, precision="int8")


def test_encode_texts_empty_and_bad_input(tmp_path):
    assert encode_texts([]).shape == (0, 384)
    with pytest.raises(TypeError, match="single string"):
        encode_texts("just one string")
    with pytest.raises(ValueError, match="batch_size"):
        encode_texts(["a"], batch_size=0)
    with pytest.raises(ValueError, match="model_path"):
        encode_texts(["a"], model_path=str(tmp_path / "missing"))


# ------------------------------------------------------------------------------------------------ image


def two_colour_images(n_per_class: int = 32, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reddish vs bluish noisy images: a class difference any sane encoder keeps."""
    rng = np.random.default_rng(seed)
    base = np.array([[200, 40, 40], [40, 60, 200]], dtype=np.float64)
    labels = np.repeat([0, 1], n_per_class)
    noise = rng.normal(0, 25, size=(labels.size, size, size, 3))
    images = np.clip(base[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels


@pytest.fixture(scope="module")
def trained():
    images, labels = two_colour_images()
    # Mild strength keeps colour as the class signal (hue jitter at full strength could cross classes).
    views = augment_images(images, n_views=2, seed=0, strength=0.5)
    config = ImageEncoderConfig(embedding_dim=16, channels=(8, 16), epochs=2, batch_size=32, seed=3)
    encoder, history = train_image_encoder(views, config)
    return images, labels, views, config, encoder, history


def test_train_image_encoder_history_and_modes(trained):
    _, _, _, config, encoder, history = trained
    assert isinstance(encoder, ImageEncoder)
    assert not encoder.training
    assert isinstance(history, pd.DataFrame)
    assert list(history.columns) == ["epoch", "loss"]
    assert history["epoch"].tolist() == [0, 1]
    assert np.isfinite(history["loss"]).all()
    # NT-Xent with 2 x 32 views is at most about log(32) when training starts and is never negative.
    assert (history["loss"] > 0).all() and (history["loss"] < np.log(32) + 1.0).all()


def test_embeddings_separate_the_two_classes(trained):
    images, labels, _, config, encoder, _ = trained
    emb = embed_images(encoder, images, batch_size=10)
    assert emb.shape == (64, config.embedding_dim) and emb.dtype == np.float32
    centroids = np.stack([emb[labels == c].mean(axis=0) for c in (0, 1)])
    dist = np.linalg.norm(emb[:, None, :] - centroids[None], axis=-1)
    accuracy = np.mean(dist.argmin(axis=1) == labels)
    assert accuracy > 0.9


def test_training_is_deterministic_and_leaves_global_rng_alone(trained):
    images, _, views, config, encoder, history = trained
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    encoder2, history2 = train_image_encoder(views, config)
    assert torch.equal(torch.rand(3), expected_next)
    pd.testing.assert_frame_equal(history, history2)
    np.testing.assert_array_equal(embed_images(encoder, images), embed_images(encoder2, images))
    other, _ = train_image_encoder(views, dataclasses.replace(config, seed=4))
    assert not np.array_equal(embed_images(encoder, images), embed_images(other, images))


def test_embed_images_any_size_empty_and_keeps_mode(trained):
    _, _, _, config, encoder, _ = trained
    rng = np.random.default_rng(0)
    assert embed_images(encoder, rng.integers(0, 256, (3, 40, 24, 3), dtype=np.uint8)).shape == (3, 16)
    assert embed_images(encoder, rng.integers(0, 256, (2, 1, 1, 3), dtype=np.uint8)).shape == (2, 16)
    assert embed_images(encoder, np.zeros((0, 16, 16, 3), np.uint8)).shape == (0, 16)
    encoder.train()
    try:
        embed_images(encoder, np.zeros((1, 8, 8, 3), np.uint8))
        assert encoder.training
    finally:
        encoder.eval()


def test_save_load_round_trip_and_checkpoint_skips_training(trained, tmp_path):
    images, _, views, config, encoder, _ = trained
    path = save_image_encoder(encoder, tmp_path / "enc.pt")
    # The file is loadable with weights_only=True: no pickled classes.
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob["config"] == {"embedding_dim": 16, "channels": [8, 16]}
    loaded = load_image_encoder(path, config)
    np.testing.assert_array_equal(embed_images(loaded, images), embed_images(encoder, images))
    # A config with a checkpoint loads instead of training (empty history).
    from_ckpt, history = train_image_encoder(views, dataclasses.replace(config, checkpoint=str(path)))
    assert history.empty and list(history.columns) == ["epoch", "loss"]
    np.testing.assert_array_equal(embed_images(from_ckpt, images), embed_images(encoder, images))
    # A bare state dict is accepted too.
    bare = tmp_path / "bare.pt"
    torch.save(encoder.state_dict(), bare)
    np.testing.assert_array_equal(embed_images(load_image_encoder(bare, config), images), embed_images(encoder, images))


def test_mismatched_or_unreadable_checkpoint_raises_naming_the_file(trained, tmp_path):
    _, _, _, config, encoder, _ = trained
    path = save_image_encoder(encoder, tmp_path / "small_encoder.pt")
    with pytest.raises(ValueError, match="small_encoder.pt"):
        load_image_encoder(path, ImageEncoderConfig(embedding_dim=32, channels=(8, 16)))
    bare = tmp_path / "bare_state.pt"
    torch.save(encoder.state_dict(), bare)
    with pytest.raises(ValueError, match="bare_state.pt"):
        load_image_encoder(bare, ImageEncoderConfig(embedding_dim=16, channels=(8, 32)))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_image_encoder(junk, config)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_image_encoder(tmp_path / "nowhere.pt", config)


def test_train_image_encoder_rejects_bad_input():
    config = ImageEncoderConfig(embedding_dim=8, channels=(4,), epochs=1, batch_size=4)
    with pytest.raises(ValueError, match="at least 2 views"):
        train_image_encoder(np.zeros((4, 1, 8, 8, 3), np.uint8), config)
    with pytest.raises(ValueError, match="uint8"):
        train_image_encoder(np.zeros((4, 2, 8, 8, 3), np.float32), config)
    with pytest.raises(ValueError, match=r"\[N, V, H, W, 3\]"):
        train_image_encoder(np.zeros((4, 8, 8, 3), np.uint8), config)
    with pytest.raises(ValueError, match="at least 2 items"):
        train_image_encoder(np.zeros((1, 2, 8, 8, 3), np.uint8), config)
    with pytest.raises(ValueError, match="batch_size"):
        ImageEncoderConfig(batch_size=1)
    with pytest.raises(ValueError, match="channels"):
        ImageEncoderConfig(channels=())


def test_train_with_more_than_two_views_and_ragged_last_batch():
    rng = np.random.default_rng(0)
    views = rng.integers(0, 256, (9, 3, 8, 8, 3), dtype=np.uint8)  # 9 = 4 + 4 + 1: the single leftover is skipped
    config = ImageEncoderConfig(embedding_dim=8, channels=(4, 8), epochs=1, batch_size=4)
    encoder, history = train_image_encoder(views, config)
    assert len(history) == 1 and np.isfinite(history["loss"]).all()


# ------------------------------------------------------------------------------------------------ audio


def test_htk_mel_scale_known_values():
    np.testing.assert_allclose(hz_to_mel(0.0), 0.0)
    np.testing.assert_allclose(hz_to_mel(1000.0), 1000.0, atol=0.1)  # the HTK scale is ~1000 mel at 1 kHz
    f = np.array([0.0, 123.0, 1000.0, 3999.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f)), f, atol=1e-6)


def test_mel_filterbank_single_filter_known_answer():
    # One filter between 0 Hz and Nyquist: its centre is the mel midpoint, 700 (sqrt(1 + 4000/700) - 1) Hz.
    fb = mel_filterbank(1, 256, SR)
    centre = 700.0 * (np.sqrt(1.0 + 4000.0 / 700.0) - 1.0)
    freqs = np.arange(129) * SR / 256
    expected = np.where(freqs <= centre, freqs / centre, (4000.0 - freqs) / (4000.0 - centre))
    assert fb.shape == (1, 129)
    np.testing.assert_allclose(fb[0], expected, atol=1e-6)


def test_mel_filterbank_shape_peaks_and_monotone_centres():
    fb = mel_filterbank(40, 2048, SR)
    assert fb.shape == (40, 1025) and fb.dtype == np.float32
    assert fb.min() >= 0.0 and fb.max() <= 1.0 + 1e-6
    # With fine bins every triangle's top is sampled close to its peak of 1.
    assert np.all(fb.max(axis=1) > 0.9)
    peaks = fb.argmax(axis=1)
    assert np.all(np.diff(peaks) > 0)
    # Each filter is a single contiguous bump.
    for row in fb:
        support = np.flatnonzero(row > 0)
        assert support[-1] - support[0] + 1 == support.size
    # fmin / fmax are respected.
    band = mel_filterbank(10, 512, SR, fmin=300.0, fmax=3000.0)
    freqs = np.arange(257) * SR / 512
    assert np.all(band[:, (freqs <= 300.0) | (freqs >= 3000.0)] == 0.0)
    with pytest.raises(ValueError, match="fmax"):
        mel_filterbank(10, 256, SR, fmax=5000.0)
    with pytest.raises(ValueError, match="n_mels"):
        mel_filterbank(0, 256, SR)


def test_pure_tone_lands_in_its_mel_band():
    fb = mel_filterbank(40, 256, SR)
    for freq in (250.0, 1000.0, 2500.0):  # exact FFT bins: 8, 32, 80
        spec = log_mel_spectrogram(tone(freq)[None], SR)  # [1, 40, frames]
        band = int(spec[0].mean(dim=-1).argmax())
        assert band == int(fb[:, int(freq * 256 / SR)].argmax())
        assert fb[band, int(freq * 256 / SR)] > 0.5


def test_log_mel_spectrogram_shapes_and_short_clips():
    x = np.stack([tone(440.0), tone(880.0)])
    spec = log_mel_spectrogram(x, SR, n_mels=20, n_fft=256, hop_length=64)
    assert isinstance(spec, torch.Tensor) and spec.dtype == torch.float32
    assert spec.shape == (2, 20, 4000 // 64 + 1)
    short = log_mel_spectrogram(x[:, :100], SR)  # shorter than n_fft: zero-padded to 256 samples
    assert short.shape == (2, 40, 256 // 64 + 1) and torch.isfinite(short).all()
    assert log_mel_spectrogram(np.zeros((0, 1000), np.float32), SR).shape == (0, 40, 1000 // 64 + 1)


def test_audio_features_distinguish_tones_and_rhythm():
    steady = tone(500.0)
    x = np.stack(
        [steady, tone(500.0, phase=1.0), tone(2000.0), steady * (np.arange(steady.size) // 400 % 2)]
    )  # 500 Hz switched on and off every 50 ms
    f = audio_features(x, SR)
    assert f.shape == (4, 120) and f.dtype == np.float32 and np.isfinite(f).all()
    same = np.linalg.norm(f[0] - f[1])
    different = np.linalg.norm(f[0] - f[2])
    assert different > 10 * same
    # The mean-|delta| block (last 40) responds to the on/off rhythm.
    assert f[3, 80:].mean() > 5 * f[0, 80:].mean()


def test_audio_features_edge_cases():
    assert audio_features(np.zeros((0, 8000), np.float32), SR).shape == (0, 120)
    silent = audio_features(np.zeros((2, 50), np.float32), SR, n_mels=10)
    assert silent.shape == (2, 30)
    np.testing.assert_allclose(silent[:, :10], np.log(1e-6), rtol=1e-6)
    np.testing.assert_array_equal(silent[:, 10:], 0.0)
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        audio_features(np.zeros(100, np.float32), SR)
    with pytest.raises(ValueError, match="hop_length"):
        audio_features(np.zeros((1, 100), np.float32), SR, hop_length=0)


# ------------------------------------------------------------------------------------------- feature cache


def test_feature_cache_encodes_only_new_texts(tmp_path):
    from mm_pipeline.features.cache import FeatureCache, cached_vectors

    calls: list[list[str]] = []

    def encode(texts):
        calls.append(list(texts))
        return np.array([[len(t), t.count("a")] for t in texts], dtype=np.float32)

    cache = FeatureCache(tmp_path / "text", max_chunks=2)
    texts = ["a hat", "a cap", "", "a hat"]
    vectors, hits = cached_vectors(texts, encode, cache)
    assert hits == 0 and calls == [["a hat", "a cap", ""]]  # each distinct text once
    np.testing.assert_array_equal(vectors, encode(texts))
    # One text edited, one added: only those two are encoded; the order is the input's.
    calls.clear()
    vectors, hits = cached_vectors(["a hat", "a cap!", "", "banana"], encode, cache)
    assert calls == [["a cap!", "banana"]] and hits == 2
    np.testing.assert_array_equal(vectors, encode(["a hat", "a cap!", "", "banana"]))
    # Past max_chunks the chunks are merged into one, without losing a vector.
    cached_vectors(["x"], encode, cache)
    assert len(list((tmp_path / "text").glob("*.npz"))) == 1
    calls.clear()
    _, hits = cached_vectors(["a hat", "a cap", "a cap!", "banana", "x"], encode, cache)
    assert hits == 5 and calls == []
    assert cached_vectors(["a hat"], encode, None)[1] == 0  # no cache: everything encoded


def test_encode_texts_cached_matches_encode_texts(tmp_path):
    from mm_pipeline.features.text import encode_texts_cached, text_cache_folder

    texts = ["A red summer dress.", "Noise-cancelling headphones", ""]
    fresh = encode_texts(texts, precision="float32")
    first, hits = encode_texts_cached(texts, tmp_path, precision="float32")
    assert hits == 0 and text_cache_folder(tmp_path, precision="float32").is_dir()
    again, hits = encode_texts_cached(texts[::-1], tmp_path, precision="float32")
    assert hits == 3
    np.testing.assert_allclose(first, fresh, atol=1e-5)
    np.testing.assert_allclose(again, fresh[::-1], atol=1e-5)
    # Vectors of the other precision live apart: none of these is served for bfloat16.
    assert text_cache_folder(tmp_path, precision="bfloat16") != text_cache_folder(tmp_path, precision="float32")
    assert encode_texts_cached(texts, tmp_path, precision="bfloat16")[1] == 0


def test_text_benchmark_neighbour_overlap():
    from benchmark_scripts import load_benchmark

    overlap = load_benchmark("text_encoding").neighbour_overlap
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    assert overlap(x, x) == 1.0
    assert overlap(x, rng.normal(size=(30, 8)).astype(np.float32)) < 0.7  # unrelated vectors share few neighbours
    assert overlap(x[:1], x[:1]) == 1.0  # one text: nothing to compare

"""Tests for mm_pipeline.augment: shapes, determinism, invariants and bad inputs."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from mm_pipeline.augment import augment_audio, augment_images, augment_texts, build_image_augmentation


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------- images


def test_build_image_augmentation_returns_compose_with_requested_size(images):
    pipeline = build_image_augmentation(24)
    assert isinstance(pipeline, A.Compose)
    assert pipeline(image=images[0])["image"].shape == (24, 24, 3)


def test_augment_images_shape_dtype_and_views_differ(images):
    views = augment_images(images, n_views=3, seed=0)
    assert views.shape == (12, 3, 32, 32, 3)
    assert views.dtype == np.uint8
    # Views of the same image are different random draws.
    assert not np.array_equal(views[:, 0], views[:, 1])
    assert not np.array_equal(views[:, 1], views[:, 2])


def test_augment_images_is_deterministic_per_seed(images):
    a = augment_images(images, n_views=2, seed=7)
    b = augment_images(images, n_views=2, seed=7)
    c = augment_images(images, n_views=2, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_augment_images_strength_zero_is_identity(images):
    views = augment_images(images, n_views=2, seed=3, strength=0.0)
    np.testing.assert_array_equal(views[:, 0], images)
    np.testing.assert_array_equal(views[:, 1], images)


def test_augment_images_non_square_and_empty(images):
    rect = np.ascontiguousarray(images[:, :20, :28])
    assert augment_images(rect, n_views=2, seed=0).shape == (12, 2, 20, 28, 3)
    empty = augment_images(np.zeros((0, 16, 16, 3), np.uint8), n_views=4)
    assert empty.shape == (0, 4, 16, 16, 3) and empty.dtype == np.uint8


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 3), np.uint8), r"\[N, H, W, 3\]"),
        (np.zeros((2, 8, 8, 1), np.uint8), r"\[N, H, W, 3\]"),
    ],
)
def test_augment_images_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        augment_images(bad)


def test_augment_images_rejects_bad_arguments(images):
    with pytest.raises(ValueError, match="n_views"):
        augment_images(images, n_views=0)
    with pytest.raises(ValueError, match="strength"):
        augment_images(images, strength=-1.0)


# ------------------------------------------------------------------------------------------------- text

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a calm jazz record for late evenings at home",
    "",
    "single",
    "   ",
    "loud guitars and fast drums from a garage band",
]


def test_augment_texts_deterministic_and_seed_dependent():
    kwargs = dict(word_dropout=0.2, swap_prob=0.2, typo_prob=0.2)
    a = augment_texts(SENTENCES * 5, seed=1, **kwargs)
    assert a == augment_texts(SENTENCES * 5, seed=1, **kwargs)
    assert a != augment_texts(SENTENCES * 5, seed=2, **kwargs)
    assert len(a) == len(SENTENCES) * 5 and all(isinstance(t, str) for t in a)


def test_augment_texts_output_depends_only_on_position_and_seed():
    full = augment_texts(SENTENCES, seed=4, word_dropout=0.3, typo_prob=0.3)
    prefix = augment_texts(SENTENCES[:2], seed=4, word_dropout=0.3, typo_prob=0.3)
    assert full[:2] == prefix


def test_augment_texts_keeps_empty_strings_and_zero_probabilities_only_normalise_spaces():
    out = augment_texts(SENTENCES, word_dropout=0.0, swap_prob=0.0, typo_prob=0.0)
    assert out == [" ".join(t.split()) if t.strip() else t for t in SENTENCES]
    assert augment_texts(["", ""], seed=3, word_dropout=1.0, swap_prob=1.0, typo_prob=1.0) == ["", ""]


def test_augment_texts_never_drops_every_word():
    texts = ["alpha beta gamma delta", "one two", "x"] * 10
    out = augment_texts(texts, seed=0, word_dropout=1.0, swap_prob=0.0, typo_prob=0.0)
    for original, augmented in zip(texts, out):
        assert len(augmented.split()) == 1
        assert augmented in original.split()


def test_augment_texts_swaps_only_permute_words():
    texts = ["w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"] * 20
    out = augment_texts(texts, seed=0, word_dropout=0.0, swap_prob=0.5, typo_prob=0.0)
    assert all(sorted(o.split()) == sorted(texts[0].split()) for o in out)
    assert any(o != texts[0] for o in out)
    # Swaps are between neighbours: no word moves more than one place.
    for o in out:
        for pos, word in enumerate(o.split()):
            assert abs(pos - int(word[1:])) <= 1


def test_augment_texts_typos_are_single_edits():
    words = ["encoder", "pipeline", "augmentation"]
    out = augment_texts([" ".join(words)] * 30, seed=5, word_dropout=0.0, swap_prob=0.0, typo_prob=1.0)
    for o in out:
        new = o.split()
        assert len(new) == 3
        for before, after in zip(words, new):
            # One substitution / insertion / deletion / transposition: the word changes, length by <= 1.
            assert before != after
            assert abs(len(before) - len(after)) <= 1
            assert len(set(before) ^ set(after)) <= 2


def test_augment_texts_rejects_bad_input():
    with pytest.raises(TypeError, match="single string"):
        augment_texts("not a list")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        augment_texts(["ok", 3])
    with pytest.raises(ValueError, match="word_dropout"):
        augment_texts(["a b"], word_dropout=1.5)
    with pytest.raises(ValueError, match="typo_prob"):
        augment_texts(["a b"], typo_prob=-0.1)


# ------------------------------------------------------------------------------------------------ audio


@pytest.fixture(scope="module")
def waves() -> np.ndarray:
    rng = np.random.default_rng(1)
    t = np.arange(4000) / 8000
    tones = np.sin(2 * np.pi * rng.uniform(200, 2000, size=(6, 1)) * t)
    return (tones * rng.uniform(0.1, 1.0, size=(6, 1))).astype(np.float32)


def test_augment_audio_shape_dtype_determinism(waves):
    a = augment_audio(waves, n_views=3, seed=0)
    assert a.shape == (6, 3, 4000) and a.dtype == np.float32
    np.testing.assert_array_equal(a, augment_audio(waves, n_views=3, seed=0))
    assert not np.array_equal(a, augment_audio(waves, n_views=3, seed=1))
    assert not np.array_equal(a[:, 0], a[:, 1])


@pytest.mark.parametrize("block", [1, 4, 6])
def test_augment_audio_by_blocks_is_the_same_as_all_at_once(waves, block):
    # Blocks of clips bound the temporary memory; the views (noise included) must not depend on them.
    whole = augment_audio(waves, n_views=3, seed=7, block=len(waves))
    np.testing.assert_array_equal(augment_audio(waves, n_views=3, seed=7, block=block), whole)
    with pytest.raises(ValueError, match="block"):
        augment_audio(waves, block=0)


def test_augment_audio_silent_clips_stay_silent_without_nan(waves):
    x = waves.copy()
    x[2] = 0.0
    a = augment_audio(x, n_views=2, seed=3)
    assert np.isfinite(a).all()
    assert np.all(a[2] == 0.0)


def test_augment_audio_shift_only_is_a_circular_roll(waves):
    a = augment_audio(waves, n_views=4, seed=2, max_shift=0.01, gain_db=0.0, snr_db=float("inf"), time_mask=0.0)
    max_s = int(0.01 * 8000)
    for i in range(waves.shape[0]):
        for v in range(4):
            shifts = [s for s in range(-max_s, max_s + 1) if np.array_equal(a[i, v], np.roll(waves[i], s))]
            assert shifts, f"clip {i} view {v} is not a roll within {max_s} samples"


def test_augment_audio_gain_within_bounds(waves):
    a = augment_audio(waves, n_views=8, seed=0, max_shift=0.0, gain_db=6.0, snr_db=float("inf"), time_mask=0.0)
    ratio_db = 20 * np.log10(np.abs(a).max(axis=-1) / np.abs(waves).max(axis=-1, keepdims=True))
    assert np.all(np.abs(ratio_db) <= 6.0 + 1e-4)
    assert ratio_db.std() > 1.0  # the gain really varies


def test_augment_audio_noise_matches_requested_snr(waves):
    a = augment_audio(waves, n_views=2, seed=0, max_shift=0.0, gain_db=0.0, snr_db=10.0, time_mask=0.0)
    noise = a - waves[:, None]
    snr = 10 * np.log10(np.mean(waves[:, None] ** 2, axis=-1) / np.mean(noise**2, axis=-1))
    np.testing.assert_allclose(snr, 10.0, atol=0.5)


def test_augment_audio_time_mask_is_one_contiguous_block(waves):
    a = augment_audio(waves, n_views=5, seed=4, max_shift=0.0, gain_db=0.0, snr_db=float("inf"), time_mask=0.2)
    masked = (a == 0.0) & (waves[:, None] != 0.0)
    lengths = masked.sum(axis=-1)
    assert lengths.max() <= waves.shape[1] // 2  # 0.2 s of a 0.5 s clip, capped at half
    assert lengths.max() > 0
    for row in masked.reshape(-1, waves.shape[1]):
        idx = np.flatnonzero(row)
        if idx.size:
            assert idx[-1] - idx[0] + 1 <= waves.shape[1] // 2
    unmasked = ~(a == 0.0)
    np.testing.assert_array_equal(a[unmasked], np.broadcast_to(waves[:, None], a.shape)[unmasked])


def test_augment_audio_empty_and_bad_input(waves):
    assert augment_audio(np.zeros((0, 100), np.float32), n_views=2).shape == (0, 2, 100)
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        augment_audio(waves[0])
    with pytest.raises(ValueError, match="floating"):
        augment_audio(np.zeros((2, 10), np.int16))
    with pytest.raises(ValueError, match="n_views"):
        augment_audio(waves, n_views=0)
    with pytest.raises(ValueError, match="gain_db"):
        augment_audio(waves, gain_db=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        augment_audio(np.full((1, 10), np.nan, np.float32))

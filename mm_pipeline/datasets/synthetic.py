"""The built-in dataset: a seeded generator that writes a real folder-format dataset.

Latent model. Every item has four discrete attributes:

* ``category`` (shared): named in the text, the image's background hue, the audio's pitch;
* ``style`` (text only): adjectives in the title and description;
* ``pattern`` (image only): the shape drawn on the image;
* ``rhythm`` (audio only): amplitude-modulation rate and timbre of the clip.

A user's utility for an item is

.. math::
    U(u, i) = w_c A_{u, c_i} + w_s B_{u, s_i} + w_p G_{u, p_i} + w_r D_{u, r_i} + \\pi_i + \\epsilon

with per-user preference tables :math:`A, B, G, D` and a log-normal item popularity :math:`\\pi_i`.
Each user picks :math:`n_u` distinct items by Gumbel-top-k on :math:`U / \tau`. The category is visible
in every modality, while style, pattern and rhythm are each visible in one modality only: every
modality carries part of the preference signal and none carries all of it.

Realistic mess: popularity skew, noisy text (typos, filler words), a few percent of items missing each
modality, and *new-arrival* items whose interactions all come after the user's other interactions, so
a per-user chronological split leaves them with no training interactions (cold start).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SyntheticSpec:
    n_users: int
    n_items: int
    mean_interactions: float
    scenario: str = "video"
    n_categories: int = 10
    n_styles: int = 6
    n_patterns: int = 6
    n_rhythms: int = 6
    weights: tuple[float, float, float, float] = (1.5, 1.2, 1.2, 1.2)  # category, style, pattern, rhythm
    popularity_sigma: float = 1.0
    temperature: float = 0.6
    new_item_fraction: float = 0.06
    missing_fraction: float = 0.03
    text_noise: float = 0.08
    image_size: int = 32
    sample_rate: int = 8000
    clip_seconds: float = 1.0
    min_interactions: int = 5
    seed: int = 0


SIZES: dict[str, SyntheticSpec] = {
    "tiny": SyntheticSpec(n_users=240, n_items=360, mean_interactions=22),
    "default": SyntheticSpec(n_users=1500, n_items=2500, mean_interactions=40),
    "large": SyntheticSpec(n_users=40000, n_items=20000, mean_interactions=30),
    # Interactions only (~10.2M): generate() refuses it (media for 100k items); benchmarks/scaling.py draws
    # its interactions with sample_interaction_chunks.
    "xl": SyntheticSpec(n_users=320000, n_items=100000, mean_interactions=32),
}
# generate() writes an image and an audio clip per item and draws interactions from a dense
# n_users x n_items utility matrix: it is limited to this many items (builtin:large's catalogue).
GENERATE_MAX_ITEMS = 20_000

SCENARIOS: dict[str, tuple[str, ...]] = {
    "video": ("text", "image", "audio"),
    "ecommerce": ("text", "image"),
    "music": ("text", "image", "audio"),  # audio track plus cover art
}

# Three synonyms per attribute value, so text encoders must generalise beyond exact words.
_CATEGORY_WORDS = {
    "video": [
        ("cooking", "recipe", "kitchen"),
        ("travel", "journey", "trip"),
        ("gaming", "videogame", "esports"),
        ("fitness", "workout", "training"),
        ("science", "physics", "experiment"),
        ("comedy", "sketch", "standup"),
        ("news", "report", "headlines"),
        ("pets", "puppy", "kitten"),
        ("fashion", "outfit", "runway"),
        ("history", "ancient", "documentary"),
    ],
    "ecommerce": [
        ("shoes", "sneakers", "boots"),
        ("lamp", "lighting", "chandelier"),
        ("backpack", "bag", "luggage"),
        ("watch", "wristwatch", "timepiece"),
        ("jacket", "coat", "parka"),
        ("mug", "cup", "tumbler"),
        ("headphones", "earbuds", "headset"),
        ("chair", "stool", "armchair"),
        ("blender", "mixer", "juicer"),
        ("tent", "camping", "sleeping bag"),
    ],
    "music": [
        ("jazz", "swing", "bebop"),
        ("rock", "guitar", "grunge"),
        ("classical", "symphony", "orchestra"),
        ("hiphop", "rap", "beats"),
        ("folk", "acoustic", "ballad"),
        ("electronic", "techno", "synth"),
        ("reggae", "dub", "ska"),
        ("blues", "soul", "rhythm"),
        ("country", "bluegrass", "western"),
        ("metal", "heavy", "thrash"),
    ],
}
_STYLE_WORDS = [
    ("cozy", "warm", "snug"),
    ("intense", "extreme", "hardcore"),
    ("minimalist", "simple", "clean"),
    ("retro", "vintage", "classic"),
    ("luxurious", "premium", "deluxe"),
    ("playful", "fun", "quirky"),
    ("dark", "moody", "gloomy"),
    ("bright", "cheerful", "sunny"),
]
_FILLER = (
    "the",
    "and",
    "with",
    "for",
    "new",
    "best",
    "great",
    "edition",
    "official",
    "now",
    "today",
    "amazing",
    "top",
    "pro",
    "collection",
    "series",
    "part",
    "episode",
    "free",
    "hd",
)


def spec_for(size: str, scenario: str = "video", seed: int = 0) -> SyntheticSpec:
    if size not in SIZES:
        raise ValueError(f"unknown built-in size {size!r}; choose one of {sorted(SIZES)}")
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {sorted(SCENARIOS)}")
    return replace(SIZES[size], scenario=scenario, seed=seed)


def spec_digest(spec: SyntheticSpec) -> str:
    payload = json.dumps({"version": GENERATOR_VERSION, **asdict(spec)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Latent model and interactions
# ----------------------------------------------------------------------------------------------
def _item_latents(spec: SyntheticSpec, rng: np.random.Generator) -> pd.DataFrame:
    n = spec.n_items
    frame = pd.DataFrame(
        {
            "category": rng.integers(spec.n_categories, size=n),
            "style": rng.integers(spec.n_styles, size=n),
            "pattern": rng.integers(spec.n_patterns, size=n),
            "rhythm": rng.integers(spec.n_rhythms, size=n),
            "popularity": rng.normal(0.0, spec.popularity_sigma, size=n),
            "is_new": rng.random(n) < spec.new_item_fraction,
        }
    )
    modalities = SCENARIOS[spec.scenario]
    missing = rng.random((n, 3)) < spec.missing_fraction
    for j, modality in enumerate(("text", "image", "audio")):
        frame[f"has_{modality}"] = ~missing[:, j] if modality in modalities else False
    # Never leave an item with no modality at all: give it its text back.
    none = ~frame[["has_text", "has_image", "has_audio"]].any(axis=1)
    frame.loc[none, "has_text"] = True
    return frame


def _user_preferences(spec: SyntheticSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    # Categories: a peaked Dirichlet (each user loves a few); the rest: standard-normal tastes.
    cat = np.log(rng.dirichlet(np.full(spec.n_categories, 0.35), size=spec.n_users) + 1e-3)
    cat = (cat - cat.mean(1, keepdims=True)) / (cat.std(1, keepdims=True) + 1e-9)
    return {
        "category": cat,
        "style": rng.normal(size=(spec.n_users, spec.n_styles)),
        "pattern": rng.normal(size=(spec.n_users, spec.n_patterns)),
        "rhythm": rng.normal(size=(spec.n_users, spec.n_rhythms)),
    }


INTERACTION_CHUNK_CELLS = 4_000_000  # user x item utilities ranked at once in _sample_interactions


def _sample_interactions(
    spec: SyntheticSpec, items: pd.DataFrame, prefs: dict[str, np.ndarray], rng: np.random.Generator
) -> pd.DataFrame:
    n_users, n_items = spec.n_users, spec.n_items
    counts = np.clip(
        rng.lognormal(np.log(spec.mean_interactions) - 0.18, 0.6, size=n_users).round(),
        spec.min_interactions,
        n_items // 4,
    ).astype(np.int64)
    w_c, w_s, w_p, w_r = spec.weights
    cols = {k: items[k].to_numpy() for k in ("category", "style", "pattern", "rhythm")}
    pop = items["popularity"].to_numpy()

    def chosen(start: int, stop: int, uniform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Users start..stop-1's items: the top of utility plus Gumbel noise (from ``uniform``), best first."""
        utility = (
            w_c * prefs["category"][start:stop][:, cols["category"]]
            + w_s * prefs["style"][start:stop][:, cols["style"]]
            + w_p * prefs["pattern"][start:stop][:, cols["pattern"]]
            + w_r * prefs["rhythm"][start:stop][:, cols["rhythm"]]
            + pop[None, :]
        )
        gumbel = -np.log(-np.log(uniform + 1e-12) + 1e-12)
        keys = utility / spec.temperature + gumbel
        n_max = int(counts[start:stop].max())
        top = np.argpartition(-keys, n_max - 1, axis=1)[:, :n_max]
        order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        keep = np.arange(n_max)[None, :] < counts[start:stop, None]
        return np.broadcast_to(np.arange(start, stop)[:, None], top.shape)[keep], top[keep]

    # Chunks of users bound memory (vectorized within a chunk). This thread draws each chunk's uniforms in
    # order and worker threads rank them (NumPy releases the GIL): the same draws and items as one thread.
    chunk = max(1, INTERACTION_CHUNK_CELLS // n_items)
    workers = max(1, min(2, os.cpu_count() or 1))  # each ranks 4M utilities with ~150 MB of temporaries
    parts, pending = [], deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, n_users, chunk):
            stop = min(n_users, start + chunk)
            pending.append(pool.submit(chosen, start, stop, rng.random((stop - start, n_items))))
            if len(pending) > 2 * workers:  # at most a few chunks' uniforms alive at once
                parts.append(pending.popleft().result())
        parts += [future.result() for future in pending]
    frame = pd.DataFrame({"user": np.concatenate([u for u, _ in parts]), "item": np.concatenate([i for _, i in parts])})

    # Timestamps: each user is active over a window; new-arrival items come after everything else.
    t0 = 1_700_000_000
    frame["is_new"] = items["is_new"].to_numpy()[frame["item"].to_numpy()]
    frame["rand"] = rng.random(len(frame))
    frame = frame.sort_values(["user", "is_new", "rand"], kind="stable").reset_index(drop=True)
    position = frame.groupby("user").cumcount().to_numpy()
    start_time = rng.integers(0, 200 * 86_400, size=n_users)[frame["user"].to_numpy()]
    gaps = rng.exponential(6 * 3600, size=len(frame)).astype(np.int64) + 60
    frame["timestamp"] = t0 + start_time + position * 4 * 3600 + gaps
    # Keep timestamps strictly increasing within each user after adding jitter.
    frame["timestamp"] = frame.groupby("user")["timestamp"].cummax()
    return frame[["user", "item", "timestamp"]]


def interaction_counts(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """Interactions per user, as :func:`_sample_interactions` draws them (log-normal, clipped)."""
    return np.clip(
        rng.lognormal(np.log(spec.mean_interactions) - 0.18, 0.6, size=spec.n_users).round(),
        spec.min_interactions,
        spec.n_items // 4,
    ).astype(np.int64)


def sample_interaction_chunks(
    spec: SyntheticSpec,
    items: pd.DataFrame,
    prefs: dict[str, np.ndarray],
    rng: np.random.Generator,
    chunk_users: int = 4096,
    t0: int = 1_700_000_000,
):
    r"""The same latent model as :func:`_sample_interactions`, drawn without the dense
    :math:`n_\text{users} \times n_\text{items}` utility matrix; yields ``{"user", "item", "timestamp"}``
    arrays (int32, int32, int64) one chunk of ``chunk_users`` users at a time, sorted by user then time.

    Gumbel-top-:math:`n_u` on :math:`U/\tau` is Plackett-Luce sampling without replacement from
    :math:`p_i \propto e^{U(u,i)/\tau}`, i.e. the distinct items, in order of first appearance, of
    independent draws from :math:`p`. The utility depends on the item only through its attribute
    combination :math:`t_i` (category, style, pattern, rhythm: 2,160 combinations by default) and its
    popularity, :math:`p_i \propto e^{a_u(t_i)/\tau} \cdot e^{\pi_i/\tau}`, so each draw picks a
    combination :math:`t` with probability :math:`\propto e^{a_u(t)/\tau} \sum_{i: t_i = t} e^{\pi_i/\tau}`
    and then an item of that combination :math:`\propto e^{\pi_i/\tau}`: :math:`O(n_\text{types})` per
    user instead of :math:`O(n_\text{items})`. Users are oversampled and topped up until they have
    :math:`n_u` distinct items. Timestamps follow :func:`_sample_interactions`' rule (new-arrival items
    last, non-decreasing per user). Same distribution, different random stream: the interactions
    are not those of :func:`generate` for the same seed. Memory: :math:`O(\text{chunk\_users} \cdot
    n_\text{types})` besides the item arrays.
    """
    counts = interaction_counts(spec, rng)
    w_c, w_s, w_p, w_r = spec.weights
    dims = (spec.n_categories, spec.n_styles, spec.n_patterns, spec.n_rhythms)
    names = ("category", "style", "pattern", "rhythm")
    attrs = [items[k].to_numpy().astype(np.int64) for k in names]
    item_type = np.ravel_multi_index(attrs, dims)
    n_types = int(np.prod(dims))
    type_attr = np.unravel_index(np.arange(n_types), dims)  # attribute values of every combination
    pop = items["popularity"].to_numpy() / spec.temperature
    weight = np.exp(pop - pop.max())
    order = np.argsort(item_type, kind="stable")  # items grouped by combination
    cum = np.cumsum(weight[order])
    type_mass = np.bincount(item_type, weights=weight, minlength=n_types)
    type_start = np.concatenate([[0.0], cum])[np.searchsorted(item_type[order], np.arange(n_types))]
    log_mass = np.log(np.where(type_mass > 0, type_mass, 1.0))
    is_new = items["is_new"].to_numpy()
    n_items = spec.n_items
    for start in range(0, spec.n_users, chunk_users):
        stop = min(spec.n_users, start + chunk_users)
        c = stop - start
        logits = (
            w_c * prefs["category"][start:stop][:, type_attr[0]]
            + w_s * prefs["style"][start:stop][:, type_attr[1]]
            + w_p * prefs["pattern"][start:stop][:, type_attr[2]]
            + w_r * prefs["rhythm"][start:stop][:, type_attr[3]]
        ) / spec.temperature + log_mass
        logits[:, type_mass <= 0] = -np.inf
        prob = np.exp(logits - logits.max(1, keepdims=True))
        cdf = np.cumsum(prob, axis=1)
        cdf /= cdf[:, -1:]
        flat_cdf = (cdf + np.arange(c)[:, None]).ravel()  # one increasing array: row r spans [r, r + 1]
        need = counts[start:stop]
        users = np.zeros(0, dtype=np.int64)
        picked = np.zeros(0, dtype=np.int64)
        want = need
        for attempt in range(200):
            # A user whose taste is concentrated on few items needs many draws for its last distinct ones:
            # the top-up doubles every round.
            extra = (np.ceil(want * 1.3).astype(np.int64) + np.where(want > 0, 4, 0)) << min(attempt, 16)
            rows = np.repeat(np.arange(c), extra)
            t = np.searchsorted(flat_cdf, rows + rng.random(rows.size), side="right") - rows * n_types
            t = np.clip(t, 0, n_types - 1)
            pos = np.searchsorted(cum, type_start[t] + rng.random(rows.size) * type_mass[t], side="right")
            pos = np.clip(pos, 0, n_items - 1)
            users, picked = np.concatenate([users, rows]), np.concatenate([picked, order[pos]])
            # The first appearance of every (user, item), in draw order, grouped by user.
            _, first = np.unique(users * n_items + picked, return_index=True)
            first.sort()
            first = first[np.argsort(users[first], kind="stable")]
            users, picked = users[first], picked[first]
            have = np.bincount(users, minlength=c)
            want = np.maximum(need - have, 0)
            if not want.any():
                break
        rank = np.arange(users.size) - np.concatenate([[0], np.cumsum(have)[:-1]])[users]
        keep = rank < need[users]
        users, picked = users[keep], picked[keep]
        # Timestamps: _sample_interactions' rule, per chunk.
        rand = rng.random(users.size)
        new = is_new[picked]
        by = np.lexsort((rand, new, users))
        users, picked = users[by], picked[by]
        n_u = np.bincount(users, minlength=c)
        position = np.arange(users.size) - np.concatenate([[0], np.cumsum(n_u)[:-1]])[users]
        start_time = rng.integers(0, 200 * 86_400, size=c)[users]
        gaps = rng.exponential(6 * 3600, size=users.size).astype(np.int64) + 60
        stamp = start_time + position * 4 * 3600 + gaps  # < 2**33 for any realistic count
        stamp = np.maximum.accumulate(stamp + (users << 34)) - (users << 34)  # running max within each user
        yield {
            "user": (users + start).astype(np.int32),
            "item": picked.astype(np.int32),
            "timestamp": t0 + stamp,
        }


# ----------------------------------------------------------------------------------------------
# Modalities
# ----------------------------------------------------------------------------------------------
def _make_texts(spec: SyntheticSpec, items: pd.DataFrame, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    cat_words = _CATEGORY_WORDS["ecommerce" if spec.scenario == "ecommerce" else spec.scenario]
    titles, descriptions = [], []
    for idx, row in enumerate(items.itertuples()):
        if not row.has_text:
            titles.append("")
            descriptions.append("")
            continue
        c = cat_words[row.category % len(cat_words)]
        s = _STYLE_WORDS[row.style % len(_STYLE_WORDS)]
        pick = lambda words: words[rng.integers(len(words))]  # noqa: E731 - tiny local helper
        title = f"{pick(s).capitalize()} {pick(c)} {pick(_FILLER)} {idx % 97}"
        words = [pick(s), pick(c), pick(_FILLER), pick(_FILLER), pick(s), pick(c), pick(_FILLER)]
        words += [pick(_FILLER) for _ in range(rng.integers(2, 6))]
        rng.shuffle(words)
        words = [_typo(w, rng) if rng.random() < spec.text_noise else w for w in words]
        titles.append(title)
        descriptions.append(" ".join(words) + ".")
    return titles, descriptions


def _typo(word: str, rng: np.random.Generator) -> str:
    if len(word) < 3:
        return word
    i = int(rng.integers(1, len(word) - 1))
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorized HSV -> RGB for arrays in [0, 1]; returns [..., 3]."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack(
        [
            np.stack([v, t, p], -1),
            np.stack([q, v, p], -1),
            np.stack([p, v, t], -1),
            np.stack([p, q, v], -1),
            np.stack([t, p, v], -1),
            np.stack([v, p, q], -1),
        ],
        0,
    )
    return np.take_along_axis(table, i[None, ..., None].repeat(3, -1), 0)[0]


def _make_images(spec: SyntheticSpec, items: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """[N, S, S, 3] uint8: background hue <- category, shape <- pattern, with jitter and noise."""
    n, size = len(items), spec.image_size
    cat = items["category"].to_numpy()
    pat = items["pattern"].to_numpy()
    hue = (cat / spec.n_categories + rng.normal(0, 0.015, n)) % 1.0
    bg = _hsv_to_rgb(hue, rng.uniform(0.5, 0.9, n), rng.uniform(0.55, 0.95, n))  # [N, 3]
    fg = _hsv_to_rgb((hue + 0.5) % 1.0, rng.uniform(0.2, 0.6, n), rng.uniform(0.05, 0.35, n))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cy = rng.uniform(0.35, 0.65, n)[:, None, None]
    cx = rng.uniform(0.35, 0.65, n)[:, None, None]
    r = rng.uniform(0.18, 0.3, n)[:, None, None]
    dy, dx = yy[None] - cy, xx[None] - cx
    freq = rng.uniform(5.0, 7.0, n)[:, None, None]
    shapes = np.stack(
        [
            dx**2 + dy**2 < r**2,  # disc
            (np.abs(dx) < r) & (np.abs(dy) < r),  # square
            (dy > -r) & (np.abs(dx) < (dy + r) * 0.6),  # triangle
            np.sin(yy[None] * np.pi * 2 * freq) > 0.3,  # horizontal stripes
            np.sin(xx[None] * np.pi * 2 * freq) > 0.3,  # vertical stripes
            (np.abs(dx) < r * 0.35) | (np.abs(dy) < r * 0.35),  # cross
        ],
        0,
    )  # [P, N, S, S]
    mask = shapes[pat % shapes.shape[0], np.arange(n)]
    img = np.where(mask[..., None], fg[:, None, None, :], bg[:, None, None, :])
    img = img + rng.normal(0, 0.04, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def _make_audio(spec: SyntheticSpec, items: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """[N, T] float32: pitch <- category, modulation rate and timbre <- rhythm, plus noise.

    The tones are a pure function of the drawn pitches and phases, so they are computed by row blocks in
    worker threads (NumPy's ufuncs release the GIL) while this thread draws the noise from ``rng``: the same
    draws in the same order, the same values (tested); builtin:large's clips in 9-10 s instead of 16-17 s on 2 cores."""
    n, sr = len(items), spec.sample_rate
    t = np.arange(int(sr * spec.clip_seconds), dtype=np.float32) / sr
    cat = items["category"].to_numpy()
    rhy = items["rhythm"].to_numpy()
    f0 = 150.0 * 2 ** (cat / spec.n_categories * 3.0) * rng.uniform(0.98, 1.02, n)  # three octaves
    rate = np.array([1.5, 3.0, 5.0, 8.0, 12.0, 18.0])[rhy % 6]
    n_harm = np.array([1, 3, 2, 4, 1, 5])[rhy % 6]
    phase = rng.uniform(0, 2 * np.pi, n)
    wave = np.empty((n, t.size), dtype=np.float64)  # float64 until the noise is added, as the tones are
    blocks = [slice(start, start + AUDIO_BLOCK) for start in range(0, n, AUDIO_BLOCK)]
    with ThreadPoolExecutor(max_workers=max(1, min(len(blocks), os.cpu_count() or 1))) as pool:
        done = [pool.submit(_tones, f0[b], rate[b], n_harm[b], phase[b], t, wave[b]) for b in blocks]
        noise = rng.normal(0, 0.02, wave.shape).astype(np.float32)
        for future in done:
            future.result()
    wave += noise
    return np.clip(wave, -1, 1).astype(np.float32)


AUDIO_BLOCK = 256  # clips per worker task in _make_audio


def _tones(
    f0: np.ndarray, rate: np.ndarray, n_harm: np.ndarray, phase: np.ndarray, t: np.ndarray, out: np.ndarray
) -> None:
    """The noiseless clips of :func:`_make_audio` into ``out`` ([N, T] float64): harmonics, a slow amplitude
    envelope, peak-normalised to 0.6."""
    wave = np.zeros(out.shape, dtype=np.float32)
    for h in range(1, 6):  # loop over harmonics only (5 steps), vectorized over items and time
        amp = (h <= n_harm).astype(np.float32) / h
        wave += amp[:, None] * np.sin(2 * np.pi * f0[:, None] * h * t[None] + phase[:, None] * h)
    envelope = 0.5 * (1 + np.sin(2 * np.pi * rate[:, None] * t[None] + phase[:, None]))
    wave = wave * envelope
    out[:] = wave / (np.abs(wave).max(1, keepdims=True) + 1e-6) * 0.6


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def generate(spec: SyntheticSpec, root: str | Path, overwrite: bool = False) -> Path:
    """Write the dataset described by ``spec`` to ``root`` (folder format) and return ``root``.

    Generation is skipped when ``root`` already holds the same spec. The folder is written under a
    temporary name and renamed into place, so an interrupted run leaves nothing half-written.
    """
    import cv2
    from scipy.io import wavfile

    if spec.n_items > GENERATE_MAX_ITEMS:
        raise ValueError(
            f"the built-in dataset with {spec.n_items:,} items is interactions-only: writing its media files "
            f"is limited to {GENERATE_MAX_ITEMS:,} items; draw its interactions with "
            "sample_interaction_chunks (benchmarks/scaling.py does)"
        )
    root = Path(root)
    digest = spec_digest(spec)
    marker = root / "dataset.json"
    if marker.exists() and not overwrite:
        if json.loads(marker.read_text()).get("digest") == digest:
            return root
        raise FileExistsError(f"{root} holds a different dataset; delete it or choose another folder")

    rng = np.random.default_rng(spec.seed)
    items = _item_latents(spec, rng)
    prefs = _user_preferences(spec, rng)
    inter = _sample_interactions(spec, items, prefs, rng)
    titles, descriptions = _make_texts(spec, items, rng)

    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex}"
    (tmp / "images").mkdir(parents=True)
    (tmp / "audio").mkdir()
    try:
        item_ids = np.array([f"i{i:06d}" for i in range(spec.n_items)])
        image_col = np.where(items["has_image"], [f"images/{x}.png" for x in item_ids], None)
        audio_col = np.where(items["has_audio"], [f"audio/{x}.wav" for x in item_ids], None)
        chunk = 2048
        for start in range(0, spec.n_items, chunk):
            part = items.iloc[start : start + chunk]
            if part["has_image"].any():
                images = _make_images(spec, part, rng)
                for j in np.flatnonzero(part["has_image"].to_numpy()):
                    cv2.imwrite(str(tmp / image_col[start + j]), images[j][..., ::-1])
            if part["has_audio"].any():
                waves = _make_audio(spec, part, rng)
                pcm = (waves * 32767).astype(np.int16)
                for j in np.flatnonzero(part["has_audio"].to_numpy()):
                    wavfile.write(tmp / audio_col[start + j], spec.sample_rate, pcm[j])
        pd.DataFrame(
            {"item_id": item_ids, "title": titles, "description": descriptions, "image": image_col, "audio": audio_col}
        ).to_csv(tmp / "items.csv", index=False)
        user_ids = np.array([f"u{u:06d}" for u in range(spec.n_users)])
        pd.DataFrame(
            {
                "user_id": user_ids[inter["user"].to_numpy()],
                "item_id": item_ids[inter["item"].to_numpy()],
                "timestamp": inter["timestamp"].to_numpy(),
            }
        ).to_csv(tmp / "interactions.csv", index=False)
        # Ground truth for analysis only; readers never look at it.
        latent = items.assign(item_id=item_ids)
        (tmp / "_truth").mkdir()
        latent.to_parquet(tmp / "_truth" / "item_latents.parquet", index=False)
        (tmp / "dataset.json").write_text(
            json.dumps(
                {
                    "name": f"builtin-{spec.scenario}",
                    "format": "folder",
                    "digest": digest,
                    "generator_version": GENERATOR_VERSION,
                    "spec": asdict(spec),
                    "text_columns": ["title", "description"],
                },
                indent=2,
            )
        )
        if root.exists():
            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root

"""A seeded stand-in for a published MMRec dataset (Amazon baby/sports/clothing): same layout, similar shape.

The built-in folder dataset is dense (about 40 interactions per user) and every item has raw media. The
public multimodal-recommendation tables are measured on something else: 5-core Amazon review data with
about 8 interactions per user, precomputed text (384-d sentence embeddings) and image (4096-d CNN)
features, and a per-user chronological 8:1:1 split stored in the ``x_label`` column. This generator
writes that layout so the published protocol can be rehearsed here, where the real files cannot be
downloaded. It does not replace them: its numbers say how models rank in *this* regime, not on Amazon.

Latent model. Items belong to a category (Zipf-sized) and carry two latent parts:

* :math:`z_i = \\mu_{c_i} + \\sigma_z \varepsilon_i` (content): what the product is; visible, with noise,
  in the features;
* :math:`b_i` (behaviour only): brand, price tier, quality; invisible in any feature.

A user likes one to three categories (:math:`p_u`, a noisy mean of their centroids) and has a hidden
taste :math:`t_u`. Utility :math:`U(u,i) = a\\, p_u^\top z_i + b\\, t_u^\top b_i + \\log \\pi_i + \text{Gumbel}`;
each user takes the top :math:`n_u` items (:math:`n_u \\ge 5`, geometric tail). The interactions are then
reduced to their 5-core, as the public datasets are.

Features: ``text_feat.npy`` is a random two-layer map of :math:`z_i` plus noise (384-d); ``image_feat.npy``
sees only part of :math:`z_i` next to nuisance factors (lighting, background), through a ReLU map to
4096 non-negative dimensions plus noise, so images are the weaker modality, as on Amazon.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from mm_pipeline.evaluate.split import chronological_split


@dataclass(frozen=True)
class MMRecLikeSpec:
    n_users: int = 12000
    n_items: int = 5000
    extra_interactions: float = 3.5  # mean of the geometric tail above the 5 every user has
    n_categories: int = 30
    content_dim: int = 24
    behaviour_dim: int = 8
    content_noise: float = 0.8  # sigma_z: spread of items around their category centroid
    content_weight: float = 1.0  # a
    behaviour_weight: float = 0.8  # b
    popularity_sigma: float = 1.0
    text_dim: int = 384
    image_dim: int = 4096
    text_noise: float = 0.5
    image_noise: float = 1.0
    image_visible: float = 0.5  # share of the content dimensions the image shows
    core: int = 5
    seed: int = 0


SIZES = {"small": MMRecLikeSpec(n_users=2000, n_items=900, image_dim=512), "baby": MMRecLikeSpec()}
SPEC_FILE = "generator.json"  # the spec a folder was written from; a later call with the same spec reuses it


def spec_for(size: str, seed: int = 0) -> MMRecLikeSpec:
    if size not in SIZES:
        raise ValueError(f"unknown builtin-mmrec size {size!r}; choose one of {sorted(SIZES)}")
    return replace(SIZES[size], seed=seed)


def _features(x: np.ndarray, out_dim: int, noise: float, rng: np.random.Generator, relu: bool) -> np.ndarray:
    hidden = np.tanh(x @ rng.normal(0, 1 / np.sqrt(x.shape[1]), (x.shape[1], 128)))
    out = hidden @ rng.normal(0, 1 / np.sqrt(128), (128, out_dim))
    out = out + noise * out.std() * rng.standard_normal(out.shape)
    return np.maximum(out, 0.0).astype(np.float32) if relu else out.astype(np.float32)


def _k_core(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    keep = np.ones(len(users), dtype=bool)
    while True:
        u_count = np.bincount(users[keep], minlength=users.max() + 1)
        i_count = np.bincount(items[keep], minlength=items.max() + 1)
        bad = keep & ((u_count[users] < k) | (i_count[items] < k))
        if not bad.any():
            return keep
        keep &= ~bad


def generate_mmrec_like(spec: MMRecLikeSpec, root: str | Path, name: str = "synthetic") -> Path:
    """Write ``<root>/<name>.inter``, ``text_feat.npy`` and ``image_feat.npy`` (atomically: a crash leaves
    no half-written folder). Returns ``root``. A ``root`` written earlier from the same spec is reused;
    any other existing ``root`` is an error, never overwritten."""
    root = Path(root)
    record = {"spec": asdict(spec), "name": name}
    if root.exists():
        marker = root / SPEC_FILE
        if marker.is_file() and json.loads(marker.read_text()) == record:
            return root
        raise FileExistsError(
            f"{root} already exists and was not written from this spec; choose a new folder or delete it first"
        )
    rng = np.random.default_rng(spec.seed)
    # Items: Zipf-sized categories, content and behaviour latents, log-normal popularity.
    sizes = 1.0 / np.arange(1, spec.n_categories + 1) ** 0.8
    category = rng.choice(spec.n_categories, size=spec.n_items, p=sizes / sizes.sum())
    centroids = rng.standard_normal((spec.n_categories, spec.content_dim))
    z = centroids[category] + spec.content_noise * rng.standard_normal((spec.n_items, spec.content_dim))
    b = rng.standard_normal((spec.n_items, spec.behaviour_dim))
    log_pop = spec.popularity_sigma * rng.standard_normal(spec.n_items)
    # Users: one to three liked categories, a hidden taste, and a 5 + geometric number of picks.
    n_liked = rng.integers(1, 4, size=spec.n_users)
    liked = rng.integers(0, spec.n_categories, size=(spec.n_users, 3))
    mask = np.arange(3)[None, :] < n_liked[:, None]
    p = (centroids[liked] * mask[..., None]).sum(1) / n_liked[:, None]
    p = p + 0.3 * rng.standard_normal(p.shape)
    t = rng.standard_normal((spec.n_users, spec.behaviour_dim))
    n_picks = spec.core + rng.geometric(1.0 / (1.0 + spec.extra_interactions), size=spec.n_users) - 1
    n_picks = np.minimum(n_picks, spec.n_items // 4)

    scale_c = spec.content_weight / np.sqrt(spec.content_dim)
    scale_b = spec.behaviour_weight / np.sqrt(spec.behaviour_dim)
    rows, cols = [], []
    for start in range(0, spec.n_users, 1024):  # chunks of users: the utility matrix is users x items
        stop = min(start + 1024, spec.n_users)
        utility = scale_c * p[start:stop] @ z.T + scale_b * t[start:stop] @ b.T + log_pop[None, :]
        utility += rng.gumbel(size=utility.shape)
        order = np.argsort(-utility, axis=1)
        take = np.arange(spec.n_items)[None, :] < n_picks[start:stop, None]
        user_index = np.broadcast_to(np.arange(start, stop)[:, None], order.shape)
        rows.append(user_index[take])
        cols.append(order[take])
    users, items = np.concatenate(rows), np.concatenate(cols)
    keep = _k_core(users, items, spec.core)
    users, items = users[keep], items[keep]
    # Re-number the survivors densely: MMRec ids are 0..n-1 and item ids are feature rows.
    user_ids, users = np.unique(users, return_inverse=True)
    item_ids, items = np.unique(items, return_inverse=True)
    timestamps = 1_500_000_000 + rng.integers(0, 3 * 365 * 86400, size=len(users))
    frame = pd.DataFrame(
        {"userID": users, "itemID": items, "rating": rng.integers(3, 6, size=len(users)), "timestamp": timestamps}
    )
    split = chronological_split(frame.rename(columns={"userID": "user_idx", "itemID": "item_idx"}), 0.1, 0.1)
    frame["x_label"] = split.map({"train": 0, "valid": 1, "test": 2}).astype(int)
    frame = frame.sort_values(["userID", "timestamp"], kind="mergesort")

    z_kept = z[item_ids]
    visible = max(1, int(round(spec.image_visible * spec.content_dim)))
    nuisance = rng.standard_normal((len(item_ids), spec.content_dim - visible))
    text = _features(z_kept, spec.text_dim, spec.text_noise, rng, relu=False)
    image = _features(
        np.concatenate([z_kept[:, :visible], nuisance], 1), spec.image_dim, spec.image_noise, rng, relu=True
    )

    # The storage module's staging name: a killed run's leftover is cleaned on the next start.
    staging = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        frame.to_csv(staging / f"{name}.inter", sep="\t", index=False)
        np.save(staging / "text_feat.npy", text)
        np.save(staging / "image_feat.npy", image)
        (staging / SPEC_FILE).write_text(json.dumps(record, indent=1))
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root

"""Users' dominant modality on a run's stored assets, and whether a profile-match score helps the hybrid.

    python benchmarks/interest_profile.py --home .mm_pipeline

Reads ``interaction_split``, ``aligned_item_embeddings`` and ``mm_hybrid_model`` from ``<home>/assets``
(a run that materialized them). Prints the dominant modality of every user
(:mod:`mm_pipeline.explain.interest`) and then, one JSON line each, the **validation** NDCG@20 of the stored
hybrid alone and with a profile-match part added at weight ``alpha`` (unit RMS relative to the hybrid's
score): :math:`s_P(u, i) = \\sum_m \\langle v_m(u), z_m(i) \\rangle` with :math:`v_m` the mean of the
user's items (``mean``), its direction (``unit``) or its direction times the positive strength
(``strength``). The other weights stay as the hybrid's search chose them: a first look, not a joint search.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from mm_pipeline.data.types import as_interaction_split
from mm_pipeline.explain.interest import InterestSpace, interest_profiles
from mm_pipeline.recommend.base import EmbeddingRecommender, sparse_from_scipy
from mm_pipeline.recommend.ranking import validator
from mm_pipeline.storage import load_bundle

ALPHAS = (0.05, 0.1, 0.2, 0.4, 0.8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, type=Path, help="the project home of a materialized run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    assets = args.home / "assets"
    data = as_interaction_split(load_bundle(assets / "interaction_split")).data
    hybrid = EmbeddingRecommender.from_bundle(load_bundle(assets / "mm_hybrid_model"))
    history = (data.train > 0).astype(np.float32).tocsr()
    space = InterestSpace.from_aligned(
        load_bundle(assets / "aligned_item_embeddings"), max_size=int(np.diff(history.indptr).max()), seed=args.seed
    )
    interest = interest_profiles(space, history)
    print(interest.frame()["dominant"].value_counts().to_string())
    n_items, n_modalities, dim = space.embeddings.shape
    items = space.embeddings.reshape(n_items, -1)
    strength = np.clip(np.nan_to_num(interest.strength, nan=0.0), 0, None)
    variants = {
        "mean": interest.profile * interest.coherence[:, :, None],
        "unit": interest.profile,
        "strength": interest.profile * strength[:, :, None],
    }
    validate = validator(data)
    print(json.dumps({"variant": "hybrid alone", "alpha": 0.0, **validate(hybrid)}))
    sample = np.random.default_rng(args.seed).choice(data.n_users, min(512, data.n_users), replace=False)
    scale = float(np.sqrt(np.mean(hybrid.score(torch.from_numpy(sample)).numpy() ** 2)))
    base_users = sp.csr_matrix(hybrid.user_rows(torch.arange(data.n_users)).numpy())
    base_items = np.concatenate([hybrid.item_embeddings.numpy(), items], 1).astype(np.float32)
    for name, users in variants.items():
        users = users.reshape(data.n_users, -1)
        rms = float(np.sqrt(np.mean((users[sample] @ items.T) ** 2))) or 1.0
        for alpha in ALPHAS:
            table = sp.hstack([base_users, sp.csr_matrix(users * (alpha * scale / rms))], format="csr")
            model = EmbeddingRecommender("profile", sparse_from_scipy(table), torch.from_numpy(base_items))
            print(json.dumps({"variant": name, "alpha": alpha, **validate(model)}))


if __name__ == "__main__":
    main()

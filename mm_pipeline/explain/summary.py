"""Explanations for a sample of users and what they say about users' interests (no Dagster here).

Each user's *interest profile per part* is the mean share of each score part (collaborative, text, image,
audio, graph) over the explanations of their top-k: the part that dominates it is the user's dominant
part ("mostly by what they sound like"). :func:`interest_by_part` relates it to accuracy on the test split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mm_pipeline.recommend.base import EmbeddingRecommender


def explain_top_k(
    model: EmbeddingRecommender,
    train: sp.csr_matrix,
    users: np.ndarray,
    item_ids: Sequence[str],
    secret: bytes,
    k: int = 20,
) -> pd.DataFrame:
    """The served model's answer for ``users`` (split indices) with ``explain`` on: one row per (user,
    rank), with ``user`` (the index, never the raw id), ``item`` (index), ``item_id``, ``score``, the
    ``share_*`` columns, ``because`` and ``reason``. Goes through the same pyfunc as ``mlflow models
    serve``, so what is measured is what is served."""
    from mm_pipeline.registry.pyfunc import RecommenderPyfunc, export_serving_arrays

    labels = [f"user-{u}" for u in range(model.n_users)]  # stand-in ids: the raw ones are not needed
    arrays = export_serving_arrays(
        model, labels, list(map(str, item_ids)), train, secret, max_k=max(k, 1), max_rows=max(len(users), 1)
    )
    pyfunc = RecommenderPyfunc().load_arrays(arrays, secret=secret)
    users = np.asarray(users, dtype=np.int64)
    answer = pyfunc.predict(
        None,
        pd.DataFrame(
            {
                "user_id": [labels[u] for u in users],
                "k": np.full(users.size, k, dtype=np.int64),
                "explain": np.ones(users.size, dtype=bool),
            }
        ),
    )
    index = {label: u for u, label in enumerate(labels)}
    item_index = {str(i): n for n, i in enumerate(item_ids)}
    answer.insert(0, "user", answer.pop("user_id").map(index).astype(np.int64))
    answer.insert(2, "item", answer["item_id"].map(item_index).astype(np.int64))
    return answer


def interest_by_part(explanations: pd.DataFrame, test: sp.csr_matrix) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user: the mean share of each part over their explained top-k, the dominant part and their
    recall on the test split; and per dominant part: how many users, their mean recall."""
    shares = [c for c in explanations.columns if c.startswith("share_")]
    profile = explanations.groupby("user")[shares].mean()
    profile.columns = [c.removeprefix("share_") for c in shares]
    profile["dominant"] = profile.idxmax(axis=1)
    test = test.tocsr()
    hits = test[explanations["user"].to_numpy(), explanations["item"].to_numpy()]
    found = pd.Series(np.asarray(hits).ravel() > 0).groupby(explanations["user"].to_numpy()).sum()
    relevant = np.diff(test.indptr)[profile.index.to_numpy()]
    profile["test_items"] = relevant
    profile["recall"] = np.where(
        relevant > 0, found.reindex(profile.index).to_numpy() / np.maximum(relevant, 1), np.nan
    )
    by_part = (
        profile.groupby("dominant")
        .agg(users=("recall", "size"), mean_recall=("recall", "mean"))
        .reset_index()
        .rename(columns={"dominant": "dominant part"})
    )
    return profile.reset_index(), by_part

"""Explanations for a sample of users and what they say about users' interests (no Dagster here).

Two readings of a user's interest. *By score part*: the mean share of each part of the model's score
(collaborative, text, image, audio, graph) over the explanations of their top-k; the part that dominates
is the user's dominant part (:func:`interest_by_part`; for the hybrid on dense data nearly always the
collaborative core). *By modality in the aligned space*: how coherent the user's history is in each
modality against random item sets (:mod:`mm_pipeline.explain.interest`); :func:`accuracy_by_interest`
relates the dominant modality to test accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mm_pipeline.evaluate.protocol import MIN_SUBGROUP_USERS
from mm_pipeline.explain.interest import InterestSpace
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.ranking import per_user_metrics_from_top_k, top_k


def explain_top_k(
    model: EmbeddingRecommender,
    train: sp.csr_matrix,
    users: np.ndarray,
    item_ids: Sequence[str],
    secret: bytes,
    k: int = 20,
    interest: InterestSpace | None = None,
) -> pd.DataFrame:
    """The served model's answer for ``users`` (split indices) with ``explain`` on: one row per (user,
    rank), with ``user`` (the index, never the raw id), ``item`` (index), ``item_id``, ``score``, the
    ``share_*`` columns, ``because``, ``reason``, ``interest`` (the user's dominant modality, with
    ``interest`` given: the aligned space, see :mod:`mm_pipeline.explain.interest`) and ``interest_match``.
    Goes through the same pyfunc as ``mlflow models serve``, so what is measured is what is served."""
    from mm_pipeline.registry.pyfunc import RecommenderPyfunc, export_serving_arrays

    labels = [f"user-{u}" for u in range(model.n_users)]  # stand-in ids: the raw ones are not needed
    arrays = export_serving_arrays(
        model,
        labels,
        list(map(str, item_ids)),
        train,
        secret,
        max_k=max(k, 1),
        max_rows=max(len(users), 1),
        interest=interest,
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


def accuracy_by_interest(
    model: EmbeddingRecommender,
    exclude: sp.csr_matrix,
    test: sp.csr_matrix,
    dominant: pd.Series,
    k: int = 20,
    min_users: int = MIN_SUBGROUP_USERS,
) -> pd.DataFrame:
    """Per dominant modality (``dominant``: user index -> modality, ``"mixed"`` or ``"none"``, for the test
    users): how many users, their share, and the model's mean test ``recall@k`` / ``ndcg@k`` (items in
    ``exclude`` not ranked, as in the evaluation protocol). A group under ``min_users`` users gets no
    metrics (NaN) and says so in ``note``, as the report's other subgroups do."""
    users = dominant.index.to_numpy(dtype=np.int64)
    users = users[np.diff(test.tocsr().indptr)[users] > 0]
    metrics = per_user_metrics_from_top_k(top_k(model, users, exclude, k), users, test, ks=(k,))
    return accuracy_by_interest_from(metrics, dominant, k, min_users)


def accuracy_by_interest_from(
    per_user: dict[str, np.ndarray], dominant: pd.Series, k: int = 20, min_users: int = MIN_SUBGROUP_USERS
) -> pd.DataFrame:
    """:func:`accuracy_by_interest` from per-user test metrics already computed (``per_user``: ``user_idx``,
    ``recall@k``, ``ndcg@k``, as :func:`~mm_pipeline.recommend.ranking.per_user_metrics_from_top_k` gives
    them; the report's evaluation has them), for the users in both ``per_user`` and ``dominant``."""
    users = np.asarray(per_user["user_idx"], dtype=np.int64)
    keep = np.isin(users, dominant.index.to_numpy(dtype=np.int64))
    users = users[keep]
    if users.size == 0:
        return pd.DataFrame(columns=["dominant modality", "users", "share", f"recall@{k}", f"ndcg@{k}", "note"])
    frame = pd.DataFrame(
        {
            "dominant modality": dominant.loc[users].to_numpy(),
            f"recall@{k}": np.asarray(per_user[f"recall@{k}"])[keep],
            f"ndcg@{k}": np.asarray(per_user[f"ndcg@{k}"])[keep],
        }
    )
    out = (
        frame.groupby("dominant modality", sort=True)
        .agg(users=(f"recall@{k}", "size"), **{m: (m, "mean") for m in (f"recall@{k}", f"ndcg@{k}")})
        .reset_index()
    )
    out.insert(2, "share", out["users"] / out["users"].sum())
    small = out["users"] < min_users
    out.loc[small, [f"recall@{k}", f"ndcg@{k}"]] = np.nan
    out["note"] = np.where(small, f"not enough data: under {min_users} users", "")
    return out

"""Re-score a *served* model (a registered MLflow model version) on the current evaluation split.

Used to compare challenger and champion honestly: both are measured now, on the same split, with
the same protocol as the evaluation report (:func:`mm_pipeline.evaluate.protocol.evaluate_models`),
and the numbers come from the registered artifact itself, never from metrics logged at training
time.

How: :func:`load_served_model` downloads the model version once, loads the pyfunc from that copy and
takes the serving arrays (``artifacts/serving_arrays.npz``, see :mod:`mm_pipeline.registry.pyfunc`) the
pyfunc read from it, so its tables are held once (a version logged before the pyfunc kept them: read
again from the *same* copy). :func:`served_scorer` maps them onto the current split's users and items:

* a current user whose keyed hash is in the artifact gets its served embedding; any other user gets
  the served popularity fallback as its ranking (as the server would answer),
* a current item the artifact does not know gets score ``-inf`` (ranked last; the server never
  recommends it).

:func:`check_served_predictions` then asks the loaded pyfunc's ``predict`` for a sample of users and
checks that every returned score equals the scorer's score for that (user, item), so the metrics are
provably those of what ``mlflow models serve`` would answer. No Dagster here.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from mm_pipeline.recommend.base import EmbeddingRecommender, sparse_from_scipy
from mm_pipeline.registry.pyfunc import ARTIFACT_KEY, plain_serving_arrays, secret_fingerprint, user_key

if TYPE_CHECKING:
    from mm_pipeline.data.types import SplitData


@dataclass
class ServedModel:
    """A downloaded model version: ``uri`` (pinned), the loaded pyfunc and its serving arrays."""

    uri: str
    pyfunc: Any
    arrays: dict[str, np.ndarray]
    secret: bytes | None = None  # the user key secret the pyfunc was given


def load_served_model(model_uri: str, dst_dir: str | Path | None = None, secret: bytes | None = None) -> ServedModel:
    """Download ``model_uri`` (e.g. ``models:/name/3``), load its pyfunc and read its serving arrays.

    Both come from the same downloaded copy, in ``dst_dir`` when given, else in a temporary folder
    that is removed afterwards (the pyfunc holds its arrays in memory once loaded). The pyfunc uses
    ``secret`` (default: the project's user key secret) to recognise users, like a server given it."""
    if secret is None:
        from mm_pipeline.registry.user_keys import pipeline_user_key_secret

        secret = pipeline_user_key_secret()
    if not isinstance(model_uri, str) or not model_uri:
        raise ValueError(f"model_uri must be a non-empty string, got {model_uri!r}")
    if dst_dir is not None:
        return _load_served_model(model_uri, Path(dst_dir), secret)
    with tempfile.TemporaryDirectory(prefix="mm_pipeline_served_") as tmp:
        return _load_served_model(model_uri, Path(tmp), secret)


def _load_served_model(model_uri: str, dst: Path, secret: bytes) -> ServedModel:
    import mlflow
    from mlflow.models import Model

    dst.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    flavor = Model.load(str(local)).flavors.get("python_function", {})
    entry = (flavor.get("artifacts") or {}).get(ARTIFACT_KEY)
    if not entry or "path" not in entry:
        raise ValueError(
            f"{model_uri} is not an mm_pipeline recommender: its MLmodel has no "
            f"'{ARTIFACT_KEY}' artifact (was it logged with log_recommender?)"
        )
    pyfunc = mlflow.pyfunc.load_model(str(local))
    model = pyfunc.unwrap_python_model().use_secret(secret)
    if hasattr(model, "serving_arrays"):  # the arrays the pyfunc read, not a second copy of its tables
        arrays = model.serving_arrays()
    else:  # a version logged before serving_arrays existed (its own code is what loads): read them again
        with np.load(local / entry["path"], allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    return ServedModel(model_uri, pyfunc, arrays, secret)


@dataclass
class ServedScorer(EmbeddingRecommender):
    """An :class:`EmbeddingRecommender` over the current split's users/items that scores like the
    served model: dot products for users the artifact knows, the popularity fallback for the others,
    ``-inf`` for items it does not know."""

    known_users: torch.Tensor | None = None  # bool [n_users]
    known_items: torch.Tensor | None = None  # bool [n_items]
    fallback_scores: torch.Tensor | None = None  # float32 [n_items]: higher = more popular

    def score(self, users: torch.Tensor) -> torch.Tensor:
        scores = super().score(users)
        scores[:, ~self.known_items] = float("-inf")
        unknown = ~self.known_users[users]
        if bool(unknown.any()):
            scores[unknown] = self.fallback_scores
        return scores


def served_scorer(
    served: ServedModel, user_ids: Sequence[str], item_ids: Sequence[str], name: str = "served"
) -> ServedScorer:
    """Map ``served``'s arrays onto users ``user_ids`` and items ``item_ids`` (raw ids, in the
    split's index order); see the module docstring."""
    arrays = plain_serving_arrays(served.arrays)  # a compact artifact decoded: the tables it serves
    for key in ("item_embeddings", "item_ids", "user_keys", "key_check", "popular_items"):
        if key not in arrays:
            raise ValueError(
                f"{served.uri}: serving arrays lack {key!r} (logged before keyed user hashes? "
                f"retrain and register it again)"
            )
    sparse_users = "user_embeddings" not in arrays
    items_art = np.asarray(arrays["item_embeddings"], dtype=np.float32)
    secret = served.secret
    if secret is not None and secret_fingerprint(secret) != str(np.asarray(arrays["key_check"]).item()):
        secret = None  # keyed with another secret: like the server, recognise no user
    key_to_row = {str(key): row for row, key in enumerate(np.asarray(arrays["user_keys"]).tolist())}
    rows = (
        np.fromiter(
            (key_to_row.get(user_key(str(u), secret), -1) for u in user_ids), dtype=np.int64, count=len(user_ids)
        )
        if secret is not None
        else np.full(len(user_ids), -1, dtype=np.int64)
    )
    art_item = {str(item): i for i, item in enumerate(np.asarray(arrays["item_ids"]).astype(str).tolist())}
    cols = np.fromiter((art_item.get(str(i), -1) for i in item_ids), dtype=np.int64, count=len(item_ids))

    # Rows move to the split's users and items; the columns (embedding dimensions, or for an item-item
    # model the artifact's items as features) stay as they are.
    dim = items_art.shape[1]
    if sparse_users:
        import scipy.sparse as sp

        table = sp.csr_matrix(
            (
                np.asarray(arrays["user_values"], dtype=np.float32),
                np.asarray(arrays["user_indices"]),
                np.asarray(arrays["user_indptr"]),
            ),
            shape=(len(arrays["user_keys"]), dim),
        )
        known_rows = sp.diags((rows >= 0).astype(np.float32)) @ table[np.maximum(rows, 0)]
        known_rows.eliminate_zeros()
        users = sparse_from_scipy(known_rows)
    else:
        users_art = np.asarray(arrays["user_embeddings"], dtype=np.float32)
        dense = np.zeros((len(rows), dim), dtype=np.float32)
        dense[rows >= 0] = users_art[rows[rows >= 0]]
        users = torch.from_numpy(dense)
    if items_art.flags.writeable and np.array_equal(cols, np.arange(items_art.shape[0])):
        items = items_art  # the artifact's catalogue, in the split's order: its table as it is (1.6 GB at 20k items)
    else:
        items = np.zeros((len(cols), dim), dtype=np.float32)
        items[cols >= 0] = items_art[cols[cols >= 0]]
    # Popularity fallback: popular_items is the served order over the artifact's items (best first).
    popular = np.asarray(arrays["popular_items"], dtype=np.int64)
    art_score = np.full(items_art.shape[0], -np.inf, dtype=np.float32)
    art_score[popular] = np.arange(popular.size, 0, -1, dtype=np.float32)
    fallback = np.where(cols >= 0, art_score[np.maximum(cols, 0)], -np.inf).astype(np.float32)
    return ServedScorer(
        name,
        users,
        torch.from_numpy(items),
        info={"model_uri": served.uri},
        known_users=torch.from_numpy(rows >= 0),
        known_items=torch.from_numpy(cols >= 0),
        fallback_scores=torch.from_numpy(fallback),
    )


def check_served_predictions(
    served: ServedModel,
    scorer: ServedScorer,
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    users: np.ndarray,
    k: int = 20,
    max_users: int = 64,
    atol: float = 1e-4,
) -> int:
    """Ask the served pyfunc for the top-``k`` of (up to ``max_users`` of) ``users`` (split indices)
    and check it agrees with ``scorer``: known users get scored rows whose scores match the
    scorer's, unknown users get the fallback. Returns the number of rows checked; raises
    ``RuntimeError`` on any disagreement."""
    users = np.asarray(users, dtype=np.int64)
    if users.size > max_users:
        users = users[np.linspace(0, users.size - 1, max_users).round().astype(np.int64)]
    if users.size == 0:
        return 0
    request = pd.DataFrame({"user_id": [str(user_ids[u]) for u in users], "k": np.full(users.size, k, dtype=np.int64)})
    answer = served.pyfunc.predict(request)
    position = {str(user_ids[u]): int(u) for u in users}
    answer_users = answer["user_id"].astype(str).map(position).to_numpy()
    known = scorer.known_users.numpy()
    fallback = answer["fallback"].to_numpy(dtype=bool)
    if not np.array_equal(fallback, ~known[answer_users]):
        raise RuntimeError(
            f"{served.uri}: the served model's fallback flags disagree with the users found in its serving arrays"
        )
    item_index = {str(item): i for i, item in enumerate(item_ids)}
    scored = ~fallback
    cols = answer["item_id"].astype(str).map(item_index)
    scored &= cols.notna().to_numpy()  # items outside the current catalogue cannot be compared
    if scored.any():
        u = answer_users[scored]
        i = cols[scored].to_numpy(dtype=np.int64)
        with torch.no_grad():
            ours = (
                (scorer.user_rows(torch.from_numpy(u)) * scorer.item_embeddings[torch.from_numpy(i)])
                .sum(1)
                .double()
                .numpy()
            )
        theirs = answer["score"].to_numpy(dtype=np.float64)[scored]
        bad = ~np.isclose(theirs, ours, rtol=atol, atol=atol)
        if bad.any():
            raise RuntimeError(
                f"{served.uri}: {int(bad.sum())} of {bad.size} served scores differ from the "
                f"scores re-computed from its serving arrays (max abs diff "
                f"{float(np.abs(theirs - ours).max()):.3g})"
            )
    return int(len(answer))


def score_served_model(
    served: ServedModel,
    data: SplitData,
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    k: int = 20,
    name: str = "served",
) -> dict[str, float]:
    """Test metrics of ``served`` on ``data`` with the evaluation report's protocol.

    Returns ``recall@k``, ``ndcg@k``, ``precision@k``, ``hit_ratio@k``, ``coverage@k``,
    ``novelty@k`` (all items, training and validation items excluded), ``cold_recall@k`` and
    ``cold_ndcg@k`` (test interactions on items with no training interaction, ranked among those
    items; absent when the split has none), plus ``known_user_share`` / ``known_item_share`` (how
    much of the split the artifact knows) and ``served_rows_checked``.
    """
    from mm_pipeline.evaluate.protocol import evaluate_models

    if len(user_ids) != data.n_users or len(item_ids) != data.n_items:
        raise ValueError(
            f"user_ids ({len(user_ids)}) and item_ids ({len(item_ids)}) must match the split's "
            f"{data.n_users} users and {data.n_items} items"
        )
    scorer = served_scorer(served, user_ids, item_ids, name)
    test_users = np.flatnonzero(np.diff(data.test.tocsr().indptr) > 0)
    checked = check_served_predictions(served, scorer, user_ids, item_ids, test_users, k=k)
    results = evaluate_models({name: scorer}, data, ks=(k,))
    main = results["models"][name]
    out = {
        f"{m}@{k}": float(main[f"{m}@{k}"]) for m in ("recall", "ndcg", "precision", "hit_ratio", "coverage", "novelty")
    }
    cold = results["cold_start"].get(name)
    if cold is not None:
        out[f"cold_recall@{k}"] = float(cold[f"recall@{k}"])
        out[f"cold_ndcg@{k}"] = float(cold[f"ndcg@{k}"])
    out["n_users_evaluated"] = float(main["n_users_evaluated"])
    out["known_user_share"] = float(scorer.known_users.float().mean())
    out["known_item_share"] = float(scorer.known_items.float().mean())
    out["served_rows_checked"] = float(checked)
    return out

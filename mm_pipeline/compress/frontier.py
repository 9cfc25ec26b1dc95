"""The size-quality-latency frontier of the served artifact, and the variant that ships.

For each compression (``fp32``, the plain artifact, then ``fp16``, ``int8``, ``int4_outliers``, ``int4``, see
:mod:`mm_pipeline.compress.artifact`) the serving arrays of the model are built as
``log_recommender`` logs them and measured:

* **bytes**: the ``.npz`` the model directory holds (``np.savez``, as logged), and the ratio to fp32;
* **quality**: NDCG@20 and recall@20 of the model the arrays serve (decoded, see
  :func:`~mm_pipeline.compress.artifact.serving_recommender`) on the validation split (training items
  excluded) and on the test split (training and validation items excluded), and the relative NDCG@20
  loss against fp32 on each. ``fp32_compact`` stores the fp32 values themselves (lossless by construction,
  tested): it serves fp32's scores, so its quality columns are fp32's, not measured again;
* **latency**: milliseconds per request through :meth:`RecommenderPyfunc.predict` (the path ``mlflow
  models serve`` runs), a request being ``latency_batch`` known users with ``k = 20``; median and 90th
  percentile over ``latency_requests`` timed requests, each a seeded draw of users, after one untimed one.

The served variant is the smallest whose relative validation NDCG@20 loss is at most
``max_relative_loss`` (fp32 always qualifies); the test columns are there for the record and never
decide. Users are keyed under a throwaway secret with stand-in labels: no raw id is needed or stored.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mm_pipeline.compress.artifact import artifact_bytes, compact_serving_arrays, serving_recommender, table_arrays
from mm_pipeline.evaluate.metrics import ranking_metrics_from_top_k
from mm_pipeline.evaluate.protocol import rank_for_evaluation
from mm_pipeline.memory import release_freed_memory
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.ranking import SplitRankings
from mm_pipeline.registry.pyfunc import COMPRESSIONS, RecommenderPyfunc, export_serving_arrays

DEFAULT_MAX_RELATIVE_LOSS = 0.01
K = 20


@dataclass
class Frontier:
    """``table``: one row per compression (see the module doc); ``served``: the chosen one; ``arrays``: its
    serving arrays without keys and ids (:func:`~mm_pipeline.compress.artifact.table_arrays`), the only
    variant kept (on a 20k-item catalogue each variant's tables are up to 1.6 GB); ``rankings``: the served
    variant's validation, test and cold-start lists at :data:`K` (:func:`rank_for_evaluation`)."""

    table: pd.DataFrame
    arrays: dict[str, dict[str, np.ndarray]]
    served: str
    rankings: SplitRankings


def request_latency_ms(
    arrays: dict[str, np.ndarray],
    labels: Sequence[str],
    secret: bytes,
    batch: int = 64,
    requests: int = 20,
    seed: int = 0,
    k: int = K,
) -> dict[str, float]:
    """Milliseconds per :meth:`RecommenderPyfunc.predict` call of ``batch`` known users (``labels``, keyed
    under ``secret`` in ``arrays``) at ``k``: ``{"median_ms", "p90_ms"}`` over ``requests`` timed calls
    (one untimed first). Each call draws its users from a generator seeded with ``seed``."""
    for name, value in (("batch", batch), ("requests", requests)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    pyfunc = RecommenderPyfunc().load_arrays(arrays, secret=secret)
    pyfunc.max_rows = max(pyfunc.max_rows, int(batch))
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=object)
    timings = []
    for step in range(int(requests) + 1):
        request = pd.DataFrame(
            {"user_id": labels[rng.integers(0, labels.size, int(batch))], "k": np.full(int(batch), k, np.int64)}
        )
        start = time.perf_counter()
        pyfunc.predict(None, request)
        if step:  # the first call warms caches up
            timings.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": float(np.median(timings)), "p90_ms": float(np.percentile(timings, 90))}


def _quality(model: EmbeddingRecommender, data, popularity: np.ndarray) -> tuple[dict[str, float], SplitRankings]:
    """The variant's validation and test NDCG/recall@K, and its lists (the cold-start ones too: the report
    reads the served variant's lists instead of ranking it again), from one scoring pass."""
    common = dict(ks=(K,), item_popularity=popularity, n_train_users=data.n_users)
    ranked = rank_for_evaluation(model, data, K)
    valid = ranking_metrics_from_top_k(ranked.valid_top, ranked.users, data.valid, **common)
    test = ranking_metrics_from_top_k(ranked.test_top, ranked.users, data.test, **common)
    quality = {
        f"valid_ndcg@{K}": float(valid[f"ndcg@{K}"]),
        f"valid_recall@{K}": float(valid[f"recall@{K}"]),
        f"test_ndcg@{K}": float(test[f"ndcg@{K}"]),
        f"test_recall@{K}": float(test[f"recall@{K}"]),
    }
    return quality, ranked


def compression_frontier(
    model: EmbeddingRecommender,
    data,
    item_ids: Sequence[str],
    compressions: Sequence[str] = COMPRESSIONS,
    max_relative_loss: float = DEFAULT_MAX_RELATIVE_LOSS,
    serve: str = "auto",
    latency_batch: int = 64,
    latency_requests: int = 20,
    seed: int = 0,
) -> Frontier:
    """Measure each compression of ``model``'s served artifact on ``data`` (a ``SplitData``) and choose the
    served one (module doc). ``serve`` = ``"auto"`` applies the quality gate; a compression name forces
    that variant (``"fp32"`` keeps the plain artifact)."""
    compressions = list(dict.fromkeys(["fp32", *compressions]))
    unknown = [c for c in compressions if c not in COMPRESSIONS]
    if unknown:
        raise ValueError(f"unknown compressions {unknown}; choose from {COMPRESSIONS}")
    if serve != "auto" and serve not in compressions:
        raise ValueError(f"serve must be 'auto' or one of {compressions}, got {serve!r}")
    if not 0 <= float(max_relative_loss) < 1:
        raise ValueError(f"max_relative_loss must lie in [0, 1), got {max_relative_loss!r}")
    labels = [f"user-{u}" for u in range(model.n_users)]  # stand-ins: the raw ids are not needed
    secret = secrets.token_bytes(32)  # keys the stand-ins for this measurement only; never stored
    plain = export_serving_arrays(
        model, labels, list(map(str, item_ids)), data.train, secret, max_rows=max(int(latency_batch), 1)
    )
    popularity = np.asarray(data.train.sum(axis=0)).ravel()
    rows: list[dict] = []
    # The variant that would ship so far, (bytes, name, arrays, lists): the gate's reference, fp32, is measured
    # first, so the served one is known as the variants come, and only it is kept (never encoded twice).
    kept: tuple[int, str, dict, SplitRankings] | None = None
    first: SplitRankings | None = None
    for compression in compressions:
        arrays = compact_serving_arrays(plain, compression)
        if compression == "fp32_compact" and rows and rows[0]["variant"] == "fp32":
            quality = {k: v for k, v in rows[0].items() if k.startswith(("valid_", "test_"))}  # the same scores
            ranked = first
        else:
            decoded = serving_recommender(arrays, f"{model.name}[{compression}]", info=dict(model.info))
            quality, ranked = _quality(decoded, data, popularity)
            del decoded
        if first is None:  # fp32's lists: fp32_compact serves the same scores
            first = ranked
        latency = request_latency_ms(arrays, labels, secret, batch=latency_batch, requests=latency_requests, seed=seed)
        row = {
            "variant": compression,
            "bytes": artifact_bytes(arrays),
            **quality,
            "latency_median_ms": latency["median_ms"],
            "latency_p90_ms": latency["p90_ms"],
        }
        rows.append(row)
        if serve == "auto":
            reference = rows[0][f"valid_ndcg@{K}"]
            loss = (reference - row[f"valid_ndcg@{K}"]) / reference if reference > 0 else 0.0
            ships = loss <= float(max_relative_loss) + 1e-12 and (
                kept is None or (row["bytes"], compression) < kept[:2]
            )
        else:
            ships = compression == serve
        if ships:
            kept = (row["bytes"], compression, table_arrays(arrays), ranked)
        del arrays
        release_freed_memory()
    table = pd.DataFrame(rows)
    base = table.iloc[0]
    table.insert(2, "size_ratio", base["bytes"] / table["bytes"])
    for split in ("valid", "test"):
        reference = base[f"{split}_ndcg@{K}"]
        loss = (reference - table[f"{split}_ndcg@{K}"]) / reference if reference > 0 else 0.0 * table["bytes"]
        table[f"{split}_ndcg_loss"] = loss
    passes = table["valid_ndcg_loss"] <= float(max_relative_loss) + 1e-12
    table["passes_gate"] = passes
    if serve == "auto":
        served = str(table.loc[passes].sort_values(["bytes", "variant"]).iloc[0]["variant"])
    else:
        served = serve
    table["served"] = table["variant"] == served
    assert kept is not None and kept[1] == served  # the same rule, applied as the rows came
    return Frontier(table, {served: kept[2]}, served, kept[3])

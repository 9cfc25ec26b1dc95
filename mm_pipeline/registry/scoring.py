"""Using the served model outside Dagster: find the champion, ask it for one user's top-k, and score
every user it knows in batch (a Parquet table). Plain MLflow, numpy and pandas; no Dagster.

The batch table follows the serving artifact's privacy rule (:mod:`mm_pipeline.registry.pyfunc`):
users appear only as their keyed hash ``user_key`` (HMAC under the user key secret, which is not in
the file; the file's key-value metadata holds the secret's fingerprint), so an application that holds
a raw id and the secret finds its rows with :func:`recommendations_for`. Treat the file as personal
data, like the artifact.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from mm_pipeline.registry.champion import CHAMPION_ALIAS, alias_version
from mm_pipeline.registry.pyfunc import RecommenderPyfunc, secret_fingerprint, user_key

BATCH_COLUMNS = ("user_key", "rank", "item_id", "score")
#: Parquet key-value metadata of a batch table (prefix ``mm_pipeline.``): the fingerprint of the secret
#: its keys were made with (``key_check``) and which model version wrote it.
ABOUT_PREFIX = "mm_pipeline."
DEFAULT_CHUNK_USERS = 2048


class NoChampionError(LookupError):
    """There is no champion to serve from yet (no registered model, or no ``champion`` alias)."""


def champion_model_uri(client: MlflowClient, name: str) -> tuple[str, str]:
    """``(version, "models:/<name>/<version>")`` of ``name``'s champion, pinned to the version the
    alias names now; :class:`NoChampionError` when there is none."""
    try:
        version = alias_version(client, name, CHAMPION_ALIAS)
    except LookupError as exc:
        raise NoChampionError(f"no model named {name!r} is registered yet") from exc
    if version is None:
        raise NoChampionError(f"registered model {name!r} has no {CHAMPION_ALIAS!r} alias yet")
    return version, f"models:/{name}/{version}"


def store_is_empty(tracking_uri: str) -> bool:
    """Whether ``tracking_uri`` is a SQLite store whose file does not exist (nothing ran yet): asking
    MLflow would create the database just to find it empty."""
    if not tracking_uri.startswith("sqlite:///"):
        return False
    return not Path(tracking_uri.removeprefix("sqlite:///")).expanduser().exists()


def score_all_users(
    arrays: Mapping[str, np.ndarray], k: int = 20, chunk_users: int = DEFAULT_CHUNK_USERS, secret: bytes | None = None
) -> pd.DataFrame:
    """The top ``k`` of every user in the serving arrays (as the served model answers each of
    them: seen items excluded, ties to the lower item index), as columns :data:`BATCH_COLUMNS`.

    Scored ``chunk_users`` users at a time, each chunk one matrix product of at most
    ``[chunk_users, n_items]`` floats. Users are read from the stored keys, so no secret is needed
    (``secret``, when given, only spares the loader looking for one)."""
    if isinstance(chunk_users, bool) or not isinstance(chunk_users, int) or chunk_users < 1:
        raise ValueError(f"chunk_users must be a positive integer, got {chunk_users!r}")
    model = RecommenderPyfunc().load_arrays(arrays, secret=secret)
    starts = range(0, model.n_users, chunk_users)
    parts = [model.rank_user_rows(np.arange(s, min(s + chunk_users, model.n_users)), k) for s in starts]
    if not parts:
        return model.rank_user_rows(np.arange(0), k)
    table = pd.concat(parts, ignore_index=True)
    table["user_key"] = table["user_key"].astype("category")  # a 64-character digest repeated k times
    return table


def write_recommendations(path: str | Path, table: pd.DataFrame, key_check: str, about: Mapping[str, str]) -> Path:
    """Write a batch table to ``path`` (Parquet) atomically: a reader sees the previous file or
    this one, and a killed write leaves only a ``.<name>.tmp-*`` leftover that the next start
    cleans. ``key_check`` (the secret's fingerprint, :func:`~mm_pipeline.registry.pyfunc.secret_fingerprint`)
    and ``about`` (e.g. the model URI) go into the file's key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mm_pipeline.storage import atomic_write_bytes

    missing = [c for c in BATCH_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"a batch table needs the columns {list(BATCH_COLUMNS)}; missing {missing}")
    arrow = pa.Table.from_pandas(table[list(BATCH_COLUMNS)], preserve_index=False)
    extra = {f"{ABOUT_PREFIX}{key}": str(value) for key, value in {**about, "key_check": key_check}.items()}
    arrow = arrow.replace_schema_metadata(
        {**(arrow.schema.metadata or {}), **{k.encode(): v.encode() for k, v in extra.items()}}
    )
    buffer = io.BytesIO()
    pq.write_table(arrow, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def read_recommendations(path: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """A batch table and its ``mm_pipeline.*`` metadata (``key_check``, ``model_uri``, ...; prefix removed)."""
    import pyarrow.parquet as pq

    arrow = pq.read_table(path)
    about = {
        k.decode(): v.decode() for k, v in (arrow.schema.metadata or {}).items() if k.decode().startswith(ABOUT_PREFIX)
    }
    return arrow.to_pandas(), {k.removeprefix(ABOUT_PREFIX): v for k, v in about.items()}


def recommendations_for(table: pd.DataFrame, about: Mapping[str, str], user_id: object, secret: bytes) -> pd.DataFrame:
    """The rows of raw user id ``user_id`` in a batch table whose metadata is ``about`` (empty: the model
    does not know the user, who gets the popularity fallback when served). ``secret`` must be the one the
    keys were made with."""
    if secret_fingerprint(secret) != about.get("key_check"):
        raise ValueError(
            "this user key secret is not the one the batch table was keyed with (rotated?): "
            "score the users again under the current secret"
        )
    key = user_key(str(user_id), secret)
    return table[table["user_key"].astype(str) == key].reset_index(drop=True)

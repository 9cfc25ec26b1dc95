"""The ``champion`` alias of a registered model, its history, and promotion tags on model versions.

Plain MLflow (no Dagster). Every function takes an :class:`~mlflow.tracking.MlflowClient`, so the
caller decides which store it talks to.

* The alias ``champion`` is the version that serves (``models:/<name>@champion``); ``challenger`` is
  the newest registered version (set by the ``registered_model`` asset).
* Every change of champion made through :func:`set_champion` is appended to the registered-model tag
  ``mm_pipeline.champion_history`` (comma-separated versions, oldest first, last
  :data:`MAX_HISTORY` kept). :func:`rollback_champion` moves the alias back to the previous entry and
  drops the entries after it, so repeated rollbacks walk further back.
* Promotion decisions are written as model-version tags under ``mm_pipeline.promotion.``.
* Moving the alias is a read-modify-write of the alias and the history tag, so callers hold
  :func:`champion_lock` around it: a file lock (``fcntl.flock``) for every process sharing the store
  or project home, plus a PostgreSQL advisory lock when the tracking store is a PostgreSQL database
  (processes on other hosts). ``set_champion(..., expected_previous=v)`` is the compare-and-set: it
  refuses (:class:`ChampionMovedError`) when the alias no longer points where the caller last saw it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mm_pipeline import locks

CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
TAG_CHAMPION_HISTORY = "mm_pipeline.champion_history"
#: Set on versions whose artifacts were deleted when a user was forgotten (mm_pipeline.privacy.purge).
TAG_ARTIFACTS_DELETED = "mm_pipeline.forget.artifacts_deleted"
PROMOTION_TAG_PREFIX = "mm_pipeline.promotion."
MAX_HISTORY = 100
LOCK_TIMEOUT_S = 300.0  # a promotion holds the lock for a few registry calls, never for training
_ANY = object()  # expected_previous default: no compare-and-set
_MAX_TAG_VALUE = 5000  # model-registry tag values are limited to 5000 characters
_INVALID_TAG_CHAR = re.compile(r"[^/\w.\- :]")


@dataclass(frozen=True)
class ChampionChange:
    """What :func:`set_champion` / :func:`rollback_champion` did: the alias moved from
    ``previous`` (``None``: there was no champion) to ``current``; ``history`` is the new tag value."""

    name: str
    previous: str | None
    current: str
    history: list[str]


class ChampionMovedError(RuntimeError):
    """The ``champion`` alias moved since the caller read it (compare-and-set failed)."""

    def __init__(self, name: str, expected: str | None, current: str | None):
        self.name, self.expected, self.current = name, expected, current
        super().__init__(
            f"the champion of {name!r} moved from {expected or '(none)'} to {current or '(none)'} "
            "while this change was being prepared; decide again against the current champion"
        )


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"registered model name must be a non-empty string, got {name!r}")
    return name


def _check_version(version: Any) -> str:
    text = str(version).strip() if isinstance(version, (int, str)) and not isinstance(version, bool) else ""
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"version must be a positive integer (or its string), got {version!r}")
    return str(int(text))


def _is_not_found(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or ``None`` when the alias is not set.

    Raises a ``LookupError`` when the registered model itself does not exist."""
    _check_name(name)
    registered = _registered_model(client, name)
    version = (registered.aliases or {}).get(alias)
    return str(version) if version is not None else None


def _registered_model(client: MlflowClient, name: str):
    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if _is_not_found(exc):
            raise LookupError(
                f"registered model {name!r} does not exist in the MLflow model registry; "
                f"materialize registered_model first"
            ) from exc
        raise


def champion_history(client: MlflowClient, name: str) -> list[str]:
    """The recorded champions of ``name``, oldest first (empty when none was recorded)."""
    registered = _registered_model(client, _check_name(name))
    raw = (registered.tags or {}).get(TAG_CHAMPION_HISTORY, "")
    return [v.strip() for v in raw.split(",") if v.strip()]


def _write_history(client: MlflowClient, name: str, history: list[str]) -> list[str]:
    history = history[-MAX_HISTORY:]
    client.set_registered_model_tag(name, TAG_CHAMPION_HISTORY, ",".join(history))
    return history


def _require_version(client: MlflowClient, name: str, version: str) -> None:
    """The version exists and can still serve (its artifacts were not deleted by ``mm-pipeline forget``)."""
    try:
        found = client.get_model_version(name, version)
    except MlflowException as exc:
        if _is_not_found(exc):
            raise LookupError(f"registered model {name!r} has no version {version}") from exc
        raise
    request = (found.tags or {}).get(TAG_ARTIFACTS_DELETED)
    if request:
        raise LookupError(
            f"registered model {name!r} version {version} cannot serve again: its artifacts were deleted "
            f"when a user was forgotten (forget request {request}, tag {TAG_ARTIFACTS_DELETED})"
        )


def set_champion(client: MlflowClient, name: str, version: str | int, expected_previous: Any = _ANY) -> ChampionChange:
    """Point the ``champion`` alias of ``name`` at ``version`` and append it to the history.

    The version must exist. Setting the version that already is champion changes nothing (and adds
    no history entry). ``expected_previous`` (a version, or ``None`` for "no champion"): raise
    :class:`ChampionMovedError` instead when the alias points elsewhere now. Hold
    :func:`champion_lock` around the call so that the check and the change are one step."""
    _check_name(name)
    version = _check_version(version)
    _require_version(client, name, version)
    previous = alias_version(client, name, CHAMPION_ALIAS)
    if expected_previous is not _ANY:
        expected = None if expected_previous is None else _check_version(expected_previous)
        if previous != expected:
            raise ChampionMovedError(name, expected, previous)
    history = champion_history(client, name)
    if previous == version and history and history[-1] == version:
        return ChampionChange(name, previous, version, history)
    if previous is not None and (not history or history[-1] != previous):
        history.append(previous)  # the alias was moved outside this module: keep it in the record
    client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
    if not history or history[-1] != version:
        history.append(version)
    return ChampionChange(name, previous, version, _write_history(client, name, history))


def rollback_champion(client: MlflowClient, name: str) -> ChampionChange:
    """Move ``champion`` back to the champion before the current one, per the history tag.

    The trailing history entries equal to the current champion are dropped; the alias moves to the
    last remaining entry, which stays last. Raises ``LookupError`` when there is no earlier
    champion to go back to."""
    _check_name(name)
    current = alias_version(client, name, CHAMPION_ALIAS)
    history = champion_history(client, name)
    while history and history[-1] == current:
        history.pop()
    if not history:
        raise LookupError(
            f"registered model {name!r} has no earlier champion to roll back to "
            f"(current champion: {current or 'none'}; {TAG_CHAMPION_HISTORY} holds no other "
            f"version)"
        )
    target = history[-1]
    _require_version(client, name, target)
    client.set_registered_model_alias(name, CHAMPION_ALIAS, target)
    return ChampionChange(name, current, target, _write_history(client, name, history))


def tag_key(name: str) -> str:
    """``name`` as a model-version tag key: ``@`` becomes ``_at_``, other unusual characters ``_``."""
    return _INVALID_TAG_CHAR.sub("_", name.replace("@", "_at_"))


def tag_version(
    client: MlflowClient, name: str, version: str | int, tags: Mapping[str, Any], prefix: str = PROMOTION_TAG_PREFIX
) -> dict[str, str]:
    """Set ``prefix + key`` tags on a model version (values stringified, floats to 6 significant
    digits, truncated to the registry's limit). Returns the tags written."""
    version = _check_version(version)
    written: dict[str, str] = {}
    for key, value in tags.items():
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        full = prefix + tag_key(str(key))
        written[full] = text[:_MAX_TAG_VALUE]
        client.set_model_version_tag(name, version, full, written[full])
    return written


# ------------------------------------------------------------------------------------------- locking
def _lock_file(name: str, tracking_uri: str | None, lock_dir: str | Path) -> Path:
    """Next to the SQLite database when the store is one (every process writing it shares that
    folder, whatever its project home), else in ``lock_dir``."""
    folder = Path(lock_dir)
    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).expanduser().resolve().parent
    return folder / f".{tag_key(name)}.champion.lock"


def advisory_lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock``, from the registered model name."""
    return locks.advisory_lock_key(f"mm_pipeline.champion:{name}")


@contextlib.contextmanager
def champion_lock(
    name: str,
    lock_dir: str | Path,
    tracking_uri: str | None = None,
    timeout_s: float = LOCK_TIMEOUT_S,
    lock_db: str | None = None,
) -> Iterator[None]:
    """Hold the lock that serialises changes of ``name``'s champion alias and history.

    Always an exclusive ``fcntl.flock`` on a lock file next to the SQLite store (``tracking_uri``
    ``sqlite:///...``) or in ``lock_dir``; with a PostgreSQL ``tracking_uri`` also a session-level
    advisory lock keyed by the name, so processes on other machines wait too. With an MLflow tracking
    *server* URI (``http(s)://``) the advisory lock is taken on ``lock_db`` (a PostgreSQL URL, e.g.
    ``$MM_PIPELINE_LOCK_DB``) when given, else there is only the file lock: use
    :func:`set_champion`'s ``expected_previous`` as well. Raises ``TimeoutError`` after ``timeout_s`` seconds."""
    _check_name(name)
    holder = "another promotion or rollback"
    path = _lock_file(name, tracking_uri, lock_dir)
    with locks.file_lock(path, timeout_s, f"the champion lock {path}", holder):
        database = tracking_uri if locks.is_postgres(tracking_uri) else lock_db
        if locks.is_postgres(database):
            key = advisory_lock_key(name)
            with locks.postgres_lock(
                database,
                f"mm_pipeline.champion:{name}",
                timeout_s,
                f"the PostgreSQL advisory lock {key} for {name!r}",
                holder,
            ):
                yield
        else:
            yield

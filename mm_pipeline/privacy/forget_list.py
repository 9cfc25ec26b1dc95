"""The forget list: users whose interactions the pipeline leaves out, stored without their ids.

``<project home>/privacy/forgotten.json`` holds one *forget hash* per forgotten user, never the id:
``HMAC-SHA256(forget secret, "mm_pipeline.forget" NUL user_id)``. Two choices keep the list itself from
being a trace of the user:

* **Its own secret.** The forget secret (``$MM_PIPELINE_FORGET_KEY_SECRET``, a file named by
  ``$MM_PIPELINE_FORGET_KEY_SECRET_FILE``, else ``<home>/secrets/forget_key``, created on first use) is
  not the user key secret the served models key users with. So the list holds neither the id nor the
  user's serving key (``HMAC(user key secret, id)``), and rotating the user key secret (a routine
  operation, see docs/privacy.md) leaves the list valid. The label in front of the id keeps the two
  apart even if someone gives both the same value.
* **A fingerprint, not the secret.** The list records a short HMAC of a fixed label under its secret;
  a process holding another forget secret cannot match any entry, so :func:`forget_filter` refuses
  to run instead of silently training on forgotten users again.

:class:`ForgetFilter` is what every read of the training data applies (``raw_interactions``, the inbox
partitions): it hashes each *distinct* user id once and drops the rows of those on the list.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from mm_pipeline.datasets.schema import DataError

FORGET_SECRET_ENV = "MM_PIPELINE_FORGET_KEY_SECRET"
FORGET_SECRET_FILE_ENV = "MM_PIPELINE_FORGET_KEY_SECRET_FILE"
FORGET_SECRET_HOME_FILE = ("secrets", "forget_key")
PRIVACY_FOLDER = "privacy"
FORGET_LIST_NAME = "forgotten.json"
FORMAT_VERSION = 1
LOCK_TIMEOUT_S = 60.0
_LABEL = b"mm_pipeline.forget\x00"
_KEY_CHECK_LABEL = b"mm_pipeline.forget_key_check"
_HASH = re.compile(r"^[0-9a-f]{64}$")
# Separators a quarantined raw line may use between its cells (CSV, TSV, MovieLens '::', '|').
_TOKENS = re.compile(r"::|[,\t;| ]+")


class ForgetListError(DataError):
    """The forget list cannot be applied (unreadable, or made with another forget secret): the pipeline
    must not train until it can."""


def privacy_folder(home: str | Path) -> Path:
    """``<home>/privacy``, created owner-only."""
    folder = Path(home) / PRIVACY_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def forget_list_path(home: str | Path) -> Path:
    return Path(home) / PRIVACY_FOLDER / FORGET_LIST_NAME


def forget_secret(home: str | Path | None, create: bool = False) -> bytes | None:
    """The forget secret: ``$MM_PIPELINE_FORGET_KEY_SECRET``, else the file named by
    ``$MM_PIPELINE_FORGET_KEY_SECRET_FILE``, else ``<home>/secrets/forget_key`` (made when ``create``)."""
    from mm_pipeline.registry.pyfunc import read_secret

    return read_secret(FORGET_SECRET_ENV, FORGET_SECRET_FILE_ENV, FORGET_SECRET_HOME_FILE, home=home, create=create)


def forget_hash(user_id, secret: bytes) -> str:
    """What the forget list stores for ``user_id``: ``HMAC-SHA256(secret, label + str(user_id))``, hex."""
    return hmac.new(secret, _LABEL + str(user_id).encode("utf-8"), hashlib.sha256).hexdigest()


def key_check(secret: bytes) -> str:
    """A short HMAC of a fixed label: which forget secret a list was made with, saying nothing of it."""
    return hmac.new(secret, _KEY_CHECK_LABEL, hashlib.sha256).hexdigest()[:16]


@dataclass(frozen=True)
class ForgetEntry:
    """One forgotten user: the forget hash, when it was added (UTC, ISO 8601) and by which request."""

    hash: str
    added_at: str
    request: str


@dataclass(frozen=True)
class ForgetList:
    path: Path
    key_check: str
    entries: tuple[ForgetEntry, ...]

    @property
    def hashes(self) -> frozenset[str]:
        return frozenset(e.hash for e in self.entries)

    def __contains__(self, forget_hash: str) -> bool:
        return forget_hash in self.hashes

    def __len__(self) -> int:
        return len(self.entries)


def load_forget_list(home: str | Path) -> ForgetList | None:
    """The project's forget list, or ``None`` when nobody was ever forgotten. A list that cannot be read
    raises :class:`ForgetListError` (never treated as empty)."""
    path = forget_list_path(home)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ForgetListError(f"{path}: the forget list cannot be read ({exc}); restore it from a backup") from exc
    try:
        entries = tuple(ForgetEntry(str(e["hash"]), str(e["added_at"]), str(e["request"])) for e in data["entries"])
        check = str(data["key_check"])
    except (KeyError, TypeError) as exc:
        raise ForgetListError(f"{path}: not a forget list (missing {exc}); restore it from a backup") from exc
    bad = [e.hash for e in entries if not _HASH.match(e.hash)]
    if bad:
        raise ForgetListError(f"{path}: {len(bad)} entr(y/ies) are not 64 hex digits; restore it from a backup")
    return ForgetList(path, check, entries)


def _write(path: Path, forget_list: ForgetList) -> None:
    text = json.dumps(
        {
            "format": FORMAT_VERSION,
            "about": "Users left out of everything mm_pipeline trains on, as HMACs under the forget secret "
            "(never the ids); see docs/privacy.md.",
            "key_check": forget_list.key_check,
            "entries": [e.__dict__ for e in forget_list.entries],
        },
        indent=1,
    )
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{time.time_ns()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def add_to_forget_list(home: str | Path, forget_hash: str, request: str, secret: bytes) -> tuple[ForgetList, bool]:
    """Add ``forget_hash`` to the list (created when missing), under a lock and atomically. Returns the
    list and whether the hash was new. A list made with another forget secret raises ForgetListError."""
    from mm_pipeline import locks

    if not _HASH.match(forget_hash):
        raise ValueError("a forget hash is 64 lowercase hex digits")
    folder = privacy_folder(home)
    with locks.file_lock(folder / ".forgotten.lock", LOCK_TIMEOUT_S, "the forget list lock", "another forget"):
        current = load_forget_list(home)
        check = key_check(secret)
        if current is not None and current.key_check != check:
            raise ForgetListError(_mismatch(current.path))
        if current is not None and forget_hash in current:
            return current, False
        entries = (current.entries if current else ()) + (ForgetEntry(forget_hash, now_iso(), request),)
        updated = ForgetList(forget_list_path(home), check, entries)
        _write(updated.path, updated)
        return updated, True


def _mismatch(path: Path) -> str:
    return (
        f"{path} was made with another forget secret ({FORGET_SECRET_ENV} / {FORGET_SECRET_FILE_ENV} / "
        f"<home>/{'/'.join(FORGET_SECRET_HOME_FILE)}): its entries cannot be matched, so forgotten users "
        "would come back. Give this process the secret the list was made with"
    )


class ForgetFilter:
    """Drops the rows of forgotten users. Each distinct id is hashed once (a user with 10 000 rows costs
    one HMAC), then the rows are selected with one vectorised lookup."""

    def __init__(self, hashes: Iterable[str], secret: bytes):
        self.hashes = frozenset(hashes)
        self._base = hmac.new(secret, _LABEL, hashlib.sha256)

    def _hash(self, user_id: str) -> str:
        h = self._base.copy()
        h.update(user_id.encode("utf-8"))
        return h.hexdigest()

    def forgotten(self, user_ids) -> np.ndarray:
        """A boolean per value of ``user_ids``: the id is on the forget list (missing values are not)."""
        codes, uniques = pd.factorize(pd.Series(user_ids, copy=False))
        if not len(uniques):
            return np.zeros(len(codes), dtype=bool)
        listed = np.fromiter((self._hash(str(u)) in self.hashes for u in uniques), dtype=bool, count=len(uniques))
        return np.where(codes >= 0, listed[np.maximum(codes, 0)], False)

    def drop(self, frame: pd.DataFrame, column: str = "user_id") -> tuple[pd.DataFrame, np.ndarray]:
        """``frame`` without the forgotten users' rows, and the boolean mask of the rows removed."""
        mask = self.forgotten(frame[column])
        if not mask.any():
            return frame, mask
        return frame[~mask].reset_index(drop=True), mask

    def mentioned(self, texts) -> np.ndarray:
        """A boolean per text: the text, or one of its cells split on the usual separators, is a forgotten
        id (for quarantined raw lines, which hold whole rows)."""
        texts = pd.Series(texts, copy=False).fillna("").astype(str).reset_index(drop=True)
        if not len(texts):
            return np.zeros(0, dtype=bool)
        tokens = texts.str.split(_TOKENS).explode()
        tokens = pd.concat([texts, tokens.str.strip().str.strip("\"'")])
        hit = self.forgotten(tokens.to_numpy())
        return (
            pd.Series(hit, index=tokens.index).groupby(level=0).any().reindex(texts.index, fill_value=False).to_numpy()
        )


def forget_filter(home: str | Path) -> ForgetFilter | None:
    """The filter for the project's forget list; ``None`` when the list is missing or empty. Raises
    :class:`ForgetListError` when there is a list but not the forget secret it was made with."""
    forget_list = load_forget_list(home)
    if forget_list is None or not len(forget_list):
        return None
    try:
        secret = forget_secret(home)
    except ValueError as exc:
        raise ForgetListError(f"{forget_list.path} cannot be applied: the forget secret: {exc}") from exc
    if secret is None:
        raise ForgetListError(
            f"{forget_list.path} lists {len(forget_list)} forgotten user(s) but this process has no forget "
            f"secret ({FORGET_SECRET_ENV}, {FORGET_SECRET_FILE_ENV} or <home>/{'/'.join(FORGET_SECRET_HOME_FILE)})"
            ": it cannot leave them out. Give it the secret the list was made with"
        )
    if key_check(secret) != forget_list.key_check:
        raise ForgetListError(_mismatch(forget_list.path))
    return ForgetFilter(forget_list.hashes, secret)

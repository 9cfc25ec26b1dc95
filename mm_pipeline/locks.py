"""Exclusive locks that hold across processes and machines, released by the OS when a holder dies.

* :func:`file_lock`: ``fcntl.flock`` on a lock file: every process on one machine (or sharing the
  folder on a filesystem that honours ``flock``).
* :func:`postgres_lock`: a session-level PostgreSQL advisory lock: every process that reaches the
  database, on any machine; PostgreSQL drops it when the holder's connection goes.

No Dagster or MLflow here: :mod:`mm_pipeline.registry.champion` (the champion alias) and
:mod:`mm_pipeline.defs.admission` (runs started from the command line) build on them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

POLL_S = 0.05


def advisory_lock_key(name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_lock``, from a lock name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def is_postgres(uri: str | None) -> bool:
    return bool(uri) and uri.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


def wait_for(
    what: str,
    timeout_s: float | None,
    attempt: Callable[[], bool],
    poll_s: float = POLL_S,
    holder: str = "another process",
) -> None:
    """Call ``attempt`` until it returns true; ``TimeoutError`` naming ``what`` after ``timeout_s``
    seconds (``None``: wait for ever)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not attempt():
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(
                f"could not take {what} within {timeout_s:g} s: {holder} holds it; retry when it has finished"
            )
        time.sleep(poll_s)


@contextlib.contextmanager
def file_lock(
    path: str | Path, timeout_s: float | None, what: str = "", holder: str = "another process"
) -> Iterator[None]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:

        def attempt() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        wait_for(what or f"the lock {path}", timeout_s, attempt, holder=holder)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def postgres_lock(
    uri: str, name: str, timeout_s: float | None, what: str = "", holder: str = "another process"
) -> Iterator[None]:
    """Hold the advisory lock keyed by ``name`` on the PostgreSQL database ``uri`` (a SQLAlchemy URL)."""
    import sqlalchemy as sa

    key = advisory_lock_key(name)
    # A session-level advisory lock lives as long as this connection; NullPool: nothing is reused.
    engine = sa.create_engine(uri, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:

            def attempt() -> bool:
                taken = conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()
                conn.commit()
                return bool(taken)

            wait_for(what or f"the PostgreSQL advisory lock {key} for {name!r}", timeout_s, attempt, holder=holder)
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()
    finally:
        engine.dispose()

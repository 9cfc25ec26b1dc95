"""The steps of forgetting a user, as plain functions (``mm-pipeline forget`` runs them, with the retrain
between :func:`prepare` and :func:`finish`; no Dagster here).

1. :func:`find_user`: where the user's interactions are (the source, the stored inbox partitions, the
   user's own inbox files). An id found nowhere is refused unless the caller insists (a typo would
   otherwise retrain for nothing).
2. :func:`prepare`: the forget hash goes on the forget list (from now on every read of the training
   data leaves the user out) and the stored inbox copies are rewritten without them.
3. The caller retrains, registers and promotes (``full_pipeline`` with ``model_promotion``'s
   ``forget_request``: the old champion cannot stay).
4. :func:`finish`: everything made before (asset versions, run reports, quarantined rows, MLflow
   artifacts of older runs and model versions) is deleted; :func:`verify` checks that the new champion
   and the batch scores do not know the user; :func:`append_audit` records what was done.

Nothing here writes the id or the user's serving key anywhere: the audit record and the forget list hold
the forget hash (:mod:`.forget_list`), which matches neither.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mm_pipeline import settings
from mm_pipeline.privacy.forget_list import (
    ForgetFilter,
    ForgetList,
    add_to_forget_list,
    forget_hash,
    forget_secret,
    now_iso,
    privacy_folder,
)

AUDIT_NAME = "audit.jsonl"


def new_request_id() -> str:
    """An opaque id for one forget request (in run config, tags and the audit; says nothing of the user)."""
    return f"forget-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}"


# --------------------------------------------------------------------------------------------- finding
@dataclass
class UserPresence:
    """How many interactions of the user each place holds: the source, each stored inbox partition
    (by digest), and the inbox files dropped by people (by name; those are theirs, never modified)."""

    source: int = 0
    inbox_copies: dict[str, int] = field(default_factory=dict)
    inbox_files: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.source + sum(self.inbox_copies.values()) + sum(self.inbox_files.values())


def _count(frame: pd.DataFrame, user_id: str) -> int:
    return int((frame["user_id"].astype(str).to_numpy() == user_id).sum()) if len(frame) else 0


def find_user(
    user_id: str, source_interactions: pd.DataFrame | None, inbox_store: Path, inbox_folder: Path | None
) -> UserPresence:
    """Count ``user_id``'s interactions in the source's table, the stored inbox partitions and the inbox
    files (read, never changed; unreadable ones are skipped: they would fail their own ingestion)."""
    from mm_pipeline.datasets.inbox import is_inbox_file, load_partition, read_interaction_file, stored_digests
    from mm_pipeline.datasets.schema import DataError

    presence = UserPresence(source=_count(source_interactions, user_id) if source_interactions is not None else 0)
    for digest in stored_digests(inbox_store):
        try:
            rows = _count(load_partition(inbox_store, digest), user_id)
        except DataError:
            continue
        if rows:
            presence.inbox_copies[digest] = rows
    if inbox_folder is not None and inbox_folder.is_dir():
        for path in sorted(inbox_folder.iterdir()):
            if not is_inbox_file(path):
                continue
            try:
                rows = _count(read_interaction_file(path), user_id)
            except (DataError, OSError):
                continue
            if rows:
                presence.inbox_files[path.name] = rows
    return presence


# ------------------------------------------------------------------------------------------- preparing
@dataclass
class Prepared:
    request: str
    forget_hash: str
    newly_listed: bool
    listed_users: int
    inbox_copies_redacted: dict[str, int]
    started: float  # when the list held the user: runs created after this never see them
    checkpoints_deleted: int = 0  # warm-start checkpoints removed before the retrain (they know the user)


def prepare(home: Path, user_id: str, request: str, inbox_store: Path) -> tuple[Prepared, ForgetFilter]:
    """Put the user on the forget list, rewrite the stored inbox copies without every listed user and delete
    the warm-start checkpoints (``<home>/checkpoints``: trained on the user's data, they hold the user's rows
    and raw id; the retrain then trains from scratch and writes new ones). Idempotent: a user already listed
    stays listed once."""
    from mm_pipeline.datasets.inbox import redact_partition, stored_digests

    secret = forget_secret(home, create=True)
    hashed = forget_hash(user_id, secret)
    listed, new = add_to_forget_list(home, hashed, request, secret)
    started = time.time()
    filt = ForgetFilter(listed.hashes, secret)
    redacted = {}
    for digest in stored_digests(inbox_store):
        removed = redact_partition(inbox_store, digest, filt.forgotten, request)
        if removed:
            redacted[digest] = removed
    checkpoints = delete_checkpoints(home)
    return Prepared(request, hashed, new, len(listed), redacted, started, checkpoints), filt


def delete_checkpoints(home: Path) -> int:
    """Remove every warm-start checkpoint under ``<home>/checkpoints``; how many files were removed."""
    import shutil

    folder = settings.ProjectPaths(Path(home)).checkpoints
    if not folder.exists():
        return 0
    count = sum(1 for p in folder.rglob("*") if p.is_file())
    shutil.rmtree(folder)
    return count


def forget_list_hashes(forget_list: ForgetList | None) -> frozenset[str]:
    return forget_list.hashes if forget_list is not None else frozenset()


# ------------------------------------------------------------------------------------------- finishing
@dataclass
class Purged:
    """What :func:`finish` deleted (counts and names; never an id)."""

    asset_versions_deleted: int = 0
    assets_deleted: list[str] = field(default_factory=list)
    op_outputs_deleted: int = 0
    report_runs_deleted: int = 0
    quarantine_rows_removed: int = 0
    leftovers_removed: int = 0
    mlflow: Any = None  # purge.MlflowPurge


def finish(
    home: Path,
    storage_base: Any,
    keep,
    since: float,
    filt: ForgetFilter,
    request: str,
    client,
    asset_skip: frozenset[str] = frozenset({"inbox_interactions", "_ops"}),
    ops_folder: str = "_ops",
) -> Purged:
    """Delete what was made before the user was forgotten: every stored asset version, run-scoped output,
    run report and MLflow artifact of a run ``keep`` refuses (``keep(run_id)``: the retrain, and runs
    created after ``since``), quarantined rows naming a forgotten user, and staging leftovers older than
    ``since``. ``client``: an ``MlflowClient`` on the project's store (``None``: MLflow is left alone)."""
    from mm_pipeline.privacy import purge
    from mm_pipeline.storage import as_path, is_local

    out = Purged()
    assets = purge.purge_asset_versions(storage_base, keep, skip=asset_skip)
    out.asset_versions_deleted, out.assets_deleted = assets.versions_deleted, assets.assets_deleted
    out.op_outputs_deleted = len(purge.purge_run_folders(as_path(storage_base) / ops_folder, keep))
    reports = Path(home) / "reports"
    out.report_runs_deleted = len(purge.purge_run_folders(reports / "runs", keep))
    purge.drop_dangling_links(reports)
    out.quarantine_rows_removed = purge.redact_quarantine(Path(home) / "quarantine", filt.mentioned)
    folders = [Path(home) / name for name in ("reports", "quarantine", "batch")]
    if is_local(as_path(storage_base)):
        folders.append(Path(as_path(storage_base)))
    out.leftovers_removed = sum(purge.remove_leftovers_before(folder, since) for folder in folders)
    if client is not None:
        out.mlflow = purge.purge_mlflow(client, keep, request)
    return out


# ------------------------------------------------------------------------------------------ verifying
def champion_recognises(model_uri: str, user_id: str, user_key_secret: bytes) -> bool:
    """Whether the served model at ``model_uri`` gives ``user_id`` personal recommendations (not the
    popularity fallback), loaded as ``mlflow models serve`` would with the pipeline's user key secret."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory(prefix="mm_pipeline_forget_") as tmp:
        served = mlflow.pyfunc.load_model(model_uri, dst_path=tmp)
        served.unwrap_python_model().use_secret(user_key_secret)
        answer = served.predict(pd.DataFrame({"user_id": [user_id], "k": [1]}))
    return bool(len(answer)) and not bool(answer["fallback"].all())


def batch_holds(path: Path, key: str) -> bool:
    """Whether the batch scores file (``user_key`` column) has rows for the serving key ``key``."""
    if not path.exists():
        return False
    import pyarrow.parquet as pq

    keys = pq.read_table(path, columns=["user_key"]).column("user_key").to_numpy(zero_copy_only=False)
    return bool(np.any(keys.astype(str) == key))


# ------------------------------------------------------------------------------------------------ audit
def append_audit(home: Path, record: dict[str, Any]) -> Path:
    """Append one JSON line to ``<home>/privacy/audit.jsonl`` (owner-only), flushed to disk."""
    path = privacy_folder(home) / AUDIT_NAME
    line = json.dumps({"at": now_iso(), **record}, sort_keys=False, default=_json_default) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(line)
        out.flush()
        os.fsync(out.fileno())
    return path


def read_audit(home: Path) -> list[dict[str, Any]]:
    path = Path(home) / "privacy" / AUDIT_NAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _json_default(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")

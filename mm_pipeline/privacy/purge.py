"""Deleting what the pipeline stored before a user was forgotten (no Dagster here).

After ``mm-pipeline forget`` has retrained without the user, everything made from the data that still
held them is deleted, not searched: a model trained on a user carries them in its weights even where
no id is written. Which runs are *kept* is the caller's call (``keep(run_id)``: the retrain, and runs
created after the forget list changed); everything else made by the pipeline goes:

* :func:`purge_asset_versions`: stored asset versions of other runs; an asset whose published version
  belongs to another run (one the retrain does not write, e.g. the research ablations) is deleted whole.
* :func:`purge_run_folders`: run-scoped folders (plain-op outputs, ``reports/runs/<run id>``).
* :func:`redact_quarantine`: quarantined rows that name a forgotten user.
* :func:`purge_mlflow`: the artifacts of the pipeline's other MLflow runs, of their logged models and
  of the registered versions built from them. Their params, metrics and tags stay (numbers, no ids);
  each gets a tag saying its artifacts were deleted, so nothing tries to serve them again.

Deleting is removing the files: the storage may keep the blocks (use encrypted storage), and backups,
copies made by people and stores this process cannot reach are out of its hands (docs/privacy.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mm_pipeline.registry.champion import TAG_ARTIFACTS_DELETED
from mm_pipeline.registry.tracking import TAG_DAGSTER_RUN_ID
from mm_pipeline.storage import (
    LEFTOVER_PATTERN,
    MANIFEST,
    POINTER,
    VERSIONS,
    as_path,
    clean_leftovers,
    is_local,
    load_bundle,
    published_version,
    remove_tree,
    save_bundle,
)

__all__ = ["TAG_ARTIFACTS_DELETED", "purge_asset_versions", "purge_mlflow", "purge_run_folders", "redact_quarantine"]
# TAG_ARTIFACTS_DELETED marks MLflow runs, logged models and model versions whose artifacts were deleted (value:
# the forget request).
DAGSTER_RUN_TAG = TAG_DAGSTER_RUN_ID


@dataclass
class AssetPurge:
    """What :func:`purge_asset_versions` deleted: versions of assets the retrain rewrote, and the assets
    deleted whole (their published version was made by another run)."""

    versions_deleted: int = 0
    assets_deleted: list[str] = field(default_factory=list)


def _slots(base, skip: set[str]):
    """Every asset slot (a folder with ``versions/`` or ``LATEST``) under ``base``, as (name, path)."""
    stack = [(base, "")]
    while stack:
        folder, name = stack.pop()
        try:
            children = sorted(folder.iterdir(), key=lambda p: p.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        names = {c.name for c in children}
        if VERSIONS in names or POINTER in names:
            yield name, folder
            continue
        for child in children:
            if child.name.startswith(".") or child.name in skip or not child.is_dir():
                continue
            stack.append((child, f"{name}/{child.name}" if name else child.name))


def purge_asset_versions(
    base: Any, keep: Callable[[str], bool], skip: set[str] | frozenset = frozenset()
) -> AssetPurge:
    """Under the asset storage ``base`` (``<home>/assets`` or an fsspec URI): delete every stored version
    whose run ``keep`` refuses; a slot whose *published* version is refused is deleted whole (pointer
    and all), so nothing reads a value made before the forget. ``skip``: top-level folders left alone
    (the inbox partitions, the op outputs)."""
    base = as_path(base)
    out = AssetPurge()
    for name, slot in _slots(base, set(skip)):
        published = published_version(slot)
        whole = published is None or not keep(published)
        versions = slot / VERSIONS
        if versions.exists():
            for version in sorted(versions.iterdir(), key=lambda p: p.name):
                if version.name.startswith(".") or (not whole and keep(version.name)):
                    continue
                remove_tree(version)
                out.versions_deleted += 1
        if whole:
            remove_tree(slot)
            out.assets_deleted.append(name)
    return out


def purge_run_folders(folder: Any, keep: Callable[[str], bool]) -> list[str]:
    """Delete the run-scoped sub-folders of ``folder`` (named by run id) that ``keep`` refuses, and
    symbolic links among them that point at a deleted one (``reports/latest``)."""
    folder = as_path(folder)
    if not folder.exists():
        return []
    deleted = []
    for child in sorted(folder.iterdir(), key=lambda p: p.name):
        if child.name.startswith(".") or not child.is_dir() or (is_local(child) and child.is_symlink()):
            continue
        if not keep(child.name):
            remove_tree(child)
            deleted.append(child.name)
    return deleted


def drop_dangling_links(folder: Path) -> list[str]:
    """Remove symbolic links in ``folder`` whose target is gone (``reports/latest`` after a purge)."""
    removed = []
    if folder.is_dir():
        for child in folder.iterdir():
            if child.is_symlink() and not child.exists():
                child.unlink()
                removed.append(child.name)
    return removed


def redact_quarantine(folder: Path, mentioned: Callable[[Any], Any]) -> int:
    """Quarantined rows (``<home>/quarantine/<asset>``, the cells as read) that name a forgotten user:
    rewritten without them. Returns the rows removed."""
    removed = 0
    if not folder.is_dir():
        return 0
    for bundle_dir in sorted(p for p in folder.iterdir() if p.is_dir() and (p / MANIFEST).exists()):
        bundle = load_bundle(bundle_dir)
        changed = False
        for key, value in list(bundle.items()):
            if hasattr(value, "columns") and "value" in value.columns and len(value):
                hit = mentioned(value["value"])
                if hit.any():
                    bundle[key] = value[~hit].reset_index(drop=True)
                    removed += int(hit.sum())
                    changed = True
        if changed:
            save_bundle(bundle_dir, bundle)
    return removed


def remove_leftovers_before(folder: Path, since: float) -> int:
    """Staging leftovers (``.<name>.tmp-*`` / ``.old-*``) last modified before ``since`` (epoch seconds):
    half-written copies of old values. Younger ones may belong to a live writer and stay."""
    return len(clean_leftovers(folder, older_than_s=max(time.time() - since, 0.0)))


def count_leftovers(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for _, dirs, files in os.walk(folder) for n in [*dirs, *files] if LEFTOVER_PATTERN.match(n))


# ------------------------------------------------------------------------------------------- MLflow
@dataclass
class MlflowPurge:
    """What :func:`purge_mlflow` did. ``kept_*``: made by kept runs. ``not_pipeline_runs``: runs without
    a Dagster run tag (not made by the pipeline): left alone, counted."""

    run_artifacts_deleted: int = 0
    logged_models_deleted: int = 0
    model_versions_deleted: list[str] = field(default_factory=list)
    aliases_removed: list[str] = field(default_factory=list)
    kept_runs: int = 0
    not_pipeline_runs: int = 0
    failed: list[str] = field(default_factory=list)  # "<uri>: <error>" for artifacts the store would not delete


def _delete_artifacts(uri: str, out: MlflowPurge) -> bool:
    """Delete everything under the artifact ``uri``; a store that refuses is recorded in ``out.failed``."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        get_artifact_repository(uri).delete_artifacts()
    except FileNotFoundError:
        pass
    except Exception as exc:  # read-only stores, servers without artifact deletes, permissions
        out.failed.append(f"{uri}: {type(exc).__name__}: {exc}")
        return False
    return True


def _all_runs(client, experiment_ids: list[str]):
    from mlflow.entities import ViewType

    token = None
    while True:
        page = client.search_runs(experiment_ids, run_view_type=ViewType.ALL, max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _all_logged_models(client, experiment_ids: list[str]):
    token = None
    while True:
        page = client.search_logged_models(experiment_ids=experiment_ids, max_results=100, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def purge_mlflow(client, keep: Callable[[str], bool], request: str) -> MlflowPurge:
    """Delete the artifacts of every MLflow run the pipeline made (tag ``dagster.run_id``) in a Dagster run
    ``keep`` refuses, of the logged models those runs made, and of the registered model versions built
    from them; tag each (``mm_pipeline.forget.artifacts_deleted`` = ``request``) and remove the aliases
    that point at such a version. The ``champion`` must already be a kept version (the caller checks):
    an alias on a deleted version is removed, never left pointing at nothing. Artifacts the store refuses
    to delete are listed in ``failed`` (and their run or version is not tagged)."""
    from mlflow.entities import ViewType

    out = MlflowPurge()
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    doomed_runs: set[str] = set()
    for run in _all_runs(client, experiments):
        dagster_run = run.data.tags.get(DAGSTER_RUN_TAG)
        if dagster_run is None:
            out.not_pipeline_runs += 1
            continue
        if keep(dagster_run):
            out.kept_runs += 1
            continue
        doomed_runs.add(run.info.run_id)
        if not _delete_artifacts(run.info.artifact_uri, out):
            continue
        out.run_artifacts_deleted += 1
        if run.info.lifecycle_stage == "active" and run.data.tags.get(TAG_ARTIFACTS_DELETED) != request:
            client.set_tag(run.info.run_id, TAG_ARTIFACTS_DELETED, request)
    doomed_models: set[str] = set()
    for model in _all_logged_models(client, experiments):
        if model.source_run_id not in doomed_runs:
            continue
        doomed_models.add(model.model_id)
        if not _delete_artifacts(model.artifact_location, out):
            continue
        out.logged_models_deleted += 1
        if (model.tags or {}).get(TAG_ARTIFACTS_DELETED) != request:
            client.set_logged_model_tags(model.model_id, {TAG_ARTIFACTS_DELETED: request})
    for registered in client.search_registered_models():
        for version in client.search_model_versions(f"name='{registered.name}'"):
            if version.run_id not in doomed_runs and getattr(version, "model_id", None) not in doomed_models:
                continue
            if not _delete_artifacts(client.get_model_version_download_uri(registered.name, version.version), out):
                continue
            if (version.tags or {}).get(TAG_ARTIFACTS_DELETED) != request:
                client.set_model_version_tag(registered.name, version.version, TAG_ARTIFACTS_DELETED, request)
            for alias in list(getattr(version, "aliases", None) or []):
                client.delete_registered_model_alias(registered.name, alias)
                out.aliases_removed.append(f"{registered.name}@{alias}")
            out.model_versions_deleted.append(f"{registered.name}/{version.version}")
    return out

"""Stores every asset value as a run-scoped version of a bundle folder, published by an atomic pointer.

A value is a DataFrame, a ``dict`` bundle (arrays, tables, JSON values, dicts of arrays) or one of the
data types of :data:`mm_pipeline.data.types.STORED_TYPES` (stored field by field, its class recorded by
name and rebuilt only from that allow-list: never pickle).

Layout under the storage base (``<home>/assets`` by default, or any path / ``fsspec`` URI such as
``s3://bucket/prefix`` in ``$MM_PIPELINE_STORAGE``)::

    <asset key>/versions/<run id>/   the value one run wrote (written once, atomically)
    <asset key>/LATEST               which version is published: the last one written
    _ops/<run id>/<step>/<output>/   outputs of plain ops (the item shards), run-scoped by nature

A step loads its upstream value from the run that produced it in its run lineage (its own run, or
the parent run it re-executes from), never from another run that happens to be writing the same
asset; an asset that is not part of the run (a job that reads what is stored) loads the published
version. So two runs at once, on one machine or many, never read each other's partial outputs.

Every asset value it stores gets the content hash of what was stored as its Dagster data version
(:func:`set_content_version`): what Dagster's staleness, the UI and the incremental runs of
:mod:`mm_pipeline.defs.incremental` go by.
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg
import pandas as pd

from mm_pipeline.data.types import STORED_TYPES, from_stored_fields, stored_fields
from mm_pipeline.memory import CycleCollector, release_freed_memory
from mm_pipeline.settings import project_paths
from mm_pipeline.storage import (
    StoredBundle,
    as_path,
    bundle_digest,
    clean_leftovers,
    is_local,
    load_bundle,
    prune_run_folders,
    prune_versions,
    publish_version,
    save_bundle,
    save_version,
)

_TABLE_KEY = "table"
_KIND_KEY = "_stored_kind"
_CLASS_KEY = "_stored_class"  # a dataclass's name, looked up in data.types.STORED_TYPES
DEFAULT_KEEP_VERSIONS = 3
# Typed values (data.types) loaded in this process, by (path, run version): a few, they can be large.
TYPED_VALUES_KEPT = 4
_TYPED_VALUES: OrderedDict[tuple[str, str], Any] = OrderedDict()
OPS_FOLDER = "_ops"

try:  # the run id Dagster gives an upstream asset that is not part of the run (it loads what is stored)
    from dagster._core.execution.context.output import RUN_ID_PLACEHOLDER
except ImportError:  # pragma: no cover - only if Dagster moves it
    RUN_ID_PLACEHOLDER = "__EPHEMERAL_RUN_ID"


def _to_bundle(obj: Any, about: str = "the value") -> dict:
    if isinstance(obj, pd.DataFrame):
        return {_TABLE_KEY: obj, _KIND_KEY: "table"}
    if isinstance(obj, dict):
        return dict(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and type(obj).__name__ in STORED_TYPES:
        name, values = stored_fields(obj)
        return {**values, _KIND_KEY: "dataclass", _CLASS_KEY: name}
    raise TypeError(
        f"{about} returned {type(obj).__name__}; this IO manager stores DataFrames, "
        f"dict bundles and the data types {sorted(STORED_TYPES)}"
    )


def value_digest(obj: Any) -> str:
    """The content hash of a value as this IO manager stores it (:func:`mm_pipeline.storage.bundle_digest`):
    the data version of every asset it writes."""
    return bundle_digest(_to_bundle(obj))


LOAD_LAZILY = "mm_pipeline/load_lazily"  # AssetIn metadata key: the input is a StoredBundle


def lazy_input() -> dg.AssetIn:
    """An ``AssetIn`` whose dict bundle is a :class:`~mm_pipeline.storage.StoredBundle`: its arrays are read
    from disk when looked up and not kept (a report turns each model bundle into a model in turn)."""
    return dg.AssetIn(metadata={LOAD_LAZILY: True})


def _from_bundle(bundle: dict) -> Any:
    kind = bundle.get(_KIND_KEY)
    if kind == "table":
        return bundle[_TABLE_KEY]
    if kind == "dataclass":
        values = {k: v for k, v in bundle.items() if k not in (_KIND_KEY, _CLASS_KEY)}
        return from_stored_fields(bundle[_CLASS_KEY], values)
    return bundle


# Assets whose value became a typed dataclass: a version stored before that (a plain dict with the same
# fields) is read as the dataclass, so a home from an earlier release keeps working.
TYPED_ASSETS = {"interaction_split": "InteractionSplit"}


def _typed_if_legacy(asset_key: dg.AssetKey, value: Any) -> Any:
    name = TYPED_ASSETS.get(asset_key.path[-1])
    if name is None or not isinstance(value, dict):
        return value
    fields = {f.name for f in dataclasses.fields(STORED_TYPES[name]) if f.default is dataclasses.MISSING}
    if not fields <= set(value):  # not a stored value of that type: leave it as it is
        return value
    return STORED_TYPES[name].from_bundle(value)


def _describe(context) -> str:
    return (
        f"asset {context.asset_key.to_user_string()}"
        if context.has_asset_key
        else f"op output {context.step_key}.{context.name}"
    )


def lineage_run_id(context: dg.InputContext) -> str | None:
    """The run that produced this input in the run's lineage, or ``None`` when the upstream asset is
    not part of the run (then the published version is what the step should read)."""
    upstream = context.upstream_output
    if upstream is None:
        return None
    try:
        run_id = upstream.run_id
    except dg.DagsterInvariantViolationError:
        return None
    return None if run_id in (None, RUN_ID_PLACEHOLDER) else run_id


class VersionedBundleIOManager(dg.UPathIOManager):
    """:class:`dagster.UPathIOManager` over bundles (``mm_pipeline.storage``): no pickle, atomic,
    run-scoped versions published by a pointer; partitions (when an asset has them) are sub-folders."""

    def __init__(self, base_path, keep_versions: int = DEFAULT_KEEP_VERSIONS):
        super().__init__(base_path=base_path)
        self.keep_versions = keep_versions
        self._loading_for: tuple[str, str] | None = None  # the (run, step) whose inputs are being loaded
        self._cycles = CycleCollector()

    def get_op_output_relative_path(self, context):
        from upath import UPath

        return UPath(OPS_FOLDER, *context.get_identifier())

    def dump_to_path(self, context: dg.OutputContext, obj: Any, path) -> None:
        bundle = _to_bundle(obj, _describe(context))
        try:
            instance = context.step_context.instance
        except dg.DagsterInvariantViolationError:  # an output context built outside a run
            instance = None
        in_use = lambda run_id: _run_in_progress(instance, run_id)  # noqa: E731
        if not context.has_asset_key:
            save_bundle(path, bundle)
            # Op outputs (item shards) are read by the merge step and by re-executions of recent runs.
            prune_run_folders(self._base_path / OPS_FOLDER, self.keep_versions, in_use)
            return
        run_id = context.run_id
        # The content hash is computed while the bundle is written (both release the GIL): on builtin:large a
        # 1.6 GB item-item table hashed in 2-3.5 s and written in 4.6-5 s, 4.2-4.4 s together.
        with ThreadPoolExecutor(1) as pool:
            hashing = pool.submit(bundle_digest, bundle)
            save_version(path, run_id, bundle)
            set_content_version(context, bundle, hashing.result())
        publish_version(path, run_id)
        prune_versions(path, self.keep_versions, in_use)
        if is_local(path):
            clean_leftovers(path)
        # The step is done with everything but its output: in a run of many steps in one process the pages it
        # freed would otherwise stay resident to the end (mm_pipeline.memory).
        release_freed_memory()

    def load_from_path(self, context: dg.InputContext, path) -> Any:
        try:
            step = (context.step_context.run_id, context.step_context.step.key)
        except dg.DagsterInvariantViolationError:  # an input context built outside a run
            step = None
        if step is not None and step != self._loading_for:
            # A new step: what the steps before it freed after storing their outputs (those outputs, their
            # inputs) is handed back before its own inputs are read. On builtin:large the pages a step left
            # were 3-5 GB, under the next step's own peak. Outputs held only by reference cycles are freed
            # first (mm_pipeline.memory.CycleCollector).
            self._loading_for = step
            self._cycles.maybe_collect()
            release_freed_memory()
        if not context.has_asset_key:
            return _from_bundle(load_bundle(path))
        version = lineage_run_id(context)
        if (context.definition_metadata or {}).get(LOAD_LAZILY):  # see lazy_input
            return StoredBundle(path, version)
        if version is None:  # the published version: it may move, so it is read afresh
            return _typed_if_legacy(context.asset_key, _from_bundle(load_bundle(path, version=None)))
        key = (str(path), version)
        if key in _TYPED_VALUES:  # one object per process for a run's typed value (immutable), so what it
            _TYPED_VALUES.move_to_end(key)  # builds on first use (a split's sparse views) is built once
            return _TYPED_VALUES[key]
        value = _typed_if_legacy(context.asset_key, _from_bundle(load_bundle(path, version=version)))
        if dataclasses.is_dataclass(value):
            _TYPED_VALUES[key] = value
            while len(_TYPED_VALUES) > TYPED_VALUES_KEPT:
                _TYPED_VALUES.popitem(last=False)
        return value

    def stored_value(self, asset_key: dg.AssetKey, version: str) -> tuple[Any, str]:
        """The value version ``version`` (a run id) of ``asset_key`` holds, and its content hash as this IO
        manager would store it again (its data version): what a step that reuses it outputs
        (:mod:`mm_pipeline.defs.cutoff`). Raises ``FileNotFoundError`` when that version is gone."""
        value = _typed_if_legacy(
            asset_key, _from_bundle(load_bundle(self._base_path.joinpath(*asset_key.path), version))
        )
        return value, value_digest(value)

    def get_metadata(self, context: dg.OutputContext, obj: Any) -> dict:
        return {"version": context.run_id} if context.has_asset_key else {}

    def get_writing_output_log_message(self, path) -> str:
        return f"Writing a new version under {path}"


def set_content_version(context: dg.OutputContext, bundle: dict, digest: str | None = None) -> str | None:
    """Give the asset being stored the content hash of ``bundle`` as its data version. The materialization
    event is built after the IO manager has stored the value, from the step's data versions: so every asset
    value this IO manager writes carries a data version that changes exactly when what is stored changes,
    and Dagster marks the assets downstream of a changed value stale (and only those). A data version the
    asset gives itself (``dg.Output(data_version=...)``) wins: the raw source's is the source's fingerprint.
    ``digest``: ``bundle_digest(bundle)`` when the caller has it already."""
    try:
        step_context = context.step_context
    except dg.DagsterInvariantViolationError:  # an output context built outside a run
        return None
    version = digest if digest is not None else bundle_digest(bundle)
    step_context.set_data_version(context.asset_key, dg.DataVersion(version))
    return version


def _run_in_progress(instance, run_id: str) -> bool:
    """Whether the Dagster instance knows ``run_id`` as a run that has not finished (its versions may
    still be read by its own steps). Unknown runs (another instance, a test's ephemeral one) are not."""
    if instance is None:
        return False
    run = instance.get_run_by_id(run_id)
    return run is not None and not run.is_finished


class BundleIOManager(dg.ConfigurableIOManagerFactory):
    """DataFrames and ``dict`` bundles (arrays, tables, JSON values) -> versions under ``<base>/<asset key>/``.

    ``base_dir``: a local or shared path, or an ``fsspec`` URI (``s3://bucket/prefix``; the matching
    ``fsspec`` package, e.g. ``s3fs``, must be installed). Empty: ``$MM_PIPELINE_STORAGE``, else
    ``<project home>/assets``. ``keep_versions``: how many versions of each asset stay stored (the
    published one and those of unfinished runs always do); re-executing a run whose outputs were
    pruned fails with a message saying so.
    """

    base_dir: str = ""
    keep_versions: int = DEFAULT_KEEP_VERSIONS

    def create_io_manager(self, context) -> VersionedBundleIOManager:
        if self.keep_versions < 1:
            raise dg.DagsterInvalidConfigError(
                f"io_manager keep_versions must be at least 1 (got {self.keep_versions}): the published version "
                "is always kept",
                [],
                self.keep_versions,
            )
        return VersionedBundleIOManager(storage_base(self.base_dir), self.keep_versions)


def storage_base(base_dir: str = ""):
    """Where asset values live: ``base_dir``, else ``$MM_PIPELINE_STORAGE``, else ``<home>/assets``."""
    from upath import UPath

    raw = base_dir or os.environ.get("MM_PIPELINE_STORAGE", "").strip()
    path = as_path(raw) if raw else project_paths().assets
    # Local paths as PosixUPath (a pathlib.Path: atomic renames); URIs stay fsspec paths.
    return path if isinstance(path, UPath) else UPath(path.expanduser().resolve())

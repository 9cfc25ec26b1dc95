"""Incremental runs: which assets of a job a run must materialize, and which it can leave as they are stored.

An asset of the job is **up to date** when all of these hold:

* its value is stored (the IO manager has a published version of it);
* Dagster's stale status says ``FRESH`` (what the UI shows): it was materialized with the code version it
  has now, from the data versions its parents have now. Every stored value's data version is the content
  hash of what was stored (:func:`mm_pipeline.defs.io_manager.set_content_version`); the source's is its
  fingerprint (spec, seed and the bytes of its files);
* its op's run config (``ops: {<op>: ...}``) is the one its last materialization ran with (Dagster's
  staleness does not look at run config: the run that materialized it is asked);
* for the source (``source_dataset``): the fingerprint of the source as it is now is the data version it was
  read with (a file edited, added or removed, another ``--dataset`` or seed changes it);
* for ``raw_interactions``: the inbox partitions it appended are those materialized now (Dagster's
  staleness does not follow new partitions of an upstream partitioned asset into an unpartitioned one).

Everything else is **materialized**, with everything downstream of it in the job (Dagster's staleness stops
at the first asset whose parent changed; whether a recomputed asset comes out different is known only when
it has run) and whatever must run with it (the raw source's three outputs are one step). Asset checks run
with the assets they check. In the run, each step whose inputs turn out unchanged reuses its stored value
instead of computing it (early cutoff: :mod:`mm_pipeline.defs.cutoff`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

SOURCE_KEY = dg.AssetKey("source_dataset")
RAW_INTERACTIONS_KEY = dg.AssetKey("raw_interactions")


@dataclass(frozen=True)
class Plan:
    """What a run of ``job`` does: ``to_materialize`` (in the job's topological order) and ``up_to_date``;
    ``reasons`` says why, for each asset that must be materialized on its own account (the others are
    downstream of one)."""

    job: str
    to_materialize: tuple[dg.AssetKey, ...]
    up_to_date: tuple[dg.AssetKey, ...]
    reasons: Mapping[dg.AssetKey, str] = field(default_factory=dict)

    @property
    def nothing_to_do(self) -> bool:
        return not self.to_materialize

    def summary(self) -> str:
        """One line: the counts and the assets left as they are."""
        names = ", ".join(k.to_user_string() for k in self.up_to_date) or "none"
        return (
            f"{len(self.up_to_date)} assets up to date, {len(self.to_materialize)} to materialize (up to date: {names})"
        )

    def why(self) -> str:
        """One line: the assets materialized on their own account, by reason, and how many follow from them."""
        by_reason: dict[str, list[str]] = {}
        for key in self.to_materialize:
            if key in self.reasons:
                by_reason.setdefault(self.reasons[key], []).append(key.to_user_string())
        if not by_reason:
            return ""
        downstream = len(self.to_materialize) - sum(map(len, by_reason.values()))
        tail = f"; and {downstream} downstream of them" if downstream else ""
        return "why: " + "; ".join(f"{_some(names)}: {reason}" for reason, names in by_reason.items()) + tail


def _some(names: list[str], shown: int = 6) -> str:
    return ", ".join(names) if len(names) <= shown else f"{', '.join(names[:shown])} and {len(names) - shown} more"


def stale_status_resolver(instance: dg.DagsterInstance, asset_graph):
    """Dagster's stale-status resolver, the one the UI and ``RunRequest(stale_assets_only=True)`` use (no
    public constructor in Dagster 1.13: the internal one, in this one place)."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._time import get_current_datetime

    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=asset_graph,
    )
    return CachingStaleStatusResolver(instance=instance, asset_graph=asset_graph, loading_context=view)


def op_config_entry(run_config: Mapping[str, Any] | None, node: str) -> str:
    """The run config of one op (or graph) as a canonical string; no entry and an empty config are the same."""
    entry = dict(((run_config or {}).get("ops") or {}).get(node) or {})
    if not entry.get("config"):
        entry.pop("config", None)
    return json.dumps(entry, sort_keys=True, default=str)


def stored_in(base) -> Callable[[dg.AssetKey], bool]:
    """Whether the IO manager under ``base`` has a published value of an asset."""
    from mm_pipeline.storage import published_version

    def stored(key: dg.AssetKey) -> bool:
        try:
            return published_version(base.joinpath(*key.path)) is not None
        except OSError:
            return False

    return stored


def _cause_text(cause) -> str:
    from dagster._core.definitions.data_version import StaleCauseCategory

    if cause.category == StaleCauseCategory.CODE:
        return "its code version changed"
    if cause.dependency is not None and cause.category == StaleCauseCategory.DATA:
        return f"{cause.dependency.asset_key.to_user_string()} changed"
    if cause.dependency is not None:
        return f"{cause.reason} ({cause.dependency.asset_key.to_user_string()})"
    return cause.reason


def plan_run(
    defs: dg.Definitions,
    job: str,
    instance: dg.DagsterInstance,
    run_config: Mapping[str, Any] | None,
    stored: Callable[[dg.AssetKey], bool],
    expected_versions: Mapping[dg.AssetKey, str | None] | None = None,
) -> Plan:
    """The :class:`Plan` of a run of ``job`` with ``run_config`` in ``instance``.

    ``stored(key)``: whether the asset's value can be loaded (:func:`stored_in`). ``expected_versions``: data
    versions some assets must have to be up to date, known before the run (the source's fingerprint as it
    is now, :func:`expected_source_versions`); ``None`` for one that could not be computed means it is
    materialized (the run says why)."""
    asset_graph = defs.resolve_asset_graph()
    job_def = defs.resolve_job_def(job)
    keys = [k for k in asset_graph.toposorted_asset_keys if k in job_def.asset_layer.executable_asset_keys]
    resolver = stale_status_resolver(instance, asset_graph)
    runs: dict[str, Any] = {}
    reasons: dict[dg.AssetKey, str] = {}
    for key in keys:
        reason = _reason(key, asset_graph, instance, resolver, runs, run_config, stored, expected_versions or {})
        if reason:
            reasons[key] = reason
    selected = _with_downstream(set(reasons), keys, asset_graph)
    return Plan(
        job=job,
        to_materialize=tuple(k for k in keys if k in selected),
        up_to_date=tuple(k for k in keys if k not in selected),
        reasons={k: reasons[k] for k in keys if k in reasons},
    )


def _reason(key, asset_graph, instance, resolver, runs, run_config, stored, expected_versions) -> str | None:
    """Why ``key`` must be materialized on its own account, or ``None``."""
    from dagster._core.definitions.data_version import StaleStatus

    status = resolver.get_status(key)
    if status == StaleStatus.MISSING:
        return "never materialized"
    if not stored(key):
        return "no stored value"
    if status == StaleStatus.STALE:
        causes = sorted({_cause_text(c) for c in resolver.get_stale_causes(key)})
        return ", ".join(causes) or "stale"
    if key in expected_versions:
        expected = expected_versions[key]
        if expected is None:
            return "its version cannot be computed before the run"
        if resolver.get_current_data_version(key).value != expected:
            return "the source changed"
    event = instance.get_latest_materialization_event(key)
    if event is None:  # materialized according to the status, yet no event: be safe
        return "never materialized"
    if event.run_id not in runs:
        runs[event.run_id] = instance.get_run_by_id(event.run_id)
    run = runs[event.run_id]
    if run is None:
        return "the run that materialized it is gone (its run config is unknown)"
    node = asset_graph.get(key).assets_def.node_def.name
    if op_config_entry(run.run_config, node) != op_config_entry(run_config, node):
        return "its run config changed"
    if key == RAW_INTERACTIONS_KEY and _inbox_digests(instance) != _recorded_inbox_digests(event):
        return "the inbox partitions changed"
    return None


def _inbox_digests(instance: dg.DagsterInstance) -> list[str]:
    """The inbox partitions ``raw_interactions`` would append now: registered and materialized, in order."""
    from mm_pipeline.defs.assets.inbox import INBOX_ASSET_KEY, INBOX_PARTITIONS_NAME

    registered = list(instance.get_dynamic_partitions(INBOX_PARTITIONS_NAME))
    if not registered:
        return []
    materialized = instance.get_materialized_partitions(INBOX_ASSET_KEY)
    return [d for d in registered if d in materialized]


def _recorded_inbox_digests(event) -> list[str]:
    """The inbox partitions the last ``raw_interactions`` appended (its metadata ``inbox_digests``). Dagster's
    staleness does not see a partition of ``inbox_interactions`` materialized after it, so this is asked."""
    entry = event.asset_materialization.metadata.get("inbox_digests")
    return list(entry.value) if entry is not None else []


def _with_downstream(roots: set, keys: Iterable[dg.AssetKey], asset_graph) -> set:
    """``roots``, what runs in one step with them, and everything downstream of them, within ``keys``."""
    within = set(keys)
    selected: set = set()
    todo = list(roots)
    while todo:
        key = todo.pop()
        if key in selected or key not in within:
            continue
        selected.add(key)
        node = asset_graph.get(key)
        todo.extend(node.execution_set_asset_keys)
        todo.extend(node.child_keys)
    return selected


def expected_source_versions(pipeline) -> dict[dg.AssetKey, str | None]:
    """The data version ``source_dataset`` would get from the source as it is now (its fingerprint), for the
    ``pipeline`` resource the run will use; ``None`` when the spec cannot be resolved (the run reports it)."""
    from mm_pipeline.datasets.sources import resolve_source, source_fingerprint

    spec = pipeline.dataset_spec()
    try:
        source = resolve_source(spec, pipeline.paths().data, seed=pipeline.seed)
        return {SOURCE_KEY: source_fingerprint(spec, source, pipeline.seed)}
    except Exception:  # noqa: BLE001 - any failure here is the run's to report, with its usual message
        return {SOURCE_KEY: None}


def planned_pipeline(run_config: Mapping[str, Any] | None, base=None):
    """The ``pipeline`` resource a run with ``run_config`` gets: ``base`` (default: the defaults and
    environment, as :func:`mm_pipeline.defs.build.default_resources` makes it) with the run config's
    ``resources: {pipeline: {config: ...}}`` on top."""
    from mm_pipeline import settings
    from mm_pipeline.defs.resources import PipelineResource

    config = dict((((run_config or {}).get("resources") or {}).get("pipeline") or {}).get("config") or {})
    # Run config may name an environment variable for a value ({env: NAME}), as Dagster allows.
    config = {k: (settings.env(v["env"]) or "") if isinstance(v, dict) and "env" in v else v for k, v in config.items()}
    fields = {}
    if base is not None:
        fields = {name: getattr(base, name) for name in ("home", "dataset", "seed", "torch_threads")}
        # An environment variable (dg.EnvVar) is read by the resource's defaults (mm_pipeline.settings) too.
        fields = {k: v for k, v in fields.items() if isinstance(v, (str, int)) and not isinstance(v, dg.EnvVar)}
    return PipelineResource(**{**fields, **config})

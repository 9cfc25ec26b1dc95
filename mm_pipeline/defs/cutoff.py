"""Early cutoff: an asset whose inputs did not change since its latest materialization is not computed again.

Every asset of the graph is wrapped (:func:`with_early_cutoff`, applied where the definitions are built) so
that its step, once its inputs are loaded and before it computes, compares

* the data version every parent has now with the one recorded in the asset's latest materialization
  (Dagster's data provenance: ``dagster/input_data_version/<parent>``);
* its code version with the recorded one;
* its op config and the config of the resources it uses (one hash, metadata ``reuse_key``) with those of
  that materialization;

and when all match and the value that materialization stored is still there (its digest is the recorded
data version), it outputs that value again instead of computing it: the IO manager stores it for this run,
its data version stays the same, and the steps below see parents that did not change, so they reuse their
values too. A parent that was recomputed into the same value (the IO manager's data version is the content
hash of what is stored) therefore stops the recomputation below it: one run does only what the change
reaches. Whoever launches the run (``mm-pipeline demo``/``run``, the UI, the retraining schedule, the inbox
sensor, a re-execution) gets this: the decision is the step's.

The materialization says what happened: metadata ``reused`` (true/false), ``reuse`` (why: ``inputs, code
version, run config and resources as in run <id>``, or what changed), ``reused_from_run``; a reused one
carries the metadata of the one it reuses (counts, MLflow run ids).

Not wrapped, so always computed when their run selects them: assets with effects outside their stored value
or that read state other than their inputs (:data:`ALWAYS_COMPUTED`: the report files, MLflow registration,
promotion, batch scores), the raw source (it reads the files: its fingerprint is its data version),
partitioned assets and graph-backed ones (item shards). A run tagged ``mm_pipeline.reuse=off`` (``--force``,
the forget flow) computes every asset it selects.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import dagster as dg

REUSE_TAG = "mm_pipeline.reuse"  # a run tag; "off": every selected asset is computed
REUSE_OFF = "off"
REUSE_KEY = "reuse_key"
#: Metadata this module writes; a reused materialization carries the rest of the one it reuses.
REUSE_METADATA = frozenset({"reused", "reuse", "reused_from_run", REUSE_KEY, "version"})
#: Assets computed whenever their run selects them: what they do is not all in their stored value (report
#: files, MLflow registry and aliases, the batch file) or depends on state that is not an input (the champion).
ALWAYS_COMPUTED = frozenset(
    {"evaluation_report", "registered_model", "model_promotion", "batch_recommendations", "research_report"}
)
DATA_VERSION_TAG = "dagster/data_version"


def with_early_cutoff(assets: Iterable) -> list:
    """``assets`` with every one that can reuse its stored value wrapped by :func:`reusing`."""
    return [reusing(a) if can_reuse(a) else a for a in assets]


def can_reuse(asset) -> bool:
    """One asset computed by one plain op function (not a generator) that returns its value (stored by the
    IO manager: not a ``MaterializeResult``), unpartitioned, not in :data:`ALWAYS_COMPUTED`."""
    if not isinstance(asset, dg.AssetsDefinition) or not isinstance(asset.node_def, dg.OpDefinition):
        return False
    if len(asset.keys) != 1 or asset.partitions_def is not None or list(asset.check_specs):
        return False
    if asset.key.to_user_string() in ALWAYS_COMPUTED or is_reusing(asset):
        return False
    fn = getattr(asset.op.compute_fn, "decorated_fn", None)
    if fn is None or inspect.isgeneratorfunction(fn) or inspect.iscoroutinefunction(fn):
        return False
    returns = inspect.signature(fn).return_annotation
    return returns is not dg.MaterializeResult and typing.get_origin(returns) is not dg.MaterializeResult


def is_reusing(asset) -> bool:
    """Whether ``asset`` was wrapped by :func:`reusing`."""
    fn = getattr(getattr(asset, "op", None), "compute_fn", None)
    return getattr(getattr(fn, "decorated_fn", None), "__mm_reusing__", False)


def reusing(asset: dg.AssetsDefinition) -> dg.AssetsDefinition:
    """``asset`` with the same key, specs (code version, group, kinds, descriptions), inputs, config and
    resources, whose step reuses the stored value when nothing it depends on changed."""
    op = asset.op
    fn = op.compute_fn.decorated_fn
    key = asset.key
    parents = tuple(sorted({dep.asset_key for spec in asset.specs for dep in spec.deps}, key=lambda k: k.path))
    resource_keys = tuple(sorted(op.required_resource_keys))
    annotation = inspect.signature(fn).return_annotation
    returns_output = annotation is dg.Output or typing.get_origin(annotation) is dg.Output

    @functools.wraps(fn)
    def compute(*args, **kwargs):
        context = dg.AssetExecutionContext.get()
        decision = decide(context, key, parents, resource_keys)
        context.add_output_metadata(decision.metadata)
        if decision.value is None:
            return fn(*args, **kwargs)
        context.log.info(f"reused the value of run {decision.run_id[:8]}: {decision.why}")
        # Returned as the function returns its value: an ``Output`` where it is annotated so.
        return dg.Output(decision.value[0]) if returns_output else decision.value[0]

    compute.__mm_reusing__ = True  # type: ignore[attr-defined]
    # Resources named by the function's parameters are inferred again from its signature (functools.wraps).
    params = set(inspect.signature(fn).parameters)
    wrapped_op = dg.op(
        name=op.name,
        description=op.description,
        ins=op.ins,
        out=dict(op.outs),
        tags=op.tags,
        retry_policy=op.retry_policy,
        pool=op.pool,
        required_resource_keys=set(op.required_resource_keys) - params,
    )(compute)
    return dg.AssetsDefinition(
        keys_by_input_name=asset.node_keys_by_input_name,
        keys_by_output_name=asset.node_keys_by_output_name,
        node_def=wrapped_op,
        specs=list(asset.specs),
        can_subset=asset.can_subset,
    )


@dataclass(frozen=True)
class Decision:
    """Whether a step reuses a stored value: ``value`` is ``(the value,)`` when it does, else ``None``;
    ``why`` says why (or what changed); ``metadata`` goes on the materialization."""

    value: tuple | None
    why: str
    metadata: Mapping[str, Any]
    run_id: str = ""


def reuse_key(context: dg.AssetExecutionContext, resource_keys: Iterable[str]) -> str:
    """A hash of the op config and of the config of the resources the asset uses, as this run resolved them."""
    resources = {}
    for name in resource_keys:
        resource = getattr(context.resources, name, None)
        dump = getattr(resource, "model_dump", None)  # a ConfigurableResource (pydantic)
        resources[name] = dump() if callable(dump) else type(resource).__name__
    text = json.dumps(
        {"config": context.op_execution_context.op_config or {}, "resources": resources}, sort_keys=True, default=str
    )
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _short(version: str | None) -> str:
    return (version or "none")[:12]


def decide(context: dg.AssetExecutionContext, key: dg.AssetKey, parents, resource_keys) -> Decision:
    """:class:`Decision` for the step of ``key`` now (its inputs are loaded: their materializations are
    the latest ones)."""
    own_key = reuse_key(context, resource_keys)

    def computed(why: str) -> Decision:
        return Decision(None, why, {"reused": False, "reuse": f"computed: {why}", REUSE_KEY: own_key})

    if context.run.tags.get(REUSE_TAG) == REUSE_OFF:
        return computed(f"reuse is off for this run (tag {REUSE_TAG}={REUSE_OFF})")
    instance = context.instance
    event = instance.get_latest_materialization_event(key)
    provenance = context.get_asset_provenance(key)
    if event is None or event.asset_materialization is None or provenance is None:
        return computed("no earlier materialization with its data provenance")
    previous = event.asset_materialization
    code_version = (context.assets_def.code_versions_by_key or {}).get(key)
    if code_version is None or provenance.code_version != code_version:
        return computed(f"its code version changed ({provenance.code_version} -> {code_version})")
    recorded_key = previous.metadata.get(REUSE_KEY)
    if recorded_key is None or recorded_key.value != own_key:
        return computed("its run config or resources changed" if recorded_key else "no reuse key recorded")
    recorded = {k: v.value for k, v in provenance.input_data_versions.items()}
    if set(recorded) != set(parents):
        return computed("its inputs changed (other parents)")
    changed = []
    for parent in parents:
        latest = instance.get_latest_materialization_event(parent)
        now = (latest.asset_materialization.tags or {}).get(DATA_VERSION_TAG) if latest else None
        if now is None or now != recorded[parent]:
            changed.append(f"{parent.to_user_string()} ({_short(recorded[parent])} -> {_short(now)})")
    if changed:
        return computed(f"input changed: {', '.join(changed)}")
    io_manager = getattr(context.resources, "io_manager", None)
    load = getattr(io_manager, "stored_value", None)
    if load is None:
        return computed("its IO manager cannot load a stored version")
    data_version = (previous.tags or {}).get(DATA_VERSION_TAG)
    try:
        value, digest = load(key, event.run_id)
    except (OSError, KeyError, ValueError) as exc:
        return computed(f"the value run {event.run_id[:8]} stored cannot be loaded ({exc})")
    if digest != data_version:
        return computed(f"the value run {event.run_id[:8]} stored is not the recorded one")
    why = f"inputs, code version {code_version}, run config and resources as in run {event.run_id[:8]}"
    metadata = {k: v for k, v in previous.metadata.items() if k not in REUSE_METADATA}
    metadata.update({"reused": True, "reuse": why, "reused_from_run": event.run_id, REUSE_KEY: own_key})
    return Decision((value,), why, metadata, event.run_id)

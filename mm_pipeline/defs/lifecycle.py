"""Model lifecycle: the manual ``promote_model`` job (set or roll back ``champion``), the weekly
retraining schedule, and the ``new_interactions_sensor`` that ingests new interaction files as
partitions of ``inbox_interactions`` and retrains on them. Thin Dagster wrappers: the rules live in
:mod:`mm_pipeline.registry.champion` and :mod:`mm_pipeline.datasets.inbox`.

Both the schedule and the sensor start **stopped**: turn them on in the UI (Automation) or with
``dagster schedule start retrain_schedule`` / ``dagster sensor start new_interactions_sensor``; they
need the Dagster daemon (``dagster dev`` runs one).

Both request the whole job and are incremental inside it: each step whose inputs, code and config did not
change since its latest materialization reuses its stored value (:mod:`mm_pipeline.defs.cutoff`), so a
scheduled run with nothing new computes the raw source and the assets that always run (report, registration,
promotion, batch scores).

``$MM_PIPELINE_RUN_CONFIG`` names a YAML run-config file (``ops: {mm_gcn_model: {config: ...}}``)
that both put on every run they request, e.g. shorter training for a smoke test.
"""

import json
import time
from pathlib import Path

import dagster as dg
import yaml
from pydantic import Field

from mm_pipeline import settings
from mm_pipeline.datasets.inbox import file_digest, is_inbox_file
from mm_pipeline.datasets.inbox import inbox_dir as _inbox_dir
from mm_pipeline.defs.assets.inbox import INBOX_ASSET_KEY, inbox_partitions
from mm_pipeline.defs.resources import MlflowResource, PipelineResource
from mm_pipeline.settings import REGISTERED_MODEL_NAME

RETRAIN_JOB = "full_pipeline"
INBOX_JOB = "inbox_retrain"
DEFAULT_RETRAIN_CRON = settings.DEFAULT_RETRAIN_CRON
RETRAIN_CRON_ENV = settings.RETRAIN_CRON_ENV
RETRAIN_TIMEZONE_ENV = settings.RETRAIN_TIMEZONE_ENV
RUN_CONFIG_ENV = settings.RUN_CONFIG_ENV
INBOX_SETTLE_ENV = settings.INBOX_SETTLE_ENV
INBOX_INTERVAL_ENV = settings.INBOX_INTERVAL_ENV
TRIGGER_TAG = "mm_pipeline.trigger"
INBOX_OP = INBOX_ASSET_KEY.to_user_string()


# ------------------------------------------------------------------------------ promote / rollback
class PromoteModelConfig(dg.Config):
    version: int = Field(default=0, description="Model version to make champion (0: none; use rollback).")
    rollback: bool = Field(
        default=False,
        description="Move champion back to the previous champion "
        "recorded in the mm_pipeline.champion_history registered-model tag.",
    )
    registered_model_name: str = REGISTERED_MODEL_NAME


@dg.op(out=dg.Out(dg.Nothing))
def set_champion_alias(context: dg.OpExecutionContext, config: PromoteModelConfig, mlflow_tracking: MlflowResource):
    """Points the ``champion`` alias at ``version``, or with ``rollback`` at the previous champion."""
    from mm_pipeline.defs.assets.promotion import champion_lock_for
    from mm_pipeline.registry.champion import rollback_champion, set_champion, tag_version

    if config.rollback == (config.version > 0):
        raise dg.Failure("promote_model needs exactly one of: version (a positive model version) or rollback: true")
    client = mlflow_tracking.client()
    name = config.registered_model_name
    try:
        # The same lock as model_promotion: a concurrent automatic promotion waits, then sees the
        # alias moved (its compare-and-set fails) instead of overwriting this change.
        with champion_lock_for(mlflow_tracking, name):
            change = rollback_champion(client, name) if config.rollback else set_champion(client, name, config.version)
    except (LookupError, ValueError, TimeoutError) as exc:
        raise dg.Failure(f"promote_model: {exc}") from exc
    action = "rollback" if config.rollback else "manual"
    tag_version(
        client,
        name,
        change.current,
        {"action": action, "previous": change.previous or "none", "dagster_run_id": context.run_id},
        prefix="mm_pipeline.champion.",
    )
    context.log.info(f"{name}: champion {change.previous or '(none)'} -> {change.current} ({action})")
    yield dg.Output(
        None,
        metadata={
            "registered_model": name,
            "action": action,
            "champion_before": change.previous or "none",
            "champion_after": change.current,
            "champion_history": ",".join(change.history),
        },
    )


@dg.job(name="promote_model", description="Set the champion model version by hand, or roll it back.")
def promote_model_job():
    set_champion_alias()


# ----------------------------------------------------------------------------------- run config
def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def automation_run_config(exclude_ops: tuple[str, ...] = ()) -> dict:
    """The run config from the YAML file named by ``$MM_PIPELINE_RUN_CONFIG`` (empty when unset), minus
    the ``ops`` in ``exclude_ops`` (a job refuses config for an op it does not have). Read on every
    tick, so an edit applies to the next run. A missing or malformed file raises ``ValueError``
    naming it: the tick fails visibly in the UI instead of launching runs with the wrong config."""
    raw = settings.run_config_file()
    if not raw:
        return {}
    path = Path(raw).expanduser()
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{RUN_CONFIG_ENV}={raw}: cannot read the run-config file ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{RUN_CONFIG_ENV}={raw}: not valid YAML ({exc})") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict) or not isinstance(loaded.get("ops", {}), dict):
        raise ValueError(
            f"{RUN_CONFIG_ENV}={raw}: must hold a run-config mapping such as "
            "'ops: {mm_gcn_model: {config: {epochs: 5}}}'"
        )
    if exclude_ops and "ops" in loaded:
        loaded = {**loaded, "ops": {op: cfg for op, cfg in loaded["ops"].items() if op not in exclude_ops}}
    return loaded


# --------------------------------------------------------------------------------------- schedule
def build_retrain_schedule(cron: str | None = None, timezone: str | None = None) -> dg.ScheduleDefinition:
    """The retraining schedule for ``full_pipeline``: ``cron`` (default ``$MM_PIPELINE_RETRAIN_CRON``,
    else weekly ``0 3 * * 1``) in ``timezone`` (default ``$MM_PIPELINE_RETRAIN_TIMEZONE`` or UTC).
    Each run carries ``$MM_PIPELINE_RUN_CONFIG``. Starts stopped."""
    cron = (cron if cron is not None else settings.retrain_cron()).strip() or DEFAULT_RETRAIN_CRON
    timezone = (timezone if timezone is not None else settings.retrain_timezone()).strip() or "UTC"
    tags = {TRIGGER_TAG: "retrain_schedule"}

    def retrain(context: dg.ScheduleEvaluationContext):
        # full_pipeline leaves the inbox partitions out (they are ingested by inbox_retrain runs).
        return dg.RunRequest(run_config=automation_run_config(exclude_ops=(INBOX_OP,)), tags=tags)

    try:
        return dg.schedule(
            name="retrain_schedule",
            job_name=RETRAIN_JOB,
            cron_schedule=cron,
            execution_timezone=timezone,
            default_status=dg.DefaultScheduleStatus.STOPPED,
            description=f"Retrain, evaluate, register and (if it wins) promote: {RETRAIN_JOB} at '{cron}' "
            f"({timezone}), on the source plus every ingested inbox file. Set {RETRAIN_CRON_ENV} "
            f"to change.",
        )(retrain)
    except (dg.DagsterInvalidDefinitionError, ValueError) as exc:
        raise ValueError(
            f"invalid retraining schedule (cron {cron!r} from {RETRAIN_CRON_ENV}, timezone {timezone!r}): {exc}"
        ) from exc


retrain_schedule = build_retrain_schedule()


# ----------------------------------------------------------------------------------------- sensor
def build_inbox_retrain_job(retrain_job):
    """``inbox_retrain``: what ``retrain_job`` (``full_pipeline``, from ``dg.define_asset_job``)
    materializes, preceded by one partition of ``inbox_interactions``; each run targets one
    partition (a file's SHA-256)."""
    return dg.define_asset_job(
        INBOX_JOB,
        selection=dg.AssetSelection.assets(INBOX_ASSET_KEY) | retrain_job.selection,
        partitions_def=inbox_partitions,
        description=f"Ingest one inbox file (a partition of inbox_interactions, key = its SHA-256), then do what "
        f"{retrain_job.name} does (retrain, evaluate, register, maybe promote) on the source plus "
        f"every ingested file.",
    )


def inbox_dir(pipeline: PipelineResource) -> Path:
    """``$MM_PIPELINE_INBOX``, else ``<project home>/inbox``."""
    return _inbox_dir(pipeline.paths().home)


def _read_cursor(context: dg.SensorEvaluationContext) -> tuple[set[str], dict[str, list]]:
    """``(seen digests, {file name: [size, mtime_ns, digest]})`` from the cursor. The second part
    spares re-hashing unchanged files on every tick."""
    if not context.cursor:
        return set(), {}
    try:
        cursor = json.loads(context.cursor)
        seen, known = cursor["seen"], cursor.get("files", {})
        if not isinstance(seen, list) or not isinstance(known, dict):
            raise TypeError("'seen' is not a list or 'files' not a mapping")
        known = {str(name): entry for name, entry in known.items() if isinstance(entry, list) and len(entry) == 3}
        return {str(d) for d in seen}, known
    except (ValueError, KeyError, TypeError) as exc:
        # Safe to start over: Dagster still drops a run request whose run_key (the digest) it launched.
        context.log.warning(f"new_interactions_sensor: unreadable cursor ({exc}); starting from an empty one")
        return set(), {}


def _settle_seconds() -> float:
    return settings.inbox_settle_seconds()


@dg.sensor(
    name="new_interactions_sensor",
    job_name=INBOX_JOB,
    minimum_interval_seconds=max(1, int(settings.inbox_interval_seconds())),
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Ingest each new interaction file (*.csv, *.parquet) in the inbox ($MM_PIPELINE_INBOX or "
    "<home>/inbox) as a partition of inbox_interactions and retrain: one inbox_retrain run per "
    "distinct file content.",
)
def new_interactions_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
    """One ``inbox_retrain`` run per new file content in the inbox.

    The file's SHA-256 is the new ``inbox_files`` partition (added in the same tick), the run's
    partition and its ``run_key``; the cursor keeps every digest seen, so the same data never
    triggers twice, whatever the file is called. The run's config names the file (and adds
    ``$MM_PIPELINE_RUN_CONFIG``). Hidden files (``.name``) and files modified in the last
    ``$MM_PIPELINE_INBOX_SETTLE_S`` seconds (default 30: still being written) are left for a later
    tick; write to a hidden name and rename to publish a file atomically. Evaluated at most every
    ``$MM_PIPELINE_INBOX_INTERVAL_S`` seconds (default 60, read when the code loads).
    """
    folder = inbox_dir(pipeline)
    if not folder.is_dir():
        return dg.SkipReason(f"no inbox folder at {folder}")
    seen, known = _read_cursor(context)
    settle, now = _settle_seconds(), time.time()
    candidates = []
    for path in folder.iterdir():
        try:
            if is_inbox_file(path):
                stat = path.stat()
                candidates.append((stat.st_mtime, path.name, path, [stat.st_size, stat.st_mtime_ns]))
        except FileNotFoundError:  # removed since the listing
            continue
    new, settling, files = [], 0, {}
    for mtime, name, path, size_mtime in sorted(candidates):
        if now - mtime < settle:
            settling += 1
            continue
        entry = known.get(name)
        if entry is not None and entry[:2] == size_mtime:
            digest = str(entry[2])  # unchanged since it was hashed
        else:
            try:
                digest = file_digest(path)
            except FileNotFoundError:
                continue
        files[name] = [*size_mtime, digest]
        if digest not in seen:
            seen.add(digest)
            new.append((digest, path))
    cursor = json.dumps({"seen": sorted(seen), "files": files})
    if not new:
        why = f"no new interaction file in {folder}" + (f" ({settling} still settling)" if settling else "")
        return dg.SensorResult(skip_reason=dg.SkipReason(why), cursor=cursor)
    base_config = automation_run_config()
    requests = [
        dg.RunRequest(
            run_key=digest,
            partition_key=digest,
            run_config=_deep_merge(base_config, {"ops": {INBOX_OP: {"config": {"file": str(path)}}}}),
            tags={
                TRIGGER_TAG: "new_interactions_sensor",
                "mm_pipeline.inbox_file": path.name[:200],
                "mm_pipeline.inbox_sha256": digest,
            },
        )
        for digest, path in new
    ]
    return dg.SensorResult(
        run_requests=requests,
        cursor=cursor,
        dynamic_partitions_requests=[inbox_partitions.build_add_request([d for d, _ in new])],
    )


LIFECYCLE_JOBS = [promote_model_job]  # plus build_inbox_retrain_job(full_pipeline), made in build.py
LIFECYCLE_SCHEDULES = [retrain_schedule]
LIFECYCLE_SENSORS = [new_interactions_sensor]

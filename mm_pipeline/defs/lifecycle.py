"""Model lifecycle: the manual ``promote_model`` job (set or roll back ``champion``), the weekly
retraining schedule and the ``new_interactions_sensor`` that retrains when new interaction files
arrive. Thin Dagster wrappers: the rules live in :mod:`mm_pipeline.registry.champion`.

Both the schedule and the sensor start **stopped**: turn them on in the UI (Automation) or with
``dagster schedule start retrain_schedule`` / ``dagster sensor start new_interactions_sensor``; they
need the Dagster daemon (``dagster dev`` runs one).
"""

import hashlib
import json
import os
import time
from pathlib import Path

import dagster as dg
from pydantic import Field

from mm_pipeline.defs.resources import MlflowResource, PipelineResource
from mm_pipeline.settings import REGISTERED_MODEL_NAME

RETRAIN_JOB = "full_pipeline"
DEFAULT_RETRAIN_CRON = "0 3 * * 1"  # Mondays 03:00
RETRAIN_CRON_ENV = "MM_PIPELINE_RETRAIN_CRON"
RETRAIN_TIMEZONE_ENV = "MM_PIPELINE_RETRAIN_TIMEZONE"
INBOX_ENV = "MM_PIPELINE_INBOX"
INBOX_SETTLE_ENV = "MM_PIPELINE_INBOX_SETTLE_S"
DEFAULT_INBOX_SETTLE_S = 30.0
INBOX_SUFFIXES = (".csv", ".parquet")
TRIGGER_TAG = "mm_pipeline.trigger"


# ------------------------------------------------------------------------------ promote / rollback
class PromoteModelConfig(dg.Config):
    version: int = Field(default=0, description="Model version to make champion (0: none; use rollback).")
    rollback: bool = Field(default=False, description="Move champion back to the previous champion "
                           "recorded in the mm_pipeline.champion_history registered-model tag.")
    registered_model_name: str = REGISTERED_MODEL_NAME


@dg.op(out=dg.Out(dg.Nothing))
def set_champion_alias(context: dg.OpExecutionContext, config: PromoteModelConfig,
                       mlflow_tracking: MlflowResource):
    """Points the ``champion`` alias at ``version``, or with ``rollback`` at the previous champion."""
    from mm_pipeline.registry.champion import rollback_champion, set_champion, tag_version

    if config.rollback == (config.version > 0):
        raise dg.Failure("promote_model needs exactly one of: version (a positive model version) or "
                         "rollback: true")
    client = mlflow_tracking.client()
    name = config.registered_model_name
    try:
        change = (rollback_champion(client, name) if config.rollback
                  else set_champion(client, name, config.version))
    except (LookupError, ValueError) as exc:
        raise dg.Failure(f"promote_model: {exc}") from exc
    action = "rollback" if config.rollback else "manual"
    tag_version(client, name, change.current, {"action": action, "previous": change.previous or "none",
                                               "dagster_run_id": context.run_id},
                prefix="mm_pipeline.champion.")
    context.log.info(f"{name}: champion {change.previous or '(none)'} -> {change.current} ({action})")
    yield dg.Output(None, metadata={"registered_model": name, "action": action,
                                    "champion_before": change.previous or "none",
                                    "champion_after": change.current,
                                    "champion_history": ",".join(change.history)})


@dg.job(name="promote_model", description="Set the champion model version by hand, or roll it back.")
def promote_model_job():
    set_champion_alias()


# --------------------------------------------------------------------------------------- schedule
def build_retrain_schedule(cron: str | None = None, timezone: str | None = None) -> dg.ScheduleDefinition:
    """The retraining schedule for ``full_pipeline``: ``cron`` (default ``$MM_PIPELINE_RETRAIN_CRON``,
    else weekly ``0 3 * * 1``) in ``timezone`` (default ``$MM_PIPELINE_RETRAIN_TIMEZONE`` or UTC).
    Starts stopped."""
    cron = (cron if cron is not None else os.environ.get(RETRAIN_CRON_ENV, "")).strip() or DEFAULT_RETRAIN_CRON
    timezone = (timezone if timezone is not None else os.environ.get(RETRAIN_TIMEZONE_ENV, "")).strip() or "UTC"
    try:
        return dg.ScheduleDefinition(
            name="retrain_schedule", job_name=RETRAIN_JOB, cron_schedule=cron, execution_timezone=timezone,
            default_status=dg.DefaultScheduleStatus.STOPPED, tags={TRIGGER_TAG: "retrain_schedule"},
            description=f"Retrain, evaluate, register and (if it wins) promote: {RETRAIN_JOB} at '{cron}' "
                        f"({timezone}). Set {RETRAIN_CRON_ENV} to change.")
    except (dg.DagsterInvalidDefinitionError, ValueError) as exc:
        raise ValueError(f"invalid retraining schedule (cron {cron!r} from {RETRAIN_CRON_ENV}, timezone "
                         f"{timezone!r}): {exc}") from exc


retrain_schedule = build_retrain_schedule()


# ----------------------------------------------------------------------------------------- sensor
def inbox_dir(pipeline: PipelineResource) -> Path:
    """``$MM_PIPELINE_INBOX``, else ``<project home>/inbox``."""
    env = os.environ.get(INBOX_ENV, "").strip()
    return Path(env).expanduser().resolve() if env else pipeline.paths().home / "inbox"


def file_digest(path: Path) -> str:
    """SHA-256 of the file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _seen_digests(context: dg.SensorEvaluationContext) -> set[str]:
    if not context.cursor:
        return set()
    try:
        seen = json.loads(context.cursor)["seen"]
        if not isinstance(seen, list):
            raise TypeError("'seen' is not a list")
        return {str(d) for d in seen}
    except (ValueError, KeyError, TypeError) as exc:
        # Safe to start over: Dagster still drops a run request whose run_key (the digest) it launched.
        context.log.warning(f"new_interactions_sensor: unreadable cursor ({exc}); starting from an empty one")
        return set()


def _settle_seconds() -> float:
    raw = os.environ.get(INBOX_SETTLE_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_INBOX_SETTLE_S
    except ValueError as exc:
        raise ValueError(f"{INBOX_SETTLE_ENV} must be a number of seconds, got {raw!r}") from exc
    return max(value, 0.0)


@dg.sensor(name="new_interactions_sensor", job_name=RETRAIN_JOB, minimum_interval_seconds=60,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="Retrain when a new interaction file (*.csv, *.parquet) lands in the inbox "
                       "($MM_PIPELINE_INBOX or <home>/inbox). One run per distinct file content.")
def new_interactions_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource):
    """One ``full_pipeline`` run per new file content in the inbox.

    ``run_key`` is the SHA-256 of the file's bytes, and the cursor keeps every digest seen, so the
    same data never triggers twice, whatever the file is called. Hidden files (``.name``) and files
    modified in the last ``$MM_PIPELINE_INBOX_SETTLE_S`` seconds (default 30: still being written)
    are left for a later tick; write to a hidden name and rename to publish a file atomically.
    """
    folder = inbox_dir(pipeline)
    if not folder.is_dir():
        return dg.SkipReason(f"no inbox folder at {folder}")
    seen = _seen_digests(context)
    settle, now = _settle_seconds(), time.time()
    candidates = []
    for path in folder.iterdir():
        if path.name.startswith(".") or path.suffix.lower() not in INBOX_SUFFIXES or not path.is_file():
            continue
        try:
            candidates.append((path.stat().st_mtime, path.name, path))
        except FileNotFoundError:  # removed since the listing
            continue
    requests, settling = [], 0
    for mtime, _, path in sorted(candidates):
        if now - mtime < settle:
            settling += 1
            continue
        try:
            digest = file_digest(path)
        except FileNotFoundError:
            continue
        if digest in seen:
            continue
        seen.add(digest)
        requests.append(dg.RunRequest(run_key=digest, tags={
            TRIGGER_TAG: "new_interactions_sensor", "mm_pipeline.inbox_file": path.name[:200],
            "mm_pipeline.inbox_sha256": digest}))
    cursor = json.dumps({"seen": sorted(seen)})
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=cursor)
    why = f"no new interaction file in {folder}" + (f" ({settling} still settling)" if settling else "")
    return dg.SensorResult(skip_reason=dg.SkipReason(why), cursor=cursor)


LIFECYCLE_JOBS = [promote_model_job]
LIFECYCLE_SCHEDULES = [retrain_schedule]
LIFECYCLE_SENSORS = [new_interactions_sensor]

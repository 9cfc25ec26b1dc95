"""``mm-pipeline demo|run|report|recommend|forget`` (also ``python -m mm_pipeline.cli ...``).

``demo`` executes the graph in this process (the embedded path) and prints each step as it starts
and finishes; ``run`` hands the steps to the job's executor (``$MM_PIPELINE_EXECUTOR``: in-process,
multiprocess, or the Celery workers). Both wait for a free run slot under the instance's
``max_concurrent_runs``, like runs launched from the UI (:mod:`mm_pipeline.defs.admission`), and a
failed run ends with the step and the error it raised (``--debug``: the stack trace). Both
materialize only the assets that are missing or stale and what is downstream of them
(:mod:`mm_pipeline.defs.incremental`), and of those each whose inputs turn out unchanged reuses its stored
value (:mod:`mm_pipeline.defs.cutoff`); ``--force``: every asset of the job, computed. ``report`` prints the
latest metrics; ``recommend`` asks the champion model for one user's top-k; ``forget`` forgets a user
(:mod:`mm_pipeline.privacy`: forget list, retrain, purge, audit).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from mm_pipeline import settings
from mm_pipeline.defs.tags import FORGET_TAG, FROM_SCRATCH_TAG

TABLE_COLUMNS = ("recall@20", "ndcg@20", "precision@20", "f1@20", "coverage@20", "novelty@20")


def prepare_dagster_home(paths: settings.ProjectPaths) -> Path:
    """Point ``DAGSTER_HOME`` at the project home and link the project's ``dagster.yaml`` into it."""
    home = settings.dagster_home(paths)
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    link, source = home / "dagster.yaml", settings.REPO_ROOT / "dagster.yaml"
    if source.exists() and not link.exists():
        link.symlink_to(source)
    return home


def clean_written_leftovers(paths: settings.ProjectPaths) -> None:
    """What killed writes left in the folders the pipeline writes (``.<name>.tmp-*``, ``.old-*``), once old
    enough to have no live writer: assets (the inbox copies too), reports, quarantine tables and the generated
    datasets under ``data/`` (only these staging names are removed there; the datasets are left alone)."""
    from mm_pipeline.storage import clean_leftovers

    for folder in (paths.assets, paths.reports, paths.home / "quarantine", paths.data, paths.home / "batch"):
        clean_leftovers(folder)


def format_table(models: dict[str, dict], columns=TABLE_COLUMNS) -> str:
    name_width = max([len("model")] + [len(n) for n in models])
    lines = ["model".ljust(name_width) + "".join(c.rjust(14) for c in columns)]
    for name, values in models.items():
        lines.append(
            name.ljust(name_width) + "".join((f"{values[c]:.4f}" if c in values else "n/a").rjust(14) for c in columns)
        )
    return "\n".join(lines)


def print_report(metrics_path: Path) -> None:
    metrics = json.loads(metrics_path.read_text())
    ds = metrics["dataset"]
    print(
        f"\nDataset {ds['spec']}: {ds['users']} users, {ds['items']} items, {ds['interactions']} interactions, "
        f"{ds['cold_items']} cold-start items"
    )
    print("\nTest, full ranking over all items:")
    print(format_table(metrics["models"]))
    support = metrics.get("support", {}).get("cold_start")
    if metrics.get("cold_start"):
        about = f" {support['interactions']} test interactions, {support['users']} users" if support else ""
        print(f"\nTest, cold-start items (ranked among cold items;{about}):")
        print(format_table(metrics["cold_start"], ("recall@20", "ndcg@20", "precision@20", "hit_ratio@20")))
    elif support and support["interactions"]:
        print(f"\nTest, cold-start items: not enough data ({support['reason']})")


# ------------------------------------------------------------------------------------ run progress
def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


NOT_EXECUTED = re.compile(r"^Dependencies for step .* Not executing\.$", re.DOTALL)


def cpu_seconds() -> float:
    """User plus system CPU seconds of this process so far, all its threads together."""
    times = os.times()
    return times.user + times.system


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform says, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def idle_core_seconds(steps: dict[str, tuple[float, float]], cores: int) -> tuple[float, float]:
    """``(idle, available)`` core-seconds over ``steps`` (step -> ``(wall seconds, CPU seconds)``): what the
    ``cores`` could have computed while the steps ran one after another, and how much of it they left unused.
    The idle share is the most that running independent steps side by side could save (half of it in wall
    time on two cores), before they slow each other down."""
    available = cores * sum(wall for wall, _ in steps.values())
    return max(available - sum(cpu for _, cpu in steps.values()), 0.0), available


class ProgressHandler(logging.Handler):
    """One line per step start and finish, with the seconds since ``started``, plus the INFO (and
    louder) lines the assets log themselves; failed asset checks show their description. Fed by the
    Dagster log manager (records carry ``dagster_meta``), so it sees the run's events as they happen."""

    def __init__(self, started: float, write=_stderr):
        super().__init__(logging.DEBUG)
        self.started, self.write = started, write
        self.step_started: dict[str, tuple[float, float]] = {}  # step -> (perf_counter, CPU seconds) at its start
        # step -> (wall seconds, CPU seconds of this process meanwhile): in-process runs only, where the steps
        # run here one at a time.
        self.step_cpu: dict[str, tuple[float, float]] = {}
        self.not_executed = 0

    def _line(self, text: str) -> None:
        self.write(f"[{time.perf_counter() - self.started:7.1f}s] {text}")

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None)
        if not isinstance(meta, dict):
            return
        try:
            event = meta.get("dagster_event")
            step = meta.get("step_key") or ""
            if event is None:
                message = str(meta.get("orig_message", record.getMessage()))
                if NOT_EXECUTED.match(message):  # one per step downstream of a failure: counted instead
                    self.not_executed += 1
                elif record.levelno >= logging.INFO and step:
                    self._line(f"  {step}: {message}")
                return
            kind = event.event_type_value
            if kind == "STEP_START":
                self.step_started[step] = (time.perf_counter(), cpu_seconds())
                self._line(f"started  {step}")
            elif kind == "STEP_SUCCESS":
                start, cpu_start = self.step_started.pop(step, (time.perf_counter(), cpu_seconds()))
                seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
                self.step_cpu[step] = (seconds, cpu)
                self._line(f"finished {step} ({seconds:.1f}s)")
            elif kind == "STEP_FAILURE":
                self.step_started.pop(step, None)
                self._line(f"FAILED   {step}")
            elif kind == "ASSET_CHECK_EVALUATION":
                evaluation = event.event_specific_data
                if not evaluation.passed:
                    severity = getattr(evaluation.severity, "value", evaluation.severity)
                    self._line(
                        f"  check {evaluation.check_name} failed ({severity}): "
                        f"{evaluation.description or 'see the Dagster UI'}"
                    )
        except Exception:  # progress output never breaks a run
            self.handleError(record)


def progress_logger_def(handler: ProgressHandler):
    """A Dagster logger that hands the run's records to ``handler`` (in this process: for in-process runs)."""
    import dagster as dg

    @dg.logger(description="Step starts and finishes with elapsed seconds, and the assets' INFO lines.")
    def progress(init_context):
        logger = logging.Logger("mm_pipeline.progress", logging.DEBUG)
        logger.addHandler(handler)
        return logger

    return progress


# ------------------------------------------------------------------------------------ failures
#: Exceptions that mean "the input is wrong", not "the code is wrong": the message is the whole story.
DATA_ERROR_TYPES = ("DataError", "MediaProblem", "Failure")


def _error_chain(error) -> list:
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.cause or error.context
    return chain


def _error_text(error) -> str:
    """The exception's message without its ``module.Class:`` prefix."""
    text = (error.message or "").strip()
    prefix, sep, rest = text.partition(": ")
    return rest.strip() if sep and prefix.split(".")[-1] == error.cls_name else text


def failure_summary(events, debug: bool = False) -> list[str]:
    """For each failed step of a run: the step and the error it raised. A data error (``DataError``,
    ``MediaProblem``, ``dagster.Failure``) is shown as its message; anything else as its type and
    message, with where to find the trace. ``debug``: the whole stack trace. Failed blocking asset
    checks (which stop a run without a failed step) are listed too."""
    lines = []
    for event in events:
        if event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed and getattr(evaluation.severity, "value", "") == "ERROR":
                lines.append(
                    f"check {evaluation.check_name} on {evaluation.asset_key.to_user_string()} failed "
                    f"and blocks what is downstream: {evaluation.description or 'see the Dagster UI'}"
                )
            continue
        if event.event_type_value != "STEP_FAILURE":
            continue
        error = getattr(event.event_specific_data, "error", None)
        if error is None:
            lines.append(f"step {event.step_key} failed")
            continue
        if debug:
            lines.append(f"step {event.step_key} failed:\n{error.to_string()}")
            continue
        chain = _error_chain(error)
        data_error = next((e for e in chain if e.cls_name in DATA_ERROR_TYPES), None)
        if data_error is not None:
            lines.append(f"step {event.step_key} failed: {_error_text(data_error)}")
        else:
            cause = chain[-1]
            lines.append(
                f"step {event.step_key} failed with {cause.cls_name}: {_error_text(cause)} "
                f"(the stack trace: rerun with --debug, or open the run in the Dagster UI)"
            )
    return lines


def report_failure(events, run_id: str, debug: bool) -> None:
    lines = failure_summary(events, debug)
    _stderr("")
    for line in lines or ["the run failed before any step did (see the Dagster UI)"]:
        _stderr(line)
    _stderr(f"Dagster run {run_id} failed; browse it with `make ui` -> http://127.0.0.1:3000")


# ------------------------------------------------------------------------------------ commands
def plan_incremental(defs, job: str, instance, run_config: dict):
    """What a run of ``job`` with ``run_config`` must materialize (:mod:`mm_pipeline.defs.incremental`): the
    assets that are missing or stale and everything downstream of them. Prints the plan on stderr."""
    from mm_pipeline.defs.incremental import expected_source_versions, plan_run, planned_pipeline, stored_in
    from mm_pipeline.defs.io_manager import storage_base

    io_config = ((run_config.get("resources") or {}).get("io_manager") or {}).get("config") or {}
    plan = plan_run(
        defs,
        job,
        instance,
        run_config,
        stored_in(storage_base(str(io_config.get("base_dir") or ""))),
        expected_source_versions(planned_pipeline(run_config)),
    )
    _stderr(plan.summary())
    if plan.why():
        _stderr(plan.why())
    return plan


def force_tags(force: bool) -> dict[str, str]:
    """The run tags of ``--force``: every asset the run selects is computed, none reuses its stored value
    (:mod:`mm_pipeline.defs.cutoff`), and models train from scratch (no warm start)."""
    from mm_pipeline.defs.cutoff import REUSE_OFF, REUSE_TAG

    return {REUSE_TAG: REUSE_OFF, FROM_SCRATCH_TAG: "true"} if force else {}


def inherited_tags(instance, parent_run_id: str) -> dict[str, str]:
    """The project's run tags of ``parent_run_id`` (forced, reuse off, forget request): its re-execution must
    train and reuse the same way (Dagster does not copy launch-time tags onto a re-execution)."""
    from mm_pipeline.defs.cutoff import REUSE_TAG

    parent = instance.get_run_by_id(parent_run_id)
    kept = (REUSE_TAG, FROM_SCRATCH_TAG, FORGET_TAG)
    return {k: v for k, v in (parent.tags if parent is not None else {}).items() if k in kept}


def execute_with_progress(
    job: str,
    dataset: str | None,
    run_config: dict,
    paths: settings.ProjectPaths,
    debug: bool = False,
    tags: dict[str, str] | None = None,
    force: bool = False,
):
    """Run ``job`` in this process once a run slot is free, printing each step as it starts and
    finishes: only the assets that are missing or stale and what is downstream of them, or every asset
    with ``force``. Returns ``(result, progress handler, perf_counter at the start)``; the result is None
    when every asset was up to date (no run)."""
    run_config = with_dataset(run_config, dataset)
    import dagster as dg
    from dagster._loggers import colored_console_logger

    from mm_pipeline.definitions import defs
    from mm_pipeline.defs.admission import admitted_run

    started = time.perf_counter()
    clean_written_leftovers(paths)
    loggers: dict[str, Any] = {"progress": {}}
    if debug:  # Dagster's own console log (every event, stack traces) as well
        loggers["console"] = {"config": {"log_level": "INFO"}}
    progress = ProgressHandler(started)
    job_def = defs.resolve_job_def(job).with_logger_defs(
        {"progress": progress_logger_def(progress), "console": colored_console_logger}
    )
    _stderr(f"Running {job} on {dataset or settings.dataset_spec()} (one line per step; the Dagster UI shows more)")

    def start(instance, admission):
        # Planned once a run slot is free: a run that finished meanwhile may have materialized what was missing.
        plan = None if force else plan_incremental(defs, job, instance, run_config)
        if plan is not None and plan.nothing_to_do:
            return None
        return execute_in_process_uncaptured(
            job_def,
            instance=instance,
            tags={**admission, **(tags or {}), **force_tags(force)},
            run_config={**run_config, "loggers": loggers},
            asset_selection=None if plan is None else list(plan.to_materialize),
        )

    with dg.DagsterInstance.get() as instance:
        result = admitted_run(instance, lambda admission: start(instance, admission))
    return result, progress, started


def execute_in_process_uncaptured(job_def, instance, tags, run_config, asset_selection):
    """``job_def.execute_in_process(...)`` (raise_on_error off) without keeping every step's output in memory.

    ``execute_in_process`` holds each output it produced until the run ends, so that tests can read them
    back (Dagster issue #9731): an Amazon Beauty demo peaked at 15 GB of RSS with every item-item matrix
    and compressed variant alive at once. The outputs are already stored by the IO manager and the demo
    reads only the events, so this runs the same steps as ``execute_in_process`` (its body, Dagster being
    pinned) with output capture off."""
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.execution.execute_in_process import (
        core_execute_in_process,
        merge_run_tags,
        type_check_and_normalize_args,
    )

    run_config, _, selection, _, _, _ = type_check_and_normalize_args(
        run_config=run_config, asset_selection=asset_selection
    )
    ephemeral = job_def.as_ephemeral_job(resource_defs={}, input_values={}, asset_selection=selection)
    return core_execute_in_process(
        job=InMemoryJob(job_def=ephemeral),
        run_config=run_config,
        instance=instance,
        output_capturing_enabled=False,
        raise_on_error=False,
        run_tags=merge_run_tags(
            job_def=job_def,
            partition_key=None,
            tags=tags,
            asset_selection=selection,
            instance=instance,
            run_config=run_config,
        ),
        asset_selection=frozenset(selection),
    )


def run_demo(
    dataset: str | None,
    job: str = "full_pipeline",
    debug: bool = False,
    config_file: str | None = None,
    force: bool = False,
) -> int:
    run_config = read_run_config(config_file)
    if run_config is None:
        return 2
    settings.prefer_offline_models()
    paths = settings.project_paths().ensure()
    prepare_dagster_home(paths)
    from mm_pipeline.definitions import defs

    result, progress, started = execute_with_progress(job, dataset, run_config, paths, debug, force=force)
    elapsed = time.perf_counter() - started
    if result is None:
        print(f"\nNothing to materialize: every asset of {job} is up to date ({elapsed:.1f} s)")
        print("(--force recomputes them all)")
        return _print_outcome(paths, None)
    if progress.not_executed:
        _stderr(f"{progress.not_executed} step(s) not executed: a step they depend on failed or was skipped")
    assets = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    reused = reused_assets(result)
    cores = available_cores()
    # cores: the step's CPU seconds per second of wall time (threads add up), of the `cores` this process has.
    print(f"\nStage timings (s; cores: CPU seconds per second of the step, of {cores}):")
    check_seconds, checks = 0.0, 0
    for event in result.all_events:
        if event.event_type_value == "STEP_SUCCESS":
            seconds = event.event_specific_data.duration_ms / 1000
            if event.step_key in assets:
                wall, cpu = progress.step_cpu.get(event.step_key, (0.0, 0.0))
                busy = f"{cpu / wall:8.2f}" if wall > 0 else f"{'':8}"
                print(f"  {event.step_key:<28}{seconds:8.1f}{busy}{'  reused' if event.step_key in reused else ''}")
            else:
                check_seconds, checks = check_seconds + seconds, checks + 1
    if checks:
        print(f"  {f'asset checks ({checks})':<28}{check_seconds:8.1f}")
    print(f"  {'total (incl. start-up)':<28}{elapsed:8.1f}")
    idle, available = idle_core_seconds(progress.step_cpu, cores)
    if available > 0:
        print(
            f"  (the steps used {available - idle:.0f} of {available:.0f} core-seconds; {idle:.0f} idle: the most that "
            "running independent steps side by side could use)"
        )
    if reused:
        print(
            f"  ({len(reused)} assets reused their stored value: their inputs had not changed; --force computes them)"
        )
    if not result.success:
        report_failure(result.all_events, result.run_id, debug)
        return 1
    return _print_outcome(paths, result.run_id)


def reused_assets(result) -> set[str]:
    """The assets a run materialized by reusing their stored value (metadata ``reused``,
    :mod:`mm_pipeline.defs.cutoff`)."""
    out = set()
    for event in result.get_asset_materialization_events():
        metadata = event.materialization.metadata
        if "reuse" in metadata and metadata["reused"].value is True:
            out.add(event.asset_key.to_user_string())
    return out


def _print_outcome(paths: settings.ProjectPaths, run_id: str | None) -> int:
    """The metrics table and where everything is (``run_id``: the run, None when nothing ran)."""
    metrics = paths.reports / "latest" / "metrics.json"
    if not metrics.exists():
        _stderr(f"no report at {metrics}: run with --force to write it again")
        return 1
    print_report(metrics)
    print(f"\nReports:    {paths.reports / 'latest'}  (metrics.json, report.md, report.html)")
    batch = paths.home / "batch" / "recommendations.parquet"
    if batch.exists():
        print(f"Batch:      {batch}  (the champion's top-k for every user; `mm-pipeline recommend --user ID`)")
    if run_id is not None:
        print(f"Dagster:    run {run_id}; browse it with `make ui` -> http://127.0.0.1:3000")
    else:
        print("Dagster:    no run (nothing to do); browse the assets with `make ui` -> http://127.0.0.1:3000")
    print(
        f"MLflow:     {settings.mlflow_tracking_uri(paths)}; browse it with `make mlflow-ui` -> http://127.0.0.1:5000"
    )
    return 0


def with_dataset(run_config: dict, dataset: str | None) -> dict:
    """``run_config`` with ``dataset`` set as the ``pipeline`` resource's config; unchanged without one (the
    resource's own: ``$MM_PIPELINE_DATASET`` or builtin:default)."""
    if not dataset:
        return run_config
    resources = dict(run_config.get("resources") or {})
    pipeline = dict(resources.get("pipeline") or {})
    resources["pipeline"] = {**pipeline, "config": {**(pipeline.get("config") or {}), "dataset": dataset}}
    return {**run_config, "resources": resources}


def read_run_config(config_file: str | None) -> dict | None:
    """The YAML run config in ``config_file`` ({} without one); None, after saying why on stderr, when it
    cannot be read or is not a mapping."""
    import yaml

    if not config_file:
        return {}
    try:
        run_config = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        print(f"--config {config_file}: cannot read it as YAML run config ({exc})", file=sys.stderr)
        return None
    if not isinstance(run_config, dict):
        print(f"--config {config_file}: must hold a run-config mapping (ops:, resources:)", file=sys.stderr)
        return None
    return run_config


def run_job(
    job: str,
    dataset: str | None,
    config_file: str | None,
    from_failure: str | None = None,
    debug: bool = False,
    force: bool = False,
) -> int:
    """``job`` through its own executor (``$MM_PIPELINE_EXECUTOR``) in the instance of ``$DAGSTER_HOME``,
    once a run slot is free: the assets that are missing or stale and what is downstream of them (all of
    them with ``force``; a re-execution from a failure runs what that run left). ``dataset`` goes into the
    run config (the ``pipeline`` resource), so steps on workers with another environment still read it.
    Prints the run id and where its report is."""
    import dagster as dg

    from mm_pipeline import definitions
    from mm_pipeline.defs.admission import admitted_run

    run_config = read_run_config(config_file)
    if run_config is None:
        return 2
    run_config = with_dataset(run_config, dataset)
    settings.prefer_offline_models()
    paths = settings.project_paths().ensure()
    prepare_dagster_home(paths)
    clean_written_leftovers(paths)
    with dg.DagsterInstance.get() as instance:
        # From failure: the steps that failed or never finished in that run; the others' outputs are read
        # from the versions that run wrote.
        reexecution = dg.ReexecutionOptions.from_failure(from_failure, instance) if from_failure else None
        inherited = inherited_tags(instance, from_failure) if from_failure else {}

        def start(tags):
            plan = None if force or reexecution else plan_incremental(definitions.defs, job, instance, run_config)
            if plan is not None and plan.nothing_to_do:
                return None
            return dg.execute_job(
                dg.reconstructable(definitions.JOB_LOADERS[job]),
                instance=instance,
                run_config=run_config,
                tags={**tags, **inherited, **force_tags(force)},
                reexecution_options=reexecution,
                raise_on_error=False,
                asset_selection=None if plan is None else list(plan.to_materialize),
            )

        result = admitted_run(instance, start)
    if result is None:
        print(f"Nothing to materialize: every asset of {job} is up to date (--force recomputes them all)")
        return 0
    print(f"Dagster run {result.run_id}: {'success' if result.success else 'FAILED'}")
    print(f"Report:     {paths.reports / 'runs' / result.run_id} (reports/latest is the newest run's)")
    if not result.success:
        report_failure(result.all_events, result.run_id, debug)
    return 0 if result.success else 1


def run_report() -> int:
    path = settings.project_paths().reports / "latest" / "metrics.json"
    if not path.exists():
        _stderr(f"mm-pipeline report: no report yet ({path} does not exist); run `mm-pipeline demo` first")
        return 1
    print_report(path)
    return 0


def _item_titles(paths: settings.ProjectPaths) -> dict[str, str]:
    """Item id -> a short title from the stored catalogue (``raw_items``), when there is one."""
    from mm_pipeline.storage import as_path, load_bundle

    # Where the IO manager keeps asset values (defs.io_manager.storage_base), without importing Dagster.
    storage = settings.storage_location()
    try:
        items = load_bundle((as_path(storage) if storage else paths.assets) / "raw_items")["table"]
    except (FileNotFoundError, KeyError, OSError, ValueError):
        return {}
    column = next((c for c in ("title", "name", "text") if c in items.columns), None)
    if column is None:
        return {}
    text = items[column].fillna("").astype(str).str.split("\n").str[0].str.strip()
    short = text.where(text.str.len() <= 60, text.str.slice(0, 57) + "...")
    return dict(zip(items["item_id"].astype(str), short))


def run_recommend(user_id: str, k: int, as_json: bool, model_name: str, explain: bool = False) -> int:
    """The champion's top-``k`` for ``user_id``, read from the registered model (what
    ``mlflow models serve`` would answer, given the project's user key secret); ``explain`` adds why."""
    import pandas as pd

    from mm_pipeline.registry.scoring import NoChampionError, champion_model_uri, store_is_empty

    paths = settings.project_paths()
    uri = settings.mlflow_tracking_uri(paths)
    if k < 1:
        _stderr(f"mm-pipeline recommend: --k must be at least 1, got {k}")
        return 2
    if store_is_empty(uri):
        _stderr(
            f"mm-pipeline recommend: no champion model yet (no MLflow store at {uri}); run `mm-pipeline demo` first"
        )
        return 1
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import tempfile

    import mlflow
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.ERROR)  # version notes would bury the answer
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        version, model_uri = champion_model_uri(client, model_name)
    except NoChampionError as exc:
        _stderr(f"mm-pipeline recommend: no champion model yet ({exc} in {uri}); run `mm-pipeline demo` first")
        return 1
    recommender = (client.get_model_version(model_name, version).tags or {}).get("mm_pipeline.recommender", "")
    with tempfile.TemporaryDirectory(prefix="mm_pipeline_recommend_") as tmp:  # what `mlflow models serve` runs
        served = mlflow.pyfunc.load_model(model_uri, dst_path=tmp)
        from mm_pipeline.registry.user_keys import pipeline_user_key_secret

        served.unwrap_python_model().use_secret(pipeline_user_key_secret())
        request = {"user_id": [user_id], "k": [k], **({"explain": [True]} if explain else {})}
        try:
            answer = served.predict(pd.DataFrame(request))
        except ValueError as exc:  # above the served model's caps
            _stderr(f"mm-pipeline recommend: {exc}")
            return 2
    fallback = bool(answer["fallback"].any()) if len(answer) else True
    titles = _item_titles(paths)
    items = [
        {
            "rank": int(row.rank),
            "item_id": str(row.item_id),
            "score": None if pd.isna(row.score) else float(row.score),
            **({"title": titles[str(row.item_id)]} if str(row.item_id) in titles else {}),
            **({"reason": _titled_reason(row.reason, row.because, titles)} if explain else {}),
        }
        for row in answer.itertuples(index=False)
    ]
    if as_json:
        print(
            json.dumps(
                {
                    "user_id": user_id,
                    "registered_model": model_name,
                    "version": version,
                    "model_uri": model_uri,
                    "recommender": recommender,
                    "fallback": fallback,
                    "items": items,
                },
                indent=1,
            )
        )
        return 0
    about = f"{model_name} v{version}" + (f" ({recommender})" if recommender else "")
    if fallback:
        print(
            f"User {user_id!r} is not known to the champion {about}: the {len(items)} most popular items "
            f"(the fallback for new users)."
        )
    else:
        print(f"Top {len(items)} for user {user_id!r} from the champion {about} (items they have seen excluded):")
    width = max([len("item_id")] + [len(i["item_id"]) for i in items])
    print(f"{'rank':>4}  {'item_id':<{width}}  {'score':>9}  title")
    for item in items:
        score = "-" if item["score"] is None else f"{item['score']:.4f}"
        print(f"{item['rank']:>4}  {item['item_id']:<{width}}  {score:>9}  {item.get('title', '')}".rstrip())
        if item.get("reason"):
            print(f"{'':>4}  {item['reason']}")
    return 0


def _titled_reason(reason: str, because: str, titles: dict[str, str]) -> str:
    """The served reason with the history items named by title where the catalogue has one."""
    for item in filter(None, str(because).split("|")):
        reason = reason.replace(item, f"'{titles[item]}'" if item in titles else item, 1)
    return reason


# ------------------------------------------------------------------------------------ forgetting a user


def _materialization_value(result, asset: str, key: str):
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == asset:
            value = event.materialization.metadata.get(key)
            return getattr(value, "value", value)
    return None


def _forget_run_config(run_config: dict, request: str) -> dict:
    """``run_config`` with ``model_promotion``'s ``forget_request`` set (the champion must be replaced)."""
    ops = dict(run_config.get("ops") or {})
    promotion = dict(ops.get("model_promotion") or {})
    promotion["config"] = {**(promotion.get("config") or {}), "forget_request": request}
    ops["model_promotion"] = promotion
    return {**run_config, "ops": ops}


def run_forget(
    user_id: str,
    dataset: str | None,
    config_file: str | None = None,
    even_if_unknown: bool = False,
    model_name: str = settings.REGISTERED_MODEL_NAME,
    debug: bool = False,
) -> int:
    """Forget ``user_id``: forget list, stored inbox copies, retrain + register + promote without them,
    delete what was made before, check, and append the audit record (docs/privacy.md)."""
    run_config = read_run_config(config_file)
    if run_config is None:
        return 2
    if not user_id.strip():
        _stderr("mm-pipeline forget: --user must be a user id, exactly as spelled in the interactions")
        return 2
    settings.prefer_offline_models()
    paths = settings.project_paths().ensure()
    prepare_dagster_home(paths)
    import dagster as dg

    from mm_pipeline.datasets.inbox import inbox_dir
    from mm_pipeline.datasets.sources import load_source, resolve_source
    from mm_pipeline.defs.io_manager import OPS_FOLDER, storage_base
    from mm_pipeline.privacy import forget
    from mm_pipeline.privacy.forget_list import forget_hash, forget_secret, load_forget_list

    home, spec = paths.home, dataset or settings.dataset_spec()
    inbox_store = paths.assets / "inbox_interactions"
    source = resolve_source(spec, paths.data)
    presence = forget.find_user(user_id, load_source(source).interactions, inbox_store, inbox_dir(home))
    try:
        secret = forget_secret(home)
    except ValueError as exc:  # a named secret file that cannot be read, a secret too short
        _stderr(f"mm-pipeline forget: the forget secret: {exc}; nothing was changed")
        return 2
    listed = load_forget_list(home)
    already = secret is not None and listed is not None and forget_hash(user_id, secret) in listed
    if not presence.total and not already and not even_if_unknown:
        _stderr(
            f"mm-pipeline forget: user {user_id!r} has no interaction in {spec}, in the stored inbox partitions "
            "or in the inbox: nothing was changed. Check the id (spelled as in the interactions); "
            "--even-if-unknown puts it on the forget list anyway (its rows in later inbox files are then left out)."
        )
        return 1

    request = forget.new_request_id()
    prepared, filt = forget.prepare(home, user_id, request, inbox_store)
    record: dict[str, Any] = {
        "request": request,
        "forget_hash": prepared.forget_hash,
        "already_listed": not prepared.newly_listed,
        "users_on_forget_list": prepared.listed_users,
        "interactions_found": {
            "source": presence.source,
            "inbox_copies": presence.inbox_copies,
            "inbox_files": presence.inbox_files,
        },
        "inbox_copies_rewritten": prepared.inbox_copies_redacted,
        "checkpoints_deleted": prepared.checkpoints_deleted,
    }
    _stderr(
        f"Forget request {request}: on the forget list (forget hash {prepared.forget_hash[:12]}...); "
        f"{sum(prepared.inbox_copies_redacted.values())} row(s) removed from "
        f"{len(prepared.inbox_copies_redacted)} stored inbox cop(y/ies). Retraining without the user."
    )

    result, _, _ = execute_with_progress(
        "full_pipeline",
        dataset,
        _forget_run_config(run_config, request),
        paths,
        debug,
        tags={FORGET_TAG: request},
        force=True,  # the forget list changes what every asset holds, whatever the source's fingerprint says
    )
    record["retrain_run"] = result.run_id
    if not result.success:
        report_failure(result.all_events, result.run_id, debug)
        return _forget_incomplete(
            home,
            record,
            f"the retrain (Dagster run {result.run_id}) failed; nothing made before it was deleted",
        )
    from mm_pipeline.storage import load_bundle

    # As the run stored it: the in-process run keeps no outputs in memory (execute_in_process_uncaptured).
    promotion = load_bundle(paths.assets / "model_promotion")
    version = str(promotion["challenger_version"])
    record["champion"] = {"name": model_name, "version": version, "decision": promotion["decision"]}
    record["rows_left_out_by_the_retrain"] = _materialization_value(
        result, "raw_interactions", "forgotten_rows_removed"
    )
    if str(promotion.get("champion_after")) != version:
        return _forget_incomplete(
            home,
            record,
            f"the retrained {model_name} v{version} did not become the champion ({promotion['reason']}); nothing "
            "made before it was deleted",
        )

    from mlflow.tracking import MlflowClient

    uri = settings.mlflow_tracking_uri(paths)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with dg.DagsterInstance.get() as instance:
        kept = {result.run_id} | {
            r.dagster_run.run_id
            for r in instance.get_run_records()
            if r.create_timestamp.timestamp() >= prepared.started
        }
    purged = forget.finish(
        home,
        storage_base(),
        kept.__contains__,
        prepared.started,
        filt,
        request,
        client,
        asset_skip=frozenset({"inbox_interactions", OPS_FOLDER}),
        ops_folder=OPS_FOLDER,
    )
    record["deleted"] = purged

    from mm_pipeline.registry.pyfunc import user_key
    from mm_pipeline.registry.user_keys import pipeline_user_key_secret

    user_key_secret = pipeline_user_key_secret()
    settings.quiet_mlflow_uploads()
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    recognised = forget.champion_recognises(f"models:/{model_name}/{version}", user_id, user_key_secret)
    in_batch = forget.batch_holds(home / "batch" / "recommendations.parquet", user_key(user_id, user_key_secret))
    record["verified"] = {"champion_recognises_user": recognised, "batch_scores_hold_user": in_batch}
    record["left_in_place"] = {
        "source": f"{spec}: {presence.source} interaction(s); the source is yours and is not modified: "
        "every read leaves the user out",
        "inbox_files": sorted(presence.inbox_files),
    }
    problems = [
        *([f"the champion v{version} still recognises the user"] if recognised else []),
        *(["the batch scores still hold the user"] if in_batch else []),
        *(
            [f"the MLflow store did not delete {len(purged.mlflow.failed)} artifact folder(s) (see the audit record)"]
            if purged.mlflow is not None and purged.mlflow.failed
            else []
        ),
    ]
    record["status"] = "incomplete: " + "; ".join(problems) if problems else "done"
    audit = forget.append_audit(home, record)
    _print_forget_summary(record, purged, audit)
    if problems:
        _stderr("mm-pipeline forget: " + "; ".join(problems))
        return 1
    return 0


def _forget_incomplete(home: Path, record: dict, why: str) -> int:
    from mm_pipeline.privacy import forget

    record["status"] = f"incomplete: {why}"
    audit = forget.append_audit(home, record)
    _stderr(
        f"mm-pipeline forget: {why}. The user stays on the forget list (no run trains on them again); fix the "
        f"problem and run the same command again to finish. Audit: {audit}"
    )
    return 1


def _print_forget_summary(record: dict, purged, audit: Path) -> None:
    found = record["interactions_found"]
    mlflow_purge = purged.mlflow
    print(f"Forgot a user (request {record['request']}, forget hash {record['forget_hash'][:12]}...):")
    print(
        f"  found:     {found['source']} interaction(s) in the source, "
        f"{sum(found['inbox_copies'].values())} in stored inbox copies, "
        f"{sum(found['inbox_files'].values())} in inbox files"
    )
    print(
        f"  retrained: Dagster run {record['retrain_run']}; {record['champion']['name']} "
        f"v{record['champion']['version']} is the champion"
    )
    deleted = [
        f"{purged.asset_versions_deleted} asset version(s)",
        f"{len(purged.assets_deleted)} asset(s) not rewritten by the retrain"
        + (f" ({', '.join(purged.assets_deleted)})" if purged.assets_deleted else ""),
        f"{purged.report_runs_deleted} run report(s)",
    ]
    if mlflow_purge is not None:
        deleted += [
            f"the artifacts of {mlflow_purge.run_artifacts_deleted} MLflow run(s), "
            f"{mlflow_purge.logged_models_deleted} logged model(s) and "
            f"{len(mlflow_purge.model_versions_deleted)} model version(s)",
        ]
    print(f"  deleted:   {'; '.join(deleted)}")
    verified = record["verified"]
    print(
        "  checked:   the champion "
        + ("STILL RECOGNISES the user" if verified["champion_recognises_user"] else "gives the user the fallback")
        + "; the batch scores "
        + ("STILL HOLD rows for them" if verified["batch_scores_hold_user"] else "hold no row for them")
    )
    if record["left_in_place"]["inbox_files"]:
        print(
            f"  yours:     inbox file(s) {', '.join(record['left_in_place']['inbox_files'])} still hold the user "
            "(never modified by the pipeline; already left out of training): delete or edit them"
        )
    print(f"  audit:     {audit}")


FORCE_HELP = (
    "compute every asset of the job; without it, only those that are missing or stale (code, input data, "
    "run config or source changed) and what is downstream of them, and of those only the ones whose inputs "
    "turn out changed (the others reuse their stored value)"
)


def build_parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="on failure, print the whole stack trace")
    parser = argparse.ArgumentParser(
        prog="mm-pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", parents=[debug], help="materialize every asset and print the metrics")
    demo.add_argument("--dataset", help="dataset spec (default: $MM_PIPELINE_DATASET or builtin:default)")
    demo.add_argument(
        "--job",
        default="full_pipeline",
        choices=("full_pipeline", "research_pipeline"),
        help="research_pipeline adds the ablations of the primary model (several minutes more)",
    )
    demo.add_argument("--config", help="a YAML run-config file (ops:, resources:), e.g. which ablations to train")
    demo.add_argument("--force", action="store_true", help=FORCE_HELP)
    run = sub.add_parser(
        "run", parents=[debug], help="run a job through its executor ($MM_PIPELINE_EXECUTOR, e.g. celery)"
    )
    run.add_argument("--job", default="full_pipeline", choices=("full_pipeline", "research_pipeline"))
    run.add_argument(
        "--dataset",
        help="dataset spec for this run (run config; default: the workers' $MM_PIPELINE_DATASET or builtin:default)",
    )
    run.add_argument("--config", help="a YAML run-config file (ops:, resources:)")
    run.add_argument("--from-failure", metavar="RUN_ID", help="re-execute that failed run from its failure")
    run.add_argument("--force", action="store_true", help=FORCE_HELP)
    sub.add_parser("report", parents=[debug], help="print the latest metrics table")
    recommend = sub.add_parser("recommend", parents=[debug], help="the champion model's top-k items for one user")
    recommend.add_argument("--user", required=True, metavar="ID", help="the user's id, as in the interactions")
    recommend.add_argument("--k", type=int, default=10, help="how many items (default 10)")
    recommend.add_argument("--json", action="store_true", help="print JSON instead of a table")
    recommend.add_argument(
        "--explain",
        action="store_true",
        help="say why: the history items behind each item and the part of the score that drives it",
    )
    _add_model_argument(recommend)
    forget = sub.add_parser(
        "forget",
        parents=[debug],
        help="forget a user: leave them out of all training, retrain and promote without them, delete older "
        "artifacts, write an audit record (docs/privacy.md)",
    )
    forget.add_argument("--user", required=True, metavar="ID", help="the user's id, as in the interactions")
    forget.add_argument("--dataset", help="dataset spec (default: $MM_PIPELINE_DATASET or builtin:default)")
    forget.add_argument("--config", help="a YAML run-config file (ops:, resources:) for the retrain")
    forget.add_argument(
        "--even-if-unknown",
        action="store_true",
        help="put the id on the forget list even when no interaction of it is found (guards later inbox files)",
    )
    _add_model_argument(forget)
    return parser


def _add_model_argument(parser: argparse.ArgumentParser) -> None:
    """``--model``: the registered model a command reads (recommend, forget)."""
    parser.add_argument(
        "--model",
        default=settings.REGISTERED_MODEL_NAME,
        help=f"registered model name (default {settings.REGISTERED_MODEL_NAME})",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return run_demo(args.dataset, args.job, args.debug, args.config, force=args.force)
        if args.command == "run":
            return run_job(args.job, args.dataset, args.config, args.from_failure, args.debug, force=args.force)
        if args.command == "recommend":
            return run_recommend(args.user, args.k, args.json, args.model, explain=args.explain)
        if args.command == "forget":
            return run_forget(args.user, args.dataset, args.config, args.even_if_unknown, args.model, debug=args.debug)
        return run_report()
    except Exception as exc:
        import dagster as dg

        from mm_pipeline.datasets.schema import DataError

        if args.debug or not isinstance(exc, (DataError, dg.DagsterError)):
            raise
        _stderr(f"mm-pipeline {args.command}: {exc}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

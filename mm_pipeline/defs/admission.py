"""Runs started from the command line obey the same run limit as runs launched from the UI.

The UI, the schedule and the sensor queue their runs and the daemon starts one when fewer than
``concurrency: runs: max_concurrent_runs`` runs are in progress in the instance. ``make demo`` and
``python -m mm_pipeline.cli run`` execute in their own process, bypassing that queue, so they check
the same rule themselves (:func:`admitted_run`):

1. a run a command-line process started and that process is gone (killed: its status would read
   STARTED for ever and count against the limit) is marked failed, and its op concurrency slots freed;
2. under an admission lock (a file lock in ``$DAGSTER_HOME``, plus a PostgreSQL advisory lock when
   ``$MM_PIPELINE_LOCK_DB`` names a database, so command lines on other machines wait too) the
   process waits until fewer than ``max_concurrent_runs`` runs are in progress;
3. it starts its run and keeps the lock until the run is in the instance, where the daemon and the
   next command line count it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import dagster as dg

from mm_pipeline import locks, settings

CLI_HOST_TAG = "mm_pipeline.cli.host"
CLI_PID_TAG = "mm_pipeline.cli.pid"
ADMISSION_TAG = "mm_pipeline.cli.admission"
IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
ADMISSION_LOCK = "mm_pipeline.run_admission"
REGISTER_TIMEOUT_S = 120.0  # from admission to the run appearing in the instance (loading code, creating it)


def run_limit(instance: dg.DagsterInstance) -> int | None:
    """The instance's ``max_concurrent_runs`` (``None``: no limit)."""
    limit = instance.get_concurrency_config().run_queue_config.max_concurrent_runs
    return None if limit is None or limit < 0 else int(limit)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def fail_orphaned_runs(instance: dg.DagsterInstance, host: str | None = None) -> list[str]:
    """Mark failed the in-progress runs that a command-line process on ``host`` (default: this machine)
    started and that process no longer exists; free their op concurrency slots. Returns their run ids."""
    host = host or socket.gethostname()
    failed = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS, tags={CLI_HOST_TAG: host})):
        pid = int(run.tags.get(CLI_PID_TAG, "0") or 0)
        if pid <= 0 or _process_alive(pid):
            continue
        instance.report_run_failed(
            run,
            f"the command-line process that ran it (pid {pid} on {host}) is gone; "
            "marked failed by the next command-line run. Re-execute it from failure.",
        )
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        failed.append(run.run_id)
    return failed


def in_progress_runs(instance: dg.DagsterInstance) -> int:
    return instance.get_runs_count(filters=dg.RunsFilter(statuses=IN_PROGRESS))


@contextlib.contextmanager
def _admission_lock(instance: dg.DagsterInstance, timeout_s: float | None) -> Iterator[None]:
    holder = "another command-line run being admitted"
    path = os.path.join(instance.root_directory, ".mm_pipeline.admission.lock")
    with locks.file_lock(path, timeout_s, f"the run admission lock {path}", holder):
        lock_db = settings.lock_database()
        if lock_db:
            with locks.postgres_lock(lock_db, ADMISSION_LOCK, timeout_s, "the run admission advisory lock", holder):
                yield
        else:
            yield


def cli_run_tags() -> dict[str, str]:
    """Tags that mark a run as started by this command-line process (see :func:`fail_orphaned_runs`)."""
    return {CLI_HOST_TAG: socket.gethostname(), CLI_PID_TAG: str(os.getpid()), ADMISSION_TAG: uuid.uuid4().hex}


def admitted_run(
    instance: dg.DagsterInstance,
    start: Callable[[dict[str, str]], object],
    timeout_s: float | None = None,
    poll_s: float = 2.0,
    log: Callable[[str], None] = print,
):
    """Wait for a free run slot (see the module docstring), then call ``start(tags)``, which must start a
    run carrying ``tags`` (``execute_in_process(tags=...)``, ``execute_job(tags=...)``) and returns its
    result. The admission lock is held from the wait until that run is in the instance."""
    for run_id in fail_orphaned_runs(instance):
        log(f"Run {run_id} was left running by a command-line process that is gone: marked failed.")
    tags = cli_run_tags()
    admitted, released = threading.Event(), threading.Event()
    problem: list[BaseException] = []

    def wait_for_a_slot(instance: dg.DagsterInstance) -> None:
        with _admission_lock(instance, timeout_s):
            limit, waited = run_limit(instance), False
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while limit is not None and in_progress_runs(instance) >= limit:
                if not waited:
                    log(
                        f"Waiting: {in_progress_runs(instance)} run(s) in progress and max_concurrent_runs is "
                        f"{limit} ({settings.env(settings.DAGSTER_HOME_ENV) or 'the instance'}/dagster.yaml)."
                    )
                    waited = True
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"no run slot became free within {timeout_s:g} s")
                time.sleep(poll_s)
            admitted.set()
            # Keep the lock until this run is in the instance, where everyone counts it.
            deadline = time.monotonic() + REGISTER_TIMEOUT_S
            filters = dg.RunsFilter(tags={ADMISSION_TAG: tags[ADMISSION_TAG]})
            while (
                not released.is_set() and time.monotonic() < deadline and not instance.get_runs_count(filters=filters)
            ):
                time.sleep(0.1)

    def hold() -> None:
        try:
            # Its own instance object: the caller's runs the run in the main thread meanwhile.
            with dg.DagsterInstance.from_ref(instance.get_ref()) as own_instance:
                wait_for_a_slot(own_instance)
        except BaseException as exc:  # handed to the caller below
            problem.append(exc)
            admitted.set()

    holder = threading.Thread(target=hold, name="mm_pipeline-run-admission", daemon=True)
    holder.start()
    admitted.wait()
    if problem:
        raise problem[0]
    try:
        return start(tags)
    finally:
        released.set()
        holder.join()

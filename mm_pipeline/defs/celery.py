"""Step execution on Celery workers (``dagster-celery``): RabbitMQ as broker, Redis as result backend.

``MM_PIPELINE_EXECUTOR=celery`` makes every job's executor ``dagster_celery.celery_executor``: the run
worker submits each step as a Celery task and the workers (``make worker``, which runs
``celery -A mm_pipeline.defs.celery_worker worker``) execute it with dagster-celery's own task. Both
sides build the Celery app from the same settings, read from the environment, so no broker
credentials are written to any file (``dagster-celery worker start`` would write the resolved broker
URL into a config module under ``$DAGSTER_HOME``; that is why the workers start through ``celery``).
"""

from __future__ import annotations

from mm_pipeline import settings

BROKER_ENV = settings.CELERY_BROKER_ENV
BACKEND_ENV = settings.CELERY_BACKEND_ENV
QUEUE = "dagster"  # dagster-celery's default queue

# Additions to dagster-celery's defaults. A step's task is acknowledged when a worker takes it (Celery's
# default): if the worker process dies mid-step the task fails (WorkerLostError) and so does the run,
# visibly, instead of the step being run again behind the user's back; re-execute the run from failure.
CELERY_SETTINGS = {
    "worker_prefetch_multiplier": 1,  # a worker takes one step at a time: steps are long
    "result_expires": 7 * 24 * 3600,
    "broker_connection_retry_on_startup": True,
    "task_track_started": True,
}


def celery_urls() -> tuple[str, str]:
    """``(broker, backend)`` from the environment; a clear error naming what is missing."""
    return settings.celery_urls()


def celery_executor_def():
    """``dagster_celery.celery_executor`` with the broker and backend taken from the environment when a
    run starts (never stored in run config or the instance)."""
    from dagster_celery import celery_executor

    celery_urls()  # fail at definition load, with the names, rather than at the first run
    return celery_executor.configured(
        {"broker": {"env": BROKER_ENV}, "backend": {"env": BACKEND_ENV}, "config_source": CELERY_SETTINGS},
        name="celery",
    )


def worker_app():
    """The Celery app a worker runs: dagster-celery's app and step task, with the executor's settings."""
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app

    broker, backend = celery_urls()
    return make_app(CeleryExecutor.for_cli(broker=broker, backend=backend, config_source=CELERY_SETTINGS).app_args())

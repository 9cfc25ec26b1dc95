"""What ``celery -A mm_pipeline.defs.celery_worker worker`` runs (``make worker``): dagster-celery's
``execute_plan`` task on the app built from ``$MM_PIPELINE_CELERY_BROKER`` / ``$MM_PIPELINE_CELERY_BACKEND``."""

from dagster_celery.tasks import create_task

from mm_pipeline.defs.celery import worker_app

app = worker_app()
execute_plan = create_task(app)

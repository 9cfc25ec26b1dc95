"""What ``workspace.yaml`` (and ``dagster ... -m mm_pipeline.definitions``) loads."""

from mm_pipeline.defs.build import build_definitions

defs = build_definitions()


# Module-level job loaders for ``dagster.reconstructable``: executors that run steps in other processes
# (multiprocess, Celery workers) rebuild the job by importing this module and calling the loader.
def full_pipeline():
    return defs.resolve_job_def("full_pipeline")


def research_pipeline():
    return defs.resolve_job_def("research_pipeline")


JOB_LOADERS = {"full_pipeline": full_pipeline, "research_pipeline": research_pipeline}

"""Run tags the command line sets and the assets read (no Dagster import: the command line loads it early)."""

# The run retrains for ``mm-pipeline forget``: every trained model starts from scratch, whatever its config.
FORGET_TAG = "mm_pipeline.forget_request"
# The run was forced (``--force``): trained models with ``warm_start: auto`` start from scratch.
FROM_SCRATCH_TAG = "mm_pipeline.from_scratch"

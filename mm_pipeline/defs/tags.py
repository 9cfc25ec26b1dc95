"""Run tags the command line sets and the assets read (no Dagster import: the command line loads it early)."""

# The run retrains for ``mm-pipeline forget``: every trained model starts from scratch, whatever its config.
FORGET_TAG = "mm_pipeline.forget_request"
# The run was forced (``--force``): trained models with ``warm_start: auto`` start from scratch.
FROM_SCRATCH_TAG = "mm_pipeline.from_scratch"


def from_scratch_reason(mode: str, tags: dict) -> str | None:
    """Why a training with ``warm_start: mode`` in a run with ``tags`` starts from scratch whatever checkpoint
    there is (None: it may warm-start from a compatible one)."""
    if FORGET_TAG in tags:
        return "a forget retrain trains from scratch"
    if mode == "off":
        return "warm_start: off"
    if mode == "auto" and tags.get(FROM_SCRATCH_TAG) == "true":
        return "a forced run trains from scratch (warm_start: on warm-starts it too)"
    return None

"""What ``workspace.yaml`` (and ``dagster ... -m mm_pipeline.definitions``) loads."""

from mm_pipeline.defs.build import build_definitions

defs = build_definitions()

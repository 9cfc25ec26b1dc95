"""mm_pipeline: an orchestrated multimodal recommendation pipeline with lineage.

The domain core (``datasets``, ``augment``, ``features``, ``align``, ``recommend``, ``compress``,
``evaluate``, ``registry``) is plain Python/PyTorch and imports no Dagster. ``mm_pipeline.defs`` is
the thin Dagster layer and ``mm_pipeline.definitions`` is what ``workspace.yaml`` loads.
"""

__version__ = "0.1.0"

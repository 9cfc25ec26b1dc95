"""Why a recommendation was made, and whether the explanation is faithful (no Dagster here).

The explanation itself lives with the served model (:meth:`mm_pipeline.registry.pyfunc.RecommenderPyfunc.explain`)
so that ``mlflow models serve`` and the pipeline give the same answer; this package supplies what it needs
(:mod:`~mm_pipeline.explain.attribution`: integrated gradients over the content of embedding models;
:mod:`~mm_pipeline.explain.interest`: users' interest per modality in the aligned space) and measures it
(:mod:`~mm_pipeline.explain.faithfulness`, :mod:`~mm_pipeline.explain.summary`).
"""

from mm_pipeline.explain.faithfulness import DeletionResult, deletion_test

__all__ = ["DeletionResult", "deletion_test"]

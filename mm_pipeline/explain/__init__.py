"""Why a recommendation was made, and whether the explanation is faithful (no Dagster here).

The explanation itself lives with the served model (:meth:`mm_pipeline.registry.pyfunc.RecommenderPyfunc.explain`)
so that ``mlflow models serve`` and the pipeline give the same answer; this package measures it.
"""

from mm_pipeline.explain.faithfulness import DeletionResult, deletion_test

__all__ = ["DeletionResult", "deletion_test"]

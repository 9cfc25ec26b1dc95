"""Forgetting users: the forget list, the filter every read of the training data applies, and the purge of
what was stored before (no Dagster here; ``mm-pipeline forget`` runs the retrain in between).

* :mod:`.forget_list`: the list of forgotten users under the project home, as keyed hashes only, and
  the vectorised filter that leaves their interactions out.
* :mod:`.purge`: deleting what still holds them (asset versions, run reports, MLflow artifacts).
* :mod:`.forget`: finding a user, the audit record, the steps ``mm-pipeline forget`` takes.
"""

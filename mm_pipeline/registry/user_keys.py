"""The project's user key secret, as the pipeline resolves it (no Dagster here).

Served models key users with ``HMAC-SHA256(secret, user_id)`` (:mod:`mm_pipeline.registry.pyfunc`).
The secret comes from ``$MM_PIPELINE_USER_KEY_SECRET``, a file named by
``$MM_PIPELINE_USER_KEY_SECRET_FILE``, or, on the embedded path, ``<project home>/secrets/user_key``
(created on first use, owner-only). It is never written to an artifact, MLflow or the repository.

Rotating it: give the pipeline and the server the new secret, retrain and register (``full_pipeline``),
promote. Models keyed with the old secret then recognise no user (every request gets the popularity
fallback, and the server logs that the secret does not match) until the new champion is served.
"""

from __future__ import annotations

from mm_pipeline.registry.pyfunc import read_user_key_secret, user_key


def pipeline_user_key_secret() -> bytes:
    """The secret from the environment, else the project home's file (created when missing)."""
    from mm_pipeline.settings import project_paths

    secret = read_user_key_secret(home=project_paths().home, create=True)
    assert secret is not None  # create=True always yields one
    return secret


def pipeline_user_key(user_id) -> str:
    """``user_id``'s key under the project's secret (what examples in metadata and logs show)."""
    return user_key(user_id, pipeline_user_key_secret())

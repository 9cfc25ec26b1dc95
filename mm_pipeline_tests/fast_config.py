"""Short-training run config shared by the tests that materialize the whole graph."""

from mm_pipeline.recommend.catalog import MODEL_TABLE


def _faster(quick: dict) -> dict:
    """A model's quick run config made quicker still: half the epochs, one less patience, one trial."""
    out = dict(quick)
    if "epochs" in out:
        out.update(epochs=out["epochs"] // 2, patience=max(1, out["patience"] - 1))
    if "tuning_max_trials" in out:
        out["tuning_max_trials"] = 1
    return out


# Every model of the table at its quick run config (``ModelSpec.quick``), plus the other trained stages.
FAST_OPS = {
    "image_features": {"config": {"epochs": 2}},
    "aligned_item_embeddings": {"config": {"epochs": 5}},
    **{spec.asset_name: {"config": dict(spec.quick)} for spec in MODEL_TABLE if spec.quick},
    "mm_hybrid_ablations": {"config": {"rounds": 1}},
    "compressed_model": {"config": {"latency_batch": 16, "latency_requests": 3}},
}

# For tests that materialize the graph several times: fewer epochs still.
FASTER_OPS = {
    "image_features": {"config": {"epochs": 1}},
    "aligned_item_embeddings": {"config": {"epochs": 3}},
    **{spec.asset_name: {"config": _faster(spec.quick)} for spec in MODEL_TABLE if spec.quick},
    "mm_hybrid_ablations": {"config": {"rounds": 1}},
    "compressed_model": {"config": {"latency_batch": 8, "latency_requests": 1}},
}


def fast_run_config(ops: dict | None = None, assets: list | None = None, **overrides) -> dict:
    """``ops`` (default ``FAST_OPS``) with ``overrides``, kept to the ops of ``assets`` (default: the
    unpartitioned graph, ``all_assets()``): Dagster refuses run config that names an unknown op."""
    from mm_pipeline.defs.build import all_assets

    names = {key.to_user_string() for a in (all_assets() if assets is None else assets) for key in a.keys}
    merged = {**(FAST_OPS if ops is None else ops), **overrides}
    return {"ops": {op: cfg for op, cfg in merged.items() if op in names}}


def materialize_graph(home, spec: str, run_config: dict):
    """The unpartitioned graph and its asset checks on dataset ``spec``, in process, with the project
    home and a SQLite MLflow store under ``home``; the environment is restored afterwards."""
    import dagster as dg
    import mlflow
    import pytest

    from mm_pipeline.defs.build import all_assets, default_resources
    from mm_pipeline.defs.checks import all_asset_checks

    mp = pytest.MonkeyPatch()
    mp.setenv("MM_PIPELINE_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        return dg.materialize(
            [*all_assets(), *all_asset_checks()],
            run_config=run_config,
            instance=dg.DagsterInstance.ephemeral(),
            resources=default_resources(
                home=str(home), dataset=spec, tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
            ),
        )
    finally:
        mp.undo()
        mlflow.set_tracking_uri(None)

"""Short-training run config shared by the tests that materialize the whole graph."""

# LightGCN's validation search tries two settings (the search runs end to end); the other trained
# models one (their search is the same code).
ONE_TRIAL = {"tuning_max_trials": 1}
FAST_OPS = {
    "image_features": {"config": {"epochs": 2}},
    "aligned_item_embeddings": {"config": {"epochs": 5}},
    "ease_model": {"config": {"tuning_max_trials": 3}},
    "item_knn_model": {"config": {"tuning_max_trials": 2}},
    "lightgcn_model": {"config": {"epochs": 8, "patience": 3, "tuning_max_trials": 2}},
    "bpr_mf_model": {"config": {"epochs": 8, "patience": 3, **ONE_TRIAL}},
    "mm_gcn_model": {"config": {"epochs": 8, "patience": 3, **ONE_TRIAL}},
    "vbpr_model": {"config": {"epochs": 8, "patience": 3, **ONE_TRIAL}},
    "freedom_model": {"config": {"epochs": 8, "patience": 3, **ONE_TRIAL}},
    "mm_hybrid_model": {"config": {"rounds": 1}},
    "mm_hybrid_ablations": {"config": {"rounds": 1}},
    "compressed_model": {"config": {"latency_users": 64}},
}

# For tests that materialize the graph several times: fewer epochs still.
FASTER_OPS = {
    "image_features": {"config": {"epochs": 1}},
    "aligned_item_embeddings": {"config": {"epochs": 3}},
    "ease_model": {"config": ONE_TRIAL},
    "item_knn_model": {"config": ONE_TRIAL},
    "lightgcn_model": {"config": {"epochs": 4, "patience": 2, **ONE_TRIAL}},
    "bpr_mf_model": {"config": {"epochs": 4, "patience": 2, **ONE_TRIAL}},
    "mm_gcn_model": {"config": {"epochs": 4, "patience": 2, **ONE_TRIAL}},
    "vbpr_model": {"config": {"epochs": 4, "patience": 2, **ONE_TRIAL}},
    "freedom_model": {"config": {"epochs": 4, "patience": 2, **ONE_TRIAL}},
    "mm_hybrid_model": {"config": {"rounds": 1}},
    "mm_hybrid_ablations": {"config": {"rounds": 1}},
    "compressed_model": {"config": {"latency_users": 16}},
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
        return dg.materialize([*all_assets(), *all_asset_checks()], run_config=run_config,
                              instance=dg.DagsterInstance.ephemeral(),
                              resources=default_resources(home=str(home), dataset=spec,
                                                          tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"))
    finally:
        mp.undo()
        mlflow.set_tracking_uri(None)

"""Warm-start retraining: id-keyed initialisation from a checkpoint, compatibility, training from a warm start,
and the training asset's choice (auto / forced / forget) with its checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mm_pipeline.data.types import SplitData
from mm_pipeline.recommend.config import MultimodalConfig, TrainConfig
from mm_pipeline.recommend.fit import fit_lightgcn
from mm_pipeline.recommend.models import IDLightGCN, MultimodalGCN
from mm_pipeline.recommend.warm import (
    Checkpoint,
    WarmStart,
    compatible,
    load_checkpoint,
    model_settings,
    parameters_of,
    save_checkpoint,
    warm_state,
)


def _adj(n_users: int, n_items: int) -> torch.Tensor:
    return torch.zeros(n_users + n_items, n_users + n_items).to_sparse()


def _checkpoint(module, users, items, config) -> Checkpoint:
    return Checkpoint("lightgcn", model_settings(config), model_settings(config), users, items, parameters_of(module))


def test_known_rows_are_copied_by_id_and_new_rows_start_from_their_history():
    torch.manual_seed(0)
    config = TrainConfig(dim=4, num_layers=1)
    old = IDLightGCN(3, 4, _adj(3, 4), config)
    old_users, old_items = ["a", "b", "c"], ["i0", "i1", "i2", "i3"]
    checkpoint = _checkpoint(old, old_users, old_items, config)
    table = checkpoint.state["lightgcn.embedding.weight"]
    # Grown and reordered: user "z" is new, "b" left; item "i9" is new.
    users, items = ["c", "z", "a"], ["i3", "i9", "i0", "i1", "i2"]
    train = sp.csr_matrix((np.ones(4), ([1, 1, 0, 2], [0, 2, 1, 4])), shape=(3, 5))  # z: i3, i0; c: i9; a: i2
    new = IDLightGCN(3, 5, _adj(3, 5), config)
    fresh = parameters_of(new)["lightgcn.embedding.weight"]
    state, report = warm_state(new, checkpoint, users, items, train, "history")
    weight = state["lightgcn.embedding.weight"]
    assert weight.shape == (8, 4)
    row = {u: i for i, u in enumerate(old_users)}
    col = {x: 3 + i for i, x in enumerate(old_items)}
    assert torch.equal(weight[0], table[row["c"]]) and torch.equal(weight[2], table[row["a"]])
    for j, item in enumerate(items):
        if item in col:
            assert torch.equal(weight[3 + j], table[col[item]])
    # New user z: the mean of its history's items (i3, i0); new item i9: the mean of its users (c).
    assert torch.allclose(weight[1], (table[col["i3"]] + table[col["i0"]]) / 2)
    assert torch.allclose(weight[3 + 1], table[row["c"]])
    assert report.users_new == 1 and report.items_new == 1 and report.new_rows_from_history == 2
    # "default": the new rows keep the model's own initialisation.
    state, report = warm_state(new, checkpoint, users, items, train, "default")
    assert torch.equal(state["lightgcn.embedding.weight"][1], fresh[1]) and report.new_rows_from_history == 0
    assert torch.equal(state["lightgcn.embedding.weight"][0], table[row["c"]])


def test_shared_parameters_are_copied_and_changed_shapes_start_fresh():
    torch.manual_seed(0)
    config = MultimodalConfig(dim=4, hidden=8, knn_k=0)
    content = torch.randn(3, 5)
    old = MultimodalGCN(2, 3, _adj(2, 3), content, torch.ones(3), config)
    checkpoint = Checkpoint("mm_gcn", {}, {}, ["a", "b"], ["x", "y", "z"], parameters_of(old))
    new = MultimodalGCN(3, 3, _adj(3, 3), content, torch.ones(3), config)
    state, report = warm_state(new, checkpoint, ["a", "b", "c"], ["x", "y", "z"], sp.csr_matrix((3, 3)))
    assert torch.equal(state["content_tower.0.weight"], checkpoint.state["content_tower.0.weight"])
    assert state["user_embedding.weight"].shape == (3, 4)
    assert torch.equal(state["user_embedding.weight"][:2], checkpoint.state["user_embedding.weight"])
    # A user without history keeps the model's own initial row.
    assert torch.equal(state["user_embedding.weight"][2], parameters_of(new)["user_embedding.weight"][2])
    # Another content width: the tower's first layer cannot be reused.
    wider = MultimodalGCN(3, 3, _adj(3, 3), torch.randn(3, 7), torch.ones(3), config)
    state, report = warm_state(wider, checkpoint, ["a", "b", "c"], ["x", "y", "z"], sp.csr_matrix((3, 3)))
    assert torch.equal(state["content_tower.0.weight"], parameters_of(wider)["content_tower.0.weight"])
    assert report.parameters_fresh == 1


def test_checkpoints_round_trip_and_are_checked_for_compatibility(tmp_path):
    config = TrainConfig(dim=4)
    module = IDLightGCN(2, 2, _adj(2, 2), config)
    checkpoint = _checkpoint(module, ["a", "b"], ["x", "y"], config)
    save_checkpoint(tmp_path, checkpoint)
    loaded = load_checkpoint(tmp_path)
    assert loaded.user_ids == ["a", "b"] and torch.equal(
        loaded.state["lightgcn.embedding.weight"], checkpoint.state["lightgcn.embedding.weight"]
    )
    assert load_checkpoint(tmp_path / "none") is None
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert load_checkpoint(tmp_path / "torn") is None
    assert compatible(loaded, "lightgcn", config, ["a", "b", "c"]) is None
    assert compatible(loaded, "lightgcn", TrainConfig(dim=4, epochs=3, warm_start="on"), ["a"]) is None
    assert "settings changed" in compatible(loaded, "lightgcn", TrainConfig(dim=8), ["a"])
    assert "users are known" in compatible(loaded, "lightgcn", config, ["p", "q", "r"])
    assert "of 'lightgcn'" in compatible(loaded, "bpr_mf", config, ["a"])
    assert compatible(None, "lightgcn", config, ["a"]) == "no checkpoint"


def _split_data(n_users=40, n_items=30, seed=0) -> SplitData:
    import pandas as pd

    from mm_pipeline.evaluate.split import chronological_split

    rng = np.random.default_rng(seed)
    rows = [(u, i, t) for u in range(n_users) for t, i in enumerate(rng.choice(n_items, 8, replace=False))]
    frame = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"])
    frame["weight"] = 1.0
    frame["split"] = chronological_split(frame)
    return SplitData.from_frame(frame, n_users, n_items)


def test_a_warm_start_validates_its_start_and_never_ends_below_it():
    data = _split_data()
    config = TrainConfig(dim=8, num_layers=1, epochs=6, patience=2, seed=0)
    first, _ = fit_lightgcn(data, config)
    assert first.trainable is not None and "start_valid_ndcg@20" not in first.info
    users = [f"u{i}" for i in range(data.n_users)]
    items = [f"i{i}" for i in range(data.n_items)]
    checkpoint = Checkpoint("lightgcn", model_settings(config), model_settings(config), users, items, first.trainable)
    warm = WarmStart(checkpoint, users, items)
    again, history = fit_lightgcn(data, config, warm=warm)
    assert history["epoch"].iloc[0] == 0 and "valid_ndcg@20" in history
    start = again.info["start_valid_ndcg@20"]
    assert start == pytest.approx(first.info["best_valid_ndcg@20"], abs=1e-6)  # the same parameters, the same data
    assert again.info["best_valid_ndcg@20"] >= start
    assert warm.report.users_known == data.n_users and warm.report.users_new == 0
    # Deterministic with the seed.
    repeat, _ = fit_lightgcn(data, config, warm=WarmStart(checkpoint, users, items))
    assert torch.equal(repeat.item_embeddings, again.item_embeddings)


def _train_lightgcn(home, instance, tags=None, config=None):
    import dagster as dg
    import mlflow

    from mm_pipeline.defs.build import all_assets, default_resources
    from mm_pipeline.defs.cutoff import REUSE_OFF, REUSE_TAG

    mp = pytest.MonkeyPatch()
    mp.setenv("MM_PIPELINE_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        result = dg.materialize(
            all_assets(),
            selection=["source_dataset", "raw_items", "raw_interactions", "interaction_split", "lightgcn_model"],
            run_config={
                "ops": {
                    "lightgcn_model": {"config": {"epochs": 3, "patience": 1, "tuning_max_trials": 1, **(config or {})}}
                }
            },
            instance=instance,
            # Every call trains: with the same inputs the early cutoff would reuse the stored model instead.
            tags={REUSE_TAG: REUSE_OFF, **(tags or {})},
            resources=default_resources(
                home=str(home), dataset="builtin:tiny", tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
            ),
        )
    finally:
        mp.undo()
        mlflow.set_tracking_uri(None)
    assert result.success
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "lightgcn_model"
    ]
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def test_the_training_asset_warm_starts_only_where_safe(tmp_path):
    import dagster as dg

    from mm_pipeline.defs.tags import FORGET_TAG, FROM_SCRATCH_TAG

    home = tmp_path / "home"
    instance = dg.DagsterInstance.ephemeral()
    first = _train_lightgcn(home, instance)  # a first run: no checkpoint, from scratch, unchanged
    assert first["warm_start"] is False and first["warm_start_reason"] == "no checkpoint"
    assert "start_valid_ndcg@20" not in first
    (folder,) = (home / "checkpoints").glob("*/lightgcn")
    checkpoint = load_checkpoint(folder)
    assert checkpoint is not None and len(checkpoint.user_ids) == 240
    again = _train_lightgcn(home, instance)
    assert again["warm_start"] is True and "search_trials" not in again
    assert again["best_valid_ndcg@20"] >= again["start_valid_ndcg@20"] >= first["best_valid_ndcg@20"] - 1e-6
    forced = _train_lightgcn(home, instance, tags={FROM_SCRATCH_TAG: "true"})
    assert forced["warm_start"] is False and "forced" in forced["warm_start_reason"]
    assert forced["best_valid_ndcg@20"] == pytest.approx(first["best_valid_ndcg@20"])  # the same seeded run
    on = _train_lightgcn(home, instance, tags={FROM_SCRATCH_TAG: "true"}, config={"epochs": 3, "warm_start": "on"})
    assert on["warm_start"] is True
    forget = _train_lightgcn(
        home, instance, tags={FORGET_TAG: "r", FROM_SCRATCH_TAG: "true"}, config={"epochs": 3, "warm_start": "on"}
    )
    assert forget["warm_start"] is False and "forget" in forget["warm_start_reason"]
    changed = _train_lightgcn(home, instance, config={"epochs": 3, "dim": 32})
    assert changed["warm_start"] is False and "dim" in changed["warm_start_reason"]


def test_a_warm_hybrid_search_starts_from_the_previous_choice():
    from mm_pipeline.recommend.hybrid import HybridConfig, coordinate_ascent, fit_hybrid  # noqa: F401

    calls = []

    class Parts:
        def grids(self, config):
            return {
                "core": ["ease"],
                "decay": [0.0, 1.0],
                "content_weight": [0.0, 0.2],
                "graph_weight": [0.0],
                "gnn": ["g"],
            }

        def start(self):
            return {"core": "ease", "decay": 0.0, "content_weight": 0.0, "graph_weight": 0.0, "gnn": "g"}

        def model(self, name, **params):
            from mm_pipeline.recommend.base import EmbeddingRecommender

            calls.append(params)
            score = params["decay"] + params["content_weight"]
            return EmbeddingRecommender(name, torch.zeros(1, 1), torch.zeros(1, 1), {"score": score})

        trial = model  # the search scores trials; the chosen setting is built with model()

    def validate(model):
        return {"ndcg@20": model.info["score"], "recall@20": 0.0}

    previous = {"core": "ease", "decay": 1.0, "content_weight": 0.2, "graph_weight": 0.0, "gnn": "g"}
    result = fit_hybrid(Parts(), validate, HybridConfig(rounds=2), previous=previous)
    assert calls[0] == previous and result.params == previous
    calls.clear()
    fit_hybrid(Parts(), validate, HybridConfig(rounds=2), previous={**previous, "decay": 9.0})  # not in its grid
    assert calls[0]["decay"] == 0.0


def test_checkpoints_of_other_datasets_or_seeds_are_kept_apart(tmp_path):
    """Runs of two datasets in one home (concurrent ones too) must not warm-start from each other's models."""
    from mm_pipeline.defs.resources import PipelineResource

    folders = {
        PipelineResource(home=str(tmp_path), dataset=dataset, seed=seed).checkpoints("mm_gcn")
        for dataset, seed in (("builtin:tiny", 0), ("builtin:tiny:ecommerce", 0), ("builtin:tiny", 1))
    }
    assert len(folders) == 3 and all(
        f.name == "mm_gcn" and f.parent.parent == tmp_path / "checkpoints" for f in folders
    )


def test_a_reexecution_keeps_the_forced_reuse_and_forget_tags_of_its_parent():
    """`mm-pipeline run --from-failure` of a forced (or forget) run must train from scratch and compute as it did."""
    import dagster as dg

    from mm_pipeline.cli import inherited_tags
    from mm_pipeline.defs.cutoff import REUSE_OFF, REUSE_TAG
    from mm_pipeline.defs.tags import FORGET_TAG, FROM_SCRATCH_TAG

    @dg.op
    def step():
        return 1

    @dg.job
    def job():
        step()

    instance = dg.DagsterInstance.ephemeral()
    tags = {FROM_SCRATCH_TAG: "true", REUSE_TAG: REUSE_OFF, FORGET_TAG: "req-1"}
    parent = job.execute_in_process(instance=instance, tags={**tags, "unrelated": "x"})
    assert inherited_tags(instance, parent.run_id) == tags
    plain = job.execute_in_process(instance=instance)
    assert inherited_tags(instance, plain.run_id) == {}

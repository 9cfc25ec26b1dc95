"""The primary model: EASE over the recency-weighted history + content graph + GNN, weights on validation."""

import numpy as np
import pandas as pd
import pytest
import torch

from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.fit import SplitData, content_graph
from mm_pipeline.recommend.hybrid import (
    ABLATIONS,
    HybridConfig,
    HybridParts,
    HybridTrial,
    ablate,
    coordinate_ascent,
    fit_hybrid,
)
from mm_pipeline.recommend.linear import ItemGram, item_knn_weights, recency_profile, training_age
from mm_pipeline.recommend.ranking import validator


def _split(n_users=80, n_items=30, seed=0):
    """Two tastes (even / odd items); each user drifts to a new pair of items at the end of its history,
    so the recent items predict the held-out ones better than the old ones. Items 28, 29 are cold."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        parity = u % 2
        liked = np.arange(parity, 28, 2)
        history = rng.choice(liked, size=9, replace=False)
        rows += [(u, int(i), t) for t, i in enumerate(history)]
        rows += [(u, 28 + parity, 100)]  # test: the cold item of the user's taste
    frame = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"])
    frame["weight"] = 1.0
    order = frame.groupby("user_idx")["timestamp"].rank(ascending=False, method="first")
    frame["split"] = np.where(order == 1, "test", np.where(order == 2, "valid", "train"))
    return frame, n_users, n_items


def _parts(gnns=None, content_aware=("mm_gcn",)):
    frame, n_users, n_items = _split()
    data = SplitData.from_frame(frame, n_users, n_items)
    features = np.zeros((n_items, 2), dtype=np.float32)
    features[np.arange(n_items) % 2 == 0, 0] = 1.0  # content tells the two tastes apart
    features[np.arange(n_items) % 2 == 1, 1] = 1.0
    features += np.random.default_rng(1).normal(scale=0.05, size=features.shape).astype(np.float32)
    graph = content_graph({"text": (features, np.ones(n_items, dtype=bool))}, k=5)
    gram = ItemGram(data.train)
    cores = {"ease": gram.ease(5.0), "item_knn": item_knn_weights(gram.gram, 5)}
    parts = HybridParts(
        data.train, training_age(frame, data.train), cores, graph, gnns, content_aware=content_aware, scale_users=50
    )
    return data, parts, graph


def _parts_with_two_gnns():
    """The toy parts with random stand-ins for the content-aware mm_gcn and the ID-only LightGCN."""
    data, parts, graph = _parts()
    rng = torch.Generator().manual_seed(0)
    gnns = {
        name: EmbeddingRecommender(
            name, torch.randn(data.n_users, 3, generator=rng), torch.randn(data.n_items, 3, generator=rng)
        )
        for name in ("mm_gcn", "lightgcn")
    }
    return data, HybridParts(parts.train, parts.age, parts.cores, graph, gnns, ("mm_gcn",), scale_users=50)


def test_coordinate_ascent_sweeps_one_parameter_at_a_time_from_the_start():
    score = {0: 0.0, 1: 1.0, 2: 0.5}  # a's best is 1, b only helps once a moved
    proposer = coordinate_ascent({"a": (0, 1, 2), "b": (0, 1)}, {"a": 0, "b": 0}, rounds=3)
    tried = []
    while (params := proposer(tried)) is not None:
        tried.append({**params, "score": score[params["a"]] + 0.1 * params["b"] * params["a"]})
    assert [(t["a"], t["b"]) for t in tried] == [(0, 0), (1, 0), (2, 0), (1, 1), (0, 1), (2, 1)]
    with pytest.raises(ValueError, match="not in its grid"):
        coordinate_ascent({"a": (1, 2)}, {"a": 0}, 1)


def test_hybrid_score_is_the_documented_blend_in_one_dot_product():
    data, parts, graph = _parts()
    gnn = EmbeddingRecommender("mm_gcn", torch.randn(data.n_users, 4), torch.randn(data.n_items, 4))
    parts = HybridParts(parts.train, parts.age, parts.cores, graph, {"mm_gcn": gnn}, ("mm_gcn",), scale_users=50)
    model = parts.model(decay=2.0, content_weight=0.3, graph_weight=0.5, gnn="mm_gcn", core="item_knn")
    x = recency_profile(parts.train, parts.age, 2.0).toarray()
    b, k = parts.cores["item_knn"], graph.toarray()
    sample = x[parts.sample]

    def rms(s):
        return np.sqrt(np.mean(np.square(s, dtype=np.float64)))

    g = gnn.user_embeddings.numpy() @ gnn.item_embeddings.numpy().T
    expected = x @ b / rms(sample @ b) + 0.3 * x @ k / rms(sample @ k) + 0.5 * g / rms(g[parts.sample])
    np.testing.assert_allclose(model.score(torch.arange(data.n_users)).numpy(), expected, rtol=1e-4, atol=1e-4)
    assert model.sparse_users and model.info["gnn"] == "mm_gcn"


def test_the_search_starts_at_ease_and_only_keeps_what_helps_on_validation():
    data, parts, _ = _parts()
    result = fit_hybrid(parts, validator(data), HybridConfig(budget_s=60))
    first = result.trials.iloc[0]
    assert (first["core"], first["decay"], first["content_weight"], first["graph_weight"]) == ("ease", 0.0, 0.0, 0.0)
    assert set(result.trials["core"]) == {"ease", "item_knn"}  # both cores were tried
    ease_scores = recency_profile(parts.train, None, 0.0) @ parts.cores["ease"]
    start = parts.model(0.0, 0.0, 0.0, core="ease")
    # The start is EASE itself (scaled): the same ranking.
    np.testing.assert_allclose(
        start.score(torch.arange(5)).numpy() * start.info["core_rms"], ease_scores[:5], atol=1e-4
    )
    assert result.score >= first["valid_ndcg@20"] and result.score == result.trials["valid_ndcg@20"].max()
    # The content graph is what ranks the held-out cold items (EASE cannot score them at all).
    assert result.params["content_weight"] > 0
    assert result.trials["chosen"].sum() == 1


def test_id_only_gnns_do_not_score_cold_items_and_ablations_remove_one_part():
    data, parts = _parts_with_two_gnns()
    cold = ~data.warm_items
    assert np.all(parts.gnns["lightgcn"][1][cold] == 0) and np.any(parts.gnns["mm_gcn"][1][cold] != 0)
    # With the ID-only GNN chosen, cold items still get a GNN score: the content-aware GNN's, at its scale.
    with_lightgcn = parts.model(0.0, 0.0, 0.5, gnn="lightgcn", core="ease").score(torch.arange(data.n_users)).numpy()
    ease_only = parts.model(0.0, 0.0, 0.0, core="ease").score(torch.arange(data.n_users)).numpy()
    mm_users, mm_items, mm_scale = parts.gnns["mm_gcn"]
    np.testing.assert_allclose(
        with_lightgcn[:, cold] - ease_only[:, cold], 0.5 * mm_users @ mm_items[cold].T / mm_scale, atol=1e-4
    )
    lg_users, lg_items, lg_scale = parts.gnns["lightgcn"]
    np.testing.assert_allclose(
        with_lightgcn[:, ~cold] - ease_only[:, ~cold], 0.5 * lg_users @ lg_items[~cold].T / lg_scale, atol=1e-4
    )
    config = HybridConfig()
    no_content, _ = ablate(parts, config, "no_content")
    assert no_content.content is None and list(no_content.gnns) == ["lightgcn"]
    assert parts.content is not None and list(parts.gnns) == ["mm_gcn", "lightgcn"]  # untouched
    assert ablate(parts, config, "no_gnn")[0].gnns == {}
    assert ablate(parts, config, "no_recency")[1].decays == (0.0,)
    no_core, _ = ablate(parts, config, "no_item_item")
    assert no_core.cores == {} and no_core.start()["graph_weight"] == 1.0 and no_core.start()["core"] == "none"
    assert no_core.grids(config)["graph_weight"] == (1.0,) and list(parts.cores) == ["ease", "item_knn"]
    assert set(ABLATIONS) == {"no_content", "no_gnn", "no_recency", "no_item_item"}
    with pytest.raises(ValueError, match="unknown ablation"):
        ablate(parts, config, "no_everything")
    with pytest.raises(ValueError, match="needs a GNN"):
        ablate(HybridParts(parts.train, parts.age, parts.cores, parts.content), config, "no_item_item")


def test_a_search_trial_scores_what_the_built_model_scores():
    """The search scores each setting from cached per-part blocks (HybridParts.trial) instead of building
    its tables: the scores must be the built model's, for every part and every path (an ID-only GNN's cold
    items, no core), user chunk by user chunk, whatever was cached by the trial before."""
    data, parts = _parts_with_two_gnns()
    settings = [
        dict(decay=0.0, content_weight=0.0, graph_weight=0.0, core="ease"),
        dict(decay=2.0, content_weight=0.4, graph_weight=0.0, core="ease"),  # the same core, another decay
        dict(decay=2.0, content_weight=0.4, graph_weight=0.8, gnn="mm_gcn", core="ease"),  # cached core block
        dict(decay=1.0, content_weight=0.2, graph_weight=1.6, gnn="lightgcn", core="item_knn"),  # cold GNN
    ]
    chunks = [np.arange(0, 30), np.arange(30, data.n_users)]
    for setting in settings:
        model, trial = parts.model(**setting), parts.trial(**setting)
        assert trial.info == model.info and (trial.n_users, trial.n_items) == (model.n_users, model.n_items)
        for users in chunks * 2:  # the second pass reads the cached core block
            users = torch.from_numpy(users)
            np.testing.assert_allclose(trial.score(users).numpy(), model.score(users).numpy(), rtol=1e-5, atol=1e-6)
    no_core, _ = ablate(parts, HybridConfig(), "no_item_item")
    setting = dict(decay=0.0, content_weight=0.4, graph_weight=1.0, gnn="lightgcn")
    users = torch.arange(data.n_users)
    np.testing.assert_allclose(
        no_core.trial(**setting).score(users).numpy(), no_core.model(**setting).score(users).numpy(), atol=1e-6
    )
    # The search validates trials and builds only the chosen setting: its tables are the built model's.
    result = fit_hybrid(parts, validator(data), HybridConfig(budget_s=60))
    assert not isinstance(result.model, HybridTrial) and result.model.sparse_users
    assert result.model.info["core"] == result.params["core"]


def test_the_hybrid_reads_its_stored_models_on_use_and_builds_the_same_parts(tmp_path):
    """The training asset gets its upstream models as stored bundles read on use (at 20k items each core is
    1.6 GB, freed with the parts before the model is logged): the parts are those of the loaded bundles."""
    from mm_pipeline.data.types import InteractionSplit
    from mm_pipeline.defs.assets.train import MODEL_ASSETS
    from mm_pipeline.defs.io_manager import LOAD_LAZILY
    from mm_pipeline.recommend.baselines import item_item
    from mm_pipeline.recommend.catalog import hybrid_parts
    from mm_pipeline.storage import StoredBundle, save_bundle

    frame, n_users, n_items = _split()
    data = SplitData.from_frame(frame, n_users, n_items)
    split = InteractionSplit(frame, n_users, n_items, np.array([f"u{u}" for u in range(n_users)]))
    gram = ItemGram(data.train)
    rng = torch.Generator().manual_seed(0)
    models = {
        "ease": item_item("ease", data.train, gram.ease(5.0), {"l2": 5.0}),
        "item_knn": item_item("item_knn", data.train, item_knn_weights(gram.gram, 5), {"k": 5}),
        "mm_gcn": EmbeddingRecommender("mm_gcn", torch.randn(n_users, 3, generator=rng), torch.randn(n_items, 3)),
        "lightgcn": EmbeddingRecommender("lightgcn", torch.randn(n_users, 3, generator=rng), torch.randn(n_items, 3)),
    }
    loaded = {name: m.to_bundle() for name, m in models.items()}
    stored = {name: StoredBundle(save_bundle(tmp_path / name, bundle)) for name, bundle in loaded.items()}
    config = HybridConfig(scale_users=50)

    def parts(bundles):
        cores = {k: bundles[k] for k in ("ease", "item_knn")}
        return hybrid_parts(data, split, cores, {k: bundles[k] for k in ("mm_gcn", "lightgcn")}, {}, config)

    eager, lazy = parts(loaded), parts(stored)
    for name in ("ease", "item_knn"):
        np.testing.assert_array_equal(lazy.cores[name], eager.cores[name])
    for name in ("mm_gcn", "lightgcn"):
        for got, want in zip(lazy.gnns[name], eager.gnns[name]):
            np.testing.assert_array_equal(got, want)
    hybrid = MODEL_ASSETS["mm_hybrid"]
    lazy_inputs = {name for name, ins in hybrid.node_def.input_dict.items() if (ins.metadata or {}).get(LOAD_LAZILY)}
    # The models are read on use; the split and the raw features are loaded whole.
    assert lazy_inputs == {"ease_model", "item_knn_model", "mm_gcn_model", "lightgcn_model"}
    assert {"interaction_split", "text_features"} <= set(hybrid.node_def.input_dict) - lazy_inputs

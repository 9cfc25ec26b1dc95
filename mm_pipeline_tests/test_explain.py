"""Explanations: the exact split of an item-item score into parts, the served ``explain`` flag, and the
deletion test of faithfulness."""

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from mm_pipeline.explain import deletion_test
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.baselines import ease
from mm_pipeline.recommend.fit import content_graph, content_graphs
from mm_pipeline.recommend.hybrid import HybridParts
from mm_pipeline.registry.pyfunc import RecommenderPyfunc, export_serving_arrays

SECRET = b"explain-tests-secret-0123456789"
N_USERS, N_ITEMS = 60, 50


def _data(seed: int = 0):
    """Users who like one of five item clusters; text and image features that know the clusters."""
    rng = np.random.default_rng(seed)
    cluster = np.arange(N_ITEMS) % 5
    taste = rng.integers(0, 5, N_USERS)
    like = (cluster[None, :] == taste[:, None]) * 0.5 + 0.05
    train = sp.csr_matrix((rng.random((N_USERS, N_ITEMS)) < like).astype(np.float32))
    onehot = np.eye(5, dtype=np.float32)[cluster]
    raw = {
        "text": (onehot + rng.normal(0, 0.3, (N_ITEMS, 5)).astype(np.float32), np.ones(N_ITEMS, bool)),
        "image": (rng.normal(0, 1, (N_ITEMS, 8)).astype(np.float32), np.ones(N_ITEMS, bool)),
    }
    return train, raw


def _hybrid(train, raw, graph_weight=0.8):
    core = ease(train, l2=10.0).item_embeddings.numpy().T
    g = torch.Generator().manual_seed(1)
    gnn = EmbeddingRecommender("gnn", torch.randn(N_USERS, 4, generator=g), torch.randn(N_ITEMS, 4, generator=g))
    parts = HybridParts(
        train,
        None,
        {"ease": core},
        content_graph(raw, 5),
        {"gnn": gnn},
        modality_graphs=content_graphs(raw, 5)[0],
        scale_users=N_USERS,
    )
    return parts.model(decay=0.0, content_weight=0.4, graph_weight=graph_weight, gnn="gnn", core="ease")


def test_the_modality_graphs_average_to_the_content_graph():
    _, raw = _data()
    per_modality, together = content_graphs(raw, 5)
    np.testing.assert_allclose((sum(per_modality.values()) / 2).toarray(), together.toarray(), atol=1e-6)
    # the mean comes with them, the content graph exactly (the hybrid builds the modality graphs once)
    alone = content_graph(raw, 5)
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(together, name), getattr(alone, name), err_msg=name)


def test_an_item_item_score_splits_exactly_into_its_parts():
    train, raw = _data()
    model = _hybrid(train, raw)
    assert model.parts["history_width"] == N_ITEMS and set(model.parts["modalities"]) == {"image", "text"}
    again = EmbeddingRecommender.from_arrays(model.name, model.to_arrays(), model.info)  # survives storage
    assert set(again.parts["modalities"]) == {"image", "text"}
    pyfunc = RecommenderPyfunc().load_arrays(
        export_serving_arrays(
            model, [f"u{i}" for i in range(N_USERS)], [f"i{i}" for i in range(N_ITEMS)], train, SECRET
        ),
        secret=SECRET,
    )
    users, items = np.arange(N_USERS), np.arange(N_USERS) % N_ITEMS
    values, evidence = pyfunc._history_parts(users, items)
    scores = model.score(torch.from_numpy(users)).numpy()[users, items]
    history = model.user_rows(torch.from_numpy(users)).numpy()[:, :N_ITEMS]
    width_items = model.item_embeddings.numpy()[:, :N_ITEMS]
    np.testing.assert_allclose(values["history"], (history * width_items[items]).sum(1), rtol=1e-4, atol=1e-5)
    # The rest of the score is the GNN's, and each modality's part is x_u times its graph block.
    gnn_part = scores - values["history"]
    assert np.abs(gnn_part).max() > 0
    for modality, block in model.parts["modalities"].items():
        np.testing.assert_allclose(values[modality], (history * block.toarray()[items]).sum(1), rtol=1e-4, atol=1e-6)
    # Named history items are the user's own training items.
    for u, named in zip(users, evidence):
        ids = {f"i{j}" for j in train[u].indices}
        assert set(filter(None, named.split("|"))) <= ids


def test_the_served_model_explains_only_when_asked():
    train, raw = _data()
    model = _hybrid(train, raw)
    user_ids = [f"u{i}" for i in range(N_USERS)]
    pyfunc = RecommenderPyfunc().load_arrays(
        export_serving_arrays(model, user_ids, [f"i{i}" for i in range(N_ITEMS)], train, SECRET), secret=SECRET
    )
    plain = pyfunc.predict(None, pd.DataFrame({"user_id": ["u1", "stranger"], "k": [3, 2]}))
    assert list(plain.columns) == ["user_id", "rank", "item_id", "score", "fallback"]
    asked = pyfunc.predict(
        None, pd.DataFrame({"user_id": ["u1", "stranger", "u2"], "k": [3, 2, 2], "explain": [True, True, False]})
    )
    pd.testing.assert_frame_equal(asked[plain.columns].iloc[:5], plain)
    shares = asked[[c for c in asked.columns if c.startswith("share_")]]
    assert list(shares.columns) == ["share_collaborative", "share_image", "share_text", "share_graph"]
    known = asked["user_id"] == "u1"
    np.testing.assert_allclose(shares[known].sum(axis=1), 1.0)
    assert shares[~known].isna().all().all()  # the fallback and the rows not asked for
    assert asked.loc[known, "reason"].str.contains("mostly").all()
    assert asked.loc[known, "because"].str.len().gt(0).all()
    assert asked.loc[asked["user_id"] == "stranger", "reason"].str.startswith("popular").all()
    assert (asked.loc[asked["user_id"] == "u2", "reason"] == "").all()

    dense = EmbeddingRecommender("mf", torch.randn(N_USERS, 4), torch.randn(N_ITEMS, 4))
    mf = RecommenderPyfunc().load_arrays(
        export_serving_arrays(dense, user_ids, [f"i{i}" for i in range(N_ITEMS)], train, SECRET), secret=SECRET
    )
    out = mf.predict(None, pd.DataFrame({"user_id": ["u3"], "k": [2], "explain": [True]}))
    assert out["share_embedding"].tolist() == [1.0, 1.0]
    assert all(set(b.split("|")) <= {f"i{j}" for j in train[3].indices} for b in out["because"])


def test_removing_the_top_attributed_part_hurts_more_than_a_random_one():
    train, raw = _data()
    model = _hybrid(train, raw, graph_weight=0.0)
    results = deletion_test(model, train, np.arange(N_USERS), seed=0)
    assert set(results) == {"history", "modality"}
    for result in results.values():
        assert result.users == N_USERS
        assert result.score_gap > 0, result
        assert result.rank_gap >= 0, result
    assert (
        deletion_test(
            EmbeddingRecommender("mf", torch.randn(N_USERS, 4), torch.randn(N_ITEMS, 4)), train, np.arange(N_USERS)
        )
        == {}
    )

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from torch_geometric.nn import LGConv

from mm_pipeline.recommend import train as train_module
from mm_pipeline.recommend.baselines import ease, most_popular
from mm_pipeline.recommend.fit import MultimodalConfig, SplitData, fit_lightgcn, fit_multimodal, standardized_features
from mm_pipeline.recommend.graph import SymmetricLGConv, bipartite_edge_index, normalized_adjacency
from mm_pipeline.recommend.models import pair_dots, squared_rows
from mm_pipeline.recommend.train import TrainConfig, TrainingPairs, sample_negatives


def _toy_split(n_users=60, n_items=40, seed=0):
    """Two user groups who like two disjoint item groups; the last items are cold (test only)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        group = u % 2
        liked = np.arange(group, n_items - 4, 2)
        chosen = rng.choice(liked, size=8, replace=False)
        for t, i in enumerate(chosen):
            rows.append((u, int(i), t))
        rows.append((u, n_items - 4 + group, 100))  # a cold item from the user's group
    frame = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"])
    frame["weight"] = 1.0
    frame["split"] = "train"
    last = frame.groupby("user_idx")["timestamp"].rank(ascending=False, method="first")
    frame.loc[last == 1, "split"] = "test"
    frame.loc[last == 2, "split"] = "valid"
    return frame, n_users, n_items


def test_symmetric_lgconv_matches_pyg_forward_and_gradient():
    users, items = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2])
    edge_index = bipartite_edge_index(users, items, 3)
    adj = normalized_adjacency(edge_index, 6)
    x1 = torch.randn(6, 4, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    ours = SymmetricLGConv()(x1, adj)
    theirs = LGConv(normalize=True)(x2, edge_index)
    assert torch.allclose(ours, theirs, atol=1e-6)
    ours.pow(2).sum().backward()
    theirs.pow(2).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)


def test_sample_negatives_avoid_training_items():
    dense = np.zeros((2, 100), dtype=np.float32)
    dense[0, :10] = 1
    dense[1, 50:60] = 1
    users = np.repeat([0, 1], 1000)
    neg = sample_negatives(users, sp.csr_matrix(dense), np.random.default_rng(0))
    assert not dense[users, neg].any()
    assert len(np.unique(neg)) > 70  # still uniform over the remaining items


def test_training_pairs_dense_table_and_binary_search_agree(monkeypatch):
    rng = np.random.default_rng(1)
    train = sp.random(40, 70, density=0.1, format="csr", random_state=2)
    users, items = rng.integers(0, 40, 5000), rng.integers(0, 70, 5000)
    truth = train.toarray()[users, items] != 0
    dense = TrainingPairs(train)
    monkeypatch.setattr(train_module, "DENSE_PAIRS_MAX", 0)
    sparse = TrainingPairs(train)
    assert dense.dense is not None and sparse.keys is not None
    np.testing.assert_array_equal(dense.contains(users, items), truth)
    np.testing.assert_array_equal(sparse.contains(users, items), truth)
    draws = [sample_negatives(users, train, np.random.default_rng(0), pairs=p) for p in (dense, sparse)]
    np.testing.assert_array_equal(draws[0], draws[1])  # the same draws, whichever table answers


@pytest.mark.parametrize("batch", [5, 400])  # fewer rows than the table (gathered), more (counted)
def test_squared_rows_is_the_gathered_rows_penalty(batch):
    table = torch.randn(50, 8, requires_grad=True)
    index = torch.randint(0, 50, (batch,), generator=torch.Generator().manual_seed(batch))
    ours = squared_rows(table, index)
    (ours_grad,) = torch.autograd.grad(ours, table)
    plain = table[index].pow(2).sum()
    (plain_grad,) = torch.autograd.grad(plain, table)
    assert torch.allclose(ours, plain, rtol=1e-5)
    assert torch.allclose(ours_grad, plain_grad, atol=1e-5)


def test_pair_dots_is_the_broadcast_product_bit_for_bit():
    generator = torch.Generator().manual_seed(0)
    users = torch.randn(300, 16, generator=generator, requires_grad=True)
    items = torch.randn(600, 16, generator=generator, requires_grad=True)
    weights = torch.randn(2, 300, generator=generator)  # a gradient that differs per entry
    ours = pair_dots(users, items)
    ours_grads = torch.autograd.grad((ours * weights).sum(), (users, items))
    broadcast = (users * items.view(2, 300, -1)).sum(-1)
    broadcast_grads = torch.autograd.grad((broadcast * weights).sum(), (users, items))
    assert ours.shape == (2, 300) and torch.equal(ours, broadcast)
    assert all(torch.equal(a, b) for a, b in zip(ours_grads, broadcast_grads))


def test_sample_negatives_checks_only_redrawn_entries_again(monkeypatch):
    # 1,000 users with 99 of 100 items each: most first draws hit and are drawn again, possibly more than once.
    dense = np.ones((1000, 100), dtype=np.float32)
    dense[np.arange(1000), np.arange(1000) % 100] = 0
    train = sp.csr_matrix(dense)
    users = np.arange(1000)
    monkeypatch.setattr(train_module, "DENSE_PAIRS_MAX", 0)  # the binary search, with its sorted queries
    pairs = TrainingPairs(train)
    checked = []
    original = pairs.contains
    monkeypatch.setattr(pairs, "contains", lambda u, i: checked.append(len(u)) or original(u, i))
    neg = sample_negatives(users, train, np.random.default_rng(0), max_tries=50, pairs=pairs)
    hit = dense[users, neg] != 0
    assert checked[0] == 1000 and checked[1] < 1000 and all(b <= a for a, b in zip(checked, checked[1:]))
    assert hit.sum() < 1000 * 0.99**50 * 3  # what is left after 50 tries, not silently more


def test_ease_matches_closed_form():
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((30, 8)) < 0.3).astype(np.float32))
    model = ease(x, l2=5.0)
    g = (x.T @ x).toarray() + 5 * np.eye(8)
    b = np.linalg.solve(g, (x.T @ x).toarray())  # unconstrained ridge solution
    p = np.linalg.inv(g)
    b_constrained = b - p * (np.diag(b) / np.diag(p))[None, :]  # diag-zero correction
    np.testing.assert_allclose(model.item_embeddings.numpy().T, b_constrained, atol=1e-4)
    assert np.allclose(np.diag(model.item_embeddings.numpy()), 0)


def test_most_popular_scores_by_count():
    x = sp.csr_matrix(np.array([[1, 0, 1], [0, 0, 1]], dtype=np.float32))
    model = most_popular(x)
    assert model.score(torch.tensor([0, 1])).argmax(1).tolist() == [2, 2]


def test_models_train_deterministically_and_content_carries_cold_items():
    frame, n_users, n_items = _toy_split()
    data = SplitData.from_frame(frame, n_users, n_items)
    cold = ~data.warm_items
    assert cold[-4:-2].all()
    # Content: the item's group, visible for every item including the cold ones.
    group = np.arange(n_items) % 2
    aligned = {
        "fused": np.eye(2, dtype=np.float32)[group],
        "modality_embeddings": np.eye(2, dtype=np.float32)[group][:, None],
        "present": np.ones((n_items, 1), bool),
    }
    raw = {"text": (np.eye(2, dtype=np.float32)[group], np.ones(n_items, bool))}
    config = MultimodalConfig(epochs=15, batch_size=128, dim=8, hidden=16, lr=0.02, patience=15)
    model, history = fit_multimodal(data, aligned, config, raw_features=raw)
    again, _ = fit_multimodal(data, aligned, config, raw_features=raw)
    assert torch.allclose(model.item_embeddings, again.item_embeddings)
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    # Cold items: each user should score the cold item of their own group above the other one.
    scores = model.score(torch.arange(n_users))[:, n_items - 4 : n_items - 2].numpy()
    preferred = scores.argmax(1)
    assert (preferred == np.arange(n_users) % 2).mean() > 0.9
    lightgcn, lg_history = fit_lightgcn(data, TrainConfig(epochs=5, batch_size=128, dim=8))
    assert lightgcn.user_embeddings.shape == (n_users, 8) and len(lg_history) == 5


def test_content_knn_is_sum_of_cosine_similarities():
    from mm_pipeline.recommend.baselines import content_knn

    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((5, 7)) < 0.4).astype(np.float32))
    f = rng.normal(size=(7, 3)).astype(np.float32)
    model = content_knn(x, f)
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    expected = x.toarray() @ (fn @ fn.T)
    np.testing.assert_allclose(model.score(torch.arange(5)).numpy(), expected, atol=1e-5)


def test_bpr_mf_is_lightgcn_without_layers():
    frame, n_users, n_items = _toy_split()
    data = SplitData.from_frame(frame, n_users, n_items)
    model, history = fit_lightgcn(data, TrainConfig(epochs=3, batch_size=128, dim=8, num_layers=0), name="bpr_mf")
    assert model.name == "bpr_mf" and len(history) == 3
    assert model.user_embeddings.shape == (n_users, 8)


def test_knn_item_adjacency_links_nearest_items_symmetrically():
    from mm_pipeline.recommend.graph import knn_item_adjacency

    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.normal(size=(30, 5)).astype(np.float32))
    features[7] = 0  # an item with no usable content: no links
    adj = knn_item_adjacency(features, k=3, chunk_size=8).to_dense()
    assert torch.allclose(adj, adj.T) and (adj.diagonal() == 0).all()
    assert (adj[7] == 0).all() and (adj[:, 7] == 0).all()
    # Brute force: every item's 3 most cosine-similar other usable items are among its links.
    x = torch.nn.functional.normalize(features, dim=1)
    sim = x @ x.T
    sim.fill_diagonal_(-np.inf)
    sim[:, 7] = -np.inf
    for i in (0, 12, 29):
        assert set(sim[i].topk(3).indices.tolist()) <= set(adj[i].nonzero().ravel().tolist())
    # The union of the k-NN links and their reverse, normalised D^-1/2 A D^-1/2.
    links = (adj > 0).float()
    deg = links.sum(1)
    expected = links / torch.sqrt(deg[:, None] * deg[None, :]).clamp_min(1e-12)
    assert torch.allclose(adj, expected * links, atol=1e-6)


def test_item_graph_gives_cold_items_their_warm_neighbours_collaborative_signal():
    frame, n_users, n_items = _toy_split()
    data = SplitData.from_frame(frame, n_users, n_items)
    group = np.arange(n_items) % 2
    aligned = {
        "fused": np.eye(2, dtype=np.float32)[group],
        "modality_embeddings": np.eye(2, dtype=np.float32)[group][:, None],
        "present": np.ones((n_items, 1), bool),
    }
    config = MultimodalConfig(
        epochs=10, batch_size=128, dim=8, hidden=16, lr=0.02, patience=10, knn_k=4, align_weight=0.5
    )
    raw = {"text": (np.eye(2, dtype=np.float32)[group], np.ones(n_items, bool))}
    model, history = fit_multimodal(data, aligned, config, raw_features=raw)
    assert "align_infonce" in history and history["align_infonce"].iloc[-1] < history["align_infonce"].iloc[0]
    dim = config.dim
    collab = model.item_embeddings[:, :dim]
    cold = np.flatnonzero(~data.warm_items)
    # Cold items have no ID embedding of their own; the k-NN term fills their collaborative part.
    assert collab[cold].norm(dim=1).min() > 0
    no_graph, _ = fit_multimodal(data, aligned, MultimodalConfig(**{**config.__dict__, "knn_k": 0}))
    assert torch.allclose(no_graph.item_embeddings[cold, :dim], torch.zeros(len(cold), dim))
    # content_mode="cold": the content score speaks for cold items only; warm items are scored by
    # their collaborative (ID + item-graph) embedding alone.
    content = model.item_embeddings[:, dim:]
    assert torch.allclose(content[data.warm_items], torch.zeros_like(content[data.warm_items]))
    assert content[cold].norm(dim=1).min() > 0
    everywhere, _ = fit_multimodal(
        data, aligned, MultimodalConfig(**{**config.__dict__, "content_mode": "all"}), raw_features=raw
    )
    assert everywhere.item_embeddings[data.warm_items, dim:].norm(dim=1).min() > 0
    # The item graph needs its source: raw features by default, or the aligned fused vectors.
    with pytest.raises(ValueError, match="raw_features"):
        fit_multimodal(data, aligned, config)
    aligned_graph, _ = fit_multimodal(data, aligned, MultimodalConfig(**{**config.__dict__, "graph_source": "aligned"}))
    assert aligned_graph.item_embeddings[cold, :dim].norm(dim=1).min() > 0
    # FREEDOM's edge pruning during training: seeded, and evaluation still sees the whole graph.
    pruned_config = MultimodalConfig(**{**config.__dict__, "edge_dropout": 0.5})
    pruned, pruned_history = fit_multimodal(data, aligned, pruned_config, raw_features=raw)
    again, _ = fit_multimodal(data, aligned, pruned_config, raw_features=raw)
    assert torch.allclose(pruned.item_embeddings, again.item_embeddings)
    assert not torch.allclose(pruned.item_embeddings, model.item_embeddings)
    assert pruned_history["loss"].iloc[-1] < pruned_history["loss"].iloc[0]


def test_degree_sensitive_pruning_keeps_a_share_and_drops_popular_edges_first():
    from mm_pipeline.recommend.graph import DegreeSensitivePruning

    # User 0 and item 0 are popular (a star); the other users each have one edge to their own item.
    users = np.array([0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6])
    items = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    users = np.concatenate([users, np.arange(7, 13)])
    items = np.concatenate([items, np.zeros(6, dtype=int)])
    n_users, n_items = 13, 12
    edge_index = bipartite_edge_index(users, items, n_users)
    pruning = DegreeSensitivePruning(edge_index, n_users + n_items, dropout=0.5)
    torch.manual_seed(0)
    kept_star = []
    for _ in range(200):
        adj = pruning().to_dense()
        assert torch.allclose(adj, adj.T)  # undirected, normalised
        kept_u, kept_i = (adj[:n_users, n_users:] > 0).nonzero(as_tuple=True)
        assert len(kept_u) == round(len(users) * 0.5)
        kept_star.append(int(((kept_u == 0) | (kept_i == 0)).sum()))
    # 12 of the 18 edges touch user 0 or item 0: a uniform half would keep 6 of them on average.
    assert np.mean(kept_star) < 5
    with pytest.raises(ValueError, match="edge dropout"):
        DegreeSensitivePruning(edge_index, n_users + n_items, dropout=1.0)


def test_bpr_losses_are_the_textbook_losses_from_one_gather_per_table():
    """BPR-MF and VBPR read each table once per batch (positives and negatives together) and take the L2
    penalty from the gathered rows: the loss and its gradients must be those of the per-term formulas."""
    from mm_pipeline.recommend.models import VBPR, IDLightGCN

    torch.manual_seed(0)
    n_users, n_items, reg = 30, 20, 0.01
    users, pos, neg = (
        torch.randint(0, n_users, (64,)),
        torch.randint(0, n_items, (64,)),
        torch.randint(0, n_items, (64,)),
    )
    adj = normalized_adjacency(torch.tensor([[0, n_users], [n_users, 0]]), n_users + n_items)
    mf = IDLightGCN(n_users, n_items, adj, TrainConfig(dim=4, num_layers=0, reg=reg))
    table = mf.lightgcn.embedding.weight
    u, i, j = table[users], table[n_users + pos], table[n_users + neg]
    expected = -torch.nn.functional.logsigmoid((u * i).sum(1) - (u * j).sum(1)).mean()
    expected = expected + reg * (u.pow(2).sum() + i.pow(2).sum() + j.pow(2).sum()) / len(users)
    (expected_grad,) = torch.autograd.grad(expected, table)
    loss, _ = mf.bpr_loss(users, pos, neg)
    (grad,) = torch.autograd.grad(loss, table)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)

    vbpr = VBPR(n_users, n_items, torch.randn(n_items, 6), TrainConfig(dim=4, reg=reg))
    torch.nn.init.normal_(vbpr.item_bias.weight)

    def score(items):
        f = vbpr.visual[items]
        return (
            vbpr.item_bias.weight[items, 0]
            + (vbpr.user_factors.weight[users] * vbpr.item_factors.weight[items]).sum(1)
            + (vbpr.user_visual.weight[users] * vbpr.projection(f)).sum(1)
            + vbpr.visual_bias(f)[:, 0]
        )

    penalty = sum(
        t.pow(2).sum()
        for t in (
            vbpr.user_factors.weight[users],
            vbpr.user_visual.weight[users],
            vbpr.item_factors.weight[pos],
            vbpr.item_factors.weight[neg],
            vbpr.item_bias.weight[pos],
            vbpr.item_bias.weight[neg],
        )
    )
    expected = -torch.nn.functional.logsigmoid(score(pos) - score(neg)).mean() + reg * penalty / len(users)
    params = list(vbpr.parameters())
    expected_grads = torch.autograd.grad(expected, params)
    loss, _ = vbpr.bpr_loss(users, pos, neg)
    torch.testing.assert_close(loss, expected)
    for got, want in zip(torch.autograd.grad(loss, params), expected_grads):
        torch.testing.assert_close(got, want)


def test_vbpr_scores_are_one_dot_product_and_use_visual_features():
    from mm_pipeline.recommend.fit import fit_vbpr

    frame, n_users, n_items = _toy_split()
    data = SplitData.from_frame(frame, n_users, n_items)
    rng = np.random.default_rng(0)
    visual = np.eye(2, dtype=np.float32)[np.arange(n_items) % 2] + 0.05 * rng.normal(size=(n_items, 2)).astype(
        np.float32
    )
    present = np.ones(n_items, bool)
    present[3] = False
    model, history = fit_vbpr(data, visual, present, TrainConfig(epochs=8, batch_size=128, dim=8, lr=0.02))
    again, _ = fit_vbpr(data, visual, present, TrainConfig(epochs=8, batch_size=128, dim=8, lr=0.02))
    assert torch.allclose(model.item_embeddings, again.item_embeddings)
    assert model.user_embeddings.shape == (n_users, 8 + 8 + 2) and len(history) >= 1
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]


def test_vbpr_features_are_unit_rows_without_touching_the_input():
    from mm_pipeline.recommend.fit import unit_rows

    features = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0], [5.0, 5.0]], dtype=np.float32)
    present = np.array([True, True, True, False])
    before = features.copy()
    out = unit_rows(features, present)
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]], atol=1e-6)
    np.testing.assert_array_equal(features, before)  # the caller's array is left as it was
    assert out.dtype == np.float32


def test_ablations_remove_one_part_each():
    from mm_pipeline.recommend.ablations import ablations

    rng = np.random.default_rng(0)
    n = 12
    aligned = {
        "modalities": ["text", "image"],
        "fused": rng.normal(size=(n, 4)).astype(np.float32),
        "modality_embeddings": rng.normal(size=(n, 2, 4)).astype(np.float32),
        "present": np.ones((n, 2), bool),
    }
    raw = {"text": (rng.normal(size=(n, 6)), np.ones(n, bool)), "image": (rng.normal(size=(n, 3)), np.ones(n, bool))}
    variants = {a.name: a for a in ablations(aligned, raw)}
    assert set(variants) == {"mm_gcn-text_only", "mm_gcn-image_only", "mm_gcn-no_alignment", "mm_gcn-no_item_graph"}
    # The item graph follows the primary model's graph_source: raw features by default, else aligned.
    [graph] = variants["mm_gcn-image_only"].graph_features
    np.testing.assert_allclose(graph, standardized_features(raw["image"][0], raw["image"][1]))
    [graph] = {a.name: a for a in ablations(aligned, raw, "aligned")}["mm_gcn-image_only"].graph_features
    np.testing.assert_array_equal(graph, aligned["modality_embeddings"][:, 1])
    assert len(variants["mm_gcn-no_alignment"].graph_features) == 2  # one raw k-NN graph per modality
    assert variants["mm_gcn-no_alignment"].content.shape == (n, 6 + 3 + 2)
    assert variants["mm_gcn-no_alignment"].config(MultimodalConfig()).align_weight == 0
    assert variants["mm_gcn-no_item_graph"].config(MultimodalConfig()).knn_k == 0


def test_freedom_prunes_by_degree_and_trains_deterministically():
    from mm_pipeline.recommend.fit import FreedomConfig, fit_freedom
    from mm_pipeline.recommend.models import FREEDOM

    frame, n_users, n_items = _toy_split()
    data = SplitData.from_frame(frame, n_users, n_items)
    rng = np.random.default_rng(0)
    group = np.arange(n_items) % 2
    raw = {
        "text": (np.eye(2)[group] + 0.05 * rng.normal(size=(n_items, 2)), np.ones(n_items, bool)),
        "image": (rng.normal(size=(n_items, 3)), np.arange(n_items) != 5),
    }
    config = FreedomConfig(epochs=6, batch_size=128, dim=8, lr=0.02, patience=6)
    model, history = fit_freedom(data, raw, config)
    again, _ = fit_freedom(data, raw, config)
    assert torch.allclose(model.item_embeddings, again.item_embeddings)
    assert history["loss"].iloc[-1] < history["loss"].iloc[0] and "feature_bpr" in history
    # The pruned graph keeps 1 - edge_dropout of the edges, symmetrically, drawn with weight 1/sqrt(d_u d_i).
    coo = data.train.tocoo()
    edges = bipartite_edge_index(coo.row, coo.col, n_users)
    adj = torch.eye(n_items).to_sparse_csr()
    freedom = FREEDOM(n_users, n_items, edges, adj, [torch.zeros(n_items, 1)], FreedomConfig(dim=4, edge_dropout=0.5))
    pruned = freedom.pruning().to_dense()
    assert torch.allclose(pruned, pruned.T)
    assert int((pruned > 0).sum()) == 2 * round(coo.nnz * 0.5)
    d_user = np.asarray(data.train.sum(1)).ravel()
    d_item = np.asarray(data.train.sum(0)).ravel()
    expected = 1 / np.sqrt(
        d_user[freedom.pruning.edges[0].numpy()] * d_item[freedom.pruning.edges[1].numpy() - n_users]
    )
    np.testing.assert_allclose(freedom.pruning.weight.numpy(), expected, rtol=1e-6)


def test_pre_graph_mode_smooths_item_ids_before_the_user_item_propagation():
    from mm_pipeline.recommend.graph import knn_item_adjacency
    from mm_pipeline.recommend.models import MultimodalGCN

    n_users, n_items, dim = 5, 6, 4
    users = np.array([0, 0, 1, 2, 3, 4, 4, 1])
    items = np.array([0, 1, 2, 3, 4, 0, 2, 4])  # item 5 has no training edge: cold
    adj = normalized_adjacency(bipartite_edge_index(users, items, n_users), n_users + n_items)
    item_adj = knn_item_adjacency(torch.randn(n_items, 3, generator=torch.Generator().manual_seed(0)), 2)
    warm = torch.tensor([True] * 5 + [False])
    models = {}
    for mode in ("pre", "add", "cold"):
        torch.manual_seed(0)
        models[mode] = MultimodalGCN(
            n_users,
            n_items,
            adj,
            torch.randn(n_items, 3),
            warm,
            MultimodalConfig(dim=dim, num_layers=2, hidden=8, graph_mode=mode, content_mode="cold", init="xavier"),
            item_adj=item_adj,
        ).eval()
    model = models["pre"]
    # The math of graph_mode="pre" on dense matrices: g = mean_l A^l [e_u; e_i + S e_i] over l = 0..2.
    e = model.item_embedding.weight.detach() * warm[:, None]
    x = torch.cat([model.user_embedding.weight.detach(), e + item_adj.to_dense() @ e])
    a, total = adj.to_dense(), x.clone()
    for _ in range(2):
        x = a @ x
        total = total + x
    expected = total / 3
    users_out, items_out = model.embeddings()
    assert torch.allclose(users_out[:, :dim], expected[:n_users], atol=1e-5)
    g_item = expected[n_users:] * warm[:, None]
    # Warm items score by g alone; the cold item by its item-graph neighbours' g.
    assert torch.allclose(items_out[:5, :dim], g_item[:5], atol=1e-5)
    assert torch.allclose(items_out[5, :dim], (item_adj.to_dense() @ g_item)[5], atol=1e-5)
    # The same weights in the other modes: users do not see the item graph there.
    for mode in ("add", "cold"):
        other_users, _ = models[mode].embeddings()
        assert torch.allclose(models[mode].user_embedding.weight, model.user_embedding.weight)
        assert not torch.allclose(other_users[:, :dim], users_out[:, :dim])
    with pytest.raises(ValueError, match="graph_mode"):
        MultimodalGCN(n_users, n_items, adj, torch.randn(n_items, 3), warm, MultimodalConfig(graph_mode="both"))


def test_init_xavier_scales_with_the_table_and_unknown_init_is_an_error():
    from mm_pipeline.recommend.models import MultimodalGCN

    adj = normalized_adjacency(bipartite_edge_index(np.array([0]), np.array([0]), 1), 3001)
    content, warm = torch.zeros(3000, 2), torch.ones(3000, dtype=torch.bool)
    torch.manual_seed(0)
    xavier = MultimodalGCN(1, 3000, adj, content, warm, MultimodalConfig(dim=64, init="xavier"))
    normal = MultimodalGCN(1, 3000, adj, content, warm, MultimodalConfig(dim=64, init="normal"))
    bound = (6 / (3000 + 64)) ** 0.5  # Glorot: U(-b, b), b = sqrt(6 / (fan_in + fan_out))
    assert xavier.item_embedding.weight.abs().max() <= bound
    assert abs(xavier.item_embedding.weight.std().item() - bound / 3**0.5) < 2e-3
    assert abs(normal.item_embedding.weight.std().item() - 0.1) < 2e-3
    with pytest.raises(ValueError, match="init"):
        MultimodalGCN(1, 3000, adj, content, warm, MultimodalConfig(init="zeros"))


def test_training_step_reads_a_cached_content_taste_that_matches_the_full_propagation():
    """mm_gcn's training step does not run the content tower over every item: the other nodes' share of a
    user's content taste is cached. Right after a refresh the step's taste is the full forward pass's, the
    cache is refreshed every ``taste_refresh`` steps, and the loss still reaches every trainable part."""
    from mm_pipeline.recommend.models import MultimodalGCN

    n_users, n_items, dim = 6, 8, 4
    users = np.array([0, 0, 1, 2, 3, 4, 4, 5, 5, 1])
    items = np.array([0, 1, 2, 3, 4, 0, 2, 5, 6, 4])  # item 7: cold
    adj = normalized_adjacency(bipartite_edge_index(users, items, n_users), n_users + n_items)
    warm = torch.tensor([True] * 7 + [False])
    torch.manual_seed(0)
    config = MultimodalConfig(dim=dim, hidden=8, dropout=0.0, taste_refresh=3, cold_prob=0.5, align_weight=0.1)
    model = MultimodalGCN(n_users, n_items, adj, torch.randn(n_items, 5), warm, config).train()
    batch = torch.arange(n_users)
    cached = model._user_taste(batch)
    with torch.no_grad():
        exact = model._forward(model.adj)[3]
    assert torch.allclose(cached, exact, atol=1e-6)
    # The user's own vector stays live between refreshes; the rest is refreshed after taste_refresh steps.
    with torch.no_grad():
        model.user_content.weight.add_(1.0)
    assert model._taste_age == 1
    shifted = model._user_taste(batch)
    assert torch.allclose(shifted, cached + 1.0 / (config.num_layers + 1), atol=1e-6)
    model._user_taste(batch)
    assert model._taste_age == 3
    model._user_taste(batch)  # the refresh
    assert model._taste_age == 1
    with torch.no_grad():
        assert torch.allclose(model._taste_cache + model.user_content.weight / 3, model._forward(model.adj)[3])
    loss, parts = model.bpr_loss(torch.tensor([0, 1, 4, 5]), torch.tensor([0, 2, 2, 6]), torch.tensor([7, 5, 3, 1]))
    loss.backward()
    assert {"bpr", "align_infonce"} <= set(parts)
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_an_epoch_takes_at_most_max_epoch_steps_steps_with_a_grown_batch_and_rate():
    from mm_pipeline.recommend.train import epoch_batches

    config = TrainConfig(batch_size=100, lr=0.01, max_epoch_steps=4)
    assert epoch_batches(config, 400) == (100, 0.01)  # fits: as configured
    batch, lr = epoch_batches(config, 1600)  # 16 batches of 100 -> 4 of 400, rate x sqrt(4)
    assert batch == 400 and lr == pytest.approx(0.02)
    assert epoch_batches(config, 16000) == (4000, pytest.approx(0.02))  # 40x the batch: the rate at most 2x
    assert epoch_batches(TrainConfig(batch_size=100, lr=0.01, max_epoch_steps=0), 10**6) == (100, 0.01)
    # Training reads it: 420 training interactions in steps of at most ceil(420 / 2) = 210.
    frame, n_users, n_items = _toy_split()
    data = SplitData.from_frame(frame, n_users, n_items)
    model, _ = fit_lightgcn(data, TrainConfig(epochs=1, batch_size=16, dim=8, max_epoch_steps=2))
    assert model.info["trained_batch_size"] == -(-data.train.nnz // 2)
    assert model.info["trained_lr"] == pytest.approx(0.01 * min(2.0, np.sqrt(model.info["trained_batch_size"] / 16)))


def test_a_sparse_user_tables_dense_tail_scores_as_the_whole_sparse_product():
    from mm_pipeline.recommend.base import EmbeddingRecommender, sparse_from_scipy

    rng = np.random.default_rng(0)
    history = sp.random(30, 12, density=0.2, random_state=0, dtype=np.float32)
    tail = rng.normal(size=(30, 4)).astype(np.float32)  # every user has every column: dense
    users = sp.hstack([history, sp.csr_matrix(tail)], format="csr")
    items = torch.from_numpy(rng.normal(size=(12, 16)).astype(np.float32))
    model = EmbeddingRecommender("hybrid", sparse_from_scipy(users), items, parts={"history_width": 12})
    expected = torch.from_numpy(users.toarray()) @ items.T
    assert model._split_users() is not None  # scored as a sparse history plus one dense product
    torch.testing.assert_close(model.score(torch.arange(30)), expected)
    plain = EmbeddingRecommender("plain", sparse_from_scipy(users), items)  # no history width: one product
    assert plain._split_users() is None
    torch.testing.assert_close(plain.score(torch.tensor([3, 1])), expected[[3, 1]])

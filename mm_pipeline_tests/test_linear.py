"""Closed-form item-item models, recency-weighted histories, sparse user tables, validation search."""

import weakref

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from mm_pipeline.compress.measure import compress_recommender
from mm_pipeline.evaluate.split import interaction_matrix
from mm_pipeline.recommend.base import EmbeddingRecommender, select_rows, sparse_from_scipy
from mm_pipeline.recommend.baselines import ease, item_item
from mm_pipeline.recommend.linear import ItemGram, recency_profile, training_age
from mm_pipeline.recommend.selection import grid, log_line, search


def _random_binary(n_users=40, n_items=12, density=0.3, seed=0):
    rng = np.random.default_rng(seed)
    return sp.csr_matrix((rng.random((n_users, n_items)) < density).astype(np.float32))


@pytest.mark.parametrize("n_items", [12, 5100])  # float64 and float32 inverses
def test_item_gram_ease_matches_the_closed_form(n_items):
    x = _random_binary(n_users=60, n_items=n_items, density=0.3 if n_items < 100 else 0.002, seed=1)
    b = ItemGram(x).ease(7.0)
    if n_items > 100:  # check a corner of the big one against a direct float64 solve on the same Gram
        g = (x.T @ x).toarray().astype(np.float64) + 7.0 * np.eye(n_items)
        p = np.linalg.inv(g)[:, :50]
        expected = -p / np.diag(np.linalg.inv(g))[None, :50]
        expected[np.arange(50), np.arange(50)] = 0.0
        np.testing.assert_allclose(b[:, :50], expected, atol=2e-4)
        return
    g = (x.T @ x).toarray().astype(np.float64) + 7.0 * np.eye(n_items)
    p = np.linalg.inv(g)
    expected = -p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(b, expected, atol=1e-6)
    assert b.dtype == np.float32 and np.all(np.diag(b) == 0)
    with pytest.raises(ValueError, match="must be > 0"):
        ItemGram(x).ease(0.0)


def test_ease_scores_from_the_sparse_history():
    x = _random_binary()
    model = ease(x, l2=5.0)
    assert model.sparse_users and model.user_embeddings.shape == (40, 12)
    b = ItemGram(x).ease(5.0)
    users = torch.tensor([3, 0, 39, 3])
    np.testing.assert_allclose(model.score(users).numpy(), (x[[3, 0, 39, 3]] @ b), atol=1e-5)
    np.testing.assert_allclose(model.user_rows(users).numpy(), x[[3, 0, 39, 3]].toarray())


def test_training_age_orders_each_users_history_and_shares_ties():
    frame = pd.DataFrame(
        {
            "user_idx": [0, 0, 0, 1, 1, 0, 0],
            "item_idx": [2, 1, 0, 0, 3, 2, 3],
            "timestamp": [5, 3, 3, 1, 1, 9, 10],
            "split": ["train"] * 6 + ["test"],
        }
    )
    train = interaction_matrix(frame, 2, 4)
    age = training_age(frame, train)
    # user 0: item 2 is the newest (t=9, its latest), items 0 and 1 tie at t=3; user 1: one tie.
    np.testing.assert_allclose(age, [0.5, 0.5, 0.0, 0.25, 0.25])
    profile = recency_profile(train, age, decay=2.0)
    np.testing.assert_allclose(profile.toarray()[0], [np.exp(-1.0), np.exp(-1.0), 1.0, 0.0], rtol=1e-6)
    assert (recency_profile(train, age, 0.0) != train).nnz == 0 and train.data.min() == 1.0  # input untouched
    with pytest.raises(ValueError, match="different splits"):
        training_age(frame.drop(index=1), train)
    with pytest.raises(ValueError, match=">= 0"):
        recency_profile(train, age, -1.0)


def test_sparse_user_tables_round_trip_and_compress():
    x = _random_binary(n_users=30, n_items=10)
    dense = EmbeddingRecommender("d", torch.from_numpy(x.toarray()), torch.randn(10, 10))
    sparse = EmbeddingRecommender("s", sparse_from_scipy(x), dense.item_embeddings)
    users = torch.tensor([5, 5, 0, 29])
    assert torch.allclose(sparse.score(users), dense.score(users), atol=1e-6)
    assert torch.equal(select_rows(sparse.user_embeddings, users).to_dense(), dense.user_embeddings[users])
    again = EmbeddingRecommender.from_bundle(
        {k: v.numpy() if torch.is_tensor(v) else v for k, v in sparse.to_bundle().items()}
    )
    assert again.sparse_users and torch.allclose(again.score(users), dense.score(users), atol=1e-6)
    result = compress_recommender(sparse, prune_amount=0.5, latency_users=16, repeats=1)
    fp32, pruned = result["recommenders"]["fp32"], result["recommenders"]["pruned"]
    assert fp32.sparse_users and torch.allclose(fp32.score(users), dense.score(users), atol=1e-5)
    # The history is data: pruning zeroes half of the item table only.
    assert torch.equal(pruned.user_embeddings.values(), sparse.user_embeddings.values())
    assert (pruned.item_embeddings == 0).float().mean() == pytest.approx(0.5, abs=0.01)
    int8 = result["recommenders"]["int8"]
    assert torch.allclose(int8.score(users), dense.score(users), atol=0.05)
    assert torch.allclose(result["variants"]["int8"](users), dense.score(users), atol=0.1)


def test_grid_and_log_line_searches_choose_on_validation_within_the_budget():
    fitted = []

    def fit(params):
        fitted.append(params)
        return EmbeddingRecommender("m", torch.ones(1, 1), torch.ones(1, 1), {})

    # A unimodal score in log(l2) peaking at 400: the line climbs from 100 and stops past the peak.
    peak = lambda model: {"ndcg@20": -abs(np.log(fitted[-1]["l2"] / 400.0)), "recall@20": 0.0}  # noqa: E731
    result = search(log_line("l2", 100.0, 2.0, 1.0, 1e5), fit, peak, budget_s=1e9)
    assert result.params == {"l2": 400.0} and result.trials["chosen"].sum() == 1
    assert [p["l2"] for p in fitted] == [100.0, 200.0, 400.0, 800.0]  # 50 is never needed
    assert result.stopped == "every proposed setting tried" and result.model.info["valid_ndcg@20"] == 0.0
    # A zero budget still runs the first (default) setting, and only it.
    fitted.clear()
    one = search(grid([{"lr": 0.01}, {"lr": 0.1}]), fit, lambda m: {"ndcg@20": 1.0}, budget_s=0.0)
    assert len(fitted) == 1 and one.params == {"lr": 0.01} and "budget" in one.stopped
    with pytest.raises(ValueError, match="at least one"):
        grid([])


def test_a_search_that_keeps_no_model_fits_the_best_setting_again():
    alive = []

    def fit(params):
        model = EmbeddingRecommender("m", torch.ones(1, 1), torch.full((1, 1), params["l2"]), {"l2": params["l2"]})
        alive.append(weakref.ref(model))
        return model

    peak = lambda model: {"ndcg@20": -abs(np.log(model.info["l2"] / 400.0))}  # noqa: E731
    result = search(log_line("l2", 100.0, 2.0, 1.0, 1e5), fit, peak, budget_s=1e9, keep_best=False)
    kept = search(log_line("l2", 100.0, 2.0, 1.0, 1e5), fit, peak, budget_s=1e9)
    assert result.params == kept.params == {"l2": 400.0}
    assert result.trials.drop(columns="seconds").equals(kept.trials.drop(columns="seconds"))
    # Four trials and one more fit of the chosen setting; of the first search's models only that last one lives.
    assert [ref() is not None for ref in alive[:5]] == [False] * 4 + [True]
    assert result.model.item_embeddings.item() == 400.0 and result.model.info["valid_ndcg@20"] == 0.0


def _split_80_10_10(cells: sp.csr_matrix, rng: np.random.Generator):
    """``cells``' non-zeros split at random into train, validation and test (8:1:1) as a SplitData."""
    from mm_pipeline.data.types import SplitData

    cells = cells.astype(np.float32)
    which = rng.integers(0, 10, cells.nnz)
    parts = [cells.copy() for _ in range(3)]
    for part, keep in zip(parts, (which < 8, which == 8, which == 9), strict=True):
        part.data = keep.astype(np.float32)
        part.eliminate_zeros()
    return SplitData(*cells.shape, *parts, adj=torch.zeros(0))


def test_ease_search_on_the_popular_sub_catalogue_fits_once_on_the_whole_one():
    from mm_pipeline.recommend.tuning import Tuning, tune_ease

    rng = np.random.default_rng(5)
    data = _split_80_10_10(sp.csr_matrix(rng.random((60, 30)) < rng.random(30)[None, :] * 0.5), rng)
    trials = []
    result = tune_ease(data, Tuning(1e9, 8), start=4.0, on_trial=trials.append, search_items=10)
    table = result.trials
    assert list(table["items"]) == [10] * (len(table) - 1) + [30] and table["chosen"].tolist()[-1]
    assert table["chosen"].sum() == 1 and len(trials) == len(table)
    l2 = result.params["l2"]
    assert l2 == table.iloc[:-1].sort_values("valid_ndcg@20", ascending=False, kind="stable").iloc[0]["l2"]
    # the chosen model is EASE on all 30 items at that L2
    np.testing.assert_allclose(result.model.item_embeddings.numpy().T, ItemGram(data.train).ease(l2), atol=1e-6)
    assert result.model.n_items == 30 and "most popular" in result.stopped
    # a catalogue within search_items is searched as before
    assert "items" not in tune_ease(data, Tuning(1e9, 2), start=4.0, search_items=30).trials


def test_a_search_scores_its_trials_on_a_seeded_sample_of_validation_users():
    from mm_pipeline.recommend.ranking import validator
    from mm_pipeline.recommend.tuning import Tuning, tune_item_knn

    rng = np.random.default_rng(6)
    data = _split_80_10_10(sp.csr_matrix(rng.random((80, 25)) < 0.3), rng)
    sampled = tune_item_knn(data, Tuning(1e9, 3, validation_users=20, seed=1), start=5)
    whole = tune_item_knn(data, Tuning(1e9, 3, validation_users=0), start=5)
    assert list(sampled.trials["k"]) == list(whole.trials["k"])
    # each trial is scored on the same 20 users: the seeded validator's score, not the whole split's
    for (_, row), model_k in zip(sampled.trials.iterrows(), sampled.trials["k"], strict=True):
        model = tune_item_knn(data, Tuning(1e9, 1, validation_users=0), start=int(model_k)).model
        assert row["valid_ndcg@20"] == pytest.approx(validator(data, max_users=20, seed=1)(model)["ndcg@20"])
    assert not np.allclose(sampled.trials["valid_ndcg@20"], whole.trials["valid_ndcg@20"])
    # a split with fewer validation users than the sample is scored whole, as before
    assert np.array_equal(
        tune_item_knn(data, Tuning(1e9, 3, validation_users=10_000), start=5).trials["valid_ndcg@20"],
        whole.trials["valid_ndcg@20"],
    )


def test_item_item_model_is_one_dot_product_over_the_history():
    x = _random_binary(n_users=8, n_items=6, seed=3)
    w = np.random.default_rng(0).normal(size=(6, 6)).astype(np.float32)
    model = item_item("knn", x, w, {})
    np.testing.assert_allclose(model.score(torch.arange(8)).numpy(), x @ w, atol=1e-5)


def test_item_knn_keeps_the_k_most_similar_items_per_column():
    from mm_pipeline.recommend.linear import item_knn_weights

    x = _random_binary(n_users=50, n_items=9, density=0.4, seed=4)
    gram = (x.T @ x).toarray().astype(np.float64)
    s = item_knn_weights(gram, k=3, shrink=2.0)
    norms = np.sqrt(np.diag(gram))
    full = gram / (norms[:, None] * norms[None, :] + 2.0)
    np.fill_diagonal(full, 0.0)
    for j in range(9):
        kept = np.flatnonzero(s[:, j])
        assert len(kept) <= 3 and np.allclose(s[kept, j], full[kept, j], atol=1e-6)
        assert full[kept, j].min() >= np.sort(full[:, j])[-3] - 1e-9  # the 3 largest
    assert np.all(np.diag(s) == 0)
    with pytest.raises(ValueError, match="k >= 1"):
        item_knn_weights(gram, k=0)


def test_trained_search_stops_a_setting_that_trails_the_best_one():
    from dataclasses import dataclass

    from mm_pipeline.recommend.train import StopTraining
    from mm_pipeline.recommend.tuning import GRIDS, TrailingStop, Tuning, tune_trained

    stop = TrailingStop(warmup=3)
    first = stop.callback()
    for value in (0.1, 0.2, 0.3, 0.25):
        first({"valid_ndcg@20": value})
    stop.finished(0.3)
    np.testing.assert_allclose(stop.reference, [0.1, 0.2, 0.3, 0.3])
    ahead, behind = stop.callback(), None
    for value in (0.05, 0.15, 0.31, 0.4, 0.5):  # behind before the warm-up, ahead after: never stopped
        ahead({"valid_ndcg@20": value})
    behind = stop.callback()
    behind({"valid_ndcg@20": 0.1})
    behind({"valid_ndcg@20": float("nan")})  # an epoch without validation keeps the best so far
    with pytest.raises(StopTraining):
        behind({"valid_ndcg@20": 0.2})  # epoch 3: 0.2 < the reference's 0.3

    @dataclass
    class Config:
        lr: float = 0.01
        reg: float = 1e-4
        dim: int = 64
        num_layers: int = 2

    epochs = []

    def fit(config, on_epoch):  # curves that only differ by lr: the default is best
        curve = [min(0.05 * e, 0.3) * (1.0 if config.lr == 0.01 else 0.5) for e in range(1, 21)]
        ran = 0
        try:
            for value in curve:
                ran += 1
                on_epoch({"valid_ndcg@20": value})
        except StopTraining:
            pass
        epochs.append(ran)
        best = max(curve[:ran])
        return EmbeddingRecommender("m", torch.ones(1, 1), torch.ones(1, 1), {"best_valid_ndcg@20": best})

    result = tune_trained(
        "lightgcn",
        fit,
        Config(),
        lambda m: {"ndcg@20": m.info["best_valid_ndcg@20"]},
        Tuning(budget_s=1e9, max_trials=4, warmup=2),
    )
    assert len(GRIDS["lightgcn"]) == 4 and result.params == {}
    assert epochs[0] == 20 and epochs[2] == 2  # the lr change trails from the first check on


def test_rp3beta_matches_a_dense_reference_walk():
    from mm_pipeline.recommend.rp3beta import rp3beta

    rng = np.random.default_rng(3)
    x = (rng.random((9, 7)) < 0.4).astype(np.float32)
    x[:, 6] = 0.0  # an item nobody has: its row and column stay zero
    alpha, beta, k = 0.8, 0.4, 3
    d_user, d_item = x.sum(1), x.sum(0)
    reference = np.zeros((7, 7))
    for i in range(7):
        for j in range(7):
            if i == j or d_item[i] == 0 or d_item[j] == 0:
                continue
            walk = sum(
                (x[u, i] / d_item[i]) ** alpha * (x[u, j] / d_user[u]) ** alpha for u in range(9) if d_user[u] > 0
            )
            reference[i, j] = walk / d_item[j] ** beta
    full = rp3beta(sp.csr_matrix(x), alpha=alpha, beta=beta, k=7)
    np.testing.assert_allclose(full.item_embeddings.numpy().T, reference, rtol=1e-5, atol=1e-7)
    # Scores are the user's history times W: s(u, j) = sum over the user's items i of W_ij.
    np.testing.assert_allclose(full.score(torch.arange(9)).numpy(), x @ reference, rtol=1e-5, atol=1e-6)
    # With k = 3 each item keeps its 3 largest neighbours (which of tied values is kept is not specified).
    model = rp3beta(sp.csr_matrix(x), alpha=alpha, beta=beta, k=k)
    pruned = model.item_embeddings.numpy().T
    for i in range(7):
        kept = pruned[i] != 0
        assert kept.sum() <= k
        np.testing.assert_allclose(pruned[i, kept], reference[i, kept], rtol=1e-5)
        if kept.any():
            assert reference[i, kept].min() >= reference[i, ~kept].max() - 1e-6
        assert kept.sum() == min(k, int((reference[i] > 0).sum()))
    assert model.info == {"kind": "RP3beta", "alpha": alpha, "beta": beta, "k": k}
    with pytest.raises(ValueError, match="beta"):
        rp3beta(sp.csr_matrix(x), beta=-1.0)


@pytest.mark.parametrize("float32", [False, True])
def test_the_random_walk_built_a_block_of_rows_at_a_time_is_the_whole_sparse_product(monkeypatch, float32):
    from mm_pipeline.recommend import rp3beta as module

    if float32:  # the large-catalogue path
        monkeypatch.setattr(module, "FLOAT64_MAX_ITEMS", 10)
    x = sp.random(40, 23, density=0.2, random_state=5, format="csr", dtype=np.float32)
    x.data[:] = 1.0
    whole, degrees = module.random_walk(x, 0.7, block=23)  # one block: the whole product
    blocks, same_degrees = module.random_walk(x, 0.7, block=4)  # six blocks, the last of 3 rows
    assert blocks.dtype == whole.dtype == (np.float32 if float32 else np.float64)
    np.testing.assert_array_equal(blocks, whole)  # each row of a sparse product is computed on its own
    np.testing.assert_array_equal(same_degrees, degrees)
    d_user, d_item = np.asarray(x.sum(1)).ravel(), np.asarray(x.sum(0)).ravel()
    dense = x.toarray()
    reference = (dense / np.maximum(d_item, 1e-12)).T ** 0.7 @ (dense / np.maximum(d_user, 1e-12)[:, None]) ** 0.7
    np.testing.assert_allclose(whole, reference, rtol=1e-5, atol=1e-7)


def test_rp3beta_is_one_entry_of_the_model_table_and_tuned_on_validation():
    from mm_pipeline.data.types import SplitData
    from mm_pipeline.recommend.catalog import model_spec
    from mm_pipeline.recommend.rp3beta import RP3betaConfig, tune_rp3beta
    from mm_pipeline.recommend.tuning import Tuning

    spec = model_spec("rp3beta")
    assert spec.role == "baseline" and spec.config is RP3betaConfig and spec.asset_name == "rp3beta_model"
    rng = np.random.default_rng(0)
    rows = [
        (u, i, t, s)
        for u in range(30)
        for t, i in enumerate(rng.choice(12, size=5, replace=False))
        for s in ["train" if t < 3 else "valid" if t == 3 else "test"]
    ]
    frame = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp", "split"])
    result = tune_rp3beta(SplitData.from_frame(frame, 30, 12), Tuning(budget_s=60, max_trials=6), RP3betaConfig(k=4))
    assert len(result.trials) == 6 and result.trials["chosen"].sum() == 1
    assert result.params == {k: result.model.info[k] for k in ("alpha", "beta", "k")}


@pytest.mark.parametrize("threads", [1, 2])
def test_the_dense_product_by_blocks_in_threads_is_the_whole_sparse_product(threads):
    from mm_pipeline.recommend.linear import dense_product

    x = sp.random(60, 37, density=0.15, random_state=3, format="csr", dtype=np.float64)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        blocks = dense_product(x.T, x, np.float32, block=8)  # five blocks, the last of 5 rows
    finally:
        torch.set_num_threads(previous)
    whole = (x.T.astype(np.float32) @ x.astype(np.float32)).toarray()
    assert blocks.dtype == np.float32
    np.testing.assert_array_equal(blocks, whole)
    np.testing.assert_array_equal(ItemGram(x).gram, (x.T @ x).toarray())
    assert dense_product(x[:0], x.T, np.float32).shape == (0, 60)  # no rows: no blocks, an empty result

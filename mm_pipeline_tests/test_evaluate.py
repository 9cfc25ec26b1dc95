"""Evaluation: splits, top-k ranking, metrics (hand-computed and cross-checked with PyG), reports."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_geometric.metrics import LinkPredNDCG, LinkPredRecall

from mm_pipeline.data.types import SplitData
from mm_pipeline.evaluate import (
    PAD,
    chronological_split,
    cold_items,
    interaction_matrix,
    metrics_table_markdown,
    per_user_metrics,
    png_markdown,
    ranking_metrics,
    ranking_metrics_from_top_k,
    top_k,
    training_curve_png,
    write_report,
)
from mm_pipeline.recommend import ranking
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.ranking import rank_splits, without_items


# ----------------------------------------------------------------------------------------- split
def _frame(rows):
    return pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"]).astype("int64")


def test_split_counts_and_order():
    rows = [(0, i, 100 - i) for i in range(10)]  # user 0: 10 interactions, reverse time
    rows += [(1, i, i) for i in range(3)]  # user 1: 3 -> 1 / 1 / 1
    rows += [(2, 0, 5), (2, 1, 6)]  # user 2: 2 -> all train
    rows += [(3, i, i) for i in range(25)]  # user 3: 0.1 * 25 = 2.5 -> 3 (half up)
    df = _frame(rows)
    df.index = pd.Index(np.arange(len(df)) * 7 + 3)  # a non-default index must be respected
    split = chronological_split(df, valid_frac=0.1, test_frac=0.1)

    assert split.index.equals(df.index) and split.name == "split"
    counts = pd.crosstab(df["user_idx"], split)
    assert counts.loc[0].to_dict() == {"test": 1, "train": 8, "valid": 1}
    assert counts.loc[1].to_dict() == {"test": 1, "train": 1, "valid": 1}
    assert counts.loc[2].to_dict() == {"test": 0, "train": 2, "valid": 0}
    assert counts.loc[3].to_dict() == {"test": 3, "train": 19, "valid": 3}
    # user 0's timestamps run backwards: its *first* rows are the latest ones
    u0 = split[df["user_idx"] == 0].tolist()
    assert u0[0] == "test" and u0[1] == "valid" and set(u0[2:]) == {"train"}
    assert split[df["user_idx"] == 3].tolist() == ["train"] * 19 + ["valid"] * 3 + ["test"] * 3


def test_split_ties_break_by_item_and_ignore_row_order():
    # all four interactions at the same time: order is by item_idx, so item 9 is the test item
    df = _frame([(0, 9, 1), (0, 2, 1), (0, 5, 1), (0, 7, 1)])
    split = chronological_split(df, valid_frac=0.25, test_frac=0.25)
    assert dict(zip(df["item_idx"], split)) == {2: "train", 5: "train", 7: "valid", 9: "test"}
    shuffled = df.sample(frac=1.0, random_state=3)
    again = chronological_split(shuffled, valid_frac=0.25, test_frac=0.25)
    assert dict(zip(shuffled["item_idx"], again)) == dict(zip(df["item_idx"], split))


def test_split_min_train_and_zero_fraction():
    df = _frame([(0, i, i) for i in range(3)])
    assert chronological_split(df, min_train=2).tolist() == ["train", "train", "test"]
    assert chronological_split(df, valid_frac=0.0, test_frac=0.1).tolist() == ["train", "train", "test"]
    assert chronological_split(df, min_train=3).tolist() == ["train"] * 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"valid_frac": -0.1}, "valid_frac"),
        ({"test_frac": 1.0}, "test_frac"),
        ({"valid_frac": 0.5, "test_frac": 0.5}, "valid_frac \\+ test_frac"),
        ({"min_train": 0}, "min_train"),
    ],
)
def test_split_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        chronological_split(_frame([(0, 0, 0)]), **kwargs)
    with pytest.raises(ValueError, match="timestamp"):
        chronological_split(pd.DataFrame({"user_idx": [0], "item_idx": [0]}))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 6), st.integers(0, 5)), max_size=60),
    st.sampled_from([0.1, 0.2, 0.3]),
    st.sampled_from([0.1, 0.25]),
    st.integers(1, 3),
)
def test_split_properties(rows, valid_frac, test_frac, min_train):
    df = _frame(rows)
    split = chronological_split(df, valid_frac=valid_frac, test_frac=test_frac, min_train=min_train)
    assert len(split) == len(df) and set(split) <= {"train", "valid", "test"}
    for _, group in df.assign(split=split).groupby("user_idx"):
        n = len(group)
        labels = group.sort_values(["timestamp", "item_idx"], kind="mergesort")["split"].tolist()
        order = {"train": 0, "valid": 1, "test": 2}
        assert [order[x] for x in labels] == sorted(order[x] for x in labels)  # time-ordered
        if n < 3:
            assert set(labels) == {"train"}
        else:
            assert labels.count("train") >= min(min_train, n)
            if n - min_train >= 1:
                assert labels.count("test") >= 1


def _split_df():
    return pd.DataFrame(
        {
            "user_idx": [0, 0, 0, 1, 1, 2, 2],
            "item_idx": [0, 0, 2, 1, 3, 4, 0],
            "timestamp": np.arange(7),
            "weight": np.ones(7, dtype=np.float32),
            "split": ["train", "train", "test", "train", "valid", "test", "train"],
        }
    )


def test_interaction_matrix_and_cold_items():
    df = _split_df()
    train = interaction_matrix(df, n_users=4, n_items=6)
    assert isinstance(train, sp.csr_matrix) and train.dtype == np.float32 and train.shape == (4, 6)
    expected = np.zeros((4, 6), dtype=np.float32)
    expected[0, 0] = expected[1, 1] = expected[2, 0] = 1.0  # the duplicate (0, 0) counts once
    np.testing.assert_array_equal(train.toarray(), expected)
    held_out = interaction_matrix(df, 4, 6, splits=("valid", "test")).toarray()
    assert sorted(zip(*np.nonzero(held_out))) == [(0, 2), (1, 3), (2, 4)]
    np.testing.assert_array_equal(cold_items(df, 6), [False, False, True, True, True, True])
    with pytest.raises(ValueError, match="item_idx"):
        interaction_matrix(df, 4, 3)
    with pytest.raises(ValueError, match="splits"):
        interaction_matrix(df, 4, 6, splits=("training",))


# ---------------------------------------------------------------------------------------- ranking
SCORES = np.array(
    [[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.5, 0.5, 0.5, 0.9, 0.1, 0.5]], dtype=np.float32
)  # user 2: four-way tie


class _FixedScores(EmbeddingRecommender):
    """score(users) = scores[users], exactly (a one-hot product would turn 0 * -inf into NaN)."""

    def score(self, users):
        return self.info["scores"][users]


def _model(scores=SCORES, name="toy"):
    scores = torch.as_tensor(scores, dtype=torch.float32)
    return _FixedScores(name, torch.eye(scores.shape[0]), scores.T.contiguous(), info={"scores": scores})


def _csr(pairs, shape=(3, 6)):
    rows, cols = zip(*pairs)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=shape)


TRAIN = _csr([(0, 0), (1, 5), (2, 3)])
TRUTH = _csr([(0, 2), (0, 5), (1, 4), (2, 5), (2, 3)])  # (2, 3) is also in train: unreachable
POP = np.asarray(TRAIN.sum(axis=0)).ravel()  # [1, 0, 0, 1, 0, 1]


def test_top_k_excludes_seen_and_breaks_ties_by_index():
    top = top_k(_model(), np.arange(3), TRAIN, k=3)
    assert top.dtype == torch.long
    assert top.tolist() == [[1, 2, 3], [4, 3, 2], [0, 1, 2]]
    assert top_k(_model(), np.array([2, 0]), None, k=2).tolist() == [[3, 0], [0, 1]]


def test_top_k_pads_with_minus_one_when_candidates_run_out():
    candidates = np.array([True, True, True, True, True, False])
    top = top_k(_model(), np.arange(3), TRAIN, k=6, candidates=candidates)
    assert top.tolist() == [[1, 2, 3, 4, PAD, PAD], [4, 3, 2, 1, 0, PAD], [0, 1, 2, 4, PAD, PAD]]
    # k beyond the catalogue is padded too
    assert top_k(_model(), np.array([1]), None, k=8).tolist() == [[5, 4, 3, 2, 1, 0, PAD, PAD]]


@pytest.mark.parametrize("kind", ["ties", "continuous", "few_eligible"])
def test_top_k_matches_a_lexicographic_reference(kind):
    rng = np.random.default_rng(0)
    if kind == "continuous":  # float topk picks the exact set; only the order is re-keyed
        scores = rng.normal(size=(37, 50)).astype(np.float32)
    else:  # cuts inside ties: the exact whole-row path
        scores = rng.integers(-3, 4, size=(37, 50)).astype(np.float32)
        scores[5, :] = 0.0
        scores[5, ::2] = -0.0  # -0.0 must tie with +0.0
        scores[6, 10:] = -np.inf  # a model may score -inf: still eligible, ranked last
    density = 0.95 if kind == "few_eligible" else 0.2
    exclude = sp.random(37, 50, density=density, random_state=1, format="csr", dtype=np.float32)
    model = _model(scores)
    seen = exclude.toarray() != 0
    expected = np.full((37, 7), PAD)
    for u in range(37):  # reference: sort each user's eligible items by (-score, index)
        items = np.flatnonzero(~seen[u])
        order = items[np.lexsort((items, -scores[u, items].astype(np.float64)))][:7]
        expected[u, : len(order)] = order
    got = top_k(model, np.arange(37), exclude, k=7, chunk_size=5)
    np.testing.assert_array_equal(got.numpy(), expected)
    np.testing.assert_array_equal(top_k(model, np.arange(37), exclude, k=7, chunk_size=1).numpy(), expected)
    if kind == "few_eligible":
        assert (expected == PAD).any()


def _random_scores_model(rng: np.random.Generator, kind: str, shape: tuple[int, int]) -> EmbeddingRecommender:
    """A model scoring random values: ``continuous``, or small integers (cuts inside ties)."""
    scores = rng.normal(size=shape) if kind == "continuous" else rng.integers(-2, 3, size=shape)
    return _model(scores.astype(np.float32))


@pytest.mark.parametrize("kind", ["ties", "continuous"])
def test_one_pass_for_all_items_and_among_candidates_matches_two_rankings(kind, monkeypatch):
    """The evaluation's full and cold-start lists from one scoring pass are exactly two top_k calls."""
    rng = np.random.default_rng(4)
    model = _random_scores_model(rng, kind, (45, 70))
    exclude = sp.random(45, 70, density=0.3, random_state=3, format="csr", dtype=np.float32)
    candidates = rng.random(70) < 0.2
    users = np.sort(rng.choice(45, size=40, replace=False))
    among = np.sort(rng.choice(users, size=17, replace=False))
    monkeypatch.setattr(ranking, "chunk_users", lambda n_items, chunk_size=None: 6)  # several chunks
    calls = []
    score = model.score
    monkeypatch.setattr(model, "score", lambda rows: calls.append(len(rows)) or score(rows))
    top, picked = ranking.top_k_and_among_candidates(model, users, exclude, 9, candidates, among)
    assert sum(calls) == len(users)  # every user scored once
    np.testing.assert_array_equal(top.numpy(), top_k(model, users, exclude, 9).numpy())
    np.testing.assert_array_equal(picked.numpy(), top_k(model, among, exclude, 9, candidates=candidates).numpy())
    with pytest.raises(ValueError, match="subset of users"):
        ranking.top_k_and_among_candidates(model, users[1:], exclude, 9, candidates, users[:1])


@pytest.mark.parametrize("kind", ["ties", "continuous"])
def test_one_pass_for_validation_and_test_matches_two_rankings(kind, monkeypatch):
    """Validation and test lists from one scoring pass are exactly two top_k calls (ties by index)."""
    rng = np.random.default_rng(3)
    model = _random_scores_model(rng, kind, (41, 60))
    cells = sp.random(41, 60, density=0.3, random_state=2, format="csr", dtype=np.float32)
    parts = [sp.csr_matrix(cells.multiply(sp.csr_matrix(rng.random((41, 60)) < p))) for p in (0.5, 0.7)]
    train = parts[0]
    valid = sp.csr_matrix((cells - train).multiply(parts[1]))
    test = sp.csr_matrix(cells - train - valid)
    # user 7 has test items only, user 8 validation items only
    valid = sp.csr_matrix(sp.diags((np.arange(41) != 7).astype(np.float32)) @ (valid != 0).astype(np.float32))
    test = sp.csr_matrix(sp.diags((np.arange(41) != 8).astype(np.float32)) @ (test != 0).astype(np.float32))
    valid.eliminate_zeros(), test.eliminate_zeros()
    data = SplitData(41, 60, train, valid, test, adj=torch.zeros(0))
    ranked = rank_splits(model, data, 9)
    users, valid_top, test_top = ranked.users, ranked.valid_top, ranked.test_top
    assert 7 in users and 8 in users
    np.testing.assert_array_equal(valid_top.numpy(), top_k(model, users, train, 9).numpy())
    np.testing.assert_array_equal(test_top.numpy(), top_k(model, users, (train + valid).tocsr(), 9).numpy())
    monkeypatch.setattr(ranking, "MAX_EXTRA_SLOTS", 0)  # the two-pass fallback gives the same lists
    again = rank_splits(model, data, 9)
    assert torch.equal(again.valid_top, valid_top) and torch.equal(again.test_top, test_top)
    # fewer kept entries than slots: padded
    lists = torch.tensor([[3, 1, 2, PAD]])
    dropped = without_items(lists, np.array([0]), sp.csr_matrix(([1.0, 1.0], ([0, 0], [1, 3])), shape=(1, 5)), 3)
    assert dropped.tolist() == [[2, PAD, PAD]]


@pytest.mark.parametrize("max_extra", [256, 0])  # one pass; two passes (the fallback)
def test_rank_splits_gives_the_lists_of_separate_rankings_with_candidate_lists(max_extra, monkeypatch):
    """Validation, test and candidate-only test lists of one model are those of three top_k calls."""
    rng = np.random.default_rng(5)
    data = _tiny_split(seed=2, n_items=60, n_cold=12)
    model = _random_scores_model(rng, "ties", (data.n_users, data.n_items))
    monkeypatch.setattr(ranking, "chunk_users", lambda n_items, chunk_size=None: 7)  # several chunks
    monkeypatch.setattr(ranking, "MAX_EXTRA_SLOTS", max_extra)
    cold = ~data.warm_items
    test_users = np.flatnonzero(data.test.getnnz(axis=1) > 0)
    among = np.sort(rng.choice(test_users, size=9, replace=False))
    calls = []
    score = model.score
    monkeypatch.setattr(model, "score", lambda rows: calls.append(len(rows)) or score(rows))
    ranked = ranking.rank_splits(model, data, 8, candidates=cold, among=among)
    held_out = (data.valid.getnnz(axis=1) > 0) | (data.test.getnnz(axis=1) > 0)
    assert sum(calls) == held_out.sum() * (1 if max_extra else 2)
    test_exclude = (data.train + data.valid).tocsr()
    np.testing.assert_array_equal(ranked.valid_top.numpy(), top_k(model, ranked.users, data.train, 8).numpy())
    np.testing.assert_array_equal(ranked.test_top.numpy(), top_k(model, ranked.users, test_exclude, 8).numpy())
    expected = top_k(model, among, test_exclude, 8, candidates=cold).numpy()
    np.testing.assert_array_equal(ranked.among_lists(among).numpy(), expected)
    np.testing.assert_array_equal(ranked.among_lists(among[::-1]).numpy(), expected[::-1])
    np.testing.assert_array_equal(
        ranked.test_lists(test_users).numpy(), top_k(model, test_users, test_exclude, 8).numpy()
    )
    assert ranked.validation_metrics(data.valid) == pytest.approx(ranking.validator(data, (8,))(model), abs=1e-12)
    with pytest.raises(ValueError, match="no candidate list"):
        ranked.among_lists(np.setdiff1d(test_users, among)[:1])
    # Stored as int32 arrays (the model_rankings asset) and read back: the same lists.
    again = ranking.unpack_rankings(ranking.pack_rankings({"m": ranked, "n": ranked}))
    for part in ("users", "valid_top", "test_top", "among", "among_top"):
        assert np.array_equal(np.asarray(getattr(again["n"], part)), np.asarray(getattr(ranked, part))), part
    other = ranking.rank_splits(model, data, 8)  # no candidate lists: other users in `among`
    with pytest.raises(ValueError, match="other users"):
        ranking.pack_rankings({"m": ranked, "other": other})
    with pytest.raises(ValueError, match="among needs candidates"):
        ranking.rank_splits(model, data, 8, among=among)


def test_reports_and_selection_from_rankings_equal_those_from_the_models():
    """Given each model's rank_for_evaluation, the report's metrics and the validation table are the same
    numbers, and no model is built."""
    from mm_pipeline.evaluate.protocol import ModelsOnDemand, rank_for_evaluation
    from mm_pipeline.evaluate.report import build_comparison
    from mm_pipeline.recommend.selection import compare_on_validation

    data = _tiny_split(seed=1, n_items=70, n_cold=25)
    models, options = _comparison_inputs(data)
    rankings = {name: rank_for_evaluation(model, data, 20) for name, model in models.items() if "[" not in name}
    built = []
    lazy = ModelsOnDemand({n: (lambda n=n: built.append(n) or models[n]) for n in models})
    direct = build_comparison(models, data, **options)
    ranked = build_comparison(lazy, data, rankings=rankings, **options)
    assert built == ["mm_gcn[int8]"]  # only the model without rankings (a compressed variant) is built
    assert ranked.metrics == direct.metrics and ranked.metrics["cold_start"]
    built.clear()
    table = compare_on_validation(lazy, data, rankings=rankings)
    pd.testing.assert_frame_equal(table, compare_on_validation(models, data))
    assert built == ["mm_gcn[int8]"]
    with pytest.raises(ValueError, match="hold 20 items a list"):
        compare_on_validation(lazy, data, ks=(10,), rankings=rankings)


def test_models_on_demand_are_built_when_read_and_compared_like_a_dict():
    from mm_pipeline.evaluate.protocol import ModelsOnDemand

    built = []
    lazy = ModelsOnDemand({"toy": lambda: built.append("toy") or _model(name="toy")})
    assert "toy" in lazy and "other" not in lazy and list(lazy) == ["toy"] and not built
    assert lazy["toy"] is not lazy["toy"] and built == ["toy", "toy"]  # built on every read, never kept


def test_top_k_leaves_the_model_untouched():
    class _ViewScores(_FixedScores):
        def score(self, users):  # a view of a cached matrix (valid for users == arange)
            return self.info["scores"][: len(users)]

    scores = torch.as_tensor(SCORES).clone()
    model = _ViewScores("view", torch.eye(3), scores.T.contiguous(), info={"scores": scores})
    assert top_k(model, np.arange(3), TRAIN, k=3).tolist() == [[1, 2, 3], [4, 3, 2], [0, 1, 2]]
    assert torch.equal(scores, torch.as_tensor(SCORES))  # exclusion did not write -inf into it
    plain = EmbeddingRecommender("mf", torch.eye(3), torch.as_tensor(SCORES).T.contiguous())
    before = plain.item_embeddings.clone()
    top_k(plain, np.arange(3), TRAIN, k=2, candidates=np.array([True] * 5 + [False]))
    assert torch.equal(plain.item_embeddings, before)


def test_top_k_rejects_bad_arguments():
    with pytest.raises(ValueError, match="exclude"):
        top_k(_model(), np.arange(3), sp.csr_matrix((3, 5)), k=2)
    with pytest.raises(ValueError, match="candidates"):
        top_k(_model(), np.arange(3), None, k=2, candidates=np.ones(6))
    with pytest.raises(ValueError, match="users"):
        top_k(_model(), np.array([3]), None, k=2)
    with pytest.raises(ValueError, match="^k must"):
        top_k(_model(), np.arange(3), None, k=0)
    with pytest.raises(ValueError, match="NaN"):
        top_k(_model(np.full((3, 6), np.nan)), np.arange(3), None, k=2)


# ---------------------------------------------------------------------------------------- metrics
def test_ranking_metrics_hand_computed():
    # top-3: u0 [1, 2, 3] vs {2, 5}; u1 [4, 3, 2] vs {4}; u2 [0, 1, 2] vs {5, 3}
    m = ranking_metrics(_model(), TRUTH, TRAIN, ks=(1, 3), item_popularity=POP, n_train_users=3)
    assert m["n_users_evaluated"] == 3
    inv = 1.0 / math.log2(3.0)
    expected = {
        "recall@3": (0.5 + 1.0 + 0.0) / 3,
        "precision@3": (1 / 3 + 1 / 3) / 3,
        "f1@3": (0.4 + 0.5) / 3,
        "ndcg@3": (inv / (1 + inv) + 1.0) / 3,
        "map@3": ((0.5 / 2) + 1.0) / 3,
        "hit_ratio@3": 2 / 3,
        "coverage@3": 5 / 6,
        # self-information: pop 0 -> -log2(1/4) = 2 bits, pop 1 -> -log2(2/4) = 1 bit; 15 bits / 9 slots
        "novelty@3": 15 / 9,
        "recall@1": 1 / 3,
        "precision@1": 1 / 3,
        "f1@1": 1 / 3,
        "ndcg@1": 1 / 3,
        "map@1": 1 / 3,
        "hit_ratio@1": 1 / 3,
        "coverage@1": 3 / 6,
        "novelty@1": (2 + 2 + 1) / 3,
        # overlaps of the top-3 lists: u0-u1 {2, 3}, u0-u2 {1, 2}, u1-u2 {2}: mean 5/3 of 3 slots
        "personalization@3": 1 - (5 / 3) / 3,
        "personalization@1": 1.0,  # top-1: [1], [4], [0]
    }
    assert set(m) == set(expected) | {"n_users_evaluated"}
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-6), key


def test_ranking_metrics_padding_is_never_a_hit_nor_covered():
    # Item 5 is no candidate, so every list ends in -1 padding. Fed raw, PyG would turn user 1's
    # -1 into user 0's item 5 (a truth item) and mark item 5 as covered.
    candidates = np.array([True, True, True, True, True, False])
    m = ranking_metrics(_model(), TRUTH, TRAIN, ks=(6,), item_popularity=POP, n_train_users=3, candidates=candidates)
    assert m["recall@6"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m["precision@6"] == pytest.approx(2 / 18)
    assert m["hit_ratio@6"] == pytest.approx(2 / 3)
    assert m["coverage@6"] == pytest.approx(5 / 6)
    # lists [1,2,3,4], [4,3,2,1,0], [0,1,2,4]: 13 filled slots; items 0 and 3 (1 bit each) fill
    # 2 + 2 of them, items 1, 2, 4 (2 bits each) the other 9
    assert m["novelty@6"] == pytest.approx((4 * 1 + 9 * 2) / 13)


def test_users_without_truth_are_skipped():
    truth = _csr([(1, 4)])
    m = ranking_metrics(_model(), truth, TRAIN, ks=(1,), item_popularity=POP, n_train_users=3)
    assert m["n_users_evaluated"] == 1 and m["recall@1"] == 1.0 and m["precision@1"] == 1.0
    per_user = per_user_metrics(_model(), truth, TRAIN, ks=(1,))
    assert per_user["user_idx"].tolist() == [1] and per_user["recall@1"].tolist() == [1.0]


def _random_case(seed=0, n_users=60, n_items=45, d=8):
    rng = np.random.default_rng(seed)
    model = EmbeddingRecommender(
        "rand",
        torch.from_numpy(rng.normal(size=(n_users, d)).astype(np.float32)),
        torch.from_numpy(rng.normal(size=(n_items, d)).astype(np.float32)),
    )
    train = sp.random(n_users, n_items, density=0.15, random_state=seed, format="csr", dtype=np.float32)
    truth = sp.random(n_users, n_items, density=0.08, random_state=seed + 1, format="csr", dtype=np.float32)
    truth = truth - truth.multiply(train != 0)  # held-out items are unseen in train
    truth.eliminate_zeros()
    pop = np.asarray((train != 0).sum(axis=0)).ravel()
    return model, sp.csr_matrix(truth), train, pop


def test_per_user_metrics_match_pyg_per_user_and_ranking_metrics_on_average():
    model, truth, train, pop = _random_case()
    ks = (5, 10)
    per_user = per_user_metrics(model, truth, train, ks=ks, chunk_size=16)
    users = per_user["user_idx"]
    assert np.array_equal(users, np.flatnonzero(truth.getnnz(axis=1) > 0)) and len(users) > 20
    top = top_k(model, users, train, k=max(ks))
    for k in ks:
        for row, user in enumerate(users):  # PyG, one user at a time, as an independent oracle
            labels = torch.from_numpy(truth[user].indices.astype(np.int64))
            for metric_cls, key in ((LinkPredRecall, "recall"), (LinkPredNDCG, "ndcg")):
                metric = metric_cls(k)
                metric.update(top[row : row + 1], (torch.zeros_like(labels), labels))
                assert per_user[f"{key}@{k}"][row] == pytest.approx(float(metric.compute()), abs=1e-6)
    summary = ranking_metrics(model, truth, train, ks=ks, item_popularity=pop, n_train_users=60)
    assert summary["n_users_evaluated"] == len(users)
    for k in ks:
        assert per_user[f"recall@{k}"].mean() == pytest.approx(summary[f"recall@{k}"], abs=1e-6)
        assert per_user[f"ndcg@{k}"].mean() == pytest.approx(summary[f"ndcg@{k}"], abs=1e-6)


def test_metrics_do_not_depend_on_chunk_size_and_respect_masks():
    model, truth, train, pop = _random_case(seed=3)
    kwargs = dict(ks=(3, 10), item_popularity=pop, n_train_users=60)
    big = ranking_metrics(model, truth, train, chunk_size=4096, **kwargs)
    one = ranking_metrics(model, truth, train, chunk_size=1, **kwargs)
    assert big.keys() == one.keys()
    for key in big:
        assert one[key] == pytest.approx(big[key], rel=1e-6, abs=1e-9), key

    users = np.arange(60)
    candidates = np.zeros(45, dtype=bool)
    candidates[::3] = True
    top = top_k(model, users, train, k=10, candidates=candidates).numpy()
    filled = top != PAD
    assert candidates[top[filled]].all()  # only candidates recommended
    assert not train.toarray()[np.repeat(users, 10)[filled.ravel()], top[filled]].any()  # never seen
    n_eligible = (~(train.toarray() != 0) & candidates).sum(axis=1)
    np.testing.assert_array_equal(filled.sum(axis=1), np.minimum(n_eligible, 10))
    masked = ranking_metrics(model, truth, train, candidates=candidates, **kwargs)
    assert masked["coverage@10"] <= candidates.mean() + 1e-6  # PyG reports float32


def test_ranking_metrics_rejects_bad_popularity():
    with pytest.raises(ValueError, match="item_popularity"):
        ranking_metrics(_model(), TRUTH, TRAIN, item_popularity=np.ones(5), n_train_users=3)
    with pytest.raises(ValueError, match="item_popularity"):
        ranking_metrics(_model(), TRUTH, TRAIN, item_popularity=np.full(6, 4), n_train_users=3)
    with pytest.raises(ValueError, match="n_train_users"):
        ranking_metrics(_model(), TRUTH, TRAIN, item_popularity=POP, n_train_users=0)
    with pytest.raises(ValueError, match="truth"):
        ranking_metrics(_model(), TRUTH[:2], TRAIN, item_popularity=POP, n_train_users=3)


# ----------------------------------------------------------------------------------------- report
def test_metrics_table_markdown():
    table = metrics_table_markdown(
        {"pop": {"recall@20": 0.1, "ndcg@20": 0.05}, "gnn|v2": {"recall@20": 0.123456, "ndcg@20": 0.2}},
        columns=("recall@20", "ndcg@20", "novelty@20"),
        highlight="gnn|v2",
    )
    assert table.splitlines() == [
        "| model | recall@20 | ndcg@20 | novelty@20 |",
        "|---|---:|---:|---:|",
        "| pop | 0.1000 | 0.0500 | n/a |",
        r"| **gnn\|v2** | **0.1235** | **0.2000** | **n/a** |",
    ]
    with pytest.raises(ValueError, match="highlight"):
        metrics_table_markdown({"pop": {}}, highlight="gnn")


def test_training_curve_png_and_markdown():
    history = pd.DataFrame({"epoch": [1, 2, 3], "loss": [1.0, 0.6, 0.4], "recall@20": [0.1, 0.2, 0.25]})
    png = training_curve_png(history, ["loss", "recall@20"], "training")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    assert training_curve_png(history, ["loss", "recall@20"], "training") == png  # deterministic
    md = png_markdown(png, "loss curve")
    assert md.startswith("![loss curve](data:image/png;base64,") and md.endswith(")")
    assert base64.b64decode(md[md.index(",") + 1 : -1]) == png
    with pytest.raises(ValueError, match="auc"):
        training_curve_png(history, ["auc"], "training")


def test_write_report(tmp_path):
    png = training_curve_png(pd.DataFrame({"loss": [1.0, 0.5]}), ["loss"], "t")
    paths = write_report(tmp_path / "report", {"b": np.float32(0.5), "a": 1}, "# Report\n", {"loss": png})
    assert set(paths) == {"metrics.json", "report.md", "loss.png"}
    text = paths["metrics.json"].read_text()
    assert text == json.dumps({"a": 1, "b": 0.5}, indent=2) + "\n"  # sorted keys, indent 2
    assert paths["report.md"].read_text() == "# Report\n"
    assert paths["loss.png"].read_bytes() == png
    written = sorted(p.name for p in (tmp_path / "report").iterdir())
    assert written == ["loss.png", "metrics.json", "report.md"]  # no temporary files left behind
    with pytest.raises(ValueError, match="figure name"):
        write_report(tmp_path, {}, "", {"../x": png})


def test_bootstrap_interval_and_paired_test():
    from mm_pipeline.evaluate.bootstrap import bootstrap_ci, paired_bootstrap

    rng = np.random.default_rng(0)
    a = rng.random(400)
    lo, hi = bootstrap_ci(a, seed=1)
    assert lo < a.mean() < hi and hi - lo < 0.1
    assert bootstrap_ci(a, seed=1) == (lo, hi)  # deterministic with a seed
    better = paired_bootstrap(a + 0.05, a, seed=1)
    assert better["significant"] and better["ci"][0] > 0 and abs(better["difference"] - 0.05) < 1e-12
    noise = paired_bootstrap(a, rng.permutation(a), seed=1)
    assert noise["ci"][0] < 0 < noise["ci"][1] and not noise["significant"]
    with pytest.raises(ValueError):
        paired_bootstrap(a, a[:-1])


def test_bootstrap_intervals_share_resamples_across_rows():
    from mm_pipeline.evaluate.bootstrap import (
        bootstrap_ci,
        bootstrap_intervals,
        paired_bootstrap,
        paired_bootstraps,
    )

    rng = np.random.default_rng(2)
    rows = rng.random((3, 250))
    intervals = bootstrap_intervals(rows, n_resamples=300, seed=4)
    for r in range(3):  # one resampling for all rows = each row alone with the same seed
        np.testing.assert_allclose(intervals[r], bootstrap_ci(rows[r], 300, seed=4), atol=1e-12)
    tests = paired_bootstraps(rows, rows[1], n_resamples=300, seed=4)
    assert tests[1] == {"difference": 0.0, "ci": [0.0, 0.0], "p_value": 1.0, "significant": False}
    single = paired_bootstrap(rows[2], rows[1], 300, seed=4)
    assert tests[2]["ci"] == pytest.approx(single["ci"], abs=1e-12)
    assert tests[2]["p_value"] == single["p_value"]
    with pytest.raises(ValueError, match="reference"):
        paired_bootstraps(rows, rows[0, :-1])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_intervals(np.array([[0.1, np.nan]]))


# ------------------------------------------------------------------- personalization and diversity
def _lists_case(seed=0, n_users=25, n_items=30, k=6):
    model, truth, train, pop = _random_case(seed, n_users=n_users, n_items=n_items)
    users = np.flatnonzero(truth.getnnz(axis=1) > 0)
    return model, truth, train, pop, users, top_k(model, users, train, k=k)


def test_personalization_matches_pyg_pairwise():
    from torch_geometric.metrics import LinkPredPersonalization

    model, truth, train, pop, users, top = _lists_case()
    assert (top != PAD).all()  # PyG has no notion of padding
    ours = ranking_metrics_from_top_k(
        top, users, truth, ks=(3, 6), item_popularity=pop, n_train_users=model.n_users, chunk_size=7
    )
    for k in (3, 6):
        pyg = LinkPredPersonalization(k, max_src_nodes=None, batch_size=50)  # all pairs, small batches
        pyg.update(top, (torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)))
        assert ours[f"personalization@{k}"] == pytest.approx(float(pyg.compute()), abs=1e-6), k
    same = ranking_metrics_from_top_k(
        top[:1].repeat(len(users), 1), users, truth, ks=(6,), item_popularity=pop, n_train_users=model.n_users
    )
    assert same["personalization@6"] == pytest.approx(0.0)  # everyone gets the same list


def test_personalization_ignores_padding():
    # Lists [0, 1, -1], [1, 2, -1], [3, -1, -1]: overlaps 1, 0, 0 over 3 pairs of 3 slots.
    top = torch.tensor([[0, 1, PAD], [1, 2, PAD], [3, PAD, PAD]])
    truth = _csr([(0, 5), (1, 5), (2, 5)])
    m = ranking_metrics_from_top_k(top, np.arange(3), truth, ks=(3,), item_popularity=POP, n_train_users=3)
    assert m["personalization@3"] == pytest.approx(1 - (1 / 3) / 3)


def _brute_force_diversity(top, features, k):
    per_user = []
    for row in top[:, :k].tolist():
        items = [i for i in row if i != PAD]
        if len(items) < 2:
            continue
        distances = []
        for a in items:
            for b in items:
                if a != b:
                    fa, fb = features[a], features[b]
                    na, nb = np.linalg.norm(fa), np.linalg.norm(fb)
                    cosine = fa @ fb / (na * nb) if na > 0 and nb > 0 else 0.0
                    distances.append(1.0 - cosine)
        per_user.append(np.mean(distances))
    return float(np.mean(per_user))


def test_intra_list_diversity_matches_brute_force():
    rng = np.random.default_rng(5)
    model, truth, train, pop, users, top = _lists_case(seed=5, k=8)
    features = rng.normal(size=(30, 4))
    features[top[0, 0]] = 0.0  # a zero feature row: cosine 0 with everything
    top = top.clone()
    top[1, 1:] = PAD  # one item only: no pair, the user is left out
    top[2, 5:] = PAD
    m = ranking_metrics_from_top_k(
        top,
        users,
        truth,
        ks=(2, 5, 8),
        item_popularity=pop,
        n_train_users=model.n_users,
        item_features=features,
        chunk_size=4,
    )
    for k in (2, 5, 8):
        assert m[f"intra_list_diversity@{k}"] == pytest.approx(_brute_force_diversity(top, features, k), abs=1e-9)
    scaled = ranking_metrics_from_top_k(
        top, users, truth, ks=(8,), item_popularity=pop, n_train_users=model.n_users, item_features=features * 7.5
    )
    assert scaled["intra_list_diversity@8"] == pytest.approx(m["intra_list_diversity@8"], abs=1e-9)  # cosine
    plain = ranking_metrics_from_top_k(top, users, truth, ks=(8,), item_popularity=pop, n_train_users=model.n_users)
    assert "intra_list_diversity@8" not in plain and "tail_share@8" not in plain
    with pytest.raises(ValueError, match="item_features"):
        ranking_metrics_from_top_k(
            top, users, truth, ks=(8,), item_popularity=pop, n_train_users=model.n_users, item_features=features[:-1]
        )


def test_intra_list_diversity_with_one_hot_categories_is_pyg_diversity():
    from torch_geometric.metrics import LinkPredDiversity

    model, truth, train, pop, users, top = _lists_case(seed=6)
    category = torch.from_numpy(np.random.default_rng(6).integers(0, 4, size=30))
    one_hot = np.eye(4)[category.numpy()]
    m = ranking_metrics(
        model, truth, train, ks=(4, 6), item_popularity=pop, n_train_users=model.n_users, item_features=one_hot
    )
    for k in (4, 6):
        pyg = LinkPredDiversity(k, category)
        pyg.update(top, (torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)))
        assert m[f"intra_list_diversity@{k}"] == pytest.approx(float(pyg.compute()), abs=1e-6), k


def test_from_top_k_matches_model_path_and_rejects_inconsistent_lists():
    model, truth, train, pop, users, top = _lists_case(seed=7)
    direct = ranking_metrics(model, truth, train, ks=(3, 6), item_popularity=pop, n_train_users=model.n_users)
    shuffled = np.random.default_rng(0).permutation(len(users))  # row order is free
    lists = ranking_metrics_from_top_k(
        top[torch.from_numpy(shuffled)],
        users[shuffled],
        truth,
        ks=(3, 6),
        item_popularity=pop,
        n_train_users=model.n_users,
    )
    assert lists == pytest.approx(direct, abs=1e-6)
    kwargs = dict(ks=(6,), item_popularity=pop, n_train_users=model.n_users)
    with pytest.raises(ValueError, match="not in users"):
        ranking_metrics_from_top_k(top[1:], users[1:], truth, **kwargs)
    with pytest.raises(ValueError, match="duplicates"):
        ranking_metrics_from_top_k(top[[0, 0]], users[[0, 0]], truth, **kwargs)
    with pytest.raises(ValueError, match="twice"):
        ranking_metrics_from_top_k(top[:, [0, 0, 1, 2, 3, 4]], users, truth, **kwargs)
    with pytest.raises(ValueError, match="max\\(ks\\)"):
        ranking_metrics_from_top_k(top[:, :4], users, truth, **kwargs)


# ------------------------------------------------------------------------------------- long tail
def test_popularity_groups_head_holds_the_share_of_training_interactions():
    from mm_pipeline.evaluate.protocol import popularity_groups

    # item popularity: 0 -> 5, 1 -> 3, 2 -> 3, 3 -> 1, 4 -> 0 (cold), 5 -> 8; total 20
    counts = [5, 3, 3, 1, 0, 8]
    pairs = [(u, i) for i, c in enumerate(counts) for u in range(c)]
    train = _csr(pairs, shape=(8, 6))
    head, tail = popularity_groups(train, head_share=0.2)  # 8 >= 4: item 5 alone
    assert np.flatnonzero(head).tolist() == [5] and np.flatnonzero(tail).tolist() == [0, 1, 2, 3]
    head, tail = popularity_groups(train, head_share=0.65)  # 8 + 5 = 13 >= 13
    assert np.flatnonzero(head).tolist() == [0, 5] and np.flatnonzero(tail).tolist() == [1, 2, 3]
    head, tail = popularity_groups(train, head_share=0.7)  # 13 < 14 -> + item 1 (tie with 2: lower index)
    assert np.flatnonzero(head).tolist() == [0, 1, 5] and np.flatnonzero(tail).tolist() == [2, 3]
    assert not (head | tail)[4]  # cold items are in neither group
    with pytest.raises(ValueError, match="head_share"):
        popularity_groups(train, head_share=1.0)


def _tiny_split(seed=0, n_users=60, n_items=45, n_cold=5):
    from mm_pipeline.recommend.fit import SplitData

    rng = np.random.default_rng(seed)
    rows = []
    n_warm = n_items - n_cold
    weights = 1.0 / np.arange(1, n_warm + 1) ** 0.8  # popularity skew over the warm items
    for user in range(n_users):
        items = rng.choice(n_warm, size=10, replace=False, p=weights / weights.sum())
        rows += [(user, int(item), t) for t, item in enumerate(items)]
    frame = _frame(rows)
    frame["split"] = chronological_split(frame)
    test_rows = frame.index[frame["split"] == "test"][::3]
    frame.loc[test_rows, "item_idx"] = rng.integers(n_warm, n_items, size=len(test_rows))  # cold items
    frame = frame.drop_duplicates(["user_idx", "item_idx"])
    return SplitData.from_frame(frame, n_users, n_items)


def _oracle(data, name="oracle"):
    """Scores each user's test items 1 and everything else 0: the best possible ranking."""
    return EmbeddingRecommender(name, torch.from_numpy(data.test.toarray()), torch.eye(data.n_items))


def test_long_tail_results_use_the_full_ranking_restricted_to_tail_truth():
    from mm_pipeline.evaluate.protocol import evaluate_models, popularity_groups

    data = _tiny_split()
    model, *_ = _random_case(seed=8, n_users=60, n_items=45)
    out = evaluate_models({"rand": model}, data, ks=(5, 10), n_resamples=50, min_subgroup=(1, 1))
    head, tail = popularity_groups(data.train)
    tail_truth = sp.csr_matrix(data.test.multiply(tail[None, :]))
    tail_truth.eliminate_zeros()
    assert tail_truth.nnz > 0 and head.sum() < tail.sum()
    exclude = data.train + data.valid
    pop = np.asarray(data.train.sum(axis=0)).ravel()
    # Independently: rank all items (no candidate restriction), score only tail truth.
    expected = ranking_metrics(
        model, tail_truth, exclude, ks=(5, 10), item_popularity=pop, n_train_users=60, tail_items=tail
    )
    assert out["long_tail"]["rand"] == pytest.approx(expected, abs=1e-9)
    assert out["popularity_groups"] == {
        "head_share": 0.2,
        "head_items": int(head.sum()),
        "tail_items": int(tail.sum()),
        "cold_items": 5,
        "tail_test_interactions": int(tail_truth.nnz),
    }
    # tail_share on the main lists, by hand
    users = np.flatnonzero(data.test.getnnz(axis=1) > 0)
    top = top_k(model, users, exclude, k=10).numpy()
    assert out["models"]["rand"]["tail_share@10"] == pytest.approx(tail[top].mean())
    # An oracle's lists are its test items: every long-tail test item is found.
    oracle = evaluate_models({"oracle": _oracle(data)}, data, ks=(10,), n_resamples=50, min_subgroup=(1, 1))
    assert oracle["long_tail"]["oracle"]["recall@10"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------ comparison report
def _comparison(data, ablations=("mm_gcn_no_text",), aligned=True, min_subgroup=(1, 1)):
    from mm_pipeline.evaluate.report import build_comparison

    models, options = _comparison_inputs(data, ablations, aligned, min_subgroup)
    return build_comparison(models, data, **options)


def _comparison_inputs(data, ablations=("mm_gcn_no_text",), aligned=True, min_subgroup=(1, 1)):
    pop = np.asarray(data.train.sum(axis=0)).ravel().astype(np.float32)
    rand, *_ = _random_case(seed=9, n_users=data.n_users, n_items=data.n_items)
    popularity = EmbeddingRecommender("popularity", torch.ones(data.n_users, 1), torch.from_numpy(pop)[:, None])
    models = {
        "popularity": popularity,
        "rand": rand,
        "mm_gcn": _oracle(data, "mm_gcn"),
        "mm_gcn[int8]": _oracle(data, "mm_gcn[int8]"),
    }
    if ablations:
        models["mm_gcn_no_text"] = EmbeddingRecommender("mm_gcn_no_text", rand.user_embeddings, rand.item_embeddings)
    rng = np.random.default_rng(0)
    present = rng.random((data.n_items, 2)) > 0.1
    weights = rng.random((data.n_items, 2)) * present
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
    history = pd.DataFrame({"epoch": [1, 2, 3], "loss": [0.7, 0.5, 0.45], "valid_ndcg@20": [0.1, np.nan, 0.2]})
    return models, dict(
        primary="mm_gcn",
        baselines=["popularity", "rand"],
        ablations=list(ablations),
        histories={"mm_gcn": history},
        compression=pd.DataFrame({"variant": ["fp32", "int8"], "size_mb": [1.0, 0.3]}),
        aligned={
            "fused": rng.normal(size=(data.n_items, 8)),
            "weights": weights,
            "present": present,
            "modalities": ["text", "image"],
        }
        if aligned
        else None,
        dataset={"spec": "builtin:test"},
        n_resamples=200,
        min_subgroup=min_subgroup,
    )


def test_build_comparison_metrics_keys_and_significance():
    data = _tiny_split(seed=1, n_items=70, n_cold=25)
    comparison = _comparison(data)
    metrics = comparison.metrics
    assert metrics["primary_model"] == "mm_gcn" and metrics["baselines"] == ["popularity", "rand"]
    assert metrics["ablations"] == ["mm_gcn_no_text"] and metrics["variants"] == ["mm_gcn[int8]"]
    assert list(metrics["models"]) == ["popularity", "rand", "mm_gcn", "mm_gcn_no_text", "mm_gcn[int8]"]
    for name, values in metrics["models"].items():
        for key in ("recall@20_ci", "ndcg@20_ci"):
            lo, hi = values[key]
            assert lo <= values[key[:-3]] + 1e-9 and values[key[:-3]] <= hi + 1e-9, (name, key)
        assert {
            "personalization@10",
            "intra_list_diversity@20",
            "tail_share@20",
            "map@10",
            "hit_ratio@20",
            "f1@20",
        } <= set(values)
        assert set(values["significant_vs_best_baseline"]) == {"recall@20", "ndcg@20"}
    best = metrics["significance"]["best_baseline"]
    assert best == max(["popularity", "rand"], key=lambda b: metrics["models"][b]["recall@20"])
    # the oracle primary is far better than any baseline; the best baseline never differs from itself
    assert metrics["models"]["mm_gcn"]["significant_vs_best_baseline"] == {"recall@20": True, "ndcg@20": True}
    assert metrics["significance"]["primary"] == "mm_gcn" and metrics["significance"]["recall@20"]["significant"]
    assert metrics["models"][best]["significant_vs_best_baseline"] == {"recall@20": False, "ndcg@20": False}
    assert set(metrics["cold_start"]) == set(metrics["long_tail"]) == set(metrics["models"])
    assert metrics["dataset"]["spec"] == "builtin:test" and metrics["dataset"]["tail_items"] > 0
    assert [row["modality"] for row in metrics["modality_weights"]] == ["text", "image"]
    assert metrics["compression"] == [{"variant": "fp32", "size_mb": 1.0}, {"variant": "int8", "size_mb": 0.3}]
    json.dumps(metrics)  # JSON-ready as it is
    primary_row = next(
        line for line in comparison.tables["comparison"].splitlines() if line.startswith("| **mm_gcn** |")
    )  # bold
    assert primary_row.count(r"\*") == 2  # recall and ndcg marked significant
    assert set(comparison.figures) == {"recall_at_20_ci", "modality_weights", "training_curves"}
    assert "mm_gcn_no_text" in comparison.tables["ablations"]


def test_build_comparison_report_files(tmp_path):
    data = _tiny_split(seed=2, n_items=70, n_cold=25)
    comparison = _comparison(data)
    paths = write_report(tmp_path, comparison.metrics, comparison.markdown, comparison.figures, comparison.html)
    assert set(paths) == {
        "metrics.json",
        "report.md",
        "report.html",
        "recall_at_20_ci.png",
        "modality_weights.png",
        "training_curves.png",
    }
    page = paths["report.html"].read_text()
    for section in (
        "All items (full ranking)",
        "Significance vs the best baseline",
        "Ablations",
        "Cold-start items",
        "Long-tail items",
        "Compression",
        "Modality weights",
        "Training curves",
    ):
        assert f">{section}" in page and f"## {section}" in comparison.markdown, section
    assert page.count('src="data:image/png;base64,') == 3 and '.png"' not in page  # self-contained
    assert "<table>" in page and "95% CI" in page and "mm_gcn_no_text" in page
    for name in comparison.figures:
        assert f"({name}.png)" in comparison.markdown
    assert json.loads(paths["metrics.json"].read_text())["ablations"] == ["mm_gcn_no_text"]
    # deterministic: the same inputs give the same files
    again = _comparison(data)
    assert again.html == comparison.html and again.metrics == comparison.metrics


def test_build_comparison_without_ablations_or_features():
    data = _tiny_split(seed=3, n_items=70, n_cold=25)
    comparison = _comparison(data, ablations=(), aligned=False)
    assert comparison.metrics["ablations"] == [] and comparison.metrics["modality_weights"] == []
    assert "intra_list_diversity@20" not in comparison.metrics["models"]["mm_gcn"]
    assert "No ablation models in this report." in comparison.markdown
    assert "modality_weights" not in comparison.figures


def test_compare_models_gives_numbers_and_the_report_renders_them():
    from mm_pipeline.evaluate.comparison import ModelComparison, compare_models
    from mm_pipeline.evaluate.report import render_comparison

    data = _tiny_split(seed=2, n_items=70, n_cold=25)
    models, options = _comparison_inputs(data)
    result = compare_models(models, data, **options)
    assert isinstance(result, ModelComparison)
    rendered = _comparison(data)  # build_comparison: compare, then render
    again = render_comparison(result)
    assert again[1:] == rendered[1:] and json.dumps(again.metrics) == json.dumps(rendered.metrics)
    models = result.metrics["models"]
    assert result.models == list(models) and result.best_baseline == result.metrics["significance"]["best_baseline"]
    overall = result.overall[20].set_index("model")
    for name, values in models.items():
        assert overall.loc[name, "recall@20"] == values["recall@20"]
        assert [overall.loc[name, "recall@20_ci_low"], overall.loc[name, "recall@20_ci_high"]] == list(
            values["recall@20_ci"]
        )
        assert overall.loc[name, "role"] == result.roles[name]
    assert (
        overall.loc["mm_gcn", "recall@20_significant"]
        and not overall.loc[result.best_baseline, "recall@20_significant"]
    )
    assert "recall@10_ci_low" not in result.overall[10] and result.overall[10]["ndcg@10"].notna().all()
    tests = result.significance.set_index(["model", "metric"])
    assert result.best_baseline not in tests.index.get_level_values("model")
    assert tests.loc[("mm_gcn", "ndcg@20"), "significant"]
    assert set(result.cold_start["model"]) == set(result.metrics["cold_start"])
    assert "tail_share@20" in result.long_tail and "tail_share@20" not in result.cold_start
    ablation = result.ablations.set_index("model")
    assert ablation.loc["mm_gcn_no_text", "compared_with"] == "mm_gcn" and ablation.loc["mm_gcn", "compared_with"] == ""
    assert ablation.loc["mm_gcn_no_text", "recall@20_delta"] == pytest.approx(
        models["mm_gcn_no_text"]["recall@20"] - models["mm_gcn"]["recall@20"]
    )
    assert list(result.modality_weights["modality"]) == ["text", "image"] and list(result.histories) == ["mm_gcn"]
    with pytest.raises(AttributeError):
        result.primary = "rand"  # frozen


def test_build_comparison_rejects_inconsistent_roles():
    from mm_pipeline.evaluate.report import build_comparison

    data = _tiny_split(seed=4, n_items=70, n_cold=25)
    models = {"mm_gcn": _oracle(data, "mm_gcn"), "popularity": _oracle(data, "popularity")}
    with pytest.raises(ValueError, match="ablations \\['nope'\\]"):
        build_comparison(models, data, primary="mm_gcn", ablations=["nope"])
    with pytest.raises(ValueError, match="more than one"):
        build_comparison(models, data, primary="mm_gcn", baselines=["popularity"], ablations=["popularity"])
    with pytest.raises(ValueError, match="primary model"):
        build_comparison(models, data, primary="lightgcn")
    with pytest.raises(ValueError, match="another dataset"):
        build_comparison(
            models,
            data,
            primary="mm_gcn",
            aligned={
                "fused": np.zeros((3, 2)),
                "weights": np.zeros((3, 1)),
                "present": np.ones((3, 1), bool),
                "modalities": ["text"],
            },
        )


def test_report_figures_are_deterministic_pngs():
    from mm_pipeline.evaluate.report import interval_bar_png, modality_weights_png, training_curves_png

    bar = interval_bar_png(
        ["a", "b"], [0.2, 0.3], [[0.1, 0.25], [0.2, 0.4]], ["baseline", "primary"], "recall@20", marked=[False, True]
    )
    assert bar.startswith(b"\x89PNG") and bar == interval_bar_png(
        ["a", "b"], [0.2, 0.3], [[0.1, 0.25], [0.2, 0.4]], ["baseline", "primary"], "recall@20", marked=[False, True]
    )
    weights = np.array([[0.7, 0.3, 0.0], [0.5, 0.5, 0.0]])
    present = weights > 0  # nobody has the third modality: plotted without it
    assert modality_weights_png(weights, present, ["text", "image", "audio"]).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="one column per"):
        modality_weights_png(weights, present, ["text", "image"])
    with pytest.raises(ValueError, match="roles"):
        interval_bar_png(["a"], [0.1], [[0.0, 0.2]], ["champion"], "recall@20")
    curves = training_curves_png({"m": pd.DataFrame({"epoch": [1, 2], "loss": [1.0, 0.5]})})
    assert curves.startswith(b"\x89PNG")


def test_small_subgroups_say_not_enough_data_instead_of_numbers():
    from mm_pipeline.evaluate.protocol import subgroup_support

    # 5 cold items ranked at k=20: every model's top-20 holds all of them, so recall@20 would be 1.0.
    data = _tiny_split(seed=1)
    comparison = _comparison(data, min_subgroup=(1, 1))
    support = comparison.metrics["support"]["cold_start"]
    assert not support["enough"] and support["items"] == 5 and "5 candidate items" in support["reason"]
    assert comparison.metrics["cold_start"] == {}
    assert "Not enough data: " in comparison.markdown and "No metrics are reported" in comparison.tables["cold_start"]
    # The long tail (full ranking) is measured at (1, 1) but not at the default thresholds.
    assert comparison.metrics["long_tail"] and comparison.metrics["support"]["long_tail"]["enough"]
    default = _comparison(data, min_subgroup=(10_000, 1))
    assert default.metrics["long_tail"] == {} and "need 10000" in default.metrics["support"]["long_tail"]["reason"]
    # The rule itself: interactions, users and (for a candidate set) more than k items.
    truth = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 0]], dtype=np.float32))
    assert subgroup_support(truth, None, 20, 4, 2)["enough"] is False  # 3 interactions
    assert subgroup_support(truth, None, 20, 3, 3)["enough"] is False  # 2 users
    assert subgroup_support(truth, None, 20, 3, 2)["enough"] is True
    assert subgroup_support(truth, np.array([True, True, False]), 1, 3, 1) == {
        "interactions": 3,
        "users": 2,
        "items": 2,
        "enough": True,
        "reason": None,
    }


def test_models_on_demand_are_held_one_at_a_time_by_evaluation_and_selection():
    """Evaluation and model selection drop each model before the next is built: at most one is alive."""
    import weakref

    from mm_pipeline.evaluate.protocol import ModelsOnDemand, evaluate_models
    from mm_pipeline.recommend.selection import compare_on_validation

    data = _tiny_split()
    built, most = [], []

    def build(name):
        most.append(sum(ref() is not None for ref in built))  # models still alive when the next one is built
        model = _oracle(data, name)
        built.append(weakref.ref(model))
        return model

    models = ModelsOnDemand({n: (lambda n=n: build(n)) for n in ("a", "b", "c")})
    out = evaluate_models(models, data, ks=(10,), n_resamples=20, min_subgroup=(1, 1))
    table = compare_on_validation(models, data)
    assert sorted(out["models"]) == ["a", "b", "c"] and sorted(table["model"]) == ["a", "b", "c"]
    assert len(most) >= 6 and max(most) == 0

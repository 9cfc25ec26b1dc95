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

from mm_pipeline.evaluate import (
    PAD,
    chronological_split,
    cold_items,
    interaction_matrix,
    metrics_table_markdown,
    per_user_metrics,
    png_markdown,
    ranking_metrics,
    top_k,
    training_curve_png,
    write_report,
)
from mm_pipeline.recommend.base import EmbeddingRecommender


# ----------------------------------------------------------------------------------------- split
def _frame(rows):
    return pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"]).astype("int64")


def test_split_counts_and_order():
    rows = [(0, i, 100 - i) for i in range(10)]          # user 0: 10 interactions, reverse time
    rows += [(1, i, i) for i in range(3)]                # user 1: 3 -> 1 / 1 / 1
    rows += [(2, 0, 5), (2, 1, 6)]                       # user 2: 2 -> all train
    rows += [(3, i, i) for i in range(25)]               # user 3: 0.1 * 25 = 2.5 -> 3 (half up)
    df = _frame(rows)
    df.index = pd.Index(np.arange(len(df)) * 7 + 3)      # a non-default index must be respected
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


@pytest.mark.parametrize("kwargs, match", [
    ({"valid_frac": -0.1}, "valid_frac"), ({"test_frac": 1.0}, "test_frac"),
    ({"valid_frac": 0.5, "test_frac": 0.5}, "valid_frac \\+ test_frac"), ({"min_train": 0}, "min_train"),
])
def test_split_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        chronological_split(_frame([(0, 0, 0)]), **kwargs)
    with pytest.raises(ValueError, match="timestamp"):
        chronological_split(pd.DataFrame({"user_idx": [0], "item_idx": [0]}))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 6), st.integers(0, 5)), max_size=60),
       st.sampled_from([0.1, 0.2, 0.3]), st.sampled_from([0.1, 0.25]), st.integers(1, 3))
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
    return pd.DataFrame({
        "user_idx": [0, 0, 0, 1, 1, 2, 2],
        "item_idx": [0, 0, 2, 1, 3, 4, 0],
        "timestamp": np.arange(7),
        "weight": np.ones(7, dtype=np.float32),
        "split": ["train", "train", "test", "train", "valid", "test", "train"],
    })


def test_interaction_matrix_and_cold_items():
    df = _split_df()
    train = interaction_matrix(df, n_users=4, n_items=6)
    assert isinstance(train, sp.csr_matrix) and train.dtype == np.float32 and train.shape == (4, 6)
    expected = np.zeros((4, 6), dtype=np.float32)
    expected[0, 0] = expected[1, 1] = expected[2, 0] = 1.0     # the duplicate (0, 0) counts once
    np.testing.assert_array_equal(train.toarray(), expected)
    held_out = interaction_matrix(df, 4, 6, splits=("valid", "test")).toarray()
    assert sorted(zip(*np.nonzero(held_out))) == [(0, 2), (1, 3), (2, 4)]
    np.testing.assert_array_equal(cold_items(df, 6), [False, False, True, True, True, True])
    with pytest.raises(ValueError, match="item_idx"):
        interaction_matrix(df, 4, 3)
    with pytest.raises(ValueError, match="splits"):
        interaction_matrix(df, 4, 6, splits=("training",))


# ---------------------------------------------------------------------------------------- ranking
SCORES = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
                   [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
                   [0.5, 0.5, 0.5, 0.9, 0.1, 0.5]], dtype=np.float32)   # user 2: four-way tie


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
TRUTH = _csr([(0, 2), (0, 5), (1, 4), (2, 5), (2, 3)])   # (2, 3) is also in train: unreachable
POP = np.asarray(TRAIN.sum(axis=0)).ravel()               # [1, 0, 0, 1, 0, 1]


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
    if kind == "continuous":      # float topk picks the exact set; only the order is re-keyed
        scores = rng.normal(size=(37, 50)).astype(np.float32)
    else:                         # cuts inside ties: the exact whole-row path
        scores = rng.integers(-3, 4, size=(37, 50)).astype(np.float32)
        scores[5, :] = 0.0
        scores[5, ::2] = -0.0     # -0.0 must tie with +0.0
        scores[6, 10:] = -np.inf  # a model may score -inf: still eligible, ranked last
    density = 0.95 if kind == "few_eligible" else 0.2
    exclude = sp.random(37, 50, density=density, random_state=1, format="csr", dtype=np.float32)
    model = _model(scores)
    seen = exclude.toarray() != 0
    expected = np.full((37, 7), PAD)
    for u in range(37):           # reference: sort each user's eligible items by (-score, index)
        items = np.flatnonzero(~seen[u])
        order = items[np.lexsort((items, -scores[u, items].astype(np.float64)))][:7]
        expected[u, :len(order)] = order
    got = top_k(model, np.arange(37), exclude, k=7, chunk_size=5)
    np.testing.assert_array_equal(got.numpy(), expected)
    np.testing.assert_array_equal(top_k(model, np.arange(37), exclude, k=7, chunk_size=1).numpy(), expected)
    if kind == "few_eligible":
        assert (expected == PAD).any()


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
        "recall@3": (0.5 + 1.0 + 0.0) / 3, "precision@3": (1 / 3 + 1 / 3) / 3,
        "f1@3": (0.4 + 0.5) / 3, "ndcg@3": (inv / (1 + inv) + 1.0) / 3,
        "map@3": ((0.5 / 2) + 1.0) / 3, "hit_ratio@3": 2 / 3, "coverage@3": 5 / 6,
        # self-information: pop 0 -> -log2(1/4) = 2 bits, pop 1 -> -log2(2/4) = 1 bit; 15 bits / 9 slots
        "novelty@3": 15 / 9,
        "recall@1": 1 / 3, "precision@1": 1 / 3, "f1@1": 1 / 3, "ndcg@1": 1 / 3, "map@1": 1 / 3,
        "hit_ratio@1": 1 / 3, "coverage@1": 3 / 6, "novelty@1": (2 + 2 + 1) / 3,
    }
    assert set(m) == set(expected) | {"n_users_evaluated"}
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-6), key


def test_ranking_metrics_padding_is_never_a_hit_nor_covered():
    # Item 5 is no candidate, so every list ends in -1 padding. Fed raw, PyG would turn user 1's
    # -1 into user 0's item 5 (a truth item) and mark item 5 as covered.
    candidates = np.array([True, True, True, True, True, False])
    m = ranking_metrics(_model(), TRUTH, TRAIN, ks=(6,), item_popularity=POP, n_train_users=3,
                        candidates=candidates)
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
    model = EmbeddingRecommender("rand", torch.from_numpy(rng.normal(size=(n_users, d)).astype(np.float32)),
                                 torch.from_numpy(rng.normal(size=(n_items, d)).astype(np.float32)))
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
        for row, user in enumerate(users):   # PyG, one user at a time, as an independent oracle
            labels = torch.from_numpy(truth[user].indices.astype(np.int64))
            for metric_cls, key in ((LinkPredRecall, "recall"), (LinkPredNDCG, "ndcg")):
                metric = metric_cls(k)
                metric.update(top[row:row + 1], (torch.zeros_like(labels), labels))
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
    assert candidates[top[filled]].all()                              # only candidates recommended
    assert not train.toarray()[np.repeat(users, 10)[filled.ravel()], top[filled]].any()  # never seen
    n_eligible = (~(train.toarray() != 0) & candidates).sum(axis=1)
    np.testing.assert_array_equal(filled.sum(axis=1), np.minimum(n_eligible, 10))
    masked = ranking_metrics(model, truth, train, candidates=candidates, **kwargs)
    assert masked["coverage@10"] <= candidates.mean() + 1e-6     # PyG reports float32


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
    table = metrics_table_markdown({"pop": {"recall@20": 0.1, "ndcg@20": 0.05},
                                    "gnn|v2": {"recall@20": 0.123456, "ndcg@20": 0.2}},
                                   columns=("recall@20", "ndcg@20", "novelty@20"), highlight="gnn|v2")
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
    assert base64.b64decode(md[md.index(",") + 1:-1]) == png
    with pytest.raises(ValueError, match="auc"):
        training_curve_png(history, ["auc"], "training")


def test_write_report(tmp_path):
    png = training_curve_png(pd.DataFrame({"loss": [1.0, 0.5]}), ["loss"], "t")
    paths = write_report(tmp_path / "report", {"b": np.float32(0.5), "a": 1}, "# Report\n", {"loss": png})
    assert set(paths) == {"metrics.json", "report.md", "loss.png"}
    text = paths["metrics.json"].read_text()
    assert text == json.dumps({"a": 1, "b": 0.5}, indent=2) + "\n"   # sorted keys, indent 2
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

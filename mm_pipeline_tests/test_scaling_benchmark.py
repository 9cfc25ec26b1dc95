"""benchmarks/scaling.py on the tiny dataset: every stage reports wall time and peak RSS, a skipped EASE says
why, the plot is written, and its chunked data path agrees with the pipeline's split rule. (Not a timing test.)"""

import json

import numpy as np
import pandas as pd
import pytest
from benchmark_scripts import load_benchmark

from mm_pipeline.datasets import synthetic
from mm_pipeline.evaluate.split import chronological_split


def _load_benchmark():
    return load_benchmark("scaling")


def test_scaling_benchmark_reports_every_stage_and_the_reason_for_a_skip(tmp_path, capsys):
    out, figure = tmp_path / "scaling.json", tmp_path / "scaling.png"
    args = [
        "--dataset",
        "builtin:tiny",
        "--epochs",
        "1",
        "--batch-size",
        "512",
        "--max-steps",
        "3",
        "--ease-max-items",
        "100",
        "--max-eval-users",
        "150",
        "--probe-scale",
        "0.01",
    ]
    _load_benchmark().main(args + ["--out", str(out), "--plot", str(figure)])
    report = json.loads(out.read_text())
    (entry,) = report["datasets"]
    assert (entry["users"], entry["items"]) == (240, 360)
    assert entry["interactions"] == entry["train"] + entry["valid"] + entry["test"] > 0
    assert entry["eval_users"] == 150 and "seeded sample of 150" in entry["evaluation"]
    rows = {row["stage"]: row for row in report["rows"]}
    assert list(rows) == ["generate", "read", "split", "popularity", "item_knn", "ease", "lightgcn", "mm_gcn"]
    assert "360 x 360" in rows["ease"]["skipped"] and "--ease-max-items 100" in rows["ease"]["skipped"]
    for stage, row in rows.items():
        if stage == "ease":
            continue
        assert row["wall_s"] > 0 and row["peak_rss_mb"] >= row["rss_before_mb"] > 0, stage
    for model in ("popularity", "item_knn", "lightgcn", "mm_gcn"):
        assert 0.0 <= rows[model]["test_recall@20"] <= 1.0, model
        assert rows[model]["fit_s"] > 0 and rows[model]["eval_s"] > 0, model
    for model in ("lightgcn", "mm_gcn"):
        row = rows[model]
        assert row["epochs"] == 1 and row["steps_per_epoch"] == 3 and row["positives_per_epoch"] == 3 * 512, model
        assert row["seconds_per_step"] > 0, model
    assert figure.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "| stage | wall s" in printed and "ease on tiny: EASE inverts" in printed
    assert set(report["machine"]) == {"before", "after"} and "machine (one thread): GEMM" in printed


def test_chunked_split_matches_the_pipeline_rule():
    bench = _load_benchmark()
    rng = np.random.default_rng(3)
    n = 4000
    user = rng.integers(0, 300, n).astype(np.int32)
    item = rng.integers(0, 50, n).astype(np.int32)
    stamp = rng.integers(0, 20, n).astype(np.int64)  # many ties: (timestamp, item) decides
    order, label = bench.chronological_labels(user, item, stamp)
    frame = pd.DataFrame({"user_idx": user, "item_idx": item, "timestamp": stamp})
    expected = chronological_split(frame).map({"train": 0, "valid": 1, "test": 2}).to_numpy()
    assert np.array_equal(label, expected[order])


def test_item_knn_in_chunks_equals_the_dense_weights():
    from mm_pipeline.recommend.linear import ItemGram, item_knn_weights

    bench = _load_benchmark()
    rng = np.random.default_rng(0)
    import scipy.sparse as sp

    train = sp.csr_matrix((rng.random((200, 60)) < 0.1).astype(np.float32))
    dense = item_knn_weights(ItemGram(train).gram, k=7, shrink=10.0)
    chunked = bench.item_knn_matrix(train, k=7, shrink=10.0, chunk_cells=60 * 9).toarray()
    # Ties at the k-th place may keep different items; compare where the dense weights are unambiguous.
    np.testing.assert_allclose(chunked.sum(0), dense.sum(0), rtol=1e-5)


def test_chunked_sampler_has_the_generator_shape():
    spec = synthetic.spec_for("tiny")
    rng = np.random.default_rng(spec.seed)
    items = synthetic._item_latents(spec, rng)
    prefs = synthetic._user_preferences(spec, rng)
    chunks = list(synthetic.sample_interaction_chunks(spec, items, prefs, rng, chunk_users=100))
    assert len(chunks) == 3
    user = np.concatenate([c["user"] for c in chunks]).astype(np.int64)
    item = np.concatenate([c["item"] for c in chunks]).astype(np.int64)
    stamp = np.concatenate([c["timestamp"] for c in chunks])
    counts = synthetic.interaction_counts(spec, np.random.default_rng(spec.seed + 1))
    assert np.all(np.diff(user) >= 0) and np.unique(user * spec.n_items + item).size == user.size
    assert np.all(np.diff(stamp)[user[1:] == user[:-1]] >= 0)
    per_user = np.bincount(user, minlength=spec.n_users)
    assert per_user.min() >= spec.min_interactions and per_user.max() <= spec.n_items // 4
    assert abs(per_user.mean() - counts.mean()) < 3
    # New-arrival items come after the user's other items.
    new = items["is_new"].to_numpy()[item]
    assert not np.any(new[:-1] & ~new[1:] & (user[1:] == user[:-1]))


def test_generate_refuses_the_interactions_only_size(tmp_path):
    assert synthetic.SIZES["xl"].n_users * synthetic.SIZES["xl"].mean_interactions >= 10_000_000
    with pytest.raises(ValueError, match="interactions-only"):
        synthetic.generate(synthetic.spec_for("xl"), tmp_path / "xl")

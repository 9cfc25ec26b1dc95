"""The compressed served artifact: per-row quantization bounds, int4 packing, the compact format's
round trip, ranking fidelity, size, explanations and the frontier that picks the served variant."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from mm_pipeline.compress.artifact import (
    artifact_bytes,
    compact_serving_arrays,
    float_values,
    index_dtype,
    pack_int4,
    quantize_rows,
    serving_recommender,
    table_arrays,
)
from mm_pipeline.compress.frontier import compression_frontier, request_latency_ms
from mm_pipeline.recommend.base import EmbeddingRecommender, sparse_from_scipy
from mm_pipeline.recommend.fit import SplitData
from mm_pipeline.registry.pyfunc import (
    COMPRESSIONS,
    RecommenderPyfunc,
    _Block,
    _SparseBlock,
    export_serving_arrays,
    plain_serving_arrays,
    unpack_int4,
    user_key,
)

SECRET = b"compress-tests-secret-0123456789"
N_USERS, N_ITEMS, D_GNN = 300, 400, 16
USER_IDS = [f"carol-{u:04d}-x" for u in range(N_USERS)]
ITEM_IDS = [f"sku-{i:04d}" for i in range(N_ITEMS)]


def _hybrid():
    """A model shaped like the served ``mm_hybrid``: a sparse user table [recency-weighted history; GNN
    vector], an item table [dense item-item core (column i of W); GNN item vector], score parts for one
    modality. Two tastes, so the ranking has structure that quantization can keep or lose."""
    rng = np.random.default_rng(0)
    taste = rng.integers(0, 2, N_USERS)
    liked = rng.random((N_USERS, N_ITEMS)) < np.where((np.arange(N_ITEMS) % 2)[None, :] == taste[:, None], 0.08, 0.01)
    train = sp.csr_matrix(liked.astype(np.float32))
    history = train.copy()
    history.data = np.exp(-2.0 * rng.random(history.nnz)).astype(np.float32)
    gram = (train.T @ train).toarray() + 50.0 * np.eye(N_ITEMS)
    core = np.linalg.inv(gram)
    core = (-core / np.diag(core)[None, :]).astype(np.float32)  # EASE's closed form
    np.fill_diagonal(core, 0.0)
    gnn_users = rng.normal(size=(N_USERS, D_GNN)).astype(np.float32) * 0.3
    gnn_items = rng.normal(size=(N_ITEMS, D_GNN)).astype(np.float32) * 0.3
    users = sp.hstack([history, sp.csr_matrix(gnn_users)], format="csr")
    items = np.concatenate([core.T, gnn_items], axis=1)
    text = sp.random(N_ITEMS, N_ITEMS, density=0.02, random_state=1, format="csr", dtype=np.float32)
    parts = {"history_width": N_ITEMS, "modalities": {"text": text}}
    model = EmbeddingRecommender("mm_hybrid", sparse_from_scipy(users), torch.from_numpy(items), {}, parts)
    return model, train


@pytest.fixture(scope="module")
def hybrid():
    model, train = _hybrid()
    plain = export_serving_arrays(model, USER_IDS, ITEM_IDS, train, SECRET)
    return model, train, plain


# --- quantization primitives ---------------------------------------------------------------------


@pytest.mark.parametrize("compression, levels", [("int8", 127), ("int4", 7)])
def test_per_row_quantization_error_is_at_most_half_a_step_and_zeros_stay_zero(compression, levels):
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(50, 33)).astype(np.float32) * rng.lognormal(size=(50, 1)).astype(np.float32)
    matrix[3] = 0.0  # an all-zero row
    matrix[rng.random(matrix.shape) < 0.2] = 0.0
    matrix[7] *= 1e-6  # a tiny row: its scale is below fp16's normal range, so scales are stored float32
    codes, scale = quantize_rows(matrix, compression)
    assert scale.shape == (50,) and scale.dtype == np.float32
    block = _Block(codes, scale, compression, matrix.shape)
    decoded = block.rows()
    step = scale.astype(np.float64)[:, None]
    assert np.all(np.abs(decoded - matrix) <= step / 2 + 1e-7 * np.abs(matrix) + 1e-12)
    assert np.all(decoded[matrix == 0] == 0) and np.all(decoded[3] == 0)
    assert np.allclose(scale, np.abs(matrix).max(axis=1) / levels, rtol=1e-6)
    # fp16 scales (rounded up, so no code is clipped) when fp16 holds them
    codes16, scale16 = quantize_rows(matrix[8:], compression)
    assert scale16.dtype == np.float16
    assert np.all(scale16.astype(np.float64) >= np.abs(matrix[8:]).max(axis=1) / levels)
    decoded16 = _Block(codes16, scale16, compression, matrix[8:].shape).rows()
    assert np.all(np.abs(decoded16 - matrix[8:]) <= scale16.astype(np.float64)[:, None] / 2 + 1e-7)
    # single entries decode like whole rows
    r, c = rng.integers(0, 50, 200), rng.integers(0, 33, 200)
    np.testing.assert_array_equal(block.entries(r, c), decoded[r, c])


def test_int4_with_outliers_keeps_each_rows_largest_entries_and_a_finer_step_for_the_rest():
    from mm_pipeline.compress.artifact import _encode_block, outlier_count, row_outliers

    rng = np.random.default_rng(6)
    matrix = (rng.normal(size=(30, 600)) * 0.01).astype(np.float32)
    matrix[:, :3] = rng.normal(size=(30, 3)).astype(np.float32) * 5  # three strong neighbours per row
    assert outlier_count(600) == 3 and outlier_count(10) == 1
    rest, columns, values = row_outliers(matrix, 3)
    np.testing.assert_array_equal(columns, np.tile([0, 1, 2], (30, 1)))
    np.testing.assert_allclose(values.astype(np.float32) + rest[:, :3], matrix[:, :3], rtol=0, atol=1e-7)
    out: dict = {}
    _encode_block(out, "b", matrix, "int4_outliers", allow_sparse=True)
    assert "b_codec" not in out and out["b_outlier_values"].dtype == np.float16  # int4, the default
    block = _Block(
        out["b_codes"], out["b_scale"], "int4", matrix.shape, (out["b_outlier_columns"], out["b_outlier_values"])
    )
    decoded = block.rows()
    plain = _Block(*quantize_rows(matrix, "int4"), "int4", matrix.shape).rows()
    # the step is set by the weak entries, not the strong ones: far smaller errors than plain int4
    assert np.abs(decoded - matrix).max() <= out["b_scale"].astype(np.float64).max() / 2 + 1e-6
    assert np.abs(decoded - matrix).mean() < 0.2 * np.abs(plain - matrix).mean()
    r, c = rng.integers(0, 30, 300), rng.integers(0, 600, 300)
    r[:30], c[:30] = np.arange(30), 1  # outlier positions too
    np.testing.assert_allclose(block.entries(r, c), decoded[r, c], rtol=1e-6, atol=1e-7)
    x = sp.random(4, 7, density=0.5, random_state=0, format="csr", dtype=np.float32)
    rows = np.array([0, 2, 3, 10, 11, 20, 29])
    np.testing.assert_allclose(block.left_product(x, rows), x @ decoded[rows], rtol=1e-5, atol=1e-6)
    y = rng.normal(size=(2, 600)).astype(np.float32)
    np.testing.assert_allclose(block.right_product(y), y @ decoded.T, rtol=1e-4, atol=1e-4)


def test_int4_packing_is_exact_and_two_codes_per_byte():
    codes = np.array([[-8, -7, -1, 0, 1, 7, 3], [0, 0, 0, 0, 0, 0, 0]], dtype=np.int8)
    packed = pack_int4(codes)
    assert packed.dtype == np.uint8 and packed.shape == (2, 4)  # an odd width is padded
    np.testing.assert_array_equal(unpack_int4(packed, 7), codes.astype(np.float32))
    every = np.arange(-8, 8, dtype=np.int8).reshape(1, -1).repeat(3, axis=0)
    np.testing.assert_array_equal(unpack_int4(pack_int4(every), 16), every)
    with pytest.raises(ValueError, match="int4 codes"):
        pack_int4(np.array([9]))


def test_narrow_types():
    assert index_dtype(65535) == np.uint16 and index_dtype(65536) == np.int32 and index_dtype(2**31) == np.int64
    assert float_values(np.array([0.0, 0.5, 1e-3])).dtype == np.float16
    assert float_values(np.array([0.0, 1e-9])).dtype == np.float32  # fp16 would lose it


@pytest.mark.parametrize("compression", ["fp16", "int8", "int4"])
def test_a_sparse_block_decodes_like_its_dense_twin(compression):
    rng = np.random.default_rng(2)
    matrix = np.where(rng.random((40, 60)) < 0.05, rng.normal(size=(40, 60)), 0.0).astype(np.float32)
    matrix[5] = 0.0
    out: dict = {}
    from mm_pipeline.compress.artifact import _encode_block

    _encode_block(out, "b", matrix, compression, allow_sparse=True)
    assert "b_indptr" in out  # 5% dense: CSR is the smaller form
    block = _SparseBlock(out["b_indptr"], out["b_indices"], out["b_codes"], out.get("b_scale"), compression, (40, 60))
    dense = _Block(*quantize_rows(matrix, compression), compression, (40, 60)).rows()
    np.testing.assert_allclose(block.rows(), dense, rtol=1e-6, atol=1e-7)
    r, c = rng.integers(0, 40, 500), rng.integers(0, 60, 500)
    np.testing.assert_array_equal(block.entries(r, c), block.rows()[r, c])
    x = rng.normal(size=(3, 7)).astype(np.float32)
    rows = np.array([0, 5, 9, 11, 20, 33, 39])
    np.testing.assert_allclose(block.left_product(x, rows), x @ block.rows()[rows], rtol=1e-5, atol=1e-6)
    mixed: dict = {}
    _encode_block(mixed, "s", matrix, "int4_outliers", allow_sparse=True)
    assert str(mixed["s_codec"]) == "int8" and "s_indptr" in mixed  # a CSR block keeps int8 codes
    from mm_pipeline.registry.pyfunc import _block

    np.testing.assert_allclose(_block(mixed, "s", "int4", (40, 60)).rows(), matrix, atol=np.abs(matrix).max() / 127)


# --- the compact artifact ------------------------------------------------------------------------


def _top(pyfunc, users, k=20):
    out = pyfunc.rank_user_rows(np.asarray(users), k)
    return out.groupby("user_key", sort=False)["item_id"].apply(list)


@pytest.mark.parametrize(
    "compression, min_overlap",
    [("fp32_compact", 1.0), ("fp16", 0.99), ("int8", 0.95), ("int4_outliers", 0.9), ("int4", 0.8)],
)
def test_the_compressed_artifact_ranks_nearly_as_fp32(hybrid, compression, min_overlap):
    model, train, plain = hybrid
    arrays = compact_serving_arrays(plain, compression)
    assert int(arrays["format_version"]) == 2 and str(arrays["compression"]) == compression
    fp32 = RecommenderPyfunc().load_arrays(plain, secret=SECRET)
    small = RecommenderPyfunc().load_arrays(arrays, secret=SECRET)
    users = np.arange(N_USERS)
    want, got = _top(fp32, users), _top(small, users)
    overlap = np.mean([len(set(want[key]) & set(got[key])) / 20 for key in want.index])
    assert overlap >= min_overlap
    # the served scores are the decoded model's: what the evaluation measures is what is served
    decoded = serving_recommender(arrays, "decoded")
    np.testing.assert_allclose(
        small._tables.score(users), decoded.score(torch.from_numpy(users)).numpy(), rtol=1e-5, atol=1e-5
    )
    # and they are close to fp32's (per-row error bound: the history block's codes and the GNN rows)
    error = np.abs(decoded.score(torch.from_numpy(users)).numpy() - model.score(torch.from_numpy(users)).numpy())
    scale = np.abs(model.score(torch.from_numpy(users)).numpy()).max()
    bound = {"fp32_compact": 1e-5, "fp16": 1e-3, "int8": 2e-2, "int4_outliers": 0.3, "int4": 0.3}[compression]
    assert error.max() < bound * scale


def test_fp32_compact_serves_the_fp32_tables_exactly(hybrid):
    # What lets the frontier give fp32_compact fp32's quality without scoring it again.
    model, _, plain = hybrid
    decoded = serving_recommender(compact_serving_arrays(plain, "fp32_compact"), "decoded")
    fp32 = serving_recommender(plain, "fp32")
    assert torch.equal(decoded.item_embeddings, fp32.item_embeddings)
    assert torch.equal(decoded.user_embeddings.to_dense(), fp32.user_embeddings.to_dense())
    users = torch.arange(N_USERS)
    assert torch.equal(decoded.score(users), fp32.score(users))


@pytest.mark.parametrize("compression", ["fp32", "fp32_compact", "int4"])
def test_artifact_bytes_is_the_size_of_the_written_npz(hybrid, tmp_path, compression):
    arrays = compact_serving_arrays(hybrid[2], compression)
    np.savez(tmp_path / "model.npz", **arrays)
    assert artifact_bytes(arrays) == (tmp_path / "model.npz").stat().st_size


def test_the_compact_format_round_trips_everything_but_the_rounding(hybrid):
    model, train, plain = hybrid
    arrays = compact_serving_arrays(plain, "int8")
    back = plain_serving_arrays(arrays)
    for name in ("user_keys", "item_ids", "popular_items", "seen_indptr", "seen_indices", "key_check", "max_k"):
        np.testing.assert_array_equal(back[name], plain[name], err_msg=name)
    assert "seen_indptr" not in arrays and int(arrays["seen_from_history"]) == 1  # shared with the history
    assert arrays["user_key_digests"].shape == (N_USERS, 32) and arrays["user_key_digests"].dtype == np.uint8
    assert arrays["history_indices"].dtype == np.uint16 and arrays["popular_items"].dtype == np.uint16
    assert arrays["item_history_codes"].shape == (N_ITEMS, N_ITEMS)  # transposed: a row per history item
    np.testing.assert_array_equal(back["user_indices"][back["user_indices"] < N_ITEMS], train.indices)
    np.testing.assert_allclose(back["item_embeddings"], plain["item_embeddings"], atol=0.02)
    assert set(k for k in plain if k.startswith("parts_")) == set(k for k in back if k.startswith("parts_"))
    assert compact_serving_arrays(plain, "fp32") == dict(plain)
    with pytest.raises(ValueError, match="plain serving arrays"):
        compact_serving_arrays(arrays, "int4")
    with pytest.raises(ValueError, match="compression must be one of"):
        compact_serving_arrays(plain, "int2")


@pytest.mark.parametrize("compression", ["fp16", "int8", "int4_outliers", "int4"])
def test_the_item_table_decoded_a_block_of_rows_at_a_time_is_the_whole_decoding(hybrid, monkeypatch, compression):
    # dense_arrays decodes the item-item block in row blocks into the table (no whole-table temporaries);
    # 7-row blocks over 400 rows (a short last block) must give the table of one whole-block decoding.
    from mm_pipeline.registry import pyfunc

    arrays = compact_serving_arrays(hybrid[2], compression)
    whole = plain_serving_arrays(arrays)["item_embeddings"]
    history = pyfunc._CompactTables(arrays).item_history
    np.testing.assert_array_equal(whole[:, :N_ITEMS], history.rows().T)
    monkeypatch.setattr(pyfunc, "DECODE_BLOCK_ROWS", 7)
    blocks = plain_serving_arrays(arrays)["item_embeddings"]
    np.testing.assert_array_equal(blocks, whole)
    assert blocks.flags.f_contiguous  # still written in place, column-major


def test_the_int4_artifact_is_at_least_four_times_smaller_when_its_tables_dominate(hybrid):
    _, _, plain = hybrid
    sizes = {c: artifact_bytes(compact_serving_arrays(plain, c)) for c in COMPRESSIONS}
    assert sizes["fp32"] > sizes["fp32_compact"] > sizes["fp16"] > sizes["int8"] > sizes["int4_outliers"]
    assert sizes["int4_outliers"] > sizes["int4"]
    assert sizes["fp32"] / sizes["int8"] >= 3.5 and sizes["fp32"] / sizes["int4_outliers"] >= 5.5
    assert sizes["fp32"] / sizes["int4"] >= 6.0


def test_a_dense_embedding_model_compresses_and_explains_too():
    rng = np.random.default_rng(4)
    model = EmbeddingRecommender(
        "mf", torch.from_numpy(rng.normal(size=(50, 24)).astype(np.float32)), torch.randn(80, 24)
    )
    train = sp.csr_matrix((rng.random((50, 80)) < 0.1).astype(np.float32))
    ids, items = [f"u{u}" for u in range(50)], [f"i{i}" for i in range(80)]
    plain = export_serving_arrays(model, ids, items, train, SECRET)
    request = pd.DataFrame({"user_id": ids[:10] + ["nobody"], "k": 5, "explain": True})
    want = RecommenderPyfunc().load_arrays(plain, secret=SECRET).predict(None, request)
    for compression in COMPRESSIONS[1:]:
        arrays = compact_serving_arrays(plain, compression)
        assert int(arrays["history_width"]) == 0 and "seen_indptr" in arrays
        got = RecommenderPyfunc().load_arrays(arrays, secret=SECRET).predict(None, request)
        assert list(got.columns) == list(want.columns)
        assert got["fallback"].tolist() == want["fallback"].tolist()
        assert (got["because"].str.len() > 0).sum() >= (want["because"].str.len() > 0).sum() - 5
    pd.testing.assert_frame_equal(
        RecommenderPyfunc()
        .load_arrays(compact_serving_arrays(plain, "fp16"), secret=SECRET)
        .predict(None, request)[["user_id", "rank", "fallback"]],
        want[["user_id", "rank", "fallback"]],
    )


def test_explanations_of_the_compressed_hybrid_match_fp32(hybrid):
    model, train, plain = hybrid
    request = pd.DataFrame({"user_id": USER_IDS[:20], "k": 5, "explain": True})
    want = RecommenderPyfunc().load_arrays(plain, secret=SECRET).predict(None, request)
    got = RecommenderPyfunc().load_arrays(compact_serving_arrays(plain, "fp16"), secret=SECRET).predict(None, request)
    assert list(got.columns) == list(want.columns)
    assert {"share_collaborative", "share_text", "share_graph", "because", "reason"} <= set(got.columns)
    same = got["item_id"] == want["item_id"]
    assert same.mean() > 0.95
    np.testing.assert_allclose(got.loc[same, "share_text"], want.loc[same, "share_text"], atol=5e-3)
    assert (got.loc[same, "because"] == want.loc[same, "because"]).mean() > 0.9


def test_the_compact_artifact_holds_no_raw_ids_or_secret(hybrid):
    _, _, plain = hybrid
    arrays = compact_serving_arrays(plain, "int4")
    assert all(np.asarray(v).dtype != object for v in arrays.values())
    blob = b"".join(np.asarray(v).tobytes() for v in arrays.values())
    assert SECRET not in blob and SECRET.hex().encode() not in blob
    for user in USER_IDS:
        assert user.encode() not in blob and user.encode("utf-32-le") not in blob
    assert bytes.fromhex(user_key(USER_IDS[5], SECRET)) == arrays["user_key_digests"][5].tobytes()
    tables = table_arrays(arrays)
    assert not {"user_keys", "item_ids", "key_check", "user_key_digests"} & set(tables)
    # what compressed_model keeps of a variant is enough to evaluate it
    users = torch.arange(N_USERS)
    torch.testing.assert_close(
        serving_recommender(tables, "kept").score(users), serving_recommender(arrays, "full").score(users)
    )


def test_load_arrays_rejects_a_broken_compact_artifact(hybrid):
    _, _, plain = hybrid
    arrays = compact_serving_arrays(plain, "int4")
    with pytest.raises(ValueError, match="compact serving arrays are missing"):
        RecommenderPyfunc().load_arrays({k: v for k, v in arrays.items() if k != "user_key_digests"}, secret=SECRET)
    with pytest.raises(ValueError, match="needs codes of shape"):
        RecommenderPyfunc().load_arrays(dict(arrays, item_history_codes=arrays["item_history_codes"][:, :-1]))
    with pytest.raises(ValueError, match="history_indices must lie in"):
        bad = dict(arrays, history_indices=arrays["history_indices"].astype(np.int32) + N_ITEMS)
        RecommenderPyfunc().load_arrays(bad, secret=SECRET)


# --- the frontier --------------------------------------------------------------------------------


def test_the_frontier_measures_every_variant_and_serves_the_smallest_within_the_gate(hybrid):
    model, train, _ = hybrid
    rng = np.random.default_rng(5)
    valid = sp.csr_matrix((rng.random((N_USERS, N_ITEMS)) < 0.02) & (train.toarray() == 0), dtype=np.float32)
    test = sp.csr_matrix(
        (rng.random((N_USERS, N_ITEMS)) < 0.02) & (train.toarray() == 0) & (valid.toarray() == 0), dtype=np.float32
    )
    data = SplitData(N_USERS, N_ITEMS, train, valid, test, adj=torch.zeros(0))
    frontier = compression_frontier(model, data, ITEM_IDS, latency_batch=8, latency_requests=2)
    table = frontier.table.set_index("variant")
    assert list(table.index) == list(COMPRESSIONS)
    assert table.loc["fp32", "size_ratio"] == 1.0 and table.loc["fp32", "valid_ndcg_loss"] == 0.0
    assert (table["latency_median_ms"] > 0).all() and (table["bytes"] > 0).all()
    passing = table.loc[table["passes_gate"]]
    assert frontier.served == passing["bytes"].idxmin() and table.loc[frontier.served, "served"]
    assert set(frontier.arrays) == {frontier.served}  # only what ships is kept
    expected = table_arrays(
        compact_serving_arrays(
            export_serving_arrays(model, [f"user-{u}" for u in range(N_USERS)], ITEM_IDS, train, SECRET, max_rows=8),
            frontier.served,
        )
    )
    kept = frontier.arrays[frontier.served]
    assert set(kept) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(kept[name], value, err_msg=name)
    # The served variant's lists (what the report reads instead of ranking it again) are those of its artifact.
    from mm_pipeline.evaluate.protocol import rank_for_evaluation

    again = rank_for_evaluation(serving_recommender(kept, "served"), data, 20)
    for part in ("valid_top", "test_top", "among_top"):
        assert torch.equal(getattr(frontier.rankings, part), getattr(again, part)), part
    forced = compression_frontier(model, data, ITEM_IDS, compressions=["int8"], serve="fp32", latency_requests=1)
    assert forced.served == "fp32" and list(forced.table["variant"]) == ["fp32", "int8"]
    strict = compression_frontier(
        model, data, ITEM_IDS, compressions=["int4"], max_relative_loss=0.0, latency_requests=1
    )
    loss = strict.table.set_index("variant").loc["int4", "valid_ndcg_loss"]
    assert strict.served == ("int4" if loss <= 0 else "fp32")
    with pytest.raises(ValueError, match="serve must be"):
        compression_frontier(model, data, ITEM_IDS, serve="int2")


def test_request_latency_goes_through_predict(hybrid):
    model, train, _ = hybrid
    labels = [f"user-{u}" for u in range(N_USERS)]
    arrays = compact_serving_arrays(export_serving_arrays(model, labels, ITEM_IDS, train, SECRET), "int4")
    latency = request_latency_ms(arrays, labels, SECRET, batch=4, requests=3)
    assert 0 < latency["median_ms"] <= latency["p90_ms"]
    with pytest.raises(ValueError, match="batch"):
        request_latency_ms(arrays, labels, SECRET, batch=0)


def test_the_report_section_names_the_served_variant_and_the_frontier():
    from mm_pipeline.evaluate.report import compression_blocks

    frame = pd.DataFrame(
        {
            "variant": ["fp32", "int8", "int4"],
            "bytes": [28_000_000, 7_500_000, 4_000_000],
            "size_ratio": [1.0, 3.73, 7.0],
            "valid_ndcg@20": [0.30, 0.299, 0.297],
            "valid_recall@20": [0.40, 0.40, 0.39],
            "test_ndcg@20": [0.28, 0.279, 0.276],
            "test_recall@20": [0.38, 0.38, 0.37],
            "latency_median_ms": [20.0, 15.0, 16.0],
            "latency_p90_ms": [25.0, 18.0, 19.0],
            "valid_ndcg_loss": [0.0, 0.0033, 0.01],
            "test_ndcg_loss": [0.0, 0.0036, 0.0143],
            "passes_gate": [True, True, True],
            "served": [False, False, True],
        }
    )
    blocks, table = compression_blocks(frame)
    markdown = table.markdown()
    assert "int4 (served)" in markdown and "7.00x" in markdown and "+1.43%" in markdown
    assert "Served: int4, 7.0x smaller than fp32" in blocks[1].text
    old = compression_blocks(pd.DataFrame({"variant": ["fp32"], "size_bytes": [1]}))[1]
    assert "size_bytes" in old.markdown()  # an older stats table is shown as it is


def test_the_evaluation_reads_the_kept_variants_as_served(hybrid):
    from mm_pipeline.defs.assets.evaluate import _recommenders

    model, _, plain = hybrid
    kept = table_arrays(compact_serving_arrays(plain, "int4"))
    models = _recommenders([], {"variants": ["int4"], "source_model": "mm_hybrid", "variant_int4": kept})
    users = torch.arange(N_USERS)
    torch.testing.assert_close(models["mm_hybrid[int4]"].score(users), serving_recommender(kept, "x").score(users))

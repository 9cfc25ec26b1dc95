"""Compression: pruning sparsity, int8 size and fidelity, measurement helpers, round trips."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from mm_pipeline.compress import (
    VARIANTS,
    ServingScorer,
    compress_recommender,
    parameter_count,
    prune_scorer,
    quantize_scorer,
    scorer_to_recommender,
    scoring_latency_ms,
    serialized_size_bytes,
)
from mm_pipeline.evaluate import ranking_metrics
from mm_pipeline.recommend.base import EmbeddingRecommender

# Few users, many items: the int8 item table then dominates the size, as in a catalogue-heavy model.
N_USERS, N_ITEMS, D = 100, 2000, 64


@pytest.fixture(scope="module")
def model() -> EmbeddingRecommender:
    g = torch.Generator().manual_seed(0)
    return EmbeddingRecommender(
        "mf", torch.randn(N_USERS, D, generator=g), torch.randn(N_ITEMS, D, generator=g), info={"epochs": 3}
    )


def test_serving_scorer_matches_recommender_and_is_frozen(model):
    scorer = ServingScorer.from_recommender(model)
    users = torch.tensor([0, 5, 99])
    torch.testing.assert_close(scorer(users), model.score(users))
    assert not any(p.requires_grad for p in scorer.parameters())
    assert isinstance(scorer.item_scorer, nn.Linear) and scorer.item_scorer.bias is None
    with pytest.raises(ValueError, match="embedding widths"):
        ServingScorer(torch.zeros(3, 4), torch.zeros(5, 6))


def test_fp32_round_trip_is_exact(model):
    back = scorer_to_recommender(ServingScorer.from_recommender(model), "mf-copy")
    assert back.name == "mf-copy"
    assert torch.equal(back.user_embeddings, model.user_embeddings)
    assert torch.equal(back.item_embeddings, model.item_embeddings)


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.75])
def test_pruning_zeroes_the_requested_global_fraction(model, amount):
    scorer = ServingScorer.from_recommender(model)
    pruned = prune_scorer(scorer, amount)
    weights = torch.cat([pruned.user_embeddings.weight.flatten(), pruned.item_scorer.weight.flatten()])
    assert (weights == 0).float().mean().item() == pytest.approx(amount, abs=1.0 / weights.numel())
    # permanent: no reparametrization left behind, and the original is untouched
    assert set(pruned.state_dict()) == {"user_embeddings.weight", "item_scorer.weight"}
    assert torch.count_nonzero(scorer.item_scorer.weight) == N_ITEMS * D
    # global magnitude: every surviving weight is at least as large as every pruned one
    original = torch.cat([scorer.user_embeddings.weight.flatten(), scorer.item_scorer.weight.flatten()])
    if 0 < amount:
        assert original[weights == 0].abs().max() <= original[weights != 0].abs().min()
    counts = parameter_count(pruned)
    assert counts == {"total": (N_USERS + N_ITEMS) * D, "nonzero": int((weights != 0).sum())}


def test_prune_rejects_bad_amount(model):
    with pytest.raises(ValueError, match="amount"):
        prune_scorer(ServingScorer.from_recommender(model), 1.5)


def test_int8_is_small_and_faithful(model):
    scorer = ServingScorer.from_recommender(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deprecation noise is silenced inside quantize_scorer
        quantized = quantize_scorer(scorer)
    assert isinstance(scorer.item_scorer, nn.Linear)  # the original stays fp32
    assert type(quantized.item_scorer) is not nn.Linear
    assert serialized_size_bytes(quantized) < 0.4 * serialized_size_bytes(scorer)
    users = torch.arange(N_USERS)
    with torch.inference_mode():
        fp32, int8 = scorer(users).flatten(), quantized(users).flatten()
    assert torch.corrcoef(torch.stack([fp32, int8]))[0, 1] > 0.99
    # the recommender built from it uses the dequantized weights: close, but not identical
    rec = scorer_to_recommender(quantized, "mf-int8")
    assert torch.equal(rec.user_embeddings, model.user_embeddings)
    error = (rec.item_embeddings - model.item_embeddings).abs()
    scale = model.item_embeddings.abs().max() / 127
    assert 0 < error.max() <= scale / 2 + 1e-6  # symmetric int8 rounding error bound
    assert parameter_count(quantized)["total"] == (N_USERS + N_ITEMS) * D


def test_measurement_helpers(model):
    scorer = ServingScorer.from_recommender(model)
    assert serialized_size_bytes(scorer) >= (N_USERS + N_ITEMS) * D * 4
    latency = scoring_latency_ms(scorer, torch.arange(N_USERS), batch_size=32, repeats=2)
    assert set(latency) == {"median_ms", "p90_ms"}
    assert 0 < latency["median_ms"] <= latency["p90_ms"]
    with pytest.raises(ValueError, match="batch_size"):
        scoring_latency_ms(scorer, torch.arange(4), batch_size=0)
    with pytest.raises(ValueError, match="users"):
        scoring_latency_ms(scorer, torch.zeros(0, dtype=torch.long))


def test_compress_recommender_end_to_end(model):
    out = compress_recommender(model, prune_amount=0.3, latency_users=128, seed=0, repeats=2)
    assert tuple(out["variants"]) == VARIANTS and tuple(out["recommenders"]) == VARIANTS
    stats = out["stats"].set_index("variant")
    assert list(stats.index) == list(VARIANTS)
    assert {"params_total", "params_nonzero", "size_bytes", "latency_median_ms"} <= set(stats.columns)
    assert (stats["params_total"] == (N_USERS + N_ITEMS) * D).all()
    assert stats.loc["fp32", "params_nonzero"] == (N_USERS + N_ITEMS) * D
    assert stats.loc["pruned", "params_nonzero"] == pytest.approx(0.7 * (N_USERS + N_ITEMS) * D, abs=1)
    assert stats.loc["int8", "size_bytes"] < 0.4 * stats.loc["fp32", "size_bytes"]
    assert (stats["latency_median_ms"] > 0).all()

    recs = out["recommenders"]
    assert recs["fp32"].info["compression"] == "fp32" and recs["fp32"].info["epochs"] == 3
    assert torch.equal(recs["fp32"].item_embeddings, model.item_embeddings)
    # the same evaluation code measures the quality change of each variant
    kwargs = dict(ks=(20,), item_popularity=np.zeros(N_ITEMS), n_train_users=N_USERS)
    # ground truth = fp32 model's own top-20: fp32 scores recall 1, compression can only lose
    top = torch.topk(model.score(torch.arange(N_USERS)), 20).indices.numpy()
    truth = sp.csr_matrix(
        (np.ones(top.size, np.float32), (np.repeat(np.arange(N_USERS), 20), top.ravel())), shape=(N_USERS, N_ITEMS)
    )
    quality = {name: ranking_metrics(rec, truth, None, **kwargs)["recall@20"] for name, rec in recs.items()}
    assert quality["fp32"] == pytest.approx(1.0)
    assert 0.8 < quality["int8"] <= 1.0
    assert quality["pruned"] < quality["int8"]  # 30% magnitude pruning hurts more than int8 here

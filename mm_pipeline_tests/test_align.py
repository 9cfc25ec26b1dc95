import math

import numpy as np
import torch

from mm_pipeline.align.losses import info_nce
from mm_pipeline.align.model import (
    AlignConfig,
    AttentionFusion,
    CoConsumedPairs,
    ModalityInput,
    embed_items,
    fit_aligner,
)


def test_info_nce_known_answer():
    n, tau = 4, 0.5
    x = torch.eye(n)
    expected = math.log(1 + (n - 1) * math.exp(-1 / tau))
    assert abs(float(info_nce(x, x, temperature=tau)) - expected) < 1e-6


def test_info_nce_ignores_invalid_rows():
    torch.manual_seed(0)
    a, p = torch.randn(6, 8), torch.randn(6, 8)
    valid = torch.tensor([True, True, False, True, False, True])
    garbage_p = p.clone()
    garbage_p[~valid] = 1e6  # rows that are not valid must not matter at all
    assert torch.allclose(info_nce(a, p, valid=valid), info_nce(a[valid], p[valid]))
    assert torch.allclose(info_nce(a, garbage_p, valid=valid), info_nce(a, p, valid=valid))
    assert float(info_nce(a, p, valid=torch.zeros(6, dtype=torch.bool))) == 0.0


def test_fusion_masks_missing_modalities():
    fusion = AttentionFusion(4)
    z = torch.randn(3, 2, 4)
    present = torch.tensor([[True, True], [True, False], [False, True]])
    fused, weights = fusion(z, present)
    assert torch.allclose(weights.sum(1), torch.ones(3))
    assert weights[1, 1] == 0 and weights[2, 0] == 0
    assert torch.allclose(fused[1], z[1, 0]) and torch.allclose(fused[2], z[2, 1])


def test_aligner_learns_shared_structure():
    rng = np.random.default_rng(0)
    n, classes = 200, 4
    label = rng.integers(classes, size=n)
    text = np.eye(classes)[label] * 3 + rng.normal(0, 0.3, (n, classes))
    image = np.concatenate([np.eye(classes)[label], rng.normal(0, 1, (n, 6))], 1)
    image[:, :classes] *= 2
    present_image = rng.random(n) > 0.1
    inputs = {
        "text": ModalityInput(text.astype(np.float32), np.ones(n, bool)),
        "image": ModalityInput(image.astype(np.float32), present_image),
    }
    users = np.repeat(np.arange(50), 4)
    items = np.concatenate([rng.choice(np.flatnonzero(label == u % classes), 4) for u in range(50)])
    model, history = fit_aligner(inputs, users, items, AlignConfig(epochs=15, batch_size=64, dim=16, hidden=32))
    assert history["cross_modal"].iloc[-1] < history["cross_modal"].iloc[0]
    out = embed_items(model, inputs)
    # Cross-modal retrieval: an item's text embedding is closest to an image embedding of its class.
    z = out["modality_embeddings"]
    sims = z[:, 0] @ z[present_image, 1].T
    nearest = label[present_image][sims.argmax(1)]
    assert (nearest == label).mean() > 0.9
    assert (out["weights"][~present_image, 1] == 0).all()
    again, _ = fit_aligner(inputs, users, items, AlignConfig(epochs=15, batch_size=64, dim=16, hidden=32))
    np.testing.assert_allclose(embed_items(again, inputs)["fused"], out["fused"], atol=1e-6)


def test_co_consumed_pairs_share_a_user():
    rng = np.random.default_rng(3)
    users = rng.integers(0, 50, 2000)
    items = rng.integers(0, 300, 2000)
    histories = {}
    for u, i in zip(users, items):
        histories.setdefault(int(u), set()).add(int(i))
    pairs = CoConsumedPairs(users, items)
    left, right = pairs.draw(5000, np.random.default_rng(0))
    owners = {u for u in histories}
    for i, j in zip(left, right):
        assert any(i in histories[u] and j in histories[u] for u in owners)
    # Seeded: the same draws again; the inputs are not reordered in place.
    again = CoConsumedPairs(users, items).draw(5000, np.random.default_rng(0))
    np.testing.assert_array_equal(left, again[0])
    np.testing.assert_array_equal(right, again[1])
    np.testing.assert_array_equal(users, np.random.default_rng(3).integers(0, 50, 2000))

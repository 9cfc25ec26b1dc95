"""Integrated gradients over the item content of embedding models (mm_gcn, VBPR): closed form, Captum,
completeness, the stored modality split and the deletion test."""

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from captum.attr import IntegratedGradients

from mm_pipeline.explain import deletion_test
from mm_pipeline.explain.attribution import content_parts, integrated_jacobian, modality_attribution
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.config import MultimodalConfig, TrainConfig
from mm_pipeline.recommend.fit import SplitData, content_blocks, content_matrix, fit_multimodal, fit_vbpr
from mm_pipeline.registry.pyfunc import RecommenderPyfunc, export_serving_arrays

SECRET = b"attribution-tests-secret-012345"


def _tower(width=7, hidden=16, out=5, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, out)).eval()


def test_integrated_gradients_of_a_linear_map_are_exact():
    torch.manual_seed(0)
    w, bias = torch.randn(4, 6), torch.randn(4)
    deltas = torch.randn(10, 3, 6)
    baseline = torch.randn(6)
    out = integrated_jacobian(lambda x: x @ w.T + bias, deltas, baseline, steps=3)
    torch.testing.assert_close(out, deltas @ w.T)  # IG of a linear map: (x - x0) . w, block by block


def test_integrated_gradients_are_complete_and_match_captum():
    tower = _tower()
    torch.manual_seed(1)
    deltas = torch.randn(12, 3, 7)
    x = deltas.sum(1)
    a = integrated_jacobian(tower, deltas, steps=32)
    with torch.no_grad():  # completeness: the blocks add up to f(x) - f(0)
        torch.testing.assert_close(a.sum(1), tower(x) - tower(torch.zeros(1, 7)), atol=2e-3, rtol=1e-3)
    # One (user, item) pair per row: score <q_u, f(x_i)>; Captum over the three blocks gives <q_u, A_i,m>.
    q = torch.randn(12, 5)
    captum = IntegratedGradients(lambda a, b, c, user: (user * tower(a + b + c)).sum(1))
    ours = torch.einsum("nk,nbk->nb", q, a)
    theirs = captum.attribute(
        tuple(deltas.unbind(1)),
        baselines=tuple(torch.zeros(12, 7) for _ in range(3)),
        n_steps=32,
        additional_forward_args=(q,),
        method="riemann_middle",
    )
    torch.testing.assert_close(ours, torch.stack([t.sum(1) for t in theirs], 1), atol=1e-4, rtol=1e-4)


def test_items_whose_score_has_no_content_part_get_none():
    tower = _tower(out=4)
    torch.manual_seed(2)
    deltas = {"text": torch.randn(6, 7), "image": torch.randn(6, 7)}
    removed = {"text": deltas["image"], "image": deltas["text"]}
    scale = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 2.0])  # mm_gcn scoring cold items only: 1 - warm
    parts = content_parts(tower, (4, 8), deltas, removed, scale)
    full = content_parts(tower, (4, 8), deltas, removed)
    for m in ("text", "image"):
        for kind in ("attribution", "removal"):
            np.testing.assert_allclose(parts[kind][m], full[kind][m] * scale.numpy()[:, None], atol=1e-6)


def _split(n_users=40, n_items=30, seed=0):
    """Users who like one of two item groups; the last four items are cold (consumed only in test)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        liked = np.arange(u % 2, n_items - 4, 2)
        rows += [(u, int(i), t) for t, i in enumerate(rng.choice(liked, size=6, replace=False))]
        rows.append((u, n_items - 4 + u % 2, 100))
    frame = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"]).assign(weight=1.0, split="train")
    last = frame.groupby("user_idx")["timestamp"].rank(ascending=False, method="first")
    frame.loc[last == 1, "split"] = "test"
    frame.loc[last == 2, "split"] = "valid"
    return SplitData.from_frame(frame, n_users, n_items)


def _aligned(n_items, seed=0):
    """Text that knows the item group, images that are noise; every fourth item has no image."""
    rng = np.random.default_rng(seed)
    group = np.arange(n_items) % 2
    text = np.eye(4, dtype=np.float32)[group] + rng.normal(0, 0.1, (n_items, 4)).astype(np.float32)
    image = rng.normal(0, 1, (n_items, 4)).astype(np.float32)
    z = np.stack([text, image], 1)
    z /= np.linalg.norm(z, axis=2, keepdims=True)
    present = np.ones((n_items, 2), bool)
    present[::4, 1] = False
    z[~present] = 0.0
    weights = np.where(present, np.array([0.6, 0.4], np.float32), 0.0)
    weights /= weights.sum(1, keepdims=True)
    return {
        "modalities": ["text", "image"],
        "modality_embeddings": z,
        "fused": (weights[:, :, None] * z).sum(1),
        "weights": weights.astype(np.float32),
        "present": present,
    }


def test_the_content_blocks_add_up_to_the_content_matrix():
    aligned = _aligned(12)
    deltas, removed = content_blocks(aligned)
    np.testing.assert_allclose(sum(deltas.values()), content_matrix(aligned), atol=1e-6)
    # Without the image, an item's fused vector is its text embedding (the weights renormalised).
    d = aligned["modality_embeddings"].shape[2]
    np.testing.assert_allclose(removed["image"][:, :d], aligned["modality_embeddings"][:, 0], atol=1e-6)
    assert (removed["image"][:, -1] == 0).all() and (removed["text"][:, -2] == 0).all()


def test_mm_gcn_carries_an_exact_modality_split_of_its_content_score():
    data = _split()
    aligned = _aligned(data.n_items)
    config = MultimodalConfig(epochs=4, batch_size=64, dim=8, hidden=16, lr=0.02, content_mode="all", knn_k=0)
    model, _ = fit_multimodal(data, aligned, config)
    content = model.parts["content"]
    assert content["columns"] == (8, 16) and set(content["attribution"]) == {"text", "image"}
    again = EmbeddingRecommender.from_arrays(model.name, model.to_arrays(), model.info)  # survives storage
    np.testing.assert_array_equal(again.parts["content"]["removal"]["image"], content["removal"]["image"])
    # Completeness against the stored item vectors: sum_m A_im = c_i - f(0), so for every (user, item)
    # pair the modality parts add up to s(u, i) - s(u, i without content).
    users = np.repeat(np.arange(data.n_users), 3)
    items = np.random.default_rng(0).integers(0, data.n_items, users.size)
    p = model.user_rows(torch.from_numpy(users)).numpy()
    parts = modality_attribution(content, p, items)
    q = model.item_embeddings.numpy()
    no_content = q[items].copy()
    no_content[:, 8:16] = q[items, 8:16] - sum(content["attribution"][m][items] for m in content["attribution"])
    # f(0) is one vector for every item: its score is the same whatever the item.
    total = (p * q[items]).sum(1) - (p * no_content).sum(1)
    np.testing.assert_allclose(parts["text"] + parts["image"], total, atol=1e-5)
    baseline = no_content[:, 8:16]
    np.testing.assert_allclose(baseline, np.broadcast_to(baseline[:1], baseline.shape), atol=2e-3)
    # Items without an image get no image attribution.
    assert np.abs(content["attribution"]["image"][::4]).max() == 0
    # Removing the image changes nothing for the items that have none.
    assert np.abs(content["removal"]["image"][::4]).max() == 0 and np.abs(content["removal"]["text"]).max() > 0


def test_the_deletion_test_and_the_served_explanation_use_the_content_split():
    data = _split()
    aligned = _aligned(data.n_items)
    config = MultimodalConfig(epochs=4, batch_size=64, dim=8, hidden=16, lr=0.02, content_mode="all", knn_k=0)
    model, _ = fit_multimodal(data, aligned, config)
    result = deletion_test(model, data.train, np.arange(data.n_users), seed=0)["modality"]
    assert result.users == data.n_users
    assert result.score_gap >= 0 and result.top_score_drop > 0
    pyfunc = RecommenderPyfunc().load_arrays(
        export_serving_arrays(
            model, [f"u{i}" for i in range(data.n_users)], [f"i{i}" for i in range(data.n_items)], data.train, SECRET
        ),
        secret=SECRET,
    )
    out = pyfunc.predict(None, pd.DataFrame({"user_id": ["u1", "u2"], "k": [4, 4], "explain": [True, True]}))
    shares = out[["share_collaborative", "share_image", "share_text"]]
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    assert out["reason"].str.contains("mostly").all()


def test_vbpr_attributes_its_visual_term_to_the_image():
    data = _split()
    rng = np.random.default_rng(0)
    visual = rng.normal(size=(data.n_items, 3)).astype(np.float32)
    model, _ = fit_vbpr(data, visual, np.ones(data.n_items, bool), TrainConfig(epochs=3, batch_size=64, dim=4))
    content = model.parts["content"]
    assert content["columns"] == (4, 10) and list(content["attribution"]) == ["image"]
    q = model.item_embeddings.numpy()
    expected = q[:, 4:10].copy()
    expected[:, 4] = 0.0  # the item bias is the ID part
    np.testing.assert_allclose(content["attribution"]["image"], expected, atol=1e-5)
    np.testing.assert_allclose(content["removal"]["image"], -expected, atol=1e-6)
    assert deletion_test(model, data.train, np.arange(data.n_users)) == {}  # one modality: nothing to compare
    assert sp.issparse(data.train)

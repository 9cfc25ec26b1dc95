"""Users' interest per modality in the aligned space: the profile finds the modality a history is coherent
in, a modality where every item looks alike does not win by default, the served model agrees."""

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from mm_pipeline.explain.interest import InterestSpace, dominant_modality, interest_profiles, item_match
from mm_pipeline.explain.summary import accuracy_by_interest, accuracy_by_interest_from
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.ranking import per_user_metrics_from_top_k, top_k
from mm_pipeline.registry.pyfunc import RecommenderPyfunc, export_serving_arrays

SECRET = b"interest-tests-secret-0123456789"
N_ITEMS, DIM, CLUSTERS = 300, 16, 10


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _aligned(seed=0):
    """Text: ten tight clusters. Image: every item nearly the same direction (all items look alike).
    Audio: ten clusters that have nothing to do with the text ones; every fifth item has no audio."""
    rng = np.random.default_rng(seed)
    text_cluster = np.arange(N_ITEMS) % CLUSTERS
    audio_cluster = rng.permutation(N_ITEMS) % CLUSTERS
    text = _unit(rng.normal(size=(CLUSTERS, DIM))[text_cluster] + 0.3 * rng.normal(size=(N_ITEMS, DIM)))
    image = _unit(3.0 * np.ones(DIM) + rng.normal(size=(N_ITEMS, DIM)))
    audio = _unit(rng.normal(size=(CLUSTERS, DIM))[audio_cluster] + 0.3 * rng.normal(size=(N_ITEMS, DIM)))
    present = np.ones((N_ITEMS, 3), bool)
    present[::5, 2] = False
    z = np.stack([text, image, audio], 1)
    z[~present] = 0.0
    aligned = {"modalities": ["text", "image", "audio"], "modality_embeddings": z, "present": present}
    return aligned, text_cluster, audio_cluster


def _histories(text_cluster, audio_cluster, seed=0, size=12):
    """Rows 0-9: one text cluster each; 10-19: one audio cluster each (items with audio); 20-29: random;
    30: a single item; 31: one text cluster that is also one audio cluster (coherent in both)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(CLUSTERS):
        rows.append(rng.choice(np.flatnonzero(text_cluster == c), size, replace=False))
    for c in range(CLUSTERS):
        with_audio = np.flatnonzero((audio_cluster == c) & (np.arange(N_ITEMS) % 5 != 0))
        rows.append(rng.choice(with_audio, size, replace=False))
    for _ in range(10):
        rows.append(rng.choice(N_ITEMS, size, replace=False))
    rows.append(np.array([7]))
    both = np.flatnonzero((text_cluster == 3) & (audio_cluster == 3))
    rows.append(both[:size])
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.concatenate(rows)
    return sp.csr_matrix((np.ones(indices.size), indices, indptr), shape=(len(rows), N_ITEMS))


def _both_clusters(aligned, text_cluster, audio_cluster):
    """Audio clusters aligned with the text ones for the items of text cluster 3 (user 31's history)."""
    z = aligned["modality_embeddings"]
    audio_centre = z[(audio_cluster == 3) & aligned["present"][:, 2], 2].mean(0)
    rows = np.flatnonzero(text_cluster == 3)[:12]
    z[rows, 2] = _unit(audio_centre + 0.1 * np.random.default_rng(1).normal(size=(rows.size, DIM)))
    aligned["present"][rows, 2] = True
    audio_cluster[rows] = 3
    return aligned


def test_the_profile_finds_the_modality_a_history_is_coherent_in():
    aligned, text_cluster, audio_cluster = _aligned()
    aligned = _both_clusters(aligned, text_cluster, audio_cluster)
    space = InterestSpace.from_aligned(aligned, max_size=64, seed=0)
    interest = interest_profiles(space, _histories(text_cluster, audio_cluster))
    # Raw coherence: the image (every item alike) is the most coherent modality of every random history...
    assert (interest.coherence[20:30, 1] > interest.coherence[20:30, 0]).all()
    # ... but against its null it is nothing special: random users have no dominant modality.
    assert (interest.dominant[20:30] == "none").all()
    assert (interest.dominant[:10] == "text").all(), interest.frame().iloc[:10]
    assert (interest.dominant[10:20] == "audio").all(), interest.frame().iloc[10:20]
    assert interest.dominant[30] == "none" and np.isnan(interest.strength[30]).all()  # one item: no evidence
    assert interest.dominant[31] == "mixed"
    # Each profile points at its cluster; the strength is a z-score against random sets of the same size.
    centre = _unit(aligned["modality_embeddings"][text_cluster == 0, 0].mean(0))
    assert interest.profile[0, 0] @ centre > 0.95
    assert np.abs(interest.strength[20:30]).max() < 3.0
    # An item of the user's text cluster matches the text profile; an item of another cluster does not.
    same, other = np.flatnonzero(text_cluster == 0)[-1], np.flatnonzero(text_cluster == 1)[0]
    match = item_match(space, interest, np.array([0, 0]), np.array([same, other]))
    assert match[0, 0] > 1.5 > match[1, 0]
    assert np.isnan(item_match(space, interest, np.array([0]), np.array([0]))[0, 2])  # item 0 has no audio


def test_items_without_a_modality_do_not_count_in_it_and_weights_set_the_effective_size():
    aligned, text_cluster, audio_cluster = _aligned()
    space = InterestSpace.from_aligned(aligned, max_size=64, seed=0)
    history = sp.csr_matrix((np.ones(3), ([0, 0, 0], [0, 5, 10])), shape=(1, N_ITEMS))  # none has audio
    interest = interest_profiles(space, history)
    assert interest.items[0].tolist() == [3.0, 3.0, 0.0] and np.isnan(interest.strength[0, 2])
    weighted = interest_profiles(space, history.multiply(np.array([[1.0] * 5 + [0.5] * (N_ITEMS - 5)])).tocsr())
    assert 2.0 < weighted.items[0, 0] < 3.0  # (1 + 0.5 + 0.5)^2 / (1 + 0.25 + 0.25)


def test_dominant_modality_rules():
    strength = np.array([[5.0, 1.0], [5.0, 4.5], [1.0, 0.5], [np.nan, 2.5], [np.nan, np.nan]])
    assert dominant_modality(strength, ("text", "image")).tolist() == ["text", "mixed", "none", "image", "none"]


def test_the_served_model_names_the_dominant_modality_as_the_profile_does():
    aligned, text_cluster, audio_cluster = _aligned()
    train = _histories(text_cluster, audio_cluster)
    space = InterestSpace.from_aligned(aligned, max_size=64, seed=0)
    n_users = train.shape[0]
    g = torch.Generator().manual_seed(0)
    model = EmbeddingRecommender("mf", torch.randn(n_users, 4, generator=g), torch.randn(N_ITEMS, 4, generator=g))
    user_ids, item_ids = [f"u{i}" for i in range(n_users)], [f"i{i}" for i in range(N_ITEMS)]
    pyfunc = RecommenderPyfunc().load_arrays(
        export_serving_arrays(model, user_ids, item_ids, train, SECRET, interest=space), secret=SECRET
    )
    plain = pyfunc.predict(None, pd.DataFrame({"user_id": user_ids, "k": 5}))
    asked = pyfunc.predict(None, pd.DataFrame({"user_id": user_ids, "k": 5, "explain": True}))
    pd.testing.assert_frame_equal(asked[plain.columns], plain)  # the explain flag only adds columns
    users = asked["user_id"].str[1:].astype(int).to_numpy()
    expected = interest_profiles(space, train)
    assert (asked["interest"].to_numpy() == expected.dominant[users]).all()
    items = asked["item_id"].str[1:].astype(int).to_numpy()
    match = item_match(space, expected, users, items)
    modality = {m: k for k, m in enumerate(space.modalities)}
    single = asked["interest"].isin(modality)
    want = np.full(len(asked), np.nan)
    want[single] = match[np.flatnonzero(single), asked.loc[single, "interest"].map(modality).to_numpy()]
    np.testing.assert_allclose(asked["interest_match"].to_numpy(), want, atol=1e-9)
    fits = single & (asked["interest_match"] >= 1.5)
    assert asked.loc[fits & (asked["interest"] == "text"), "reason"].str.contains("what things are about").all()
    assert not asked.loc[~fits, "reason"].str.contains("you go mostly by").any()


def test_accuracy_by_interest_groups_users_and_says_when_a_group_is_too_small():
    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((40, 30)) < 0.2).astype(np.float32))
    test = sp.csr_matrix((rng.random((40, 30)) < 0.1).astype(np.float32))
    model = EmbeddingRecommender("mf", torch.randn(40, 4), torch.randn(30, 4))
    dominant = pd.Series(["text"] * 30 + ["image"] * 5 + ["none"] * 5, index=np.arange(40))
    out = accuracy_by_interest(model, train, test, dominant, k=5, min_users=10).set_index("dominant modality")
    tested = np.diff(test.indptr) > 0
    assert out["users"].sum() == tested.sum() and np.isclose(out["share"].sum(), 1.0)
    assert np.isnan(out.loc["image", "recall@5"]) and out.loc["image", "note"].startswith("not enough data")
    assert np.isfinite(out.loc["text", "recall@5"])
    # From the per-user metrics of a test ranking already made (the report's): the same table.
    users = np.flatnonzero(tested)
    per_user = per_user_metrics_from_top_k(top_k(model, users, train, 5), users, test, ks=(5,))
    pd.testing.assert_frame_equal(
        accuracy_by_interest_from(per_user, dominant, k=5, min_users=10).set_index("dominant modality"), out
    )
    # Users of the ranking outside ``dominant`` are left out, as are groups nobody falls in.
    few = accuracy_by_interest_from(per_user, dominant.iloc[:30], k=5, min_users=10)
    assert set(few["dominant modality"]) == {"text"} and few["users"].sum() == tested[:30].sum()
    assert accuracy_by_interest_from(per_user, dominant.iloc[:0], k=5).empty

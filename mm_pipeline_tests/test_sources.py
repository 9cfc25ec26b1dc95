"""Real dataset formats (MovieLens ml-100k / ml-latest-small, MMRec) from tiny fixtures built here.

Each format is read through ``resolve_source``/``load_source`` and checked table by table, then the
whole asset graph (with its asset checks) is materialized on it, as ``test_pipeline_e2e`` does.
"""

from __future__ import annotations

import hashlib
import json
import string
import tempfile
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mm_pipeline.datasets import movielens
from mm_pipeline.datasets.folder import load_folder
from mm_pipeline.datasets.schema import DataError
from mm_pipeline.datasets.sources import load_source, resolve_source
from mm_pipeline.defs.build import all_assets
from mm_pipeline.defs.checks import all_asset_checks

from fast_config import FASTER_OPS, fast_run_config, materialize_graph

N_USERS, N_ITEMS = 60, 80


def fast_run_config_small() -> dict:
    """Fewer epochs than the e2e test: three whole-graph runs must stay well under two minutes."""
    return fast_run_config(FASTER_OPS)


# ----------------------------------------------------------------------------------------------
# Fixture builders (small, seeded, written in the real on-disk formats)
# ----------------------------------------------------------------------------------------------
N_NEW = 4  # new-arrival items: rated only last, by a few users, so the test split has cold items
LATE = 31_000_000  # seconds after ``start``: later than every other rating


def _ratings(rng: np.random.Generator, per_user: int = 16, start: int = 880_000_000) -> pd.DataFrame:
    """Each user rates ``per_user`` distinct items with 1..5 stars; ids start at 1 as in MovieLens.

    The last ``N_NEW`` items are new arrivals: users 1..20 each give one of them 5 stars after all their
    other ratings, so a chronological split puts them in test only (cold-start items).
    """
    warm = N_ITEMS - N_NEW
    users = np.repeat(np.arange(1, N_USERS + 1), per_user)
    items = np.concatenate([rng.choice(warm, per_user, replace=False) + 1 for _ in range(N_USERS)])
    new_users = np.arange(1, 21)
    return pd.DataFrame(
        {
            "user": np.concatenate([users, new_users]),
            "item": np.concatenate([items, warm + 1 + new_users % N_NEW]),
            "rating": np.concatenate([rng.integers(1, 6, len(users)), np.full(len(new_users), 5)]),
            "timestamp": np.concatenate([start + rng.integers(0, 30_000_000, len(users)), start + LATE + new_users]),
        }
    )


def write_ml100k(root: Path, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    ratings = _ratings(rng)
    ratings.to_csv(root / "u.data", sep="\t", header=False, index=False)
    genres = movielens.ML100K_GENRES
    flags = rng.random((N_ITEMS, len(genres))) < 0.15
    flags[0] = False
    flags[0, [1, 5]] = True  # movie 1: Action, Comedy
    lines = []
    for i in range(N_ITEMS):
        title = "Café Society (1995)" if i == 1 else f"Movie {i + 1} (1995)"
        lines.append(
            "|".join(
                [str(i + 1), title, "01-Jan-1995", "", f"http://imdb/{i + 1}", *("1" if f else "0" for f in flags[i])]
            )
        )
    (root / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    (root / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(genres)))
    return ratings


def write_png(path: Path, colour: tuple[int, int, int], size: int = 24) -> None:
    import cv2

    image = np.zeros((size, size, 3), np.uint8)
    image[...] = colour
    image[size // 4 : size // 2, size // 4 : size // 2] = 255 - np.asarray(colour, np.uint8)
    cv2.imwrite(str(path), image[..., ::-1])


def write_ml_latest(root: Path, seed: int = 1, posters: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    ratings = _ratings(rng, start=1_500_000_000)
    late = ratings["timestamp"] >= 1_500_000_000 + LATE
    ratings["rating"] = np.where(late, 5.0, rng.integers(1, 11, len(ratings)) / 2.0)  # half stars 0.5..5.0
    ratings.rename(columns={"user": "userId", "item": "movieId"}).to_csv(root / "ratings.csv", index=False)
    names = ["Action", "Comedy", "Drama", "Sci-Fi", "Romance"]
    genres = ["|".join(sorted(set(rng.choice(names, rng.integers(1, 3)).tolist()))) for _ in range(N_ITEMS)]
    genres[0], genres[2] = "Adventure|Animation", movielens.NO_GENRES
    titles = [f"Movie {i + 1} (2001)" for i in range(N_ITEMS)]
    titles[1] = "Good, the Bad (1966)"  # a comma: quoted in the CSV
    pd.DataFrame({"movieId": np.arange(1, N_ITEMS + 1), "title": titles, "genres": genres}).to_csv(
        root / "movies.csv", index=False
    )
    pd.DataFrame(
        {
            "userId": [1, 2, 3, 4, 5],
            "movieId": [1, 1, 1, 2, 9999],
            "tag": ["pixar", "Pixar", "funny", "classic", "orphan"],
            "timestamp": [1_500_000_000] * 5,
        }
    ).to_csv(root / "tags.csv", index=False)
    (root / "posters").mkdir()
    for i in range(1, posters + 1):
        write_png(root / "posters" / f"{i}.png", tuple(int(v) for v in rng.integers(0, 255, 3)))
    write_png(root / "posters" / "99999.png", (1, 2, 3))  # no such movie
    (root / "posters" / "README.txt").write_text("posters")  # not an image
    return ratings


def write_mmrec(root: Path, seed: int = 2, text_dim: int = 16, image_dim: int = 24) -> pd.DataFrame:
    """Ids 0-based (feature rows); x_label assigned at random, so it disagrees with timestamp order."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    ratings = _ratings(rng, per_user=12, start=1_400_000_000)
    inter = pd.DataFrame(
        {
            "userID": ratings["user"] - 1,
            "itemID": ratings["item"] - 1,
            "rating": 1,
            "timestamp": ratings["timestamp"],
            "x_label": rng.choice([0, 1, 2], len(ratings), p=[0.7, 0.15, 0.15]),
        }
    )
    inter.loc[inter["itemID"] >= N_ITEMS - N_NEW, "x_label"] = 2  # new arrivals: test only (cold items)
    inter.to_csv(root / "toy.inter", sep="\t", index=False)
    np.save(root / "text_feat.npy", rng.normal(size=(N_ITEMS, text_dim)).astype(np.float32))
    np.save(root / "image_feat.npy", rng.normal(size=(N_ITEMS, image_dim)).astype(np.float32))
    return inter


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _load(spec: str, tmp_path: Path):
    return load_source(resolve_source(spec, tmp_path / "data"))


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def test_ml100k_tables_text_threshold(tmp_path):
    ratings = write_ml100k(tmp_path / "ml-100k")
    before = _digest(tmp_path / "ml-100k")
    data = _load(f"movielens:{tmp_path / 'ml-100k'}", tmp_path)
    assert data.info["layout"] == "ml-100k" and data.modalities == ("text",)
    assert len(data.items) == N_ITEMS and data.items["item_id"].is_monotonic_increasing
    movie1 = data.items.set_index("item_id").loc["1"]
    assert movie1["text"] == "Movie 1 (1995). Genres: Action, Comedy"
    assert data.items.set_index("item_id").loc["2", "title"] == "Café Society (1995)"  # latin-1 decoded
    assert data.items["image"].isna().all() and data.items["audio"].isna().all()
    liked = ratings[ratings["rating"] >= 4]
    assert len(data.interactions) == len(liked)  # default threshold: ratings >= 4
    assert set(data.interactions["weight"]) <= {4.0, 5.0}
    assert data.interactions["timestamp"].dtype == np.int64
    counts = data.info["counts"]
    assert counts["read"]["interactions"] == len(ratings)
    assert counts["after_min_rating"]["interactions"] == len(liked) == counts["after_kcore"]["interactions"]
    assert data.info["skipped_modalities"]["image"] == "no posters/ folder"
    assert "audio" in data.info["skipped_modalities"]
    assert _digest(tmp_path / "ml-100k") == before  # the user's files are never modified


def test_movielens_threshold_and_kcore_options(tmp_path):
    ratings = write_ml100k(tmp_path / "ml")
    every = _load(f"movielens:{tmp_path / 'ml'}?min_rating=none", tmp_path)
    assert len(every.interactions) == len(ratings)
    core = _load(f"movielens:{tmp_path / 'ml'}?min_rating=3&kcore=5", tmp_path)
    inter = core.interactions
    assert inter.groupby("user_id").size().min() >= 5 and inter.groupby("item_id").size().min() >= 5
    counts = core.info["counts"]
    assert counts["after_min_rating"]["interactions"] == int((ratings["rating"] >= 3).sum())
    assert counts["after_kcore"]["interactions"] == len(inter) < counts["after_min_rating"]["interactions"]
    # The same core computed independently (repeat until stable) from the raw ratings.
    ref = ratings[ratings["rating"] >= 3]
    while True:
        keep = (ref.groupby("user")["item"].transform("size") >= 5) & (
            ref.groupby("item")["user"].transform("size") >= 5
        )
        if keep.all():
            break
        ref = ref[keep]
    assert len(ref) == len(inter)
    assert set(core.items["item_id"]) == set(inter["item_id"])  # movies outside the core leave the catalogue
    assert counts["catalogue_items_removed_by_kcore"] == N_ITEMS - len(core.items)
    with pytest.raises(DataError, match="min_rating='high' is not a number"):
        _load(f"movielens:{tmp_path / 'ml'}?min_rating=high", tmp_path)
    with pytest.raises(DataError, match=r"option\(s\) \['kcores'\] are not understood"):
        _load(f"movielens:{tmp_path / 'ml'}?kcores=5", tmp_path)


def test_ml_latest_small_tables_tags_posters(tmp_path):
    ratings = write_ml_latest(tmp_path / "ml-latest-small")
    data = _load(f"movielens:{tmp_path / 'ml-latest-small'}", tmp_path)
    assert data.info["layout"] == "ml-latest" and data.modalities == ("text", "image")
    items = data.items.set_index("item_id")
    assert items.loc["1", "text"] == "Movie 1 (2001). Genres: Adventure, Animation. Tags: pixar, funny"
    assert items.loc["2", "title"] == "Good, the Bad (1966)"
    assert items.loc["3", "text"] == "Movie 3 (2001)"  # "(no genres listed)" adds nothing
    assert items["image"].notna().sum() == 6
    assert items.loc["1", "image"].endswith("posters/1.png") and pd.isna(items.loc["7", "image"])
    posters = data.info["posters"]
    assert posters["matched"] == 6 and posters["unmatched_files"] == 1 and posters["ignored_files"] == 1
    assert posters["ignored_examples"] == ["README.txt"] and posters["unmatched_examples"] == ["99999.png"]
    assert data.info["tags"]["rows_naming_unknown_movies"] == 1
    assert len(data.interactions) == int((ratings["rating"] >= 4).sum())
    assert data.interactions["weight"].min() >= 4.0


def test_mmrec_tables_and_contract(tmp_path):
    inter = write_mmrec(tmp_path / "toy")
    data = _load(f"mmrec:{tmp_path / 'toy'}", tmp_path)
    assert data.name == "toy" and data.modalities == ("text", "image")
    assert len(data.items) == N_ITEMS and len(data.interactions) == len(inter)
    assert data.info["split_column"] == "x_label"
    assert data.info["precomputed"] == {
        "text": str(tmp_path / "toy" / "text_feat.npy"),
        "image": str(tmp_path / "toy" / "image_feat.npy"),
    }
    # Items are sorted by their string id; feature_row keeps row i = item id i.
    assert (data.items["feature_row"].astype(str) == data.items["item_id"]).all()
    assert data.info["counts"]["test"] == int((inter["x_label"] == 2).sum())
    assert (data.interactions["x_label"].to_numpy() == inter["x_label"].to_numpy()).all()
    json.dumps(data.info)  # the manifest carries it: must be JSON


def test_source_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="not a MovieLens folder"):
        _load(f"movielens:{tmp_path}", tmp_path)
    write_ml100k(tmp_path / "parent" / "ml-100k")
    with pytest.raises(DataError, match="the subfolder 'ml-100k' looks like one"):
        _load(f"movielens:{tmp_path / 'parent'}", tmp_path)
    bad = tmp_path / "parent" / "ml-100k" / "u.data"
    bad.write_text(bad.read_text() + "7\t3\tfive\t880000000\n")
    line = len(bad.read_text().splitlines())
    with pytest.raises(DataError, match=rf"u.data: line {line}, column 'rating': 'five' is not a number"):
        _load(f"movielens:{tmp_path / 'parent' / 'ml-100k'}", tmp_path)
    root = tmp_path / "mm"
    write_mmrec(root)
    np.save(root / "image_feat.npy", np.zeros((N_ITEMS - 1, 4), np.float32))
    with pytest.raises(DataError, match="disagree on the number of items"):
        _load(f"mmrec:{root}", tmp_path)
    np.save(root / "image_feat.npy", np.zeros((N_ITEMS, 4), np.float32))
    (root / "toy.inter").write_text("userID\titemID\trating\ttimestamp\tx_label\n0\t1\t1\t1400000000\t3\n")
    with pytest.raises(DataError, match=r"line 2, column 'x_label': '3' is not one of 0, 1, 2"):
        _load(f"mmrec:{root}", tmp_path)
    (root / "toy.inter").write_text(f"userID\titemID\trating\ttimestamp\tx_label\n0\t{N_ITEMS}\t1\t1400000000\t0\n")
    with pytest.raises(DataError, match=f"itemID {N_ITEMS} has no feature row"):
        _load(f"mmrec:{root}", tmp_path)
    with pytest.raises(DataError, match="needs a path"):
        resolve_source("mmrec:", tmp_path)


# ----------------------------------------------------------------------------------------------
# Property-based: the table loaders
# ----------------------------------------------------------------------------------------------
# Any printable id (quotes, commas, spaces, "NA"-like words, unicode) survives the CSV round trip.
ids = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + " ,;'\"-_.é#\\", min_size=1, max_size=8).filter(
        lambda s: s.strip() != ""
    ),
    st.sampled_from(["NA", "null", "None", "nan", "0", "007", "1e5", "#1"]),
)
rows = st.lists(st.tuples(ids, ids, st.integers(0, 2_000_000_000), st.integers(1, 10)), min_size=1, max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows)
def test_valid_interactions_round_trip_through_csv(rows):
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pd.DataFrame({"item_id": sorted(set(frame["item_id"])), "title": "t"}).to_csv(root / "items.csv", index=False)
        frame.to_csv(root / "interactions.csv", index=False)
        data = load_folder(root)
    inter = data.interactions
    assert len(inter) == len(frame)
    assert inter["user_id"].tolist() == frame["user_id"].tolist()
    assert inter["item_id"].tolist() == frame["item_id"].tolist()
    assert inter["timestamp"].tolist() == frame["timestamp"].tolist()
    assert inter["weight"].tolist() == frame["rating"].astype(np.float32).tolist()
    assert sorted(data.items["item_id"]) == sorted(set(frame["item_id"]))


junk = st.one_of(
    st.sampled_from(["yesterday", "nan", "inf", "-inf", "NaN", " ", "2024-13-45", "12:00", "--"]),
    st.text(alphabet=string.ascii_letters + " /:-", min_size=1, max_size=12),
)


@settings(max_examples=60, deadline=None)
@given(good=st.lists(st.integers(0, 2_000_000_000), min_size=1, max_size=30), data=st.data())
def test_junk_timestamp_names_its_row(good, data):
    position = data.draw(st.integers(0, len(good)))
    value = data.draw(junk)
    stamps = [str(t) for t in good]
    stamps.insert(position, value)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "items.csv").write_text("item_id,title\na,x\n")
        lines = ["user_id,item_id,timestamp"] + [f'u,a,"{s}"' for s in stamps]
        (root / "interactions.csv").write_text("\n".join(lines) + "\n")
        expected = rf"interactions.csv: row {position + 2} has (an empty timestamp|timestamp)"
        with pytest.raises(DataError, match=expected):
            load_folder(root)


@settings(max_examples=25, deadline=None)
@given(
    ratings=st.lists(
        st.tuples(st.integers(1, 50), st.integers(1, 30), st.integers(1, 5), st.integers(800_000_000, 900_000_000)),
        min_size=1,
        max_size=60,
    ),
    threshold=st.sampled_from([1, 3, 4, 5]),
)
def test_ml100k_threshold_counts(ratings, threshold):
    frame = pd.DataFrame(ratings, columns=["user", "item", "rating", "timestamp"])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frame.to_csv(root / "u.data", sep="\t", header=False, index=False)
        (root / "u.item").write_text("".join(f"{i}|M{i}|||u|" + "|".join(["0"] * 19) + "\n" for i in range(1, 31)))
        data = movielens.load_movielens(root, movielens.MovieLensOptions(min_rating=threshold))
    kept = frame[frame["rating"] >= threshold]
    assert len(data.interactions) == len(kept)
    assert data.info["counts"]["read"]["interactions"] == len(frame)
    assert data.interactions["user_id"].tolist() == kept["user"].astype(str).tolist()


# ----------------------------------------------------------------------------------------------
# The whole graph on each format
# ----------------------------------------------------------------------------------------------
def _materialize(tmp_path: Path, spec: str):
    home = tmp_path / "home"
    start = time.perf_counter()
    result = materialize_graph(home, spec, fast_run_config_small())
    print(f"{spec}: {time.perf_counter() - start:.1f}s")
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {key.to_user_string() for a in all_assets() for key in a.keys}
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == {c.check_key.name for c in all_asset_checks()}
    return result, checks


def test_graph_on_movielens_100k(tmp_path):
    write_ml100k(tmp_path / "ml-100k")
    result, checks = _materialize(tmp_path, f"movielens:{tmp_path / 'ml-100k'}")
    assert all(c.passed for c in checks.values()), {n: c.passed for n, c in checks.items()}
    images = result.output_for_node("image_features")
    assert not images["present"].any()  # no posters: the image modality is skipped, the graph still runs
    aligned = result.output_for_node("aligned_item_embeddings")
    assert aligned["modalities"] == ["text"]
    manifest = result.asset_value("source_dataset")
    assert set(manifest["skipped_modalities"]) == {"image", "audio"}


def test_graph_on_movielens_latest_small_with_posters(tmp_path):
    write_ml_latest(tmp_path / "ml-latest-small")
    result, checks = _materialize(tmp_path, f"movielens:{tmp_path / 'ml-latest-small'}")
    images = result.output_for_node("raw_item_images")
    assert images["present"].sum() == 6 and len(images["quarantine"]) == 0
    assert result.output_for_node("image_features")["present"].sum() == 6
    assert result.output_for_node("aligned_item_embeddings")["modalities"] == ["text", "image"]
    assert checks["raw_item_images_decoded"].passed


def test_graph_on_mmrec_uses_precomputed_features_and_published_split(tmp_path):
    inter = write_mmrec(tmp_path / "toy")
    result, checks = _materialize(tmp_path, f"mmrec:{tmp_path / 'toy'}")
    assert all(c.passed for c in checks.values()), {n: c.passed for n, c in checks.items()}
    items = result.asset_value("raw_items")
    for modality, dim in (("text", 16), ("image", 24)):
        feats = result.output_for_node(f"{modality}_features")
        provided = np.load(tmp_path / "toy" / f"{modality}_feat.npy")
        assert feats["features"].shape == (len(provided), dim) == (N_ITEMS, dim)
        np.testing.assert_array_equal(feats["features"], provided[items["feature_row"].to_numpy()])
        assert feats["present"].all() and "precomputed" in feats
    split = result.output_for_node("interaction_split")
    table = split.table
    users = split.user_ids
    got = pd.DataFrame(
        {
            "user": users[table["user_idx"].to_numpy()],
            "item": items["item_id"].to_numpy()[table["item_idx"].to_numpy()],
            "split": table["split"],
        }
    )
    want = pd.DataFrame(
        {
            "user": inter["userID"].astype(str),
            "item": inter["itemID"].astype(str),
            "split": np.array(["train", "valid", "test"])[inter["x_label"].to_numpy()],
        }
    )
    merged = got.merge(want, on=["user", "item"], suffixes=("", "_published"))
    assert len(merged) == len(inter) and (merged["split"] == merged["split_published"]).all()
    assert (
        table["split"].value_counts().reindex(["train", "valid", "test"]).to_numpy()
        == np.bincount(inter["x_label"], minlength=3)
    ).all()


# ----------------------------------------------------------------------------------------------
# builtin-mmrec: the generated stand-in for a published MMRec dataset


def test_builtin_mmrec_is_an_mmrec_folder_with_the_published_protocol(tmp_path):
    from mm_pipeline.datasets import synthetic_mmrec
    from mm_pipeline.evaluate.split import chronological_split

    source = resolve_source("builtin-mmrec:small", tmp_path, seed=3)
    assert source.kind == "mmrec"
    data = load_source(source)
    spec = synthetic_mmrec.spec_for("small", seed=3)
    inter = data.interactions
    # 5-core on users and items, as the public Amazon sets are.
    assert inter.groupby("user_id").size().min() >= spec.core
    assert inter.groupby("item_id").size().min() >= spec.core
    assert set(data.info["feature_dims"]) == {"text", "image"}
    assert data.info["feature_dims"] == {"text": spec.text_dim, "image": spec.image_dim}
    # x_label is the per-user chronological 8:1:1 split of the published tables.
    frame = inter.assign(user_idx=inter["user_id"].astype(int), item_idx=inter["item_id"].astype(int))
    expected = chronological_split(frame, 0.1, 0.1).map({"train": 0, "valid": 1, "test": 2})
    np.testing.assert_array_equal(inter["x_label"].to_numpy(), expected.to_numpy())
    share = np.bincount(inter["x_label"], minlength=3) / len(inter)
    assert 0.7 < share[0] < 0.8 and share[1] == share[2]  # every user here has >= 5 interactions
    # Same spec: the folder is reused as it is; another spec never overwrites it.
    before = {p.name: p.stat().st_mtime_ns for p in source.root.iterdir()}
    assert resolve_source("builtin-mmrec:small", tmp_path, seed=3).root == source.root
    assert {p.name: p.stat().st_mtime_ns for p in source.root.iterdir()} == before
    with pytest.raises(FileExistsError, match="not written from this spec"):
        synthetic_mmrec.generate_mmrec_like(synthetic_mmrec.spec_for("small", seed=4), source.root, name="small")
    with pytest.raises(DataError, match="choose one of"):
        resolve_source("builtin-mmrec:huge", tmp_path)


def test_builtin_mmrec_is_seeded_and_features_follow_the_items(tmp_path):
    from mm_pipeline.datasets import synthetic_mmrec

    spec = synthetic_mmrec.spec_for("small", seed=1)
    a = synthetic_mmrec.generate_mmrec_like(spec, tmp_path / "a", name="small")
    b = synthetic_mmrec.generate_mmrec_like(spec, tmp_path / "b", name="small")
    for name in ("small.inter", "text_feat.npy", "image_feat.npy"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    # Text carries the item content: items co-consumed in training are closer in text space than random pairs.
    inter = pd.read_csv(a / "small.inter", sep="\t")
    text = np.load(a / "text_feat.npy")
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    train = inter[inter["x_label"] == 0].sort_values(["userID", "timestamp"])
    first = train.groupby("userID")["itemID"].nth(0).to_numpy()
    second = train.groupby("userID")["itemID"].nth(1).to_numpy()
    rng = np.random.default_rng(0)
    co = (text[first] * text[second]).sum(1).mean()
    random_pairs = (text[first] * text[rng.permutation(second)]).sum(1).mean()
    assert co > random_pairs + 0.05


# ------------------------------------------------------------- one read per run; the dataset is resource config
RAW_SOURCE = ["source_dataset", "raw_items", "raw_interactions"]


def _read_raw_source(home, monkeypatch, resources, run_config=None) -> tuple[dict, list]:
    """Materialize the raw assets and the split; the sources the run read, in order."""
    from mm_pipeline.defs.assets import raw

    reads, real = [], raw.load_source
    monkeypatch.setattr(raw, "load_source", lambda source: reads.append(source) or real(source))
    result = dg.materialize(
        all_assets(),
        selection=[*RAW_SOURCE, "interaction_split", "raw_item_images"],
        resources=resources,
        run_config=run_config or {},
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert set(RAW_SOURCE) <= materialized
    split = result.asset_value("interaction_split")
    assert split.n_items == len(result.asset_value("raw_items"))
    return result.asset_value("source_dataset"), reads


def test_the_source_is_read_once_per_run_from_the_pipeline_resource(tmp_path, monkeypatch):
    from mm_pipeline.defs.build import default_resources

    monkeypatch.setenv("MM_PIPELINE_HOME", str(tmp_path))
    monkeypatch.setenv("MM_PIPELINE_DATASET", "builtin:tiny:ecommerce")
    # The environment's dataset reaches the resource as dg.EnvVar, resolved when the run starts.
    resources = default_resources(home=str(tmp_path))
    assert resources["pipeline"].dataset == dg.EnvVar("MM_PIPELINE_DATASET")
    manifest, reads = _read_raw_source(tmp_path, monkeypatch, resources)
    assert len(reads) == 1 and manifest["spec"] == "builtin:tiny:ecommerce"
    assert manifest["root"] == str(reads[0].root) and "ecommerce" in reads[0].root.name

    # Run config (what `mm-pipeline demo --dataset` and `run --dataset` pass) beats the environment.
    manifest, reads = _read_raw_source(
        tmp_path,
        monkeypatch,
        resources,
        run_config={"resources": {"pipeline": {"config": {"dataset": "builtin:tiny"}}}},
    )
    assert len(reads) == 1 and manifest["spec"] == "builtin:tiny" and "video" in reads[0].root.name

    # So does the resource's own config; with neither, the default dataset.
    manifest, reads = _read_raw_source(
        tmp_path, monkeypatch, default_resources(home=str(tmp_path), dataset="builtin:tiny:video")
    )
    assert len(reads) == 1 and manifest["spec"] == "builtin:tiny:video"
    monkeypatch.delenv("MM_PIPELINE_DATASET")
    assert default_resources(home=str(tmp_path))["pipeline"].dataset == ""
    assert default_resources()["pipeline"].dataset_spec() == "builtin:default"


def test_the_raw_assets_are_one_step_and_are_materialized_together(tmp_path):
    from mm_pipeline.defs.build import all_assets as assets
    from mm_pipeline.defs.build import default_resources

    (raw_source,) = [a for a in assets() if "raw_items" in {k.to_user_string() for k in a.keys}]
    assert {k.to_user_string() for k in raw_source.keys} == set(RAW_SOURCE) and not raw_source.can_subset
    with pytest.raises(dg.DagsterInvalidDefinitionError) as raised:
        dg.materialize(
            assets(),
            selection=["raw_items"],
            resources=default_resources(home=str(tmp_path)),
            instance=dg.DagsterInstance.ephemeral(),
        )
    assert isinstance(raised.value.__cause__, dg.DagsterInvalidSubsetError)
    assert "raw_source" in str(raised.value.__cause__)

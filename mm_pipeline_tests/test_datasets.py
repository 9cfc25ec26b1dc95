import numpy as np
import pandas as pd
import pytest

from mm_pipeline.datasets import media, synthetic
from mm_pipeline.datasets.folder import load_folder
from mm_pipeline.datasets.schema import DataError
from mm_pipeline.datasets.sources import resolve_source


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synthetic.generate(synthetic.spec_for("tiny"), tmp_path_factory.mktemp("d") / "tiny")


def test_generator_is_deterministic(tmp_path, tiny):
    again = synthetic.generate(synthetic.spec_for("tiny"), tmp_path / "again")
    for name in ("items.csv", "interactions.csv"):
        assert (tiny / name).read_bytes() == (again / name).read_bytes()
    assert (tiny / "images" / "i000001.png").read_bytes() == (again / "images" / "i000001.png").read_bytes()
    other = synthetic.generate(synthetic.spec_for("tiny", seed=1), tmp_path / "other")
    assert (tiny / "interactions.csv").read_bytes() != (other / "interactions.csv").read_bytes()


def test_audio_clips_from_worker_threads_are_the_sequential_formula_with_the_same_draws(monkeypatch):
    """_make_audio computes its tones by row blocks in threads while the noise is drawn: the clips and the
    generator's state afterwards are those of computing everything in one thread, in draw order."""
    monkeypatch.setattr(synthetic, "AUDIO_BLOCK", 3)  # several blocks for a handful of clips
    tiny = synthetic.spec_for("tiny")
    items = synthetic._item_latents(tiny, np.random.default_rng(0)).iloc[:10]
    rng = np.random.default_rng(5)
    clips = synthetic._make_audio(tiny, items, rng)
    after = rng.random(3)

    rng = np.random.default_rng(5)
    t = np.arange(int(tiny.sample_rate * tiny.clip_seconds), dtype=np.float32) / tiny.sample_rate
    f0 = 150.0 * 2 ** (items["category"].to_numpy() / tiny.n_categories * 3.0) * rng.uniform(0.98, 1.02, 10)
    rhythm = items["rhythm"].to_numpy() % 6
    rate, n_harm = np.array([1.5, 3.0, 5.0, 8.0, 12.0, 18.0])[rhythm], np.array([1, 3, 2, 4, 1, 5])[rhythm]
    phase = rng.uniform(0, 2 * np.pi, 10)
    wave = np.zeros((10, t.size), dtype=np.float32)
    for h in range(1, 6):
        wave += ((h <= n_harm).astype(np.float32) / h)[:, None] * np.sin(
            2 * np.pi * f0[:, None] * h * t + phase[:, None] * h
        )
    wave = wave * 0.5 * (1 + np.sin(2 * np.pi * rate[:, None] * t + phase[:, None]))
    wave = wave / (np.abs(wave).max(1, keepdims=True) + 1e-6) * 0.6
    wave += rng.normal(0, 0.02, wave.shape).astype(np.float32)
    assert clips.dtype == np.float32
    np.testing.assert_array_equal(clips, np.clip(wave, -1, 1).astype(np.float32))
    np.testing.assert_array_equal(after, rng.random(3))


def test_interactions_ranked_in_worker_threads_do_not_depend_on_the_threads(monkeypatch):
    spec = synthetic.spec_for("tiny")
    monkeypatch.setattr(synthetic, "INTERACTION_CHUNK_CELLS", 20 * spec.n_items)  # 12 chunks of 20 users

    def sample(cpus: int):
        monkeypatch.setattr(synthetic.os, "cpu_count", lambda: cpus)
        rng = np.random.default_rng(1)
        items, prefs = synthetic._item_latents(spec, rng), synthetic._user_preferences(spec, rng)
        frame = synthetic._sample_interactions(spec, items, prefs, rng)
        return frame, rng.random(3)

    (one, after_one), (two, after_two) = sample(1), sample(2)
    pd.testing.assert_frame_equal(one, two)
    np.testing.assert_array_equal(after_one, after_two)


def test_generator_realism(tiny):
    data = load_folder(tiny)
    spec = synthetic.spec_for("tiny")
    assert len(data.items) == spec.n_items and data.interactions["user_id"].nunique() == spec.n_users
    assert (data.interactions.groupby("user_id").size() >= spec.min_interactions).all()
    assert not data.interactions.duplicated(["user_id", "item_id"]).any()
    counts = data.interactions["item_id"].value_counts()
    assert counts.iloc[0] > 4 * counts.median()  # popularity skew
    for column in ("image", "audio"):
        missing = data.items[column].isna().mean()
        assert 0 < missing < 0.1, column  # a few percent of items lack each modality
    truth = pd.read_parquet(tiny / "_truth" / "item_latents.parquet")
    new_items = set(truth.loc[truth["is_new"], "item_id"])
    inter = data.interactions.sort_values(["user_id", "timestamp"])
    # New-arrival items come last in every user's history (that is what makes them cold-start items).
    last_old = inter[~inter["item_id"].isin(new_items)].groupby("user_id")["timestamp"].max()
    first_new = inter[inter["item_id"].isin(new_items)].groupby("user_id")["timestamp"].min()
    joined = pd.concat([last_old, first_new], axis=1, join="inner")
    assert len(joined) > 0 and (joined.iloc[:, 0] <= joined.iloc[:, 1]).all()


def test_generation_is_skipped_when_present_and_refuses_other_data(tmp_path, tiny):
    mtime = (tiny / "items.csv").stat().st_mtime_ns
    synthetic.generate(synthetic.spec_for("tiny"), tiny)
    assert (tiny / "items.csv").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError):
        synthetic.generate(synthetic.spec_for("tiny", seed=3), tiny)


def test_resolve_source(tmp_path):
    src = resolve_source("builtin:tiny:ecommerce", tmp_path)
    data = load_folder(src.root)
    assert data.items["audio"].isna().all()  # the e-commerce scenario has no audio
    with pytest.raises(DataError, match="unknown dataset spec"):
        resolve_source("s3:bucket", tmp_path)
    with pytest.raises(ValueError, match="unknown built-in size"):
        resolve_source("builtin:huge", tmp_path)


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_folder(tmp_path / "nope")
    (tmp_path / "items.csv").write_text("item_id,title\na,x\n")
    with pytest.raises(DataError, match="interactions"):
        load_folder(tmp_path)
    (tmp_path / "interactions.csv").write_text("user_id,item_id\nu,a\n")
    with pytest.raises(DataError, match=r"missing required column\(s\) \['timestamp'\]"):
        load_folder(tmp_path)
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp\nu,a,yesterday\n")
    with pytest.raises(DataError, match="row 2 has timestamp 'yesterday'"):
        load_folder(tmp_path)


def test_folder_reads_iso_dates_and_keeps_extra_columns(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title,brand\nb,Blue shoe,acme\na,Red hat,zeta\n")
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp,rating\nu1,a,2024-01-02T00:00:00Z,4\n")
    data = load_folder(tmp_path)
    assert list(data.items["item_id"]) == ["a", "b"] and "brand" in data.items
    assert data.interactions["timestamp"].iloc[0] == 1704153600
    assert data.interactions["weight"].iloc[0] == 4.0
    assert data.modalities == ("text",)


def test_media_decoding_quarantines_bad_files(tmp_path):
    import cv2

    good = np.full((40, 20, 3), 200, np.uint8)
    cv2.imwrite(str(tmp_path / "good.png"), good)
    gray16 = np.arange(100, dtype=np.uint16).reshape(10, 10) * 600
    cv2.imwrite(str(tmp_path / "gray16.png"), gray16)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    outside = tmp_path.parent / "outside.png"
    cv2.imwrite(str(outside), good)
    paths = [
        str(tmp_path / "good.png"),
        str(tmp_path / "gray16.png"),
        str(tmp_path / "broken.png"),
        str(tmp_path / "../outside.png"),
        None,
        str(tmp_path / "missing.png"),
    ]
    images, present, quarantine = media.decode_images(tmp_path, list("abcdef"), paths, 16)
    assert images.shape == (6, 16, 16, 3)
    assert present.tolist() == [True, True, False, False, False, False]
    reasons = {q.item_id: q.reason for q in quarantine}
    assert set(reasons) == {"c", "d", "f"}
    assert reasons["c"].startswith("truncated image:") and reasons["d"].startswith("outside the dataset folder:")
    assert reasons["f"].startswith("file not found:")


def test_audio_decoding(tmp_path):
    from scipy.io import wavfile

    wavfile.write(tmp_path / "a.wav", 16000, (np.sin(np.arange(16000) / 5) * 10000).astype(np.int16))
    wavfile.write(tmp_path / "empty.wav", 8000, np.zeros(0, np.int16))
    (tmp_path / "fake.wav").write_text("not audio")
    waves, present, quarantine = media.decode_audio(
        tmp_path, ["a", "b", "c"], [str(tmp_path / n) for n in ("a.wav", "empty.wav", "fake.wav")], 8000, 0.5
    )
    assert waves.shape == (3, 4000) and present.tolist() == [True, False, False]
    assert np.abs(waves[0]).max() > 0.2
    assert {q.item_id for q in quarantine} == {"b", "c"}


def test_folder_rows_are_named_exactly_and_bad_cells_are_refused(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title\na,x\nb,y\n")
    # A blank line does not shift the row numbers in errors.
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp\nu,a,1\n\nu,b,soon\n")
    with pytest.raises(DataError, match="row 4 has timestamp 'soon'"):
        load_folder(tmp_path)
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp\nu,a,1\n,b,2\n")
    with pytest.raises(DataError, match="line 3 has no value in column 'user_id'"):
        load_folder(tmp_path)
    (tmp_path / "interactions.csv").write_text("user_id,item_id,timestamp,rating\nu,a,1,4\nu,b,2,inf\n")
    with pytest.raises(DataError, match="row 3 has rating 'inf', which is not a number"):
        load_folder(tmp_path)
    (tmp_path / "dataset.json").write_text("{name: shop}")
    with pytest.raises(DataError, match="dataset.json: not valid JSON"):
        load_folder(tmp_path)


def test_folder_mixes_integer_and_iso_timestamps(tmp_path):
    (tmp_path / "items.csv").write_text("item_id,title\na,x\n")
    (tmp_path / "interactions.csv").write_text(
        "user_id,item_id,timestamp\nu,a,1704153600\nv,a,2024-01-02T00:00:00Z\nw,a,2024-01-02\n\n"
    )
    data = load_folder(tmp_path)
    assert data.interactions["timestamp"].tolist() == [1704153600] * 3
    assert data.interactions.index.tolist() == [0, 1, 2]


def test_spec_options_are_parsed_and_checked(tmp_path):
    src = resolve_source("movielens:/data/ml-100k?min_rating=3.5&kcore=5", tmp_path)
    assert src.kind == "movielens" and str(src.root).endswith("ml-100k")
    assert src.option_dict == {"min_rating": "3.5", "kcore": "5"}
    with pytest.raises(DataError, match=r"option\(s\) \['kcore'\] are not understood by 'mmrec:'"):
        resolve_source("mmrec:/data/baby?kcore=5", tmp_path)
    with pytest.raises(DataError, match="must be a whole number"):
        from mm_pipeline.datasets.movielens import options_from

        options_from({"kcore": "-2"})


def test_source_fingerprint_follows_every_file_the_spec_and_the_seed(tmp_path):
    from mm_pipeline.datasets.sources import resolve_source, source_fingerprint

    shop = tmp_path / "shop"
    (shop / "images").mkdir(parents=True)
    (shop / "items.csv").write_text("item_id,title\na,Red hat\n")
    (shop / "images" / "a.png").write_bytes(b"\x89PNG fake")
    spec = f"folder:{shop}"
    source = resolve_source(spec, tmp_path / "data")
    first = source_fingerprint(spec, source)
    assert source_fingerprint(spec, source) == first
    (shop / ".items.csv.tmp-0").write_text("a write in progress")  # hidden names are not the source
    assert source_fingerprint(spec, source) == first
    assert source_fingerprint(spec, source, seed=1) != first
    assert source_fingerprint(f"{spec}?bad_rows=quarantine", resolve_source(f"{spec}?bad_rows=quarantine", "")) != first
    (shop / "images" / "a.png").write_bytes(b"\x89PNG edited")
    edited = source_fingerprint(spec, source)
    assert edited != first
    (shop / "images" / "b.png").write_bytes(b"\x89PNG new")
    assert source_fingerprint(spec, source) not in (first, edited)

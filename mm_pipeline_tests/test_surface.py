"""The everyday surface: batch scoring, ``mm-pipeline recommend``/``report``, and a failed demo that ends
with the data error."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from mm_pipeline import cli
from mm_pipeline.recommend.base import EmbeddingRecommender, sparse_from_scipy
from mm_pipeline.registry.pyfunc import RecommenderPyfunc, export_serving_arrays, secret_fingerprint, user_key
from mm_pipeline.registry.scoring import (
    BATCH_COLUMNS,
    read_recommendations,
    recommendations_for,
    score_all_users,
    write_recommendations,
)
from mm_pipeline.storage import load_bundle

from fast_config import FASTER_OPS, fast_run_config, materialize_graph

N_USERS, N_ITEMS, D = 37, 23, 5
USER_IDS = [f"person-{u}" for u in range(N_USERS)]
ITEM_IDS = [f"item-{i:02d}" for i in range(N_ITEMS)]
SECRET = b"surface-tests-secret-0123456789"


def _arrays(sparse_users: bool = False) -> tuple[dict, sp.csr_matrix]:
    rng = np.random.default_rng(11)
    dense = (rng.random((N_USERS, N_ITEMS)) < 0.3).astype(np.float32)
    dense[0] = 1.0  # user 0 has seen every item ...
    dense[0, 5] = 0.0  # ... but one
    train = sp.csr_matrix(dense)
    if sparse_users:  # an item-item model: the user's history times an item-item matrix
        users = sparse_from_scipy(train)
        items = torch.from_numpy(rng.normal(size=(N_ITEMS, N_ITEMS)).astype(np.float32))
    else:
        users = torch.from_numpy(rng.normal(size=(N_USERS, D)).astype(np.float32))
        items = torch.from_numpy(rng.normal(size=(N_ITEMS, D)).astype(np.float32))
        items[3] = items[4]  # a tie: broken towards the lower item index, as served
    model = EmbeddingRecommender("toy", users, items)
    return export_serving_arrays(model, USER_IDS, ITEM_IDS, train, SECRET), train


@pytest.mark.parametrize("sparse_users", [False, True])
def test_batch_scores_every_user_as_the_served_model_answers(sparse_users):
    arrays, train = _arrays(sparse_users)
    table = score_all_users(arrays, k=4, chunk_users=5, secret=SECRET)
    assert list(table.columns) == list(BATCH_COLUMNS)
    served = (
        RecommenderPyfunc()
        .load_arrays(arrays, secret=SECRET)
        .predict(None, pd.DataFrame({"user_id": USER_IDS, "k": 4}))
    )
    assert not served["fallback"].any()
    expected = served.assign(user_key=[user_key(u, SECRET) for u in served["user_id"]])
    pd.testing.assert_frame_equal(
        table.assign(user_key=table["user_key"].astype(str), score=table["score"].astype(np.float64)),
        expected[list(BATCH_COLUMNS)].reset_index(drop=True),
    )
    assert (table[table["user_key"] == user_key(USER_IDS[0], SECRET)]["item_id"] == ["item-05"]).all()
    seen = {(USER_IDS[u], ITEM_IDS[i]) for u, i in zip(*train.nonzero())}
    by_key = {user_key(u, SECRET): u for u in USER_IDS}
    assert not {(by_key[key], item) for key, item in zip(table["user_key"].astype(str), table["item_id"])} & seen
    # The chunk size changes nothing; k beyond the catalogue is capped at it.
    pd.testing.assert_frame_equal(score_all_users(arrays, k=4, chunk_users=1000, secret=SECRET), table)
    whole = score_all_users(arrays, k=100, secret=SECRET)
    assert whole.groupby("user_key", observed=True).size().max() <= N_ITEMS


def test_batch_table_is_written_atomically_with_no_raw_ids_and_no_secret(tmp_path):
    arrays, _ = _arrays()
    table = score_all_users(arrays, k=3, secret=SECRET)
    key_check = secret_fingerprint(SECRET)
    path = tmp_path / "batch" / "recommendations.parquet"
    write_recommendations(path, table, key_check, {"model_uri": "models:/m/1", "k": 3})
    write_recommendations(path, table, key_check, {"model_uri": "models:/m/1", "k": 3})  # replaced in place
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    stored, about = read_recommendations(path)
    assert about == {"model_uri": "models:/m/1", "k": "3", "key_check": key_check}
    pd.testing.assert_frame_equal(
        stored.assign(user_key=stored["user_key"].astype(str)), table.assign(user_key=table["user_key"].astype(str))
    )
    mine = recommendations_for(stored, about, USER_IDS[7], SECRET)
    assert list(mine["rank"]) == [1, 2, 3]
    assert recommendations_for(stored, about, "stranger", SECRET).empty
    with pytest.raises(ValueError, match="not the one the batch table was keyed with"):
        recommendations_for(stored, about, USER_IDS[7], b"some-other-secret-0123456789")
    raw = path.read_bytes()
    assert not any(user.encode() in raw for user in USER_IDS) and SECRET not in raw
    with pytest.raises(ValueError, match="missing"):
        write_recommendations(path, table.drop(columns="score"), key_check, {})


# ----------------------------------------------------------------------------------------------
# The whole graph on builtin:tiny, then the command line against what it left in the project home
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    result = materialize_graph(home, "builtin:tiny", fast_run_config(FASTER_OPS))
    assert result.success
    return home, result


@pytest.fixture
def in_home(home, monkeypatch):
    monkeypatch.setenv("MM_PIPELINE_HOME", str(home[0]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MM_PIPELINE_STORAGE", raising=False)
    yield home
    mlflow.set_tracking_uri(None)


def pipeline_user_key_secret_of(home_dir) -> bytes:
    """The embedded default secret the run created under its project home."""
    return (home_dir / "secrets" / "user_key").read_bytes().strip()


def _known_user(home_dir) -> str:
    return str(load_bundle(home_dir / "assets" / "raw_interactions")["table"]["user_id"].iloc[0])


def test_batch_asset_scores_every_user_of_the_champion(home):
    home_dir, result = home
    value = result.output_for_node("batch_recommendations")
    promotion = result.output_for_node("model_promotion")
    assert value["version"] == promotion["champion_after"] and value["k"] == 20
    assert value["recommender"] == result.output_for_node("selected_model")["selected"]
    path = home_dir / "batch" / "recommendations.parquet"
    assert value["path"] == str(path)
    table, about = read_recommendations(path)
    split = result.output_for_node("interaction_split")
    assert value["users"] == table["user_key"].nunique() == int(split.n_users)
    assert value["rows"] == len(table) and table.groupby("user_key", observed=True).size().max() == 20
    assert about["model_uri"] == value["model_uri"] == f"models:/{value['registered_model']}/{value['version']}"
    raw_users = {str(u) for u in split.user_ids.tolist()}
    secret = pipeline_user_key_secret_of(home_dir)
    assert {user_key(u, secret) for u in raw_users} == set(table["user_key"].astype(str))
    assert not raw_users & set(table["user_key"].astype(str))
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "batch_recommendations"
    ]
    preview = event.materialization.metadata["preview"]
    assert [c.name for c in preview.schema.columns] == list(BATCH_COLUMNS) and len(preview.records) == 20


def test_recommend_prints_the_champions_top_k(in_home, capsys):
    home_dir, result = in_home
    user = _known_user(home_dir)
    assert cli.main(["recommend", "--user", user, "--k", "5", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    promotion = result.output_for_node("model_promotion")
    assert answer["version"] == promotion["champion_after"] and not answer["fallback"]
    assert answer["recommender"] == result.output_for_node("selected_model")["selected"]
    assert [i["rank"] for i in answer["items"]] == [1, 2, 3, 4, 5]
    assert all(i["title"] and i["score"] is not None for i in answer["items"])
    # The same items as the batch file holds for that user.
    table, about = read_recommendations(home_dir / "batch" / "recommendations.parquet")
    mine = recommendations_for(table, about, user, pipeline_user_key_secret_of(home_dir)).head(5)
    assert [i["item_id"] for i in answer["items"]] == mine["item_id"].tolist()

    assert cli.main(["recommend", "--user", user, "--k", "3"]) == 0
    text = capsys.readouterr().out
    assert f"Top 3 for user {user!r} from the champion" in text and answer["items"][0]["item_id"] in text


def test_recommend_for_an_unknown_user_says_it_is_the_fallback(in_home, capsys):
    assert cli.main(["recommend", "--user", "nobody-knows-me", "--k", "4"]) == 0
    text = capsys.readouterr().out
    assert "not known to the champion" in text and "most popular items" in text
    assert cli.main(["recommend", "--user", "nobody-knows-me", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["fallback"] and len(answer["items"]) == 10 and answer["items"][0]["score"] is None


def test_recommend_and_report_before_any_run_say_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MM_PIPELINE_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["recommend", "--user", "u1"]) == 1
    assert cli.main(["report"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all("run `mm-pipeline demo` first" in line for line in err)
    assert "no champion model yet" in err[0] and "no report yet" in err[1]
    assert not (tmp_path / "mlflow" / "mlflow.db").exists()  # asking created no store


def test_report_prints_the_latest_metrics(in_home, capsys):
    assert cli.main(["report"]) == 0
    assert "recall@20" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# A failed demo: the step and the data error, not a stack trace
# ----------------------------------------------------------------------------------------------
def test_failed_demo_ends_with_the_data_error(tmp_path, monkeypatch, capsys):
    data = tmp_path / "shop"
    data.mkdir()
    (data / "items.csv").write_text("item_id,title\na,Red hat\n")
    (data / "interactions.csv").write_text("user_id,item_id\nu1,a\n")  # no timestamp column
    monkeypatch.setenv("MM_PIPELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MM_PIPELINE_DATASET", "builtin:tiny")  # run_demo sets it; restored afterwards
    assert cli.main(["demo", "--dataset", f"folder:{data}"]) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "started  raw_source" in err and "FAILED   raw_source" in err  # progress as it runs
    assert f"step raw_source failed: {data / 'interactions.csv'}: missing required column(s) ['timestamp']" in err
    assert "step(s) not executed" in err and "Dependencies for step" not in err
    assert "Traceback" not in err + captured.out
    assert cli.main(["demo", "--dataset", f"folder:{data}", "--debug"]) == 1
    err = capsys.readouterr().err
    assert "DataError" in err and 'File "' in err  # the whole trace, on request
    # Through the job's executor too: the run's log goes by, and it ends with the same line.
    assert cli.main(["run", "--dataset", f"folder:{data}"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-2:]
    assert last[0].startswith("step raw_source failed: ") and "missing required column(s)" in last[0]

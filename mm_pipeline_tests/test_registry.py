"""MLflow registry room: tracking helpers, the recommender pyfunc, registration and aliases.

Everything runs against a SQLite store in a temporary folder; MLflow's process-wide state (tracking
/ registry URI, active experiment, their environment variables, the temp dir and the working
directory) is restored afterwards, so no other test sees it and nothing is written elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import mlflow
import mlflow.tracking._model_registry.utils as registry_utils
import mlflow.tracking._tracking_service.utils as tracking_utils
import mlflow.tracking.fluent as fluent
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from mlflow.tracking import MlflowClient

from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.registry import (
    TAG_CODE_VERSION,
    TAG_DAGSTER_ASSET_KEY,
    TAG_DAGSTER_RUN_ID,
    RecommenderPyfunc,
    configure_mlflow,
    export_serving_arrays,
    log_history,
    log_recommender,
    register_alias,
    run_tags,
    safe_params,
    user_key,
)
from mm_pipeline.registry.pyfunc import read_user_key_secret, secret_fingerprint

N_USERS, N_ITEMS, D = 20, 30, 8
MODEL_NAME = "test_recommender"
# Distinctive raw ids: '-' and 'x' never occur in a hex digest, so a substring hit is a real leak.
USER_IDS = [f"alice-{i:03d}-x" for i in range(N_USERS)]
ITEM_IDS = [f"sku-{i:03d}" for i in range(N_ITEMS)]
SECRET = b"registry-tests-secret-0123456789abcdef"
_MLFLOW_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    cwd, tmp = root / "cwd", root / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        for name in _MLFLOW_ENV:
            mp.delenv(name, raising=False)
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mp.setenv("MM_PIPELINE_USER_KEY_SECRET", SECRET.decode())  # what a server would be given
        mp.delenv("MM_PIPELINE_USER_KEY_SECRET_FILE", raising=False)
        # MLflow keeps these in module globals (and mirrors them into the env vars above); record
        # them so the MonkeyPatch puts them back once the module is done.
        mp.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
        mp.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
        mp.setattr(fluent, "_active_experiment_id", fluent._active_experiment_id)
        mp.setattr(tempfile, "tempdir", str(tmp))
        mp.chdir(cwd)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        experiment_id = configure_mlflow(uri, "registry-tests", root / "artifacts")
        try:
            yield SimpleNamespace(
                root=root, cwd=cwd, uri=uri, experiment_id=experiment_id, artifacts=root / "artifacts"
            )
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()


def _toy_data():
    g = torch.Generator().manual_seed(7)
    model = EmbeddingRecommender(
        "mf", torch.randn(N_USERS, D, generator=g), torch.randn(N_ITEMS, D, generator=g), info={"epochs": 2}
    )
    rng = np.random.default_rng(7)
    dense = (rng.random((N_USERS, N_ITEMS)) < 0.2).astype(np.float32)
    dense[0, :] = 1.0
    dense[0, [4, 17]] = 0.0  # user 0 has seen every item but two
    dense[1, :] = 0.0  # user 1 has seen nothing
    return model, sp.csr_matrix(dense)


def _interest_space():
    """Aligned per-modality item embeddings (random, two modalities) for the served explanations."""
    from mm_pipeline.explain.interest import InterestSpace

    z = np.random.default_rng(3).normal(size=(N_ITEMS, 2, 4)).astype(np.float32)
    aligned = {"modalities": ["text", "image"], "modality_embeddings": z, "present": np.ones((N_ITEMS, 2), bool)}
    return InterestSpace.from_aligned(aligned, samples=32)


@pytest.fixture(scope="module")
def logged(store):
    model, train = _toy_data()
    with mlflow.start_run() as run:
        mlflow.log_params(safe_params({"lr": 0.01, "user_ids": USER_IDS[:3], "model": {"dim": D}}))
        info = log_recommender(
            model,
            USER_IDS,
            ITEM_IDS,
            train,
            name="recommender",
            registered_model_name=MODEL_NAME,
            tags={"users": USER_IDS[:2], "k": 10},
            interest=_interest_space(),
        )
    local = store.root / "downloaded"
    local.mkdir()
    loaded = mlflow.pyfunc.load_model(info.model_uri, dst_path=str(local))
    return SimpleNamespace(model=model, train=train, info=info, run_id=run.info.run_id, loaded=loaded, local=local)


def _expected_top_k(model, train, user: int, k: int) -> tuple[list[str], np.ndarray]:
    scores = model.user_embeddings.numpy()[user] @ model.item_embeddings.numpy().T
    scores[train[user].indices] = -np.inf
    order = np.argsort(-scores, kind="stable")
    order = [i for i in order if np.isfinite(scores[i])][:k]
    return [ITEM_IDS[i] for i in order], scores[order]


def _popular_ids(train) -> list[str]:
    counts = np.asarray((train != 0).sum(axis=0)).ravel()
    return [ITEM_IDS[i] for i in np.lexsort((np.arange(N_ITEMS), -counts))]


# --- tracking -----------------------------------------------------------------------------------


def test_configure_mlflow_creates_experiment_under_artifact_root(store):
    client = MlflowClient(store.uri)
    experiment = client.get_experiment(store.experiment_id)
    assert experiment.name == "registry-tests"
    assert experiment.artifact_location == store.artifacts.resolve().as_uri()
    assert mlflow.get_tracking_uri() == store.uri and mlflow.get_registry_uri() == store.uri
    # Existing experiment: same id, artifact location left as it was created.
    again = configure_mlflow(store.uri, "registry-tests", store.root / "elsewhere")
    assert again == store.experiment_id
    assert client.get_experiment(again).artifact_location == store.artifacts.resolve().as_uri()
    assert not (store.root / "elsewhere").exists()
    with pytest.raises(ValueError, match="experiment_name"):
        configure_mlflow(store.uri, "", None)


def test_log_history_batches_all_steps(store, monkeypatch):
    n = 1100
    history = pd.DataFrame(
        {
            "epoch": np.arange(n),
            "loss": np.linspace(2.0, 0.5, n),
            "val_recall@20": np.where(np.arange(n) % 2 == 0, np.arange(n) / n, np.nan),  # every other epoch
            "note": ["x"] * n,  # not numeric: ignored
        }
    )
    calls = []
    original = MlflowClient.log_batch

    def spy(self, run_id, metrics=(), *args, **kwargs):
        calls.append(len(metrics))
        return original(self, run_id, metrics, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", spy)
    with mlflow.start_run() as run:
        logged = log_history(history)
    assert logged == n + n // 2
    assert calls == [1000, 650]  # chunked at MLflow's 1000-metric batch limit, not one call per value
    client = MlflowClient()
    loss = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in loss] == list(range(n))
    np.testing.assert_allclose([m.value for m in loss], history["loss"].to_numpy())
    recall = client.get_metric_history(run.info.run_id, "val_recall_at_20")  # '@' is not allowed
    assert sorted(m.step for m in recall) == list(range(0, n, 2))
    assert "note" not in client.get_run(run.info.run_id).data.metrics

    with mlflow.start_run():
        with pytest.raises(ValueError, match="step_column 'step'"):
            log_history(history, step_column="step")
        with pytest.raises(ValueError, match="both map to metric 'a_b'"):
            log_history(pd.DataFrame({"epoch": [0], "a?b": [1.0], "a_b": [2.0]}))
        with pytest.raises(ValueError, match="whole numbers"):
            log_history(pd.DataFrame({"epoch": [0.5, 1.0], "loss": [1.0, 2.0]}))


def test_safe_params_flattens_stringifies_and_drops_user_ids(store):
    params = safe_params(
        {
            "lr": 1e-3,
            "n_users": 20,
            "model": {"dim": 8, "layers": [64, 32]},
            "user_ids": ["alice", "bob"],
            "eval": {"users": ["carol"], "k": 10},
            "test_user_id": "dave",
            "UserIDs": "erin",
            "holdout_users": ["frank"],
            "uid": "gina",
            "user": "hank",
            "users": 20,
            "notes": "y" * 7000,
            "bad key?": 1,
            "recall@20": 0.5,
        }
    )
    assert params == {
        "lr": "0.001",
        "n_users": "20",
        "model.dim": "8",
        "model.layers": "[64, 32]",
        "eval.k": "10",
        "users": "20",
        "notes": "y" * 6000,
        "bad key_": "1",
        "recall_at_20": "0.5",
    }
    with mlflow.start_run() as run:
        mlflow.log_params(params)  # MLflow accepts every key and value
    assert MlflowClient().get_run(run.info.run_id).data.params == params
    with pytest.raises(ValueError, match="same key 'a.b'"):
        safe_params({"a.b": 1, "a": {"b": 2}})
    with pytest.raises(TypeError, match="params must be a mapping"):
        safe_params([("lr", 1)])


def test_run_tags_names_and_filtering():
    tags = run_tags(
        "run-123", "recommend/model", "abc", extra={"stage": "train", "user_id": "alice", "cfg": {"seed": 0}}
    )
    assert tags == {
        TAG_DAGSTER_RUN_ID: "run-123",
        TAG_DAGSTER_ASSET_KEY: "recommend/model",
        TAG_CODE_VERSION: "abc",
        "stage": "train",
        "cfg.seed": "0",
    }
    assert TAG_DAGSTER_RUN_ID == "dagster.run_id" and TAG_CODE_VERSION == "mm_pipeline.code_version"
    assert run_tags(None, None, None, None) == {}
    with pytest.raises(ValueError, match="reserved"):
        run_tags(extra={"dagster.run_id": "x"})
    with pytest.raises(ValueError, match="dagster_run_id"):
        run_tags("", None, None, None)


# --- serving arrays -----------------------------------------------------------------------------


def test_export_serving_arrays_content_and_determinism():
    model, train = _toy_data()
    arrays = export_serving_arrays(model, USER_IDS, ITEM_IDS, train, SECRET)
    again = export_serving_arrays(model, USER_IDS, ITEM_IDS, train, SECRET)
    assert arrays.keys() == again.keys()
    assert all(np.array_equal(arrays[key], again[key]) for key in arrays)  # deterministic
    assert arrays["user_embeddings"].dtype == np.float32 and arrays["user_embeddings"].shape == (N_USERS, D)
    assert arrays["item_ids"].dtype.kind == "U" and arrays["item_ids"].tolist() == ITEM_IDS
    assert "salt" not in arrays and str(arrays["key_check"]) == secret_fingerprint(SECRET)
    assert arrays["user_keys"].tolist() == [user_key(u, SECRET) for u in USER_IDS]
    assert [ITEM_IDS[i] for i in arrays["popular_items"]] == _popular_ids(train)
    np.testing.assert_array_equal(
        arrays["seen_indices"][arrays["seen_indptr"][0] : arrays["seen_indptr"][1]],
        np.setdiff1d(np.arange(N_ITEMS), [4, 17]),
    )
    assert arrays["seen_indptr"][2] == arrays["seen_indptr"][1]  # user 1 has seen nothing
    other = export_serving_arrays(model, USER_IDS, ITEM_IDS, train, b"another-secret-of-enough-length")
    assert not np.array_equal(other["user_keys"], arrays["user_keys"])
    with pytest.raises(ValueError, match="at least 16 bytes"):
        export_serving_arrays(model, USER_IDS, ITEM_IDS, train, b"short")

    no_train = export_serving_arrays(model, USER_IDS, ITEM_IDS, None, SECRET)
    assert "seen_indptr" not in no_train and "seen_indices" not in no_train
    mean_scores = model.item_embeddings.numpy() @ model.user_embeddings.numpy().mean(axis=0)
    np.testing.assert_array_equal(no_train["popular_items"], np.argsort(-mean_scores, kind="stable"))

    with pytest.raises(ValueError, match="user_ids has 19 ids"):
        export_serving_arrays(model, USER_IDS[:-1], ITEM_IDS, train, SECRET)
    with pytest.raises(ValueError, match="item_ids contains duplicate"):
        export_serving_arrays(model, USER_IDS, ITEM_IDS[:-1] + ITEM_IDS[:1], train, SECRET)
    with pytest.raises(ValueError, match="train has shape"):
        export_serving_arrays(model, USER_IDS, ITEM_IDS, train[:5], SECRET)
    with pytest.raises(TypeError, match="model must be an EmbeddingRecommender"):
        export_serving_arrays(object(), USER_IDS, ITEM_IDS, train, SECRET)


def test_a_sparse_user_table_serves_the_same_top_k_as_its_dense_copy():
    from mm_pipeline.recommend.base import sparse_from_scipy

    _, train = _toy_data()
    rng = np.random.default_rng(3)
    history = sp.csr_matrix(train.toarray() * rng.random((N_USERS, N_ITEMS)).astype(np.float32))
    items = torch.from_numpy(rng.normal(size=(N_ITEMS, N_ITEMS)).astype(np.float32))  # an item-item model
    sparse = EmbeddingRecommender("ease", sparse_from_scipy(history), items)
    dense = EmbeddingRecommender("ease", torch.from_numpy(history.toarray()), items)
    arrays = export_serving_arrays(sparse, USER_IDS, ITEM_IDS, train, SECRET)
    assert "user_embeddings" not in arrays and arrays["user_indices"].size == history.nnz
    request = pd.DataFrame({"user_id": [USER_IDS[3], "stranger", USER_IDS[0]], "k": [5, 2, 3]})
    got = RecommenderPyfunc().load_arrays(arrays).predict(None, request)
    want = (
        RecommenderPyfunc()
        .load_arrays(export_serving_arrays(dense, USER_IDS, ITEM_IDS, train, SECRET))
        .predict(None, request)
    )
    pd.testing.assert_frame_equal(got, want)
    bad = dict(arrays, user_indices=arrays["user_indices"] + N_ITEMS)
    with pytest.raises(ValueError, match="user_indices must lie in"):
        RecommenderPyfunc().load_arrays(bad)


def test_predict_validates_input():
    model, train = _toy_data()
    pyfunc = RecommenderPyfunc().load_arrays(export_serving_arrays(model, USER_IDS, ITEM_IDS, train, SECRET))
    with pytest.raises(ValueError, match="'user_id' column"):
        pyfunc.predict(None, pd.DataFrame({"user": [USER_IDS[0]]}))
    with pytest.raises(ValueError, match="column 'k' must hold positive integers"):
        pyfunc.predict(None, pd.DataFrame({"user_id": [USER_IDS[0]], "k": [0]}))
    with pytest.raises(ValueError, match="'user_id' has missing values"):
        pyfunc.predict(None, pd.DataFrame({"user_id": [None]}))
    with pytest.raises(TypeError, match="model_input must be a pandas DataFrame"):
        pyfunc.predict(None, [USER_IDS[0]])
    empty = pyfunc.predict(None, pd.DataFrame({"user_id": pd.Series([], dtype=str)}))
    assert list(empty.columns) == ["user_id", "rank", "item_id", "score", "fallback"] and empty.empty


# --- logged model -------------------------------------------------------------------------------


def test_log_recommender_registers_a_version_linked_to_the_run(store, logged):
    info = logged.info
    assert info.model_uri.startswith("models:/m-") and info.registered_model_version == 1
    client = MlflowClient()
    version = client.get_model_version(MODEL_NAME, "1")
    assert version.status == "READY" and version.run_id == logged.run_id
    assert version.source == f"models:/{info.model_id}"
    logged_model = client.get_logged_model(info.model_id)
    assert logged_model.source_run_id == logged.run_id and logged_model.name == "recommender"
    assert logged_model.params["n_items"] == str(N_ITEMS) and logged_model.params["excludes_seen"] == "True"
    assert logged_model.tags["k"] == "10" and "users" not in logged_model.tags
    assert info.artifact_path.startswith(store.artifacts.resolve().as_uri())
    requirements = (logged.local / "requirements.txt").read_text().split()
    assert sorted(r.split("==")[0] for r in requirements) == ["mlflow", "numpy", "pandas", "scipy"]
    example = json.loads((logged.local / "input_example.json").read_text())
    assert all(row[0].startswith("example-user") for row in example["data"])

    champion = register_alias(MODEL_NAME, 1, "champion")
    assert str(champion.version) == "1" and "champion" in champion.aliases
    (store.root / "by_alias").mkdir()
    by_alias = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion", dst_path=str(store.root / "by_alias"))
    assert by_alias.metadata.model_id == info.model_id
    with pytest.raises(ValueError, match="alias must be"):
        register_alias(MODEL_NAME, 1, "v2")
    with pytest.raises(ValueError, match="version must be"):
        register_alias(MODEL_NAME, 0, "champion")


def test_loaded_model_returns_numpy_top_k_and_popular_fallback(logged):
    model, train = logged.model, logged.train
    request = pd.DataFrame(
        {"user_id": [USER_IDS[3], "nobody", USER_IDS[0], USER_IDS[1], USER_IDS[3]], "k": [5, 4, 5, 30, 1]}
    )
    out = logged.loaded.predict(request)
    assert list(out.columns) == ["user_id", "rank", "item_id", "score", "fallback"]
    assert out["user_id"].tolist() == [USER_IDS[3]] * 5 + ["nobody"] * 4 + [USER_IDS[0]] * 2 + [USER_IDS[1]] * 30 + [
        USER_IDS[3]
    ]

    def block(user_id, k_rows):
        rows = out[out["user_id"] == user_id]
        return rows.iloc[:k_rows]

    for user, k in ((3, 5), (0, 5), (1, 30)):
        rows = block(USER_IDS[user], k)
        expected_items, expected_scores = _expected_top_k(model, train, user, k)
        assert rows["item_id"].tolist() == expected_items
        np.testing.assert_allclose(rows["score"].to_numpy(), expected_scores, rtol=1e-5)
        assert rows["rank"].tolist() == list(range(1, len(expected_items) + 1))
        assert not rows["fallback"].any()
        assert not set(rows["item_id"]) & {ITEM_IDS[i] for i in train[user].indices}
    assert set(block(USER_IDS[0], 5)["item_id"]) == {ITEM_IDS[4], ITEM_IDS[17]}  # only 2 unseen

    fallback = out[out["user_id"] == "nobody"]
    assert fallback["item_id"].tolist() == _popular_ids(train)[:4]
    assert fallback["fallback"].all() and fallback["score"].isna().all()
    assert fallback["rank"].tolist() == [1, 2, 3, 4]
    assert out.iloc[-1]["item_id"] == _expected_top_k(model, train, 3, 1)[0][0]

    default_k = logged.loaded.predict(pd.DataFrame({"user_id": [USER_IDS[5]]}))
    assert len(default_k) == 10 and default_k["rank"].tolist() == list(range(1, 11))
    with pytest.raises(Exception, match="user_id"):
        logged.loaded.predict(pd.DataFrame({"user": [USER_IDS[5]]}))


def test_model_artifacts_hold_no_raw_user_ids(store, logged):
    files = [p for p in logged.local.rglob("*") if p.is_file()]
    npz_files = [p for p in files if p.suffix == ".npz"]
    assert len(npz_files) == 1
    for path in files:
        blob = path.read_bytes()
        assert SECRET not in blob and SECRET.hex().encode() not in blob, f"the secret is in {path.name}"
        for user_id in USER_IDS:
            assert user_id.encode("utf-8") not in blob, f"{user_id} in {path.name}"
            assert user_id.encode("utf-32-le") not in blob, f"{user_id} in {path.name}"
    with np.load(npz_files[0], allow_pickle=False) as npz:
        assert {
            "user_embeddings",
            "item_embeddings",
            "item_ids",
            "user_keys",
            "key_check",
            "popular_items",
            "seen_indptr",
            "seen_indices",
        } <= set(npz.files)
        assert all(npz[name].dtype != object for name in npz.files)
        strings = {s for name in npz.files if npz[name].dtype.kind == "U" for s in npz[name].ravel().tolist()}
        assert not strings & set(USER_IDS)
        assert len(npz["user_keys"][0]) == 64
    run = MlflowClient().get_run(logged.run_id)
    recorded = json.dumps(
        [run.data.params, run.data.tags, MlflowClient().get_logged_model(logged.info.model_id).to_dictionary()]
    )
    assert not any(user_id in recorded for user_id in USER_IDS)
    assert "lr" in run.data.params and "user_ids" not in run.data.params


def test_loading_needs_neither_mm_pipeline_nor_torch(store, logged):
    script = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('mm_pipeline', 'torch'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "out = model.predict(pd.DataFrame({'user_id': [sys.argv[2], 'nobody'], 'k': [3, 2]}))\n"
        "why = model.predict(pd.DataFrame({'user_id': [sys.argv[2]], 'k': [3], 'explain': [True]}))\n"
        "print('interest=' + ','.join(why['interest']))\n"
        "print(','.join(out['item_id']) + '|' + ','.join(map(str, out['fallback'])))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    result = subprocess.run(
        [sys.executable, "-c", script, str(logged.local), USER_IDS[3]],
        capture_output=True,
        text=True,
        cwd=store.cwd,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    expected = _expected_top_k(logged.model, logged.train, 3, 3)[0] + _popular_ids(logged.train)[:2]
    assert result.stdout.strip().splitlines()[-1] == ",".join(expected) + "|False,False,False,True,True"
    # The user's interest per modality is computed at request time, with numpy and scipy only.
    interest = result.stdout.strip().splitlines()[-2].removeprefix("interest=").split(",")
    assert len(interest) == 3 and set(interest) <= {"text", "image", "mixed", "none"}


def test_log_recommender_needs_an_active_run_and_valid_arguments(store):
    model, train = _toy_data()
    assert mlflow.active_run() is None
    with pytest.raises(RuntimeError, match="active MLflow run"):
        log_recommender(model, USER_IDS, ITEM_IDS, train)
    with mlflow.start_run():
        with pytest.raises(ValueError, match="input_example_users"):
            log_recommender(model, USER_IDS, ITEM_IDS, train, input_example_users=-1)
        with pytest.raises(ValueError, match="user_ids"):
            log_recommender(model, USER_IDS[:3], ITEM_IDS, train)


def test_nothing_written_outside_the_store(store, logged):
    assert list(store.cwd.iterdir()) == []  # no ./mlruns or stray files in the working directory
    assert not Path("mlruns").exists()


# --- user keys and request caps -------------------------------------------------------------------


def test_the_artifact_alone_cannot_be_used_to_enumerate_users(store, logged):
    """An attacker with the artifact but not the secret tries the obvious ways to match guessed ids
    against the stored keys: none works, and a loaded copy without the secret recognises nobody."""
    import hashlib
    import hmac

    npz_path = next(p for p in logged.local.rglob("*.npz"))
    with np.load(npz_path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    stored = set(arrays["user_keys"].tolist())
    public = [str(arrays[name]) for name in arrays if arrays[name].dtype.kind == "U" and arrays[name].ndim == 0]
    for guess in USER_IDS:
        candidates = {
            hashlib.sha256(guess.encode()).hexdigest(),
            hmac.new(b"", guess.encode(), hashlib.sha256).hexdigest(),
            *(hashlib.sha256(f"{p}\x1f{guess}".encode()).hexdigest() for p in public),
            *(hmac.new(p.encode(), guess.encode(), hashlib.sha256).hexdigest() for p in public),
        }
        assert not candidates & stored, guess
    assert stored == {user_key(u, SECRET) for u in USER_IDS}  # ... while the secret's holder matches them all

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MM_PIPELINE_USER_KEY_SECRET")
        mp.delenv("MM_PIPELINE_HOME", raising=False)
        blind = RecommenderPyfunc().load_arrays(arrays)
    assert not blind.recognises_users
    out = blind.predict(None, pd.DataFrame({"user_id": USER_IDS[:3], "k": [2, 2, 2]}))
    assert out["fallback"].all() and out["item_id"].tolist() == _popular_ids(logged.train)[:2] * 3

    wrong = RecommenderPyfunc().load_arrays(arrays, secret=b"a-rotated-secret-not-the-old-one")
    assert not wrong.recognises_users
    assert wrong.predict(None, pd.DataFrame({"user_id": [USER_IDS[3]]}))["fallback"].all()
    right = RecommenderPyfunc().load_arrays(arrays, secret=SECRET)
    assert (
        right.recognises_users and not right.predict(None, pd.DataFrame({"user_id": [USER_IDS[3]]}))["fallback"].any()
    )


def test_requests_above_the_caps_are_refused(monkeypatch):
    model, train = _toy_data()
    arrays = export_serving_arrays(model, USER_IDS, ITEM_IDS, train, SECRET, max_k=5, max_rows=4)
    pyfunc = RecommenderPyfunc().load_arrays(arrays, secret=SECRET)
    assert len(pyfunc.predict(None, pd.DataFrame({"user_id": USER_IDS[1:5], "k": [5] * 4}))) == 20
    with pytest.raises(ValueError, match="k=6 is above this server's cap of 5"):
        pyfunc.predict(None, pd.DataFrame({"user_id": [USER_IDS[2]], "k": [6]}))
    with pytest.raises(ValueError, match="5 rows, above this server's cap of 4"):
        pyfunc.predict(None, pd.DataFrame({"user_id": USER_IDS[:5]}))
    # The whole catalogue cannot be asked for, so the unseen remainder never spells out the history.
    with pytest.raises(ValueError, match="cap"):
        pyfunc.predict(None, pd.DataFrame({"user_id": [USER_IDS[2]], "k": [N_ITEMS]}))
    monkeypatch.setenv("MM_PIPELINE_SERVE_MAX_K", "8")  # the server's operator may set other caps
    raised = RecommenderPyfunc().load_arrays(arrays, secret=SECRET)
    assert raised.max_k == 8 and len(raised.predict(None, pd.DataFrame({"user_id": [USER_IDS[2]], "k": [8]}))) == 8
    monkeypatch.setenv("MM_PIPELINE_SERVE_MAX_K", "lots")
    with pytest.raises(ValueError, match="MM_PIPELINE_SERVE_MAX_K='lots'"):
        RecommenderPyfunc().load_arrays(arrays, secret=SECRET)
    with pytest.raises(ValueError, match="max_k must be a positive integer"):
        export_serving_arrays(model, USER_IDS, ITEM_IDS, train, SECRET, max_k=0)


def test_the_user_key_secret_comes_from_the_environment_or_an_owner_only_file(tmp_path, monkeypatch):
    monkeypatch.delenv("MM_PIPELINE_USER_KEY_SECRET", raising=False)
    monkeypatch.delenv("MM_PIPELINE_USER_KEY_SECRET_FILE", raising=False)
    assert read_user_key_secret(home=tmp_path) is None  # nothing, and not asked to create one
    created = read_user_key_secret(home=tmp_path, create=True)
    path = tmp_path / "secrets" / "user_key"
    assert path.read_bytes().strip() == created and len(created) >= 32
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert read_user_key_secret(home=tmp_path, create=True) == created  # stable once made

    named = tmp_path / "mounted_secret"
    named.write_text("from-a-secret-manager-0123456789\n")
    monkeypatch.setenv("MM_PIPELINE_USER_KEY_SECRET_FILE", str(named))
    assert read_user_key_secret(home=tmp_path) == b"from-a-secret-manager-0123456789"
    monkeypatch.setenv("MM_PIPELINE_USER_KEY_SECRET", "from-the-environment-0123456789")
    assert read_user_key_secret(home=tmp_path) == b"from-the-environment-0123456789"
    monkeypatch.delenv("MM_PIPELINE_USER_KEY_SECRET")
    monkeypatch.setenv("MM_PIPELINE_USER_KEY_SECRET_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="MM_PIPELINE_USER_KEY_SECRET_FILE=.*missing"):
        read_user_key_secret(home=tmp_path)


def test_the_evaluation_report_is_logged_to_mlflow(store, tmp_path):
    from mm_pipeline.registry.tracking import evaluation_metrics, log_evaluation

    metrics = {
        "models": {
            "ease": {"recall@20": 0.2, "recall@20_ci": [0.1, 0.3], "n_users_evaluated": 9},
            "mm_hybrid[int8]": {"ndcg@20": 0.1},
        },
        "cold_start": {"ease": {"recall@20": float("nan")}, "mm_hybrid": {"recall@20": 0.05}},
        "long_tail": {"ease": {"recall@20": 0.01}},
        "dataset": {"users": 3},
    }
    assert evaluation_metrics(metrics) == {
        "ease.recall_at_20": 0.2,
        "ease.n_users_evaluated": 9.0,
        "mm_hybrid_int8_.ndcg_at_20": 0.1,
        "cold.mm_hybrid.recall_at_20": 0.05,
        "tail.ease.recall_at_20": 0.01,
    }
    (tmp_path / "report.html").write_text("<html></html>")
    (tmp_path / "metrics.json").write_text(json.dumps(metrics, default=str))
    with mlflow.start_run() as run:
        assert log_evaluation(metrics, tmp_path) == 5
    logged = MlflowClient().get_run(run.info.run_id)
    assert logged.data.metrics["ease.recall_at_20"] == 0.2
    assert {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "report")} == {
        "report/report.html",
        "report/metrics.json",
    }


# --- the compressed artifact ----------------------------------------------------------------------


def _toy_hybrid():
    """A model shaped like the served hybrid: [weighted history; GNN vector] users, [item-item core; GNN
    vector] items, and the score parts of one modality."""
    from mm_pipeline.recommend.base import sparse_from_scipy

    model, train = _toy_data()
    rng = np.random.default_rng(11)
    history = train.copy()
    history.data = np.exp(-rng.random(history.nnz)).astype(np.float32)
    core = rng.normal(size=(N_ITEMS, N_ITEMS)).astype(np.float32)
    np.fill_diagonal(core, 0.0)
    users = sp.hstack([history, sp.csr_matrix(model.user_embeddings.numpy())], format="csr")
    items = np.concatenate([core.T, model.item_embeddings.numpy()], axis=1)
    text = sp.random(N_ITEMS, N_ITEMS, density=0.1, random_state=3, format="csr", dtype=np.float32)
    parts = {"history_width": N_ITEMS, "modalities": {"text": text}}
    return EmbeddingRecommender("mm_hybrid", sparse_from_scipy(users), torch.from_numpy(items), {}, parts), train


def test_a_compressed_model_logs_loads_and_answers_like_the_plain_one(store):
    from mm_pipeline.registry.served import check_served_predictions, load_served_model, served_scorer

    model, train = _toy_hybrid()
    with mlflow.start_run():
        plain_info = log_recommender(model, USER_IDS, ITEM_IDS, train, name="plain", input_example_users=0)
        small_info = log_recommender(model, USER_IDS, ITEM_IDS, train, name="small", compression="int8")
        with pytest.raises(ValueError, match="compression must be one of"):
            log_recommender(model, USER_IDS, ITEM_IDS, train, name="bad", compression="int2")
    assert small_info.params["compression"] == "int8" and plain_info.params["compression"] == "fp32"
    assert int(small_info.params["artifact_bytes"]) < int(plain_info.params["artifact_bytes"])
    plain, small = mlflow.pyfunc.load_model(plain_info.model_uri), mlflow.pyfunc.load_model(small_info.model_uri)
    request = pd.DataFrame({"user_id": [*USER_IDS[:8], "stranger"], "k": 5, "explain": True})
    want, got = plain.predict(request), small.predict(request)
    assert list(got.columns) == list(want.columns) and "share_text" in got.columns
    assert got["fallback"].tolist() == want["fallback"].tolist()
    assert (got["item_id"] == want["item_id"]).mean() > 0.9
    assert got.loc[~got["fallback"], "reason"].str.len().min() > 0  # explanations work on the compact tables

    local = store.root / "compressed"
    local.mkdir()
    model_dir = mlflow.artifacts.download_artifacts(artifact_uri=small_info.model_uri, dst_path=str(local))
    for path in (p for p in local.rglob("*") if p.is_file()):
        blob = path.read_bytes()
        assert SECRET not in blob and SECRET.hex().encode() not in blob, path.name
        for user_id in USER_IDS:
            assert user_id.encode() not in blob and user_id.encode("utf-32-le") not in blob, path.name

    # The compact artifact loads and answers without mm_pipeline or torch too (scipy is a requirement).
    script = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('mm_pipeline', 'torch'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "out = model.predict(pd.DataFrame({'user_id': [sys.argv[2]], 'k': [3], 'explain': [True]}))\n"
        "print(','.join(out['item_id']))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    result = subprocess.run(
        [sys.executable, "-c", script, model_dir, USER_IDS[3]], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    expected = got.loc[got["user_id"] == USER_IDS[3], "item_id"].head(3).tolist()
    assert result.stdout.strip().splitlines()[-1] == ",".join(expected)

    # Re-scoring the served model (champion vs challenger) reads the compact arrays, decoded.
    served = load_served_model(small_info.model_uri, secret=SECRET)
    scorer = served_scorer(served, USER_IDS, ITEM_IDS)
    assert scorer.known_users.all()
    assert check_served_predictions(served, scorer, USER_IDS, ITEM_IDS, np.arange(N_USERS), k=5) > 0

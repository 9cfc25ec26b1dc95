"""The registered recommender served by ``mlflow models serve`` answers like the in-process pyfunc.

Logs a small random recommender into a temporary SQLite store, starts MLflow's scoring server on
127.0.0.1 (``--env-manager local``: this virtualenv, nothing installed), and compares its
``/invocations`` answer with ``mlflow.pyfunc.load_model(...).predict(...)``. The server's process
group is always terminated.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import mlflow.tracking._model_registry.utils as registry_utils
import mlflow.tracking._tracking_service.utils as tracking_utils
import mlflow.tracking.fluent as fluent
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.registry.pyfunc import log_recommender
from mm_pipeline.registry.tracking import configure_mlflow

MODEL_NAME = "serving_test_recommender"
USER_IDS = [f"shopper-{i:03d}" for i in range(25)]
ITEM_IDS = [f"sku-{i:03d}" for i in range(40)]
STARTUP_TIMEOUT_S = 90
_MLFLOW_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
)


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        for name in _MLFLOW_ENV:
            mp.delenv(name, raising=False)
        # MLflow keeps the URIs and the active experiment in module globals: put them back afterwards.
        mp.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
        mp.setattr(registry_utils, "_registry_uri", registry_utils._registry_uri)
        mp.setattr(fluent, "_active_experiment_id", fluent._active_experiment_id)
        # The server is given the secret through a file, like a mounted secret.
        secret_file = root / "user_key_secret"
        secret_file.write_text("serving-tests-secret-0123456789abcdef")
        mp.setenv("MM_PIPELINE_USER_KEY_SECRET_FILE", str(secret_file))
        mp.delenv("MM_PIPELINE_USER_KEY_SECRET", raising=False)
        configure_mlflow(uri, "serving-tests", root / "artifacts")
        generator = torch.Generator().manual_seed(7)
        model = EmbeddingRecommender(
            "random",
            torch.randn(len(USER_IDS), 8, generator=generator),
            torch.randn(len(ITEM_IDS), 8, generator=generator),
        )
        train = sp.random(len(USER_IDS), len(ITEM_IDS), density=0.15, format="csr", random_state=0)
        with mlflow.start_run():
            info = log_recommender(
                model, USER_IDS, ITEM_IDS, train, name="recommender", registered_model_name=MODEL_NAME
            )
        yield {
            "root": root,
            "uri": uri,
            "model_uri": f"models:/{MODEL_NAME}/{info.registered_model_version}",
            "seen": np.diff(train.indptr),
        }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _wait_until_up(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = _log_tail(log)
            missing = [
                line for line in tail.splitlines() if "ModuleNotFoundError" in line or "command not found" in line
            ]
            pytest.fail(
                f"mlflow models serve exited with code {proc.returncode} before answering /ping"
                + (f"; missing dependency: {missing[-1].strip()}" if missing else "")
                + f"\n{tail}"
            )
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow models serve did not answer /ping within {STARTUP_TIMEOUT_S} s\n{_log_tail(log)}")


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the server's process group (mlflow CLI + the uvicorn it starts)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
    else:  # the CLI is gone; make sure nothing it started is left in its group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_served_model_answers_like_the_in_process_pyfunc(registered):
    request = pd.DataFrame(
        {
            "user_id": [USER_IDS[3], "never-seen-user", USER_IDS[17], USER_IDS[0]],
            "k": np.array([5, 3, 7, 40], dtype=np.int64),
        }
    )
    expected = mlflow.pyfunc.load_model(registered["model_uri"]).predict(request)
    assert expected["fallback"].tolist().count(True) == 3  # only the unknown user falls back

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent  # the server runs `uvicorn` from this virtualenv
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registered["uri"],
        "MLFLOW_REGISTRY_URI": registered["uri"],
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    log = registered["root"] / "serve.log"
    command = [
        str(bin_dir / "mlflow"),
        "models",
        "serve",
        "-m",
        registered["model_uri"],
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, env=env, cwd=registered["root"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_until_up(proc, url, log)

        def invoke(frame: pd.DataFrame) -> tuple[int, dict]:
            payload = json.dumps({"dataframe_split": frame.to_dict(orient="split", index=False)}).encode()
            post = urllib.request.Request(
                f"{url}/invocations", data=payload, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(post, timeout=30) as response:
                    return response.status, json.loads(response.read())  # NaN scores come back as NaN
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read() or b"{}")

        status, body = invoke(request)
        assert status == 200
        served = pd.DataFrame(body["predictions"])
        # The explain flag adds why, as the in-process model says; a request above the caps is refused.
        asked = request.iloc[:2].assign(explain=[True, True])
        status, body = invoke(asked)
        assert status == 200
        explained = pd.DataFrame(body["predictions"])
        local = mlflow.pyfunc.load_model(registered["model_uri"]).predict(asked)
        assert {"share_embedding", "because", "reason"} <= set(explained.columns)
        assert explained["reason"].tolist() == local["reason"].tolist() and explained["reason"].str.len().gt(0).all()
        status, body = invoke(pd.DataFrame({"user_id": [USER_IDS[3]], "k": [500]}))
        assert status >= 400 and "above this server's cap" in json.dumps(body)
    finally:
        _stop(proc)
    assert proc.poll() is not None

    # User 0 asks for every item and gets all but the ones it saw in training.
    assert len(served) == len(expected) == 5 + 3 + 7 + (len(ITEM_IDS) - registered["seen"][0])
    assert served["user_id"].tolist() == expected["user_id"].tolist()
    assert served["rank"].tolist() == expected["rank"].tolist()
    assert served["item_id"].tolist() == expected["item_id"].tolist()
    assert served["fallback"].tolist() == expected["fallback"].tolist()
    np.testing.assert_allclose(served["score"].to_numpy(float), expected["score"].to_numpy(float), rtol=1e-6)
    assert served.loc[served["user_id"] == "never-seen-user", "fallback"].all()


def test_served_scorer_maps_a_changed_catalogue_onto_the_served_arrays(registered):
    from mm_pipeline.registry.served import check_served_predictions, load_served_model, served_scorer

    served = load_served_model(registered["model_uri"])
    arrays = served.arrays
    # Today's split: two known users, one new user; items reordered, one new item, one dropped.
    users = [USER_IDS[5], "brand-new-user", USER_IDS[2]]
    items = [ITEM_IDS[3], "sku-new", *ITEM_IDS[5:], ITEM_IDS[0]]
    scorer = served_scorer(served, users, items)
    assert scorer.known_users.tolist() == [True, False, True]
    assert scorer.known_items.tolist() == [True, False, *[True] * (len(ITEM_IDS) - 5), True]
    scores = scorer.score(torch.arange(3)).numpy()
    expected = arrays["user_embeddings"][5] @ arrays["item_embeddings"][[3, *range(5, len(ITEM_IDS)), 0]].T
    np.testing.assert_allclose(np.delete(scores[0], 1), expected, rtol=1e-5)
    assert np.isneginf(scores[:, 1]).all()  # an item the served model does not know is ranked last
    # The new user is ranked by the served popularity fallback, in the served order.
    order = [items[i] for i in np.argsort(-scores[1], kind="stable") if np.isfinite(scores[1][i])]
    served_order = [str(ITEM_IDS[i]) for i in arrays["popular_items"] if ITEM_IDS[i] in items]
    assert order == served_order
    assert check_served_predictions(served, scorer, users, items, np.arange(3), k=5) == 15

    arrays["item_embeddings"] = arrays["item_embeddings"] * 2  # arrays that are not what is served
    with pytest.raises(RuntimeError, match="differ"):
        check_served_predictions(served, served_scorer(served, users, items), users, items, np.arange(3), k=5)


def test_served_scorer_on_the_served_catalogue_reads_the_served_table_in_place(registered):
    from mm_pipeline.registry.served import check_served_predictions, load_served_model, served_scorer

    served = load_served_model(registered["model_uri"])
    items = [str(i) for i in served.arrays["item_ids"]]  # the split's catalogue is the artifact's, in its order
    users = [USER_IDS[1], USER_IDS[4]]
    scorer = served_scorer(served, users, items)
    # No copy of the item table (at 20k items it is 1.6 GB): the scorer reads the served array itself ...
    assert np.shares_memory(scorer.item_embeddings.numpy(), served.arrays["item_embeddings"])
    # ... and scores what a re-indexed copy scores: every item known, the served users' dot products.
    assert bool(scorer.known_items.all())
    expected = served.arrays["user_embeddings"][[1, 4]] @ served.arrays["item_embeddings"].T
    np.testing.assert_allclose(scorer.score(torch.arange(2)).numpy(), expected, rtol=1e-5)
    assert check_served_predictions(served, scorer, users, items, np.arange(2), k=5) == 10


def test_a_served_model_holds_its_tables_once_and_reads_an_older_pyfunc_s_arrays_again(registered, monkeypatch):
    import mlflow

    from mm_pipeline.registry.served import load_served_model

    served = load_served_model(registered["model_uri"])
    request = pd.DataFrame({"user_id": [USER_IDS[0]], "k": [3]})
    before = served.pyfunc.predict(request)
    # The arrays are the ones the pyfunc scores with (one copy of the tables): scaling them scales its scores.
    served.arrays["item_embeddings"] *= 2
    np.testing.assert_allclose(served.pyfunc.predict(request)["score"], 2 * before["score"], rtol=1e-6)
    served.arrays["item_embeddings"] /= 2

    # A version logged before the pyfunc kept its arrays (its own logged code loads it): read from the artifact.
    real_load = mlflow.pyfunc.load_model

    class OlderModel:  # what an older logged RecommenderPyfunc offers: use_secret, no serving_arrays
        def __init__(self, model):
            self._model = model

        def use_secret(self, secret):
            self._model.use_secret(secret)
            return self

    class OlderPyfunc:
        def __init__(self, pyfunc):
            self._pyfunc, self._model = pyfunc, OlderModel(pyfunc.unwrap_python_model())

        def unwrap_python_model(self):
            return self._model

        def predict(self, frame):
            return self._pyfunc.predict(frame)

    monkeypatch.setattr(mlflow.pyfunc, "load_model", lambda uri: OlderPyfunc(real_load(uri)))
    older = load_served_model(registered["model_uri"])
    assert isinstance(older.pyfunc, OlderPyfunc) and older.arrays.keys() == served.arrays.keys()
    for name, values in served.arrays.items():
        np.testing.assert_array_equal(older.arrays[name], values)
    assert not np.shares_memory(older.arrays["item_embeddings"], served.arrays["item_embeddings"])

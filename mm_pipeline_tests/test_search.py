"""The hyper-parameter search: the Dagster job on the tiny dataset (nested MLflow runs, best trial) and the
core search (determinism, validation-only objective, pruning, space validation)."""

import dataclasses
import math

import dagster as dg
import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import scipy.sparse as sp
from mlflow.tracking import MlflowClient

from mm_pipeline.defs.assets.search import SEARCH_JOBS, mm_gcn_hyperparameter_search
from mm_pipeline.defs.build import all_assets, default_resources
from mm_pipeline.recommend import ranking as ranking_module
from mm_pipeline.recommend.fit import MultimodalConfig, SplitData
from mm_pipeline.recommend.search import DEFAULT_SPACE, OBJECTIVE, parse_space, search_hyperparameters
from mm_pipeline.storage import load_bundle, save_bundle

SEARCH = "mm_gcn_hyperparameter_search"
SEARCH_CONFIG = {"n_trials": 3, "max_epochs": 3, "patience": 5}
PARAM_COLUMNS = list(DEFAULT_SPACE)
TIMING_COLUMNS = ["seconds", "train_seconds"]


def _assets() -> list:
    assets = all_assets()
    if SEARCH not in {key.to_user_string() for a in assets for key in a.keys}:  # not yet in build.py
        assets.append(mm_gcn_hyperparameter_search)
    return assets


def _stand_in_aligned(n_items: int, seed: int = 0) -> dict:
    """Seeded unit vectors shaped like ``aligned_item_embeddings`` (3 modalities, 64-d, ~3% missing).

    The search only needs the shape: the real stage costs 20-45 s on tiny (text model, CNN, alignment
    training) and is covered by test_pipeline_e2e.
    """
    rng = np.random.default_rng(seed)
    present = rng.random((n_items, 3)) > 0.03
    present[~present.any(1), 0] = True
    modality = rng.normal(size=(n_items, 3, 64)).astype(np.float32)
    modality /= np.linalg.norm(modality, axis=2, keepdims=True)
    modality[~present] = 0.0
    weights = present / present.sum(1, keepdims=True)
    fused = (weights[:, :, None] * modality).sum(1)
    fused /= np.linalg.norm(fused, axis=1, keepdims=True)
    return {
        "modalities": ["text", "image", "audio"],
        "modality_embeddings": modality,
        "fused": fused.astype(np.float32),
        "weights": weights.astype(np.float32),
        "present": present,
    }


def _stand_in_features(n_items: int, seed: int = 0) -> dict[str, dict]:
    """Seeded raw features shaped like the ``*_features`` assets (text 384-d, image 64-d, audio 120-d)."""
    rng = np.random.default_rng(seed)
    return {
        m: {"features": rng.normal(size=(n_items, d)).astype(np.float32), "present": rng.random(n_items) > 0.03}
        for m, d in (("text", 384), ("image", 64), ("audio", 120))
    }


def _raw(features: dict[str, dict]) -> dict:
    return {m: (f["features"], f["present"]) for m, f in features.items()}


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """The raw stages up to ``interaction_split`` materialized on the tiny dataset, a stand-in for the
    aligned embeddings written to the same storage, then the ``hyperparameter_search`` job, which loads
    both from storage, with 3 trials of 3 epochs."""
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("MM_PIPELINE_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    resources = default_resources(home=str(home), dataset="builtin:tiny", tracking_uri=uri)
    instance = dg.DagsterInstance.ephemeral()
    upstream = dg.AssetSelection.assets("interaction_split").upstream()
    prepared = dg.materialize(_assets(), selection=upstream, instance=instance, resources=resources)
    assert prepared.success
    n_items = int(prepared.output_for_node("interaction_split").n_items)
    save_bundle(home / "assets" / "aligned_item_embeddings", _stand_in_aligned(n_items))
    features = _stand_in_features(n_items)
    for modality, bundle in features.items():
        save_bundle(home / "assets" / f"{modality}_features", bundle)
    defs = dg.Definitions(assets=_assets(), jobs=SEARCH_JOBS, resources=resources)
    result = defs.resolve_job_def("hyperparameter_search").execute_in_process(
        run_config={"ops": {SEARCH: {"config": SEARCH_CONFIG}}}, instance=instance
    )
    split = load_bundle(home / "assets" / "interaction_split")
    aligned = load_bundle(home / "assets" / "aligned_item_embeddings")
    data = SplitData.from_frame(split["table"], int(split["n_users"]), int(split["n_items"]))  # the stored fields
    yield {
        "result": result,
        "home": home,
        "uri": uri,
        "data": data,
        "aligned": aligned,
        "defs": defs,
        "instance": instance,
        "raw": _raw(features),
    }
    mlflow.set_tracking_uri(None)
    mp.undo()


def _direct_search(data, aligned, seed=0, **kwargs):
    """The core search with the settings (and stand-in raw features) the asset used in the fixture."""
    base = MultimodalConfig(seed=seed, patience=SEARCH_CONFIG["patience"], epochs=SEARCH_CONFIG["max_epochs"])
    settings = {
        "n_trials": SEARCH_CONFIG["n_trials"],
        "max_epochs": SEARCH_CONFIG["max_epochs"],
        "raw_features": _raw(_stand_in_features(data.n_items)),
        **kwargs,
    }
    return search_hyperparameters(data, aligned, None, seed=seed, base_config=base, **settings)


def test_job_runs_only_the_search_and_logs_nested_trial_runs(searched):
    result = searched["result"]
    assert result.success
    assert [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()] == [SEARCH]
    output = result.output_for_node(SEARCH)
    client = MlflowClient(tracking_uri=searched["uri"])
    experiment = client.get_experiment_by_name("mm_pipeline")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("dagster.asset_key") == SEARCH]
    assert parent.info.run_id == output["mlflow_run_id"]
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == SEARCH_CONFIG["n_trials"]
    trials = output["trials"].set_index("trial")
    for child in children:
        number = int(child.data.tags["search.trial"])
        assert child.data.tags["dagster.run_id"] == result.run_id
        assert child.data.tags["search.state"] == trials.loc[number, "state"]
        assert child.data.params["epochs"] == "3"  # the per-trial budget
        for name in PARAM_COLUMNS:  # the sampled values, as logged
            expected = trials.loc[number, name]
            if isinstance(expected, str):
                assert child.data.params[name] == expected
            else:
                assert float(child.data.params[name]) == pytest.approx(float(expected), rel=1e-12)
        assert child.data.metrics["best_valid_ndcg_at_20"] == pytest.approx(trials.loc[number, OBJECTIVE])
        assert child.data.metrics["epochs_run"] == trials.loc[number, "epochs_run"]
        curve = client.get_metric_history(child.info.run_id, "valid_ndcg_at_20")
        assert [m.step for m in curve] == list(range(1, int(trials.loc[number, "epochs_run"]) + 1))
    assert {int(c.data.tags["search.trial"]) for c in children} == set(range(SEARCH_CONFIG["n_trials"]))
    # The parent carries the search settings and the best trial's parameters and score.
    assert parent.data.params["search.n_trials"] == "3" and parent.data.params["search.objective"] == OBJECTIVE
    for name, value in output["best_params"].items():
        assert parent.data.params[f"best.{name}"] == str(value)
    assert parent.data.metrics["best_valid_ndcg_at_20"] == pytest.approx(output[OBJECTIVE])
    assert "search/trials.csv" in {a.path for a in client.list_artifacts(parent.info.run_id, "search")}


def test_best_trial_is_the_highest_validation_ndcg(searched):
    result = searched["result"]
    output = result.output_for_node(SEARCH)
    trials = output["trials"]
    assert list(trials["trial"]) == [0, 1, 2]
    assert set(trials["state"]) <= {"complete", "pruned"} and (trials["state"] == "complete").any()
    assert trials[OBJECTIVE].between(0, 1).all() and (trials["epochs_run"] <= 3).all()
    assert (trials["seconds"] > 0).all()
    complete = trials[trials["state"] == "complete"]
    best_row = complete.loc[complete[OBJECTIVE].idxmax()]
    assert output["best_trial"] == best_row["trial"]
    assert output[OBJECTIVE] == pytest.approx(best_row[OBJECTIVE])
    assert output["best_params"] == pytest.approx({name: best_row[name] for name in PARAM_COLUMNS})
    assert output["best_config"]["lr"] == pytest.approx(best_row["lr"]) and output["best_config"]["epochs"] == 3
    (event,) = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["best_trial"].value == output["best_trial"]
    assert metadata["best_params"].value == output["best_params"]
    table = metadata["trials"]
    assert [c.name for c in table.schema.columns][:2] == ["trial", "state"]
    assert [r.data["trial"] for r in table.records] == [0, 1, 2]
    assert metadata["validation_ndcg_per_trial"].value.startswith("![validation NDCG@20 per trial](data:image/png")
    # The stored value round-trips through the IO manager (no pickle).
    stored = load_bundle(searched["home"] / "assets" / SEARCH)
    pd.testing.assert_frame_equal(stored["trials"], trials)
    assert set(stored["histories"]["trial"]) == set(trials["trial"])


def test_same_seed_gives_the_same_trials(searched):
    """The core search, run again with the asset's seed and settings, reproduces the job's trials exactly;
    another seed samples other parameters."""
    again = _direct_search(searched["data"], searched["aligned"], seed=0)
    job_trials = searched["result"].output_for_node(SEARCH)["trials"]
    pd.testing.assert_frame_equal(
        again.trials.drop(columns=TIMING_COLUMNS), job_trials.drop(columns=TIMING_COLUMNS), check_exact=True
    )
    other = _direct_search(searched["data"], searched["aligned"], seed=1, n_trials=1)
    assert other.trials.loc[0, "lr"] != job_trials.loc[0, "lr"]


def test_the_objective_sees_only_the_validation_split(searched, monkeypatch):
    data, aligned = searched["data"], searched["aligned"]
    test_before = data.test.copy()
    seen = []
    real = ranking_module.per_user_metrics

    def spy(model, *args, truth, **kwargs):
        seen.append(truth)
        return real(model, *args, truth=truth, **kwargs)

    monkeypatch.setattr(ranking_module, "per_user_metrics", spy)
    plain = _direct_search(data, aligned, n_trials=2, max_epochs=2, prune=False)
    assert seen, "the trainer's validation no longer goes through ranking.per_user_metrics: update this spy"
    for truth in seen:  # every metric the search computed was against the validation interactions
        assert (truth != data.valid).nnz == 0
    # Scrambling the test split changes nothing, and the caller's split is left as it was.
    rng = np.random.default_rng(0)
    noisy_test = sp.random(
        data.n_users, data.n_items, density=0.05, format="csr", random_state=rng, data_rvs=np.ones, dtype=np.float32
    )
    scrambled = _direct_search(
        dataclasses.replace(data, test=noisy_test), aligned, n_trials=2, max_epochs=2, prune=False
    )
    pd.testing.assert_frame_equal(
        scrambled.trials.drop(columns=TIMING_COLUMNS), plain.trials.drop(columns=TIMING_COLUMNS), check_exact=True
    )
    assert (data.test != test_before).nnz == 0
    assert not [c for c in plain.trials.columns if "test" in c]


def test_a_pruned_trial_stops_early_and_is_recorded(searched):
    """A pruner's verdict, raised from the trainer's per-epoch callback, stops the trial mid-training."""

    class PruneAllButFirst(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return trial.number > 0

    seen = []
    result = _direct_search(
        searched["data"], searched["aligned"], n_trials=3, max_epochs=3, pruner=PruneAllButFirst(), on_trial=seen.append
    )
    assert list(result.trials["state"]) == ["complete", "pruned", "pruned"]
    assert list(result.trials["epochs_run"]) == [3, 1, 1]
    assert [t.number for t in seen] == [0, 1, 2] and len(seen[1].history) == 1
    assert result.best.number == 0 and math.isfinite(result.trials.loc[1, OBJECTIVE])


@pytest.mark.parametrize(
    "space, message",
    [
        ({"learning_rate": [0.01]}, "'learning_rate' is not a MultimodalConfig field"),
        ({"seed": [0, 1]}, "'seed' cannot be searched"),
        ({"epochs": {"low": 5, "high": 10}}, "max_epochs"),
        ({"lr": {"low": 0.1, "high": 0.01}}, "must be below high"),
        ({"lr": {"low": 0.0, "high": 0.1, "log": True}}, "needs low > 0"),
        ({"lr": {"low": 0.001, "hi": 0.1}}, "unknown: ['hi']"),
        ({"dim": [32, 64.5]}, "'dim' is an int field"),
        ({"dim": {"low": 16, "high": 64.5}}, "not whole"),
        ({"dropout": []}, "empty list"),
        ({"dropout": [0.1, 0.1]}, "repeats a choice"),
        ({"lr": "0.01"}, "give a list of choices or a range"),
        ({}, "non-empty mapping"),
    ],
)
def test_bad_search_space_is_refused_with_the_field_named(space, message):
    with pytest.raises(ValueError) as excinfo:
        parse_space(space)
    assert message in str(excinfo.value)


def test_space_accepts_ranges_and_choices_by_field_type():
    parsed = parse_space(
        {"num_layers": {"low": 1, "high": 3}, "lr": {"low": 1e-3, "high": 1e-2, "log": True}, "dropout": [0, 0.1]}
    )
    assert parsed["num_layers"].low == 1 and isinstance(parsed["num_layers"].low, int)
    assert parsed["lr"].log and parsed["dropout"].values == (0.0, 0.1)


def test_invalid_space_in_run_config_fails_the_run_before_training(searched):
    result = (
        searched["defs"]
        .resolve_job_def("hyperparameter_search")
        .execute_in_process(
            run_config={"ops": {SEARCH: {"config": {"space": {"nonexistent": [1, 2]}}}}},
            instance=searched["instance"],
            raise_on_error=False,
        )
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "'nonexistent' is not a MultimodalConfig field" in failure.step_failure_data.error.message

"""Materializes the whole asset graph on the tiny built-in dataset, in process, and checks every output."""

import json

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from mm_pipeline.defs.build import all_assets, default_resources, research_assets
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.catalog import MODEL_TABLE
from mm_pipeline.settings import REGISTERED_MODEL_NAME

from fast_config import fast_run_config

TRAINING_ASSETS = [
    "image_features",
    "aligned_item_embeddings",
    "popularity_model",
    "ease_model",
    "item_knn_model",
    "bpr_mf_model",
    "lightgcn_model",
    "content_knn_model",
    "vbpr_model",
    "freedom_model",
    "mm_gcn_model",
    "mm_hybrid_model",
]
# The whole graph plus the research assets (ablations and the report with them), as research_pipeline runs it.
GRAPH = [*all_assets(), *research_assets()]
FAST = fast_run_config(assets=GRAPH)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("MM_PIPELINE_HOME", str(home))
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    result = dg.materialize(
        GRAPH,
        run_config=FAST,
        instance=dg.DagsterInstance.ephemeral(),
        resources=default_resources(home=str(home), dataset="builtin:tiny", tracking_uri=uri),
    )
    yield result, home, uri
    mp.undo()


def test_run_succeeds_and_every_asset_materializes(pipeline_run):
    result, _, _ = pipeline_run
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    expected = {key.to_user_string() for a in GRAPH for key in a.keys}
    assert materialized == expected


def test_raw_and_split_outputs(pipeline_run):
    result, _, _ = pipeline_run
    items = result.asset_value("raw_items")
    assert len(items) == 360 and items["item_id"].is_monotonic_increasing
    images = result.output_for_node("raw_item_images")
    assert images["images"].shape == (360, 32, 32, 3) and images["images"].dtype == np.uint8
    assert 0.9 < images["present"].mean() < 1.0  # a few percent of items lack an image
    audio = result.output_for_node("raw_item_audio")
    assert audio["waves"].shape == (360, 8000) and np.isfinite(audio["waves"]).all()
    split = result.output_for_node("interaction_split")
    table = split.table
    assert set(table["split"]) == {"train", "valid", "test"}
    assert split.n_users == 240 and table["user_idx"].max() == 239
    # Chronology: within each user, every test interaction is no earlier than every train interaction.
    last_train = table[table["split"] == "train"].groupby("user_idx")["timestamp"].max()
    first_test = table[table["split"] == "test"].groupby("user_idx")["timestamp"].min()
    both = pd.concat([last_train, first_test], axis=1, join="inner")
    assert (both.iloc[:, 0] <= both.iloc[:, 1]).all()


def test_feature_and_alignment_outputs(pipeline_run):
    result, _, _ = pipeline_run
    for name, dim in (("text_features", 384), ("image_features", 64), ("audio_features", 120)):
        feats = result.output_for_node(name)
        assert feats["features"].shape == (360, dim), name
        assert np.isfinite(feats["features"]).all(), name
        assert feats["augmented"].shape[0] == 360 and feats["augmented"].shape[-1] == dim, name
    aligned = result.output_for_node("aligned_item_embeddings")
    assert aligned["modalities"] == ["text", "image", "audio"]
    assert aligned["fused"].shape == (360, 64)
    weights, present = aligned["weights"], aligned["present"]
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-5)
    assert (weights[~present] == 0).all()  # a missing modality gets no fusion weight


def test_models_and_compression(pipeline_run):
    result, _, _ = pipeline_run
    for name in (
        "popularity_model",
        "ease_model",
        "item_knn_model",
        "bpr_mf_model",
        "lightgcn_model",
        "content_knn_model",
        "mm_gcn_model",
        "mm_hybrid_model",
    ):
        model = EmbeddingRecommender.from_bundle(result.output_for_node(name))
        assert (model.n_users, model.n_items) == (240, 360), name
        assert np.isfinite(model.item_embeddings.numpy()).all(), name
    # Item-item models keep the user's history as a sparse user table.
    assert EmbeddingRecommender.from_bundle(result.output_for_node("mm_hybrid_model")).sparse_users
    history = result.output_for_node("mm_gcn_model")["history"]
    assert len(history) >= 1 and "valid_ndcg@20" in history
    # Every tuned model keeps the table of the settings its validation search tried.
    ease_search = result.output_for_node("ease_model")["search"]
    assert len(ease_search) == 3 and ease_search["chosen"].sum() == 1 and "valid_ndcg@20" in ease_search
    assert len(result.output_for_node("lightgcn_model")["search"]) == 2
    hybrid_search = result.output_for_node("mm_hybrid_model")["search"]
    first = hybrid_search.iloc[0]
    assert (first["core"], first["decay"], first["content_weight"], first["graph_weight"]) == ("ease", 0, 0, 0)
    selected = result.output_for_node("selected_model")
    validation = selected["selection"]
    assert selected["selected"] == validation.loc[0, "model"] == selected["name"]
    trained = [spec for spec in MODEL_TABLE if spec.role != "research"]
    assert validation["valid_ndcg@20"].is_monotonic_decreasing and len(validation) == len(trained) == 10
    assert (
        validation.loc[validation["model"] == "mm_hybrid", "valid_ndcg@20"].iloc[0]
        >= validation.loc[validation["model"] == "ease", "valid_ndcg@20"].iloc[0] - 0.01
    )
    compressed = result.output_for_node("compressed_model")
    stats = compressed["stats"]
    assert list(stats["variant"]) == ["fp32", "fp32_compact", "fp16", "int8", "int4_outliers", "int4"]
    assert (stats["bytes"] > 0).all() and (stats["latency_median_ms"] > 0).all()
    assert stats["bytes"].is_monotonic_decreasing and stats.loc[stats["served"], "variant"].tolist() == [
        compressed["serving"]
    ]
    assert stats.loc[stats["served"], "valid_ndcg_loss"].iloc[0] <= compressed["max_relative_loss"] + 1e-12


def test_metrics_json(pipeline_run):
    _, home, _ = pipeline_run
    # research_report runs after evaluation_report and replaces reports/latest with the superset.
    metrics = json.loads((home / "reports" / "latest" / "metrics.json").read_text())
    assert metrics["primary_model"] == "mm_hybrid" and metrics["components"] == ["mm_gcn"]
    assert {"popularity", "lightgcn", "mm_gcn", "ease", "bpr_mf", "content_knn", "mm_hybrid"} <= set(metrics["models"])
    assert metrics["selection"]["selected"] in metrics["models"] and metrics["selection"]["reason"]
    assert {row["model"] for row in metrics["selection"]["searches"]} >= {"ease", "lightgcn", "mm_hybrid"}
    for name, values in metrics["models"].items():
        for key in ("recall@20", "ndcg@20", "precision@20", "f1@20", "coverage@20", "novelty@20", "recall@10"):
            assert key in values, (name, key)
        assert 0.0 <= values["recall@20"] <= 1.0
    support = metrics["support"]["cold_start"]
    assert (
        metrics["dataset"]["cold_items"] > 0 and support["interactions"] == metrics["dataset"]["cold_test_interactions"]
    )
    if support["enough"]:
        assert set(metrics["cold_start"]) >= {"popularity", "mm_gcn", "mm_hybrid"}
    else:
        assert metrics["cold_start"] == {} and support["reason"]
    assert (home / "reports" / "latest" / "report.md").exists()
    lo, hi = metrics["models"]["mm_hybrid"]["recall@20_ci"]
    assert lo <= metrics["models"]["mm_hybrid"]["recall@20"] <= hi
    assert metrics["significance"]["best_baseline"] in metrics["baselines"]
    assert set(metrics["ablations"]) == {
        "mm_gcn-text_only",
        "mm_gcn-image_only",
        "mm_gcn-audio_only",
        "mm_gcn-no_alignment",
        "mm_gcn-no_item_graph",
        "mm_hybrid-no_content",
        "mm_hybrid-no_gnn",
        "mm_hybrid-no_recency",
        "mm_hybrid-no_item_item",
    }
    assert {"vbpr", "freedom"} <= set(metrics["baselines"]) and "mm_gcn" not in metrics["baselines"]
    if metrics["support"]["long_tail"]["enough"]:
        assert set(metrics["long_tail"]) >= {"popularity", "mm_hybrid"}
    result, _, _ = pipeline_run
    assert result.output_for_node("evaluation_report")["metrics"]["ablations"] == []
    for values in metrics["models"].values():
        assert {
            "recall@20_ci",
            "ndcg@20_ci",
            "significant_vs_best_baseline",
            "personalization@20",
            "intra_list_diversity@20",
        } <= set(values)
    page = (home / "reports" / "latest" / "report.html").read_text()
    assert "Long-tail items" in page and "Modality weights" in page and "data:image/png;base64," in page


def test_mlflow_runs_models_and_registry(pipeline_run):
    _, _, uri = pipeline_run
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("mm_pipeline")
    runs = client.search_runs([experiment.experiment_id])
    by_asset = {r.data.tags.get("dagster.asset_key"): r for r in runs}
    for asset in TRAINING_ASSETS:
        run = by_asset[asset]
        assert run.data.tags.get("dagster.run_id"), asset
        assert run.data.params, asset
        models = client.search_logged_models(
            [experiment.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        assert models, f"{asset} logged no model"
    assert client.get_metric_history(by_asset["mm_gcn_model"].info.run_id, "valid_ndcg_at_20")
    # Training progress went to the run live: one step per epoch of every trial of the search.
    live = client.get_metric_history(by_asset["lightgcn_model"].info.run_id, "progress/loss")
    assert len(live) >= 2 and [m.step for m in live] == list(range(1, len(live) + 1))
    # The report is a run of its own: every model's test metrics and the report files.
    report = by_asset["evaluation_report"]
    assert report.data.metrics["mm_hybrid.recall_at_20"] > 0 and "ease.ndcg_at_20" in report.data.metrics
    assert {a.path for a in client.list_artifacts(report.info.run_id, "report")} >= {
        "report/report.html",
        "report/metrics.json",
    }
    inputs = client.get_run(by_asset["mm_gcn_model"].info.run_id).inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["interaction_split"] and inputs[0].dataset.digest
    versions = client.search_model_versions(f"name = '{REGISTERED_MODEL_NAME}'")
    assert len(versions) == 1
    assert client.get_model_version_by_alias(REGISTERED_MODEL_NAME, "challenger").version == versions[0].version
    mlflow.set_tracking_uri(None)


def test_first_run_promotes_the_challenger(pipeline_run):
    result, _, uri = pipeline_run
    promotion = result.output_for_node("model_promotion")
    assert promotion["decision"] == "promoted" and promotion["champion_before"] is None
    (event,) = [
        e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "model_promotion"
    ]
    metadata = event.materialization.metadata
    assert metadata["decision"].value == "promoted" and "no champion" in metadata["reason"].value
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    challenger = client.get_model_version_by_alias(REGISTERED_MODEL_NAME, "challenger")
    champion = client.get_model_version_by_alias(REGISTERED_MODEL_NAME, "champion")
    assert str(champion.version) == str(challenger.version) == promotion["challenger_version"]
    assert champion.tags["mm_pipeline.promotion.decision"] == "promoted"
    assert client.get_registered_model(REGISTERED_MODEL_NAME).tags["mm_pipeline.champion_history"] == str(
        champion.version
    )
    # Re-scored from the registered artifact, with the evaluation report's protocol: the same numbers as
    # the report's row of what was registered (the compressed variant compressed_model chose, if any).
    report = result.output_for_node("evaluation_report")["metrics"]
    shipped = report["selection"]["selected"]  # the best on validation is what was registered
    assert client.get_run(challenger.run_id).data.tags["mm_pipeline.selected_model"] == shipped
    compression = result.output_for_node("compressed_model")["serving"]
    assert client.get_run(challenger.run_id).data.tags["mm_pipeline.compression"] == compression
    row = shipped if compression == "fp32" else f"{shipped}[{compression}]"
    for key in ("ndcg@20", "recall@20", "coverage@20"):
        assert promotion["challenger_metrics"][key] == pytest.approx(report["models"][row][key], abs=1e-9), key
    if report["cold_start"]:
        assert promotion["challenger_metrics"]["cold_recall@20"] == pytest.approx(
            report["cold_start"][row]["recall@20"], abs=1e-9
        )
    assert promotion["challenger_metrics"]["known_user_share"] == 1.0
    assert promotion["challenger_metrics"]["served_rows_checked"] > 0
    mlflow.set_tracking_uri(None)


def test_explanations_are_faithful_and_name_no_user(pipeline_run):
    result, home, _ = pipeline_run
    out = result.output_for_node("recommendation_explanations")
    faithfulness = out["faithfulness"].set_index(["model", "removed"])
    # Removing the top-attributed history item (or modality) hurts the recommended item more than a random one.
    assert faithfulness.loc[("mm_hybrid", "history"), "score gap"] > 0
    assert faithfulness.loc[("mm_hybrid", "history"), "rank gap"] > 0
    assert faithfulness.loc[("ease", "history"), "score gap"] > 0
    explained = out["explanations"]
    shares = explained[[c for c in explained.columns if c.startswith("share_")]]
    np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-6)
    assert explained["reason"].str.len().gt(0).all() and "user_id" not in explained
    assert out["by_part"]["users"].sum() == out["interest"]["user"].nunique()
    # Every user's interest per modality in the aligned space; the test users by dominant modality.
    modalities = set(result.output_for_node("aligned_item_embeddings")["modalities"])
    assert set(out["users_interest"]["dominant"]) <= modalities | {"mixed", "none"}
    by_interest = out["by_interest"]
    assert by_interest["users"].sum() > 0 and np.isclose(by_interest["share"].sum(), 1.0)
    # The report gives the primary model's test accuracy per dominant modality, from its own test ranking.
    metrics = json.loads((home / "reports" / "latest" / "metrics.json").read_text())
    reported = pd.DataFrame(metrics["dominant_modality"]).set_index("dominant modality")
    assert reported["users"].to_dict() == by_interest.set_index("dominant modality")["users"].to_dict()
    enough = reported["note"] == ""
    assert enough.any() and reported.loc[enough, "recall@20"].between(0, 1).all()
    assert set(explained["interest"]) <= modalities | {"mixed", "none"}
    # mm_gcn's score is split by modality (integrated gradients over its content) and deletion-tested.
    components = out["component_explanations"]
    gcn = components[components["model"] == "mm_gcn"]
    assert len(gcn) and {f"share_{m}" for m in modalities} <= set(gcn.columns)
    np.testing.assert_allclose(gcn.filter(like="share_").sum(axis=1, min_count=1).dropna(), 1.0, atol=1e-6)
    assert ("mm_gcn", "modality") in faithfulness.index


def test_the_report_carries_the_faithfulness_figures(pipeline_run):
    result, home, _ = pipeline_run
    metrics = json.loads((home / "reports" / "latest" / "metrics.json").read_text())
    tested = {(row["model"], row["removed"]): row for row in metrics["faithfulness"]}
    assert tested[("mm_hybrid", "history")]["rank gap"] > 0 and ("ease", "history") in tested
    assert sum(row["users"] for row in metrics["dominant_part"]) > 0
    assert sum(row["users"] for row in metrics["dominant_modality"]) > 0
    html = (home / "reports" / "latest" / "report.html").read_text()
    assert "Explanations and their faithfulness" in html


def test_gnn_ablations_run_config_chooses_the_variants(pipeline_run):
    """``variants`` trains a subset (here none, the cheap case) and names an unknown variant in its error."""
    from mm_pipeline.defs.assets.research import GnnAblationConfig, mm_gcn_ablations

    result, home, uri = pipeline_run
    resources = default_resources(home=str(home), dataset="builtin:tiny", tracking_uri=uri)
    inputs = {
        name: result.output_for_node(name)
        for name in [
            "mm_gcn_model",
            "interaction_split",
            "aligned_item_embeddings",
            "text_features",
            "image_features",
            "audio_features",
        ]
    }
    kwargs = {**inputs, "pipeline": resources["pipeline"], "mlflow_tracking": resources["mlflow_tracking"]}
    none = mm_gcn_ablations(dg.build_asset_context(), config=GnnAblationConfig(variants=[]), **kwargs)
    assert none.value["names"] == [] and none.metadata["variants"].value == 0
    with pytest.raises(ValueError, match="unknown variants \\['mm_gcn-no_such'\\]"):
        mm_gcn_ablations(dg.build_asset_context(), config=GnnAblationConfig(variants=["mm_gcn-no_such"]), **kwargs)

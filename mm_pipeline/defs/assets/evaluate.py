"""Evaluation report: every model on the same test split, full ranking, plus cold-start items."""

import dagster as dg
import pandas as pd
import torch

from mm_pipeline.defs.assets.train import split_data
from mm_pipeline.defs.metadata import frame_markdown
from mm_pipeline.defs.resources import PipelineResource
from mm_pipeline.evaluate.protocol import evaluate_models
from mm_pipeline.evaluate.report import metrics_table_markdown, png_markdown, training_curve_png, write_report
from mm_pipeline.recommend.base import EmbeddingRecommender

GROUP = "evaluate"
PRIMARY_MODEL = "mm_gcn"
BASELINES = ("popularity", "ease", "bpr_mf", "lightgcn", "content_knn")


def significance_markdown(significance: dict | None) -> str:
    if not significance:
        return "_no baseline to compare with_"
    lines = [f"Paired bootstrap over test users (1,000 resamples), **{significance['primary']}** minus the "
             f"best baseline **{significance['best_baseline']}**:", ""]
    for metric in ("recall@20", "ndcg@20"):
        test = significance[metric]
        lo, hi = test["ci"]
        verdict = "significant" if test["significant"] else "not significant"
        lines.append(f"- {metric}: {test['difference']:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}], "
                     f"p = {test['p_value']:.3f} ({verdict})")
    return "\n".join(lines)


def _recommenders(bundles: list[dict], compressed_model: dict) -> dict[str, EmbeddingRecommender]:
    models = {b["name"]: EmbeddingRecommender.from_bundle(b) for b in bundles if "skipped" not in b}
    for variant in compressed_model["variants"]:
        arrays = compressed_model[f"variant_{variant}"]
        name = f"{compressed_model['source_model']}[{variant}]"
        models[name] = EmbeddingRecommender(name, torch.from_numpy(arrays["user_embeddings"]),
                                            torch.from_numpy(arrays["item_embeddings"]))
    return models


@dg.asset(group_name=GROUP, kinds={"pandas"}, code_version="1")
def evaluation_report(context: dg.AssetExecutionContext, source_dataset: dict, interaction_split: dict,
                      popularity_model: dict, ease_model: dict, bpr_mf_model: dict, lightgcn_model: dict,
                      content_knn_model: dict, mm_gcn_model: dict, compressed_model: dict,
                      pipeline: PipelineResource) -> dg.Output[dict]:
    """Recall/NDCG/Precision/F1/MAP/hit ratio at 10 and 20, coverage and novelty for every model.

    Protocol: the interaction split (chronological, or the source's published one); each test user's scores over *all* items with their
    training and validation items excluded. Cold start: test interactions on items with no training
    interaction, ranked among those cold items only. Writes ``reports/latest/metrics.json``.
    """
    data = split_data(interaction_split)
    models = _recommenders([popularity_model, ease_model, bpr_mf_model, lightgcn_model, content_knn_model,
                            mm_gcn_model], compressed_model)
    baselines = [name for name in BASELINES if name in models]
    results = evaluate_models(models, data, ks=(10, 20), primary=PRIMARY_MODEL, baselines=tuple(baselines),
                              seed=pipeline.seed,
                              split=interaction_split.get("split_method", "per-user chronological split (8:1:1)"))
    table = interaction_split["table"]
    metrics = {
        "dataset": {"spec": source_dataset["spec"], "name": source_dataset["name"],
                    "modalities": source_dataset["modalities"], "users": data.n_users, "items": data.n_items,
                    "interactions": int(len(table)),
                    **{f"{k}_interactions": int((table["split"] == k).sum()) for k in ("train", "valid", "test")},
                    "cold_items": int((~data.warm_items).sum()),
                    "cold_test_interactions": results["cold_test_interactions"]},
        "protocol": results["protocol"],
        "primary_model": PRIMARY_MODEL,
        "baselines": baselines,
        "models": results["models"],
        "significance": results.get("significance"),
        "cold_start": results["cold_start"],
        "compression": compressed_model["stats"].to_dict(orient="records"),
        "dagster_run_id": context.run_id,
    }
    main_table = metrics_table_markdown(results["models"], highlight=PRIMARY_MODEL)
    ci_table = frame_markdown(pd.DataFrame([
        {"model": name, **{f"{m} 95% CI": "[{:.4f}, {:.4f}]".format(*values[f"{m}_ci"]) for m in ("recall@20", "ndcg@20")}}
        for name, values in results["models"].items()]))
    significance = significance_markdown(results.get("significance"))
    cold_table = (metrics_table_markdown(results["cold_start"], columns=("recall@20", "ndcg@20", "precision@20",
                                                                          "hit_ratio@20"), highlight=PRIMARY_MODEL)
                  if results["cold_start"] else "_no test interactions on cold-start items in this split_")
    figures = {}
    for bundle in (bpr_mf_model, lightgcn_model, mm_gcn_model):
        history = bundle.get("history")
        if isinstance(history, pd.DataFrame) and len(history):
            figures[f"curve_{bundle['name']}"] = training_curve_png(
                history, [c for c in ("loss", "valid_ndcg@20") if c in history], f"{bundle['name']} training")
    markdown = "\n\n".join([
        f"# Evaluation report\n\nDataset: `{source_dataset['spec']}` ({data.n_users} users, {data.n_items} items). "
        f"Primary model: **{PRIMARY_MODEL}**.\n\n{results['protocol']}",
        "## All items (full ranking)", main_table, ci_table, significance,
        "## Cold-start items", cold_table,
        "## Compression (validation split)", frame_markdown(compressed_model["stats"]),
        "## Training curves", *[f"![{name}]({name}.png)" for name in figures]])
    paths = pipeline.paths()
    written = write_report(paths.reports / "latest", metrics, markdown, figures)
    write_report(paths.reports / "runs" / context.run_id, metrics, markdown, figures)
    return dg.Output({"metrics": metrics}, metadata={
        "metrics": dg.MetadataValue.md(main_table + "\n\n" + ci_table + "\n\n" + significance),
        "cold_start": dg.MetadataValue.md(cold_table),
        "report": dg.MetadataValue.path(str(written["report.md"])),
        "metrics_json": dg.MetadataValue.path(str(written["metrics.json"])),
        f"{PRIMARY_MODEL}_recall@20": float(results["models"][PRIMARY_MODEL]["recall@20"]),
        **{f"curve_{k}": dg.MetadataValue.md(png_markdown(v, k)) for k, v in figures.items()},
    })

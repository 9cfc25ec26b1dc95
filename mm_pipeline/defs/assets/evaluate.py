"""Evaluation report: every model on the same test split (full ranking, cold-start and long-tail items)."""

import functools
from collections.abc import Mapping, Sequence

import dagster as dg
import pandas as pd

from mm_pipeline.compress.artifact import serving_recommender
from mm_pipeline.data.types import InteractionSplit, as_interaction_split
from mm_pipeline.defs.assets.train import split_data
from mm_pipeline.defs.io_manager import lazy_input
from mm_pipeline.defs.resources import PipelineResource
from mm_pipeline.evaluate.protocol import ModelsOnDemand
from mm_pipeline.evaluate.report import Explanations, build_comparison, png_markdown, write_report
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.catalog import MODEL_TABLE, names_with_role
from mm_pipeline.recommend.ranking import SplitRankings, unpack_rankings
from mm_pipeline.storage import point_link

GROUP = "evaluate"
(PRIMARY_MODEL,) = names_with_role("primary")
BASELINES = names_with_role("baseline", "research")
COMPONENTS = names_with_role("component")  # models the primary may use: reported, not baselines
# What both reports read besides the model bundles.
REPORT_INPUTS = (
    "source_dataset",
    "interaction_split",
    "selected_model",
    "compressed_model",
    "aligned_item_embeddings",
    "recommendation_explanations",
    "model_rankings",
)
DEFAULT_SPLIT = "per-user chronological split (8:1:1)"


def report_inputs(model_assets) -> dict[str, dg.AssetIn]:
    """The ins of a report asset: :data:`REPORT_INPUTS` and the model assets (``model_assets``). The model
    bundles are read lazily (the report builds, ranks and drops one model at a time), and so is
    ``selected_model``: the report reads its selection, never its tables (the selected model is among the
    models)."""
    ins = {name: dg.AssetIn() for name in REPORT_INPUTS}
    return {**ins, **{name: lazy_input() for name in ("selected_model", *model_assets)}}


def _recommenders(bundles: Sequence[Mapping], compressed_model: dict | None) -> ModelsOnDemand:
    """Every model of ``bundles`` and the served compressed variant, each built when it is read."""
    models = {b["name"]: functools.partial(EmbeddingRecommender.from_bundle, b) for b in bundles if "skipped" not in b}
    # Only the served variant is ranked again with every metric: the compression step already measured
    # each variant on validation and test, and its frontier table is in the report.
    served = (compressed_model or {}).get("serving")
    for variant in (compressed_model or {}).get("variants", []):
        if served is not None and variant != served:
            continue
        name = served_name(compressed_model, variant)
        arrays = compressed_model[f"variant_{variant}"]
        # A served artifact's tables (format_version 2), decoded: the variant is evaluated as it is served.
        if "format_version" in arrays:
            models[name] = functools.partial(serving_recommender, arrays, name)
        else:
            models[name] = functools.partial(EmbeddingRecommender.from_arrays, name, arrays)
    return ModelsOnDemand(models)


def served_name(compressed_model: Mapping, variant: str | None = None) -> str:
    """A compressed variant's model name in the report (the served one by default), e.g. ``mm_hybrid[int8]``."""
    return f"{compressed_model['source_model']}[{variant or compressed_model['serving']}]"


def selection_summary(selected_model: Mapping, bundles: Sequence[dict]) -> dict:
    """What the report says about model selection: the validation table, the choice and why, and what each
    model's own validation search chose."""
    searches = []
    for bundle in bundles:
        if "skipped" in bundle:
            continue
        search = bundle.get("search")
        if not isinstance(search, pd.DataFrame) or not len(search):
            searches.append(
                {"model": bundle["name"], "settings tried": 0, "search seconds": 0.0, "chosen": "nothing to choose"}
            )
            continue
        row = search.loc[search["chosen"].astype(bool)].iloc[0]
        # A trained model's grid changes one setting at a time from its config: the chosen row names the
        # change (none: the config as given).
        changed = {
            k: row[k]
            for k in search.columns
            if not k.startswith("valid_")
            and k not in ("seconds", "chosen", "best_epoch", "epochs_run")
            and pd.notna(row[k])
        }
        searches.append(
            {
                "model": bundle["name"],
                "settings tried": int(len(search)),
                "search seconds": float(search["seconds"].sum()),
                "chosen": ", ".join(f"{k}={v}" for k, v in changed.items()) or "the given settings",
            }
        )
    return {
        "selected": selected_model["selected"],
        "reason": selected_model["selection_reason"],
        "validation": selected_model["selection"],
        "searches": pd.DataFrame(searches),
    }


def comparison_report(
    context: dg.AssetExecutionContext,
    pipeline: PipelineResource,
    source_dataset: dict,
    interaction_split: InteractionSplit,
    bundles: Sequence[dict],
    aligned_item_embeddings: dict,
    compressed_model: dict | None = None,
    ablation_bundles: Sequence[dict] = (),
    title: str = "Evaluation report",
    selected_model: Mapping | None = None,
    explanations: dict | None = None,
    model_rankings: dict | None = None,
) -> dg.Output[dict]:
    """Evaluate model bundles (baselines + the primary), compressed variants and ablations; write the report.

    Files go to ``reports/runs/<run id>`` (``metrics.json``, ``report.md``, ``report.html`` and the PNG
    figures); ``reports/latest`` is then switched to that folder (``research_report`` calls this with the
    ablation bundles).
    The report (files and every model's test metrics) is also logged as an MLflow run of its own.
    The models ranked in ``model_rankings`` (and the served variant, ranked by the compression step) are read
    from there, not built and ranked again.
    """
    data = split_data(interaction_split)
    names = [b["name"] for b in [*bundles, *ablation_bundles] if "skipped" not in b]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique across bundles and ablations, got {names}")
    models = _recommenders([*bundles, *ablation_bundles], compressed_model)
    ablations = [b["name"] for b in ablation_bundles if "skipped" not in b]
    histories = {
        b["name"]: b["history"]
        for b in [*bundles, *ablation_bundles]
        if "skipped" not in b and isinstance(b.get("history"), pd.DataFrame) and len(b["history"])
    }
    if isinstance(aligned_item_embeddings.get("history"), pd.DataFrame) and len(aligned_item_embeddings["history"]):
        histories["alignment"] = aligned_item_embeddings["history"]
    table = as_interaction_split(interaction_split).table
    dataset = {
        "spec": source_dataset["spec"],
        "name": source_dataset["name"],
        "modalities": source_dataset["modalities"],
        "interactions": int(len(table)),
        **{f"{k}_interactions": int((table["split"] == k).sum()) for k in ("train", "valid", "test")},
    }
    comparison = build_comparison(
        models,
        data,
        primary=PRIMARY_MODEL,
        baselines=[n for n in BASELINES if n in models],
        ablations=ablations,
        components=[n for n in COMPONENTS if n in models],
        histories=histories,
        compression=compressed_model["stats"] if compressed_model else None,
        aligned=aligned_item_embeddings,
        dataset=dataset,
        seed=pipeline.seed,
        title=title,
        split=(as_interaction_split(interaction_split).split_method or DEFAULT_SPLIT),
        selection=selection_summary(selected_model, bundles) if selected_model is not None else None,
        explanations=(
            Explanations(
                explanations["faithfulness"],
                explanations["by_part"],
                int(explanations["interest"]["user"].size),
                # The primary model's accuracy per dominant modality comes from this report's own test ranking.
                dominant=explanations["users_interest"].set_index("user")["dominant"],
            )
            if explanations is not None
            else None
        ),
        rankings={
            **(unpack_rankings(model_rankings) if model_rankings is not None else {}),
            # The served variant's lists, made when the compression step measured it.
            **(
                {served_name(compressed_model): SplitRankings.from_arrays(compressed_model["served_lists"])}
                if "served_lists" in (compressed_model or {})
                else {}
            ),
        },
    )
    metrics = {**comparison.metrics, "dagster_run_id": context.run_id}
    paths = pipeline.paths()
    latest, this_run = paths.reports / "latest", paths.reports / "runs" / context.run_id
    written = write_report(this_run, metrics, comparison.markdown, comparison.figures, comparison.html)
    point_link(latest, this_run)  # reports/latest -> runs/<run id>, one atomic swap: never a mix of two runs
    from mm_pipeline.registry.tracking import log_evaluation

    with context.resources.mlflow_tracking.start_run(context, run_name=context.asset_key.to_user_string()) as run:
        logged = log_evaluation(metrics, this_run)
    primary = metrics["models"][PRIMARY_MODEL]
    return dg.Output(
        {"metrics": metrics},
        metadata={
            **{name: dg.MetadataValue.md(text) for name, text in comparison.tables.items()},
            **{
                f"figure_{name}": dg.MetadataValue.md(png_markdown(png, name))
                for name, png in comparison.figures.items()
            },
            "report": dg.MetadataValue.path(str(written["report.md"])),
            "report_html": dg.MetadataValue.path(str(written["report.html"])),
            "metrics_json": dg.MetadataValue.path(str(written["metrics.json"])),
            "mlflow_run_id": run.info.run_id,
            "mlflow_test_metrics": logged,
            f"{PRIMARY_MODEL}_recall@20": float(primary["recall@20"]),
            f"{PRIMARY_MODEL}_ndcg@20": float(primary["ndcg@20"]),
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"pandas", "mlflow"},
    code_version="9",
    required_resource_keys={"pipeline", "mlflow_tracking"},
    ins=report_inputs(s.asset_name for s in MODEL_TABLE if s.role != "research"),
)
def evaluation_report(context: dg.AssetExecutionContext, **stored) -> dg.Output[dict]:
    """Every model on the same test split: Recall/NDCG/Precision/F1/MAP/hit ratio at 10 and 20, coverage,
    novelty, personalization and intra-list diversity, with bootstrap intervals and a paired test against
    the best baseline; cold-start and long-tail results; modality weights and training curves.

    Protocol: the interaction split (chronological, or the source's published one); each test user's
    scores over *all* items with their training and validation items excluded. Writes
    ``reports/latest/{metrics.json,report.md,report.html}`` and the figures. The models are those of the
    model table (:mod:`mm_pipeline.recommend.catalog`) outside the research role.
    """
    return comparison_report(
        context,
        context.resources.pipeline,
        stored["source_dataset"],
        stored["interaction_split"],
        [stored[s.asset_name] for s in MODEL_TABLE if s.role != "research"],
        stored["aligned_item_embeddings"],
        compressed_model=stored["compressed_model"],
        selected_model=stored["selected_model"],
        explanations=stored["recommendation_explanations"],
        model_rankings=stored["model_rankings"],
    )

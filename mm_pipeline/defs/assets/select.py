"""Which model ships: the best on the validation split among every trained model."""

import functools

import dagster as dg
from pydantic import Field

from mm_pipeline.defs.assets.train import split_data
from mm_pipeline.defs.io_manager import lazy_input
from mm_pipeline.defs.metadata import frame_table
from mm_pipeline.evaluate.protocol import ModelsOnDemand
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.catalog import MODEL_TABLE
from mm_pipeline.recommend.selection import MONITOR, compare_on_validation

GROUP = "select"


class SelectionConfig(dg.Config):
    candidates: list[str] = Field(
        default_factory=list,
        description="Models that may be shipped (e.g. [mm_hybrid, ease]); empty: every trained model.",
    )


# Every model of the table outside the research role may ship.
CANDIDATES = tuple(spec for spec in MODEL_TABLE if spec.role != "research")


@dg.asset(
    group_name=GROUP,
    kinds={"pandas"},
    code_version="2",
    # The candidates are read lazily and built one at a time (an item-item model is 1.6 GB at 20k items).
    ins={"interaction_split": dg.AssetIn(), **{spec.asset_name: lazy_input() for spec in CANDIDATES}},
)
def selected_model(context: dg.AssetExecutionContext, config: SelectionConfig, **stored) -> dg.Output[dict]:
    """The model to compress, register and serve: the best validation NDCG@20 among all trained models of
    the model table (each already tuned on validation). The test split is not read; the report shows how
    the choice does on test. The value is the chosen model's bundle plus the validation table."""
    interaction_split = stored["interaction_split"]
    bundles = [stored[spec.asset_name] for spec in CANDIDATES]
    candidates = {b["name"]: b for b in bundles if "skipped" not in b}
    unknown = sorted(set(config.candidates) - {b["name"] for b in bundles})
    if unknown:
        raise dg.Failure(
            f"selected_model config candidates {unknown} are not models of this pipeline; choose "
            f"from {sorted(b['name'] for b in bundles)}"
        )
    if config.candidates:
        candidates = {n: b for n, b in candidates.items() if n in config.candidates}
        if not candidates:
            raise dg.Failure(
                f"none of the candidates {config.candidates} was trained (skipped models: "
                f"{ {b['name']: b['skipped'] for b in bundles if 'skipped' in b} })"
            )
    data = split_data(interaction_split)
    builders = {n: functools.partial(EmbeddingRecommender.from_bundle, b) for n, b in candidates.items()}
    table = compare_on_validation(ModelsOnDemand(builders), data)
    chosen = str(table.loc[0, "model"])
    score = f"valid_{MONITOR}"
    runner_up = f"; next best {table.loc[1, 'model']} {table.loc[1, score]:.4f}" if len(table) > 1 else ""
    among = (
        f"the {len(table)} candidate models {config.candidates}"
        if config.candidates
        else f"{len(table)} trained models"
    )
    reason = f"{chosen} has the best validation NDCG@20 among {among} ({table.loc[0, score]:.4f}{runner_up})"
    context.log.info(f"selected model: {reason}")
    skipped = {b["name"]: b["skipped"] for b in bundles if "skipped" in b}
    value = {
        **candidates[chosen],
        "selection": table,
        "selected": chosen,
        "selection_reason": reason,
        "skipped_models": skipped,
    }
    return dg.Output(
        value,
        metadata={
            "selected": chosen,
            "reason": reason,
            "validation": frame_table(table),
            "skipped": dg.MetadataValue.json(skipped),
        },
    )

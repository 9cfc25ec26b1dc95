"""Which model ships: the best on the validation split among every trained model."""

import functools
import time

import dagster as dg
import pandas as pd
from pydantic import Field

from mm_pipeline.defs.assets.train import split_data
from mm_pipeline.defs.io_manager import lazy_input
from mm_pipeline.defs.metadata import frame_table
from mm_pipeline.evaluate.protocol import ModelsOnDemand, rank_for_evaluation
from mm_pipeline.memory import release_freed_memory
from mm_pipeline.recommend.base import EmbeddingRecommender
from mm_pipeline.recommend.catalog import MODEL_TABLE
from mm_pipeline.recommend.ranking import pack_rankings, unpack_rankings
from mm_pipeline.recommend.selection import MONITOR, compare_on_validation

GROUP = "select"
RANKED_K = 20  # the lists' length: what selection (NDCG@20) and the report (metrics at 10 and 20) read


class SelectionConfig(dg.Config):
    candidates: list[str] = Field(
        default_factory=list,
        description="Models that may be shipped (e.g. [mm_hybrid, ease]); empty: every trained model.",
    )


# Every model of the table outside the research role may ship.
CANDIDATES = tuple(spec for spec in MODEL_TABLE if spec.role != "research")


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch"},
    code_version="1",
    # The models are read lazily and built one at a time (an item-item model is 1.6 GB at 20k items).
    ins={"interaction_split": dg.AssetIn(), **{spec.asset_name: lazy_input() for spec in CANDIDATES}},
)
def model_rankings(context: dg.AssetExecutionContext, **stored) -> dg.Output[dict]:
    """Every trained model's top-20 lists for validation (training items excluded), for test (training and
    validation items excluded) and for cold-start test users among the cold items, from one scoring pass
    a model (:func:`~mm_pipeline.evaluate.protocol.rank_for_evaluation`). Model selection reads the
    validation lists only; the evaluation report reads the test lists: each model is built and scored
    once for both instead of once each."""
    data = split_data(stored["interaction_split"])
    bundles = [stored[spec.asset_name] for spec in CANDIDATES]
    rankings, seconds = {}, []
    for bundle in bundles:  # one model's tables at a time
        if "skipped" in bundle:
            continue
        start = time.perf_counter()
        model = EmbeddingRecommender.from_bundle(bundle)
        read = time.perf_counter()
        rankings[bundle["name"]] = rank_for_evaluation(model, data, RANKED_K)
        seconds.append(
            {"model": bundle["name"], "read s": round(read - start, 2), "rank s": round(time.perf_counter() - read, 2)}
        )
        del model
        release_freed_memory()
    value = pack_rankings(rankings)
    return dg.Output(
        value,
        metadata={
            "models": dg.MetadataValue.json(list(rankings)),
            "seconds": frame_table(pd.DataFrame(seconds)),
            "users": int(value["users"].size),
            "cold_start_users": int(value["among"].size),
            "k": RANKED_K,
        },
    )


@dg.asset(
    group_name=GROUP,
    kinds={"pandas"},
    code_version="3",
    # The candidates are read lazily: only the chosen one's bundle is read in full (it is the value).
    ins={
        "interaction_split": dg.AssetIn(),
        "model_rankings": dg.AssetIn(),
        **{spec.asset_name: lazy_input() for spec in CANDIDATES},
    },
)
def selected_model(context: dg.AssetExecutionContext, config: SelectionConfig, **stored) -> dg.Output[dict]:
    """The model to compress, register and serve: the best validation NDCG@20 among all trained models of
    the model table (each already tuned on validation), from their validation lists in ``model_rankings``.
    The test lists there are not read; the report shows how the choice does on test. The value is the
    chosen model's bundle plus the validation table."""
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
    table = compare_on_validation(ModelsOnDemand(builders), data, rankings=unpack_rankings(stored["model_rankings"]))
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

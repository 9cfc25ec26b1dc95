"""Explanations of the primary model's recommendations, and the deletion test of their faithfulness."""

import functools

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from mm_pipeline.defs.assets.train import split_data
from mm_pipeline.defs.io_manager import lazy_input
from mm_pipeline.defs.metadata import frame_table
from mm_pipeline.evaluate.protocol import ModelsOnDemand
from mm_pipeline.recommend.base import CONTENT_PARTS, EmbeddingRecommender
from mm_pipeline.recommend.catalog import MODEL_TABLE, names_with_role

GROUP = "evaluate"
# Every model of the table outside the research role is deletion-tested; the primary is also explained.
EXPLAINED = tuple(s for s in MODEL_TABLE if s.role != "research")
(PRIMARY,) = names_with_role("primary")


class ExplainConfig(dg.Config):
    users: int = Field(500, description="Held-out users (with test interactions) explained and deletion-tested.")
    k: int = Field(20, description="Recommendations explained per user.")
    shown: int = Field(5, description="Users whose explained top-5 is shown in the metadata.")


@dg.asset(
    group_name=GROUP,
    kinds={"pandas"},
    code_version="4",
    required_resource_keys={"pipeline"},
    ins={
        **{name: dg.AssetIn() for name in ["interaction_split", "raw_items", "aligned_item_embeddings"]},
        # Read lazily and built one at a time: the item-item models are 1.6 GB each on a 20k-item catalogue.
        **{s.asset_name: lazy_input() for s in EXPLAINED},
    },
)
def recommendation_explanations(context: dg.AssetExecutionContext, config: ExplainConfig, **stored) -> dg.Output[dict]:
    """Why the primary model recommends what it does, for a seeded sample of held-out users: each
    recommendation's score split into parts (collaborative, each modality, the GNN) and the history items
    behind it; each user's dominant part and how it relates to test recall; every user's interest per
    modality in the aligned space and the distribution of the test users' dominant modalities (the report adds
    the primary model's test accuracy per dominant modality, from its own test ranking); the same
    explanations from the embedding models with a content split (``mm_gcn``, VBPR: integrated gradients);
    and, per model, the deletion test (removing the top-attributed history item or modality vs a random
    one). Users appear by index only."""
    from mm_pipeline.explain import deletion_test
    from mm_pipeline.explain.faithfulness import not_tested_reason
    from mm_pipeline.explain.interest import InterestSpace, interest_profiles
    from mm_pipeline.explain.summary import explain_top_k, interest_by_part
    from mm_pipeline.registry.user_keys import pipeline_user_key_secret

    interaction_split, raw_items, pipeline = (
        stored["interaction_split"],
        stored["raw_items"],
        context.resources.pipeline,
    )
    data = split_data(interaction_split)
    history = (data.train > 0).astype(np.float32).tocsr()
    space = InterestSpace.from_aligned(
        stored["aligned_item_embeddings"], max_size=int(np.diff(history.indptr).max()), seed=pipeline.seed
    )
    interest = interest_profiles(space, history)
    users_interest = interest.frame().rename_axis("user").reset_index()
    test_users = np.flatnonzero(np.diff(data.test.tocsr().indptr) > 0)
    rng = np.random.default_rng(pipeline.seed)
    users = np.sort(rng.choice(test_users, size=min(config.users, test_users.size), replace=False))
    bundles = {spec.name: stored[spec.asset_name] for spec in EXPLAINED if "skipped" not in stored[spec.asset_name]}
    models = ModelsOnDemand({n: functools.partial(EmbeddingRecommender.from_bundle, b) for n, b in bundles.items()})
    rows = []
    for name in models:
        tested = models[name]
        results = deletion_test(tested, data.train, users, seed=pipeline.seed)
        if not results:
            rows.append({"model": name, "removed": f"n/a ({not_tested_reason(tested)})"})
        del tested  # before the next model is built (a loop over items() would hold this one meanwhile)
        for kind, r in results.items():
            rows.append(
                {
                    "model": name,
                    "removed": kind,
                    "users": r.users,
                    "top score drop": r.top_score_drop,
                    "random score drop": r.random_score_drop,
                    "top rank drop": r.top_rank_drop,
                    "random rank drop": r.random_rank_drop,
                    "score gap": r.score_gap,
                    "rank gap": r.rank_gap,
                }
            )
    faithfulness = pd.DataFrame(rows)

    model = models[PRIMARY]
    item_ids = raw_items["item_id"].astype(str).tolist()
    secret = pipeline_user_key_secret()
    explained = explain_top_k(model, data.train, users, item_ids, secret, k=config.k, interest=space)
    profiles, by_part = interest_by_part(explained, data.test)
    # The test users by dominant modality; the report adds the primary model's accuracy per group from its own
    # test ranking (ranking every test user here too cost a quarter of this step on builtin:large).
    dominant = users_interest["dominant"].iloc[test_users].value_counts().sort_index()
    by_interest = pd.DataFrame(
        {
            "dominant modality": dominant.index,
            "users": dominant.to_numpy(),
            "share": dominant.to_numpy() / dominant.sum(),
        }
    )
    # The embedding models whose score is not a sum of parts, split by integrated gradients over their content.
    others = [
        explain_top_k(models[n], data.train, users, item_ids, secret, k=config.k, interest=space).assign(model=n)
        for n, bundle in bundles.items()
        if n != PRIMARY and CONTENT_PARTS in bundle  # the model's parts have a content split
    ]
    components = pd.concat(others, ignore_index=True) if others else pd.DataFrame({"model": []})
    titles = raw_items.set_index(raw_items["item_id"].astype(str))["title"] if "title" in raw_items else None
    shown = explained[explained["user"].isin(users[: config.shown]) & (explained["rank"] <= 5)].copy()
    if titles is not None:  # name items by title in what people read (a handful of rows)
        shown["reason"] = [
            _titled(reason, because, titles) for reason, because in zip(shown["reason"], shown["because"])
        ]
        shown["item_id"] = shown["item_id"].map(titles).fillna(shown["item_id"])
    shown = shown[["user", "rank", "item_id", "reason"]]
    context.log.info(
        f"explained {len(explained)} recommendations of {users.size} users; "
        f"dominant parts: {dict(zip(by_part['dominant part'], by_part['users']))}; dominant modalities "
        f"of the test users: {dict(zip(by_interest['dominant modality'], by_interest['users']))}"
    )
    primary = faithfulness[faithfulness["model"] == PRIMARY].set_index("removed")
    meta = {
        "users": int(users.size),
        "explained": int(len(explained)),
        "faithfulness": frame_table(faithfulness),
        "dominant_part": frame_table(by_part),
        "dominant_modality": frame_table(by_interest),
        "examples": frame_table(shown, 40),
    }
    for kind in ("history", "modality"):
        if kind in primary.index:
            meta[f"{PRIMARY}_{kind}_rank_gap"] = float(primary.loc[kind, "rank gap"])
            meta[f"{PRIMARY}_{kind}_score_gap"] = float(primary.loc[kind, "score gap"])
    return dg.Output(
        {
            "faithfulness": faithfulness,
            "interest": profiles,
            "by_part": by_part,
            "explanations": explained,
            "users_interest": users_interest,
            "by_interest": by_interest,
            "component_explanations": components,
        },
        metadata=meta,
    )


def _titled(reason: str, because: str, titles: pd.Series) -> str:
    for item in filter(None, because.split("|")):
        reason = reason.replace(item, f"'{titles.get(item, item)}'", 1)
    return reason

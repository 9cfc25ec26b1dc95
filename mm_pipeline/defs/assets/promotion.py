"""Promotion: re-score the new version (``challenger``) and the ``champion`` on the current test split
and move the ``champion`` alias only when the promotion rule says so."""

import math

import dagster as dg
import pandas as pd
from pydantic import Field

from mm_pipeline.data.types import InteractionSplit, as_interaction_split
from mm_pipeline.defs.assets.train import split_data
from mm_pipeline.defs.metadata import frame_table
from mm_pipeline.defs.resources import MlflowResource
from mm_pipeline.registry.promotion import (
    DEFAULT_GATE_METRIC,
    DEFAULT_GUARDRAILS,
    PromotionDecision,
    PromotionPolicy,
    decide_promotion,
)
from mm_pipeline.settings import lock_database, project_paths

GROUP = "registry"
K = 20


class PromotionConfig(dg.Config):
    gate_metric: str = Field(
        default=DEFAULT_GATE_METRIC, description="Metric the challenger must improve (higher is better)."
    )
    min_improvement: float = Field(
        default=0.0,
        description="Absolute margin: promote only when challenger - champion > min_improvement on the gate metric.",
    )
    guardrails: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_GUARDRAILS),
        description="Metric -> largest allowed absolute drop vs the champion.",
    )
    forget_request: str = Field(
        default="",
        description="Set by `mm-pipeline forget` (an opaque request id, never a user id): the champion was "
        "trained on data of a user forgotten since, so the challenger replaces it whatever the comparison says "
        "(unless it cannot be measured).",
    )


def cold_start_support(data) -> dict:
    """The cold-start test data of the split and whether it is enough to measure (the report's rule,
    :func:`mm_pipeline.evaluate.protocol.subgroup_support`)."""
    from mm_pipeline.evaluate.protocol import _restrict, subgroup_support

    cold = ~data.warm_items
    return subgroup_support(_restrict(data.test, cold), cold, K)


def champion_lock_for(mlflow_tracking: MlflowResource, name: str):
    """The lock around champion alias changes, for this resource's store (see ``champion_lock``)."""
    from mm_pipeline.registry.champion import champion_lock

    return champion_lock(
        name, project_paths(mlflow_tracking.home or None).home / "locks", mlflow_tracking.uri(), lock_db=lock_database()
    )


@dg.asset(group_name=GROUP, kinds={"mlflow"}, code_version="2")
def model_promotion(
    context: dg.AssetExecutionContext,
    config: PromotionConfig,
    registered_model: dict,
    interaction_split: InteractionSplit,
    raw_items: pd.DataFrame,
    mlflow_tracking: MlflowResource,
) -> dg.Output[dict]:
    """Challenger vs champion on today's test split; moves the ``champion`` alias when promoted.

    Both registered versions are downloaded and re-scored *now* (their served arrays, checked against
    their pyfunc ``predict``) with the evaluation report's protocol at k=20; logged numbers are never
    reused. The decision is the core's (:func:`mm_pipeline.registry.promotion.decide_promotion`): promote
    when there is no champion, else when the gate metric improves by more than ``min_improvement`` and no
    guardrail metric drops by more than its tolerance. Cold-start guardrails are *not applicable*
    (recorded as such, not failed) when the split has too little cold-start test data (the report's
    rule). This asset fetches the scores, moves the alias and records the decision. The alias moves under the
    champion lock, and only if it still points at the champion that was compared (compare-and-set):
    a champion changed meanwhile (a manual ``promote_model`` run) makes the decision ``stale``. The
    decision, both scores and the reason go to this asset's metadata and to
    ``mm_pipeline.promotion.*`` tags on the challenger version.
    """
    from mm_pipeline.registry.champion import (
        CHAMPION_ALIAS,
        ChampionMovedError,
        alias_version,
        set_champion,
        tag_version,
    )
    from mm_pipeline.registry.served import load_served_model, score_served_model

    try:
        policy = PromotionPolicy(config.gate_metric, config.min_improvement, dict(config.guardrails))
    except (TypeError, ValueError) as exc:
        raise dg.Failure(f"invalid promotion config: {exc}") from exc
    client = mlflow_tracking.client()
    name, challenger_version = registered_model["name"], str(registered_model["version"])
    champion_version = alias_version(client, name, CHAMPION_ALIAS)

    data = split_data(interaction_split)
    user_ids = [str(u) for u in as_interaction_split(interaction_split).user_ids.tolist()]
    item_ids = raw_items["item_id"].astype(str).tolist()

    def rescore(version: str, role: str) -> dict[str, float]:
        try:
            served = load_served_model(f"models:/{name}/{version}")
            return score_served_model(served, data, user_ids, item_ids, k=K, name=f"v{version}")
        except Exception as exc:
            raise dg.Failure(
                f"could not re-score the {role} {name} v{version} on the current test split: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    challenger = rescore(challenger_version, "challenger")
    champion = (
        None
        if champion_version is None
        else challenger
        if champion_version == challenger_version
        else rescore(champion_version, "champion")
    )
    decision = decide_promotion(
        policy,
        challenger_version,
        challenger,
        champion_version,
        champion,
        cold_start_support(data),
        forget_request=config.forget_request,
    )

    champion_after, history = champion_version, []
    if decision.promote:
        try:
            with champion_lock_for(mlflow_tracking, name):
                change = set_champion(client, name, challenger_version, expected_previous=champion_version)
            champion_after, history = change.current, change.history
        except ChampionMovedError as exc:
            decision, champion_after = decision.stale(str(exc)), exc.current
        except TimeoutError as exc:
            raise dg.Failure(f"model_promotion: {exc}") from exc
    context.log.info(
        f"{name} v{challenger_version} vs champion "
        f"{'v' + champion_version if champion_version else '(none)'}: {decision.reason}"
    )
    written = tag_version(
        client, name, challenger_version, {**decision.version_tags(), "dagster_run_id": context.run_id}
    )
    return dg.Output(
        _value(name, decision, champion_after), metadata=_metadata(name, decision, champion_after, history, written)
    )


def _value(name: str, decision: PromotionDecision, champion_after: str | None) -> dict:
    return {
        "name": name,
        "decision": decision.label,
        "promote": decision.promote,
        "reason": decision.reason,
        "challenger_version": decision.challenger_version,
        "champion_before": decision.champion_version,
        "champion_after": champion_after,
        "gate_metric": decision.policy.gate_metric,
        "gate_delta": _finite_or_none(decision.gate_delta),
        "guardrail_deltas": {m: _finite_or_none(d) for m, d in decision.guardrail_deltas.items()},
        "guardrails_not_applicable": dict(decision.not_applicable),
        "cold_test_interactions": decision.cold_test_interactions,
        "forget_request": decision.forget_request,
        "challenger_metrics": dict(decision.challenger),
        "champion_metrics": None if decision.champion is None else dict(decision.champion),
    }


def _metadata(
    name: str, decision: PromotionDecision, champion_after: str | None, history: list[str], written: dict
) -> dict:
    policy = decision.policy
    metadata = {
        "decision": decision.label,
        "reason": decision.reason,
        "registered_model": name,
        "challenger_version": decision.challenger_version,
        "champion_before": decision.champion_version or "none",
        "champion_after": champion_after or "none",
        "gate_metric": policy.gate_metric,
        "min_improvement": policy.min_improvement,
        "scores": frame_table(decision.scores_table(), 50),
        "rule": frame_table(decision.rule_table(), 50),
        "guardrails": dg.MetadataValue.json(dict(policy.guardrails)),
        "guardrails_not_applicable": dg.MetadataValue.json(dict(decision.not_applicable)),
        "cold_test_interactions": decision.cold_test_interactions,
        "mlflow_version_tags": dg.MetadataValue.json(written),
    }
    if decision.forget_request:
        metadata["forget_request"] = decision.forget_request
    for role, scores in (("challenger", decision.challenger), ("champion", decision.champion or {})):
        for metric in policy.metrics:
            if _finite_or_none(scores.get(metric)) is not None:
                metadata[f"{role}_{metric}"] = float(scores[metric])
    if math.isfinite(decision.gate_delta):
        metadata["gate_delta"] = float(decision.gate_delta)
    if history:
        metadata["champion_history"] = ",".join(history)
    return metadata


def _finite_or_none(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None

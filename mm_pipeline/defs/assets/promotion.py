"""Promotion: re-score the new version (``challenger``) and the ``champion`` on the current test split
and move the ``champion`` alias only when the promotion rule says so."""

import math

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from mm_pipeline.defs.assets.train import split_data
from mm_pipeline.defs.metadata import frame_table
from mm_pipeline.defs.resources import MlflowResource
from mm_pipeline.registry.promotion import DEFAULT_GATE_METRIC, DEFAULT_GUARDRAILS, PromotionPolicy, decide
from mm_pipeline.settings import lock_database, project_paths

GROUP = "registry"
K = 20


class PromotionConfig(dg.Config):
    gate_metric: str = Field(default=DEFAULT_GATE_METRIC,
                             description="Metric the challenger must improve (higher is better).")
    min_improvement: float = Field(default=0.0, description="Absolute margin: promote only when "
                                   "challenger - champion > min_improvement on the gate metric.")
    guardrails: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_GUARDRAILS),
                                         description="Metric -> largest allowed absolute drop vs the champion.")


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def cold_start_support(data) -> dict:
    """The cold-start test data of the split and whether it is enough to measure (the report's rule,
    :func:`mm_pipeline.evaluate.protocol.subgroup_support`)."""
    from mm_pipeline.evaluate.protocol import _restrict, subgroup_support

    cold = ~data.warm_items
    return subgroup_support(_restrict(data.test, cold), cold, K)


def not_applicable_guardrails(policy: PromotionPolicy, support: dict) -> dict[str, str]:
    """Cold-start guardrails (``cold_*``) cannot be measured when the split has too little cold-start test
    data (none at all, or so little that every model scores the same): waive them (recorded) instead
    of blocking promotion for good."""
    if support["enough"]:
        return {}
    why = (f"not enough cold-start test data in the current split ({support['reason']})"
           if support["interactions"] else
           "the current test split has no interaction on a cold item (one without training interactions)")
    return {m: why for m in policy.guardrails if m.startswith("cold_") and m != policy.gate_metric}


def champion_lock_for(mlflow_tracking: MlflowResource, name: str):
    """The lock around champion alias changes, for this resource's store (see ``champion_lock``)."""
    from mm_pipeline.registry.champion import champion_lock

    return champion_lock(name, project_paths(mlflow_tracking.home or None).home / "locks", mlflow_tracking.uri(),
                         lock_db=lock_database())


@dg.asset(group_name=GROUP, kinds={"mlflow"}, code_version="2")
def model_promotion(context: dg.AssetExecutionContext, config: PromotionConfig, registered_model: dict,
                    interaction_split: dict, raw_items: pd.DataFrame,
                    mlflow_tracking: MlflowResource) -> dg.Output[dict]:
    """Challenger vs champion on today's test split; moves the ``champion`` alias when promoted.

    Both registered versions are downloaded and re-scored *now* (their served arrays, checked against
    their pyfunc ``predict``) with the evaluation report's protocol at k=20; logged numbers are never
    reused. The rule (:func:`mm_pipeline.registry.promotion.decide`): promote when there is no
    champion, else when the gate metric improves by more than ``min_improvement`` and no guardrail
    metric drops by more than its tolerance. Cold-start guardrails are *not applicable* (recorded
    as such, not failed) when the split has too little cold-start test data (the report's rule). The alias moves under the
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
    cold_support = cold_start_support(data)
    cold_test = cold_support["interactions"]
    waived = not_applicable_guardrails(policy, cold_support)
    user_ids = [str(u) for u in interaction_split["user_ids"].tolist()]
    item_ids = raw_items["item_id"].astype(str).tolist()

    def rescore(version: str, role: str) -> dict[str, float]:
        try:
            served = load_served_model(f"models:/{name}/{version}")
            return score_served_model(served, data, user_ids, item_ids, k=K, name=f"v{version}")
        except Exception as exc:
            raise dg.Failure(f"could not re-score the {role} {name} v{version} on the current test split: "
                             f"{type(exc).__name__}: {exc}") from exc

    challenger = rescore(challenger_version, "challenger")
    champion = (None if champion_version is None else challenger if champion_version == challenger_version
                else rescore(champion_version, "champion"))
    if champion_version == challenger_version:
        decision_label, promote = "unchanged", False
        reason = f"version {challenger_version} already is the champion"
        gate_delta, deltas = 0.0, {m: 0.0 for m in policy.guardrails if m not in waived}
    else:
        decision = decide(challenger, champion, policy, not_applicable=waived)
        promote, reason = decision.promote, decision.reason
        gate_delta, deltas = decision.gate_delta, decision.guardrail_deltas
        decision_label = "promoted" if promote else "rejected"

    champion_after = champion_version
    history: list[str] = []
    if promote:
        try:
            with champion_lock_for(mlflow_tracking, name):
                change = set_champion(client, name, challenger_version, expected_previous=champion_version)
            champion_after, history = change.current, change.history
        except ChampionMovedError as exc:
            promote, decision_label, champion_after = False, "stale", exc.current
            reason = (f"not promoted: {exc} (this run compared with "
                      f"{'v' + champion_version if champion_version else 'no champion'}: {reason})")
        except TimeoutError as exc:
            raise dg.Failure(f"model_promotion: {exc}") from exc
    context.log.info(f"{name} v{challenger_version} vs champion "
                     f"{'v' + champion_version if champion_version else '(none)'}: {reason}")

    tags = {"decision": decision_label, "reason": reason, "gate_metric": policy.gate_metric,
            "min_improvement": policy.min_improvement,
            "guardrails": ",".join(f"{m}:{t:g}" for m, t in policy.guardrails.items()),
            "compared_with": champion_version or "none", "dagster_run_id": context.run_id,
            "not_applicable": ",".join(waived) or "none", "cold_test_interactions": cold_test,
            **{f"challenger.{m}": v for m, v in challenger.items() if m in policy.metrics},
            **({f"champion.{m}": v for m, v in champion.items() if m in policy.metrics} if champion else {}),
            **({"gate_delta": gate_delta} if math.isfinite(gate_delta) else {})}
    written = tag_version(client, name, challenger_version, tags)

    rows = sorted(set(challenger) | set(champion or {}))
    table = pd.DataFrame({"metric": rows, "challenger": [challenger.get(m, math.nan) for m in rows],
                          "champion": [(champion or {}).get(m, math.nan) for m in rows]})
    value = {"name": name, "decision": decision_label, "promote": promote, "reason": reason,
             "challenger_version": challenger_version, "champion_before": champion_version,
             "champion_after": champion_after, "gate_metric": policy.gate_metric,
             "gate_delta": _finite_or_none(gate_delta),
             "guardrail_deltas": {m: _finite_or_none(d) for m, d in deltas.items()},
             "guardrails_not_applicable": waived, "cold_test_interactions": cold_test,
             "challenger_metrics": challenger, "champion_metrics": champion}
    metadata = {
        "decision": decision_label, "reason": reason, "registered_model": name,
        "challenger_version": challenger_version, "champion_before": champion_version or "none",
        "champion_after": champion_after or "none", "gate_metric": policy.gate_metric,
        "min_improvement": policy.min_improvement,
        "scores": frame_table(table, 50),
        "guardrails": dg.MetadataValue.json(dict(policy.guardrails)),
        "guardrails_not_applicable": dg.MetadataValue.json(waived),
        "cold_test_interactions": cold_test,
        "mlflow_version_tags": dg.MetadataValue.json(written),
    }
    for role, scores in (("challenger", challenger), ("champion", champion or {})):
        for metric in policy.metrics:
            if _finite_or_none(scores.get(metric)) is not None:
                metadata[f"{role}_{metric}"] = float(scores[metric])
    if math.isfinite(gate_delta):
        metadata["gate_delta"] = float(gate_delta)
    if history:
        metadata["champion_history"] = ",".join(history)
    return dg.Output(value, metadata=metadata)

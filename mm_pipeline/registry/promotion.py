"""The promotion rule: does a newly trained *challenger* replace the current *champion*?

Pure Python (no MLflow, no Dagster): metrics go in as plain ``{name: value}`` dicts, a
:class:`Decision` comes out. :func:`decide_promotion` is the whole decision the Dagster asset
``model_promotion`` takes: it measures both registered versions on the same test split, calls it, moves
the MLflow alias only when ``PromotionDecision.promote`` is true, and turns the decision into metadata.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_GATE_METRIC = "ndcg@20"
DEFAULT_GUARDRAILS: dict[str, float] = {"coverage@20": 0.02, "cold_recall@20": 0.02}


def _default_guardrails() -> dict[str, float]:
    return dict(DEFAULT_GUARDRAILS)


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


@dataclass(frozen=True)
class PromotionPolicy:
    """What a challenger must achieve to replace the champion.

    * ``gate_metric``: the metric that must improve (higher is better), default ``ndcg@20``.
    * ``min_improvement``: the *absolute* amount by which the challenger's gate metric must exceed
      the champion's; the challenger needs ``challenger - champion > min_improvement`` (strictly),
      so with the default ``0.0`` a tie is not an improvement.
    * ``guardrails``: ``{metric: max allowed drop}`` (absolute, higher is better for every metric):
      the challenger is rejected when ``champion - challenger > max drop`` for any of them. Default:
      coverage@20 and cold-start recall@20 may each drop by at most 0.02.
    """

    gate_metric: str = DEFAULT_GATE_METRIC
    min_improvement: float = 0.0
    guardrails: dict[str, float] = field(default_factory=_default_guardrails)

    def __post_init__(self) -> None:
        if not isinstance(self.gate_metric, str) or not self.gate_metric:
            raise ValueError(f"gate_metric must be a non-empty string, got {self.gate_metric!r}")
        if not _finite_number(self.min_improvement) or self.min_improvement < 0:
            raise ValueError(f"min_improvement must be a finite number >= 0, got {self.min_improvement!r}")
        if not isinstance(self.guardrails, Mapping):
            raise TypeError(
                f"guardrails must be a mapping of metric -> max allowed drop, got {type(self.guardrails).__name__}"
            )
        for metric, tolerance in self.guardrails.items():
            if not isinstance(metric, str) or not metric:
                raise ValueError(f"guardrail metric names must be non-empty strings, got {metric!r}")
            if not _finite_number(tolerance) or tolerance < 0:
                raise ValueError(f"guardrail {metric!r} needs a finite max allowed drop >= 0, got {tolerance!r}")

    @property
    def metrics(self) -> list[str]:
        """Every metric the rule reads: the gate metric, then the guardrails."""
        return [self.gate_metric, *[m for m in self.guardrails if m != self.gate_metric]]


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide`.

    ``gate_delta`` is ``challenger - champion`` on the gate metric (NaN when there is nothing to
    compare: no champion, or a metric is missing); ``guardrail_deltas`` maps each guardrail metric
    that could be compared to ``challenger - champion`` (negative = a drop); ``not_applicable`` maps
    each guardrail that was not evaluated to why (see :func:`decide`).
    """

    promote: bool
    reason: str
    gate_delta: float = math.nan
    guardrail_deltas: dict[str, float] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)


def _missing(metrics: Mapping[str, float], names: list[str]) -> list[str]:
    return [name for name in names if name not in metrics or not _finite_number(metrics[name])]


def _check_not_applicable(not_applicable: Mapping[str, str] | None, policy: PromotionPolicy) -> dict[str, str]:
    if not_applicable is None:
        return {}
    if not isinstance(not_applicable, Mapping):
        raise TypeError(
            f"not_applicable must be a mapping of guardrail metric -> reason, got {type(not_applicable).__name__}"
        )
    if policy.gate_metric in not_applicable:
        raise ValueError(
            f"the gate metric {policy.gate_metric!r} cannot be marked not applicable: a challenger "
            "that cannot be measured on it is never promoted"
        )
    # Only guardrails of the policy can be waived; other names have nothing to waive.
    return {str(m): str(why) for m, why in not_applicable.items() if m in policy.guardrails}


def decide(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    policy: PromotionPolicy | None = None,
    not_applicable: Mapping[str, str] | None = None,
) -> Decision:
    """Apply the promotion rule. Higher is better for every metric.

    ``not_applicable`` maps guardrail metrics that the evaluation data cannot measure to the reason
    (e.g. cold-start recall when the test split has no interaction on a cold item): those guardrails
    are not evaluated and are listed in ``Decision.not_applicable`` and the reason. The gate metric
    can never be waived (ValueError); names that are not guardrails of the policy are ignored.

    The challenger is promoted if and only if:

    1. its gate metric is present and finite (a challenger that cannot be measured is never
       promoted, even when there is no champion), and
    2. there is no champion (``champion is None``): the first measured model becomes champion; or
    3. both have every *applicable* metric of the policy, present and finite (otherwise: not
       promoted, and the reason names the missing metrics), **and**
       ``challenger[gate] - champion[gate] > policy.min_improvement``, **and**, for every applicable
       guardrail ``m`` with max drop ``t``: ``champion[m] - challenger[m] <= t``.

    ``reason`` says which clause decided, with the numbers.
    """
    policy = policy if policy is not None else PromotionPolicy()
    if not isinstance(challenger, Mapping):
        raise TypeError(f"challenger must be a mapping of metric -> value, got {type(challenger).__name__}")
    if champion is not None and not isinstance(champion, Mapping):
        raise TypeError(f"champion must be a mapping of metric -> value or None, got {type(champion).__name__}")
    waived = _check_not_applicable(not_applicable, policy)
    gate = policy.gate_metric
    waived_note = "".join(f"; guardrail {m} not applicable ({why})" for m, why in waived.items())

    if _missing(challenger, [gate]):
        return Decision(
            False,
            f"not promoted: the challenger has no finite value for the gate metric {gate!r}",
            not_applicable=waived,
        )
    if champion is None:
        return Decision(
            True,
            f"promoted: there is no champion yet (challenger {gate}={challenger[gate]:.6g})",
            not_applicable=waived,
        )

    needed = [m for m in policy.metrics if m not in waived]
    guardrails = {m: t for m, t in policy.guardrails.items() if m not in waived}
    missing = [f"challenger lacks {m!r}" for m in _missing(challenger, needed)]
    missing += [f"champion lacks {m!r}" for m in _missing(champion, needed)]
    if missing:
        return Decision(
            False,
            "not promoted: cannot compare, "
            + "; ".join(missing)
            + " (a missing or non-finite metric never passes the rule)"
            + waived_note,
            not_applicable=waived,
        )

    gate_delta = float(challenger[gate]) - float(champion[gate])
    deltas = {m: float(challenger[m]) - float(champion[m]) for m in guardrails}
    broken = [
        f"{m} dropped by {-d:.6g} (> {guardrails[m]:.6g} allowed)" for m, d in deltas.items() if -d > guardrails[m]
    ]
    comparison = (
        f"{gate}: challenger {float(challenger[gate]):.6g} vs champion {float(champion[gate]):.6g} "
        f"(delta {gate_delta:+.6g}, needs > {policy.min_improvement:.6g})"
    )
    failures = [] if gate_delta > policy.min_improvement else [f"gate not passed, {comparison}"]
    if broken:
        failures.append(f"guardrail broken, {'; '.join(broken)}")
    if failures:
        if len(failures) == 1 and broken:
            failures.append(comparison)
        return Decision(False, "not promoted: " + "; ".join(failures) + waived_note, gate_delta, deltas, waived)
    held = "every applicable guardrail held" if waived else "every guardrail held"
    return Decision(True, f"promoted: {comparison}; {held}{waived_note}", gate_delta, deltas, waived)


# ------------------------------------------------------------------------- the whole promotion decision
PROMOTED, REJECTED, UNCHANGED, STALE = "promoted", "rejected", "unchanged", "stale"


def not_applicable_guardrails(policy: PromotionPolicy, cold_support: Mapping[str, object]) -> dict[str, str]:
    """Cold-start guardrails (``cold_*``) cannot be measured when the split has too little cold-start test
    data (none at all, or so little that every model scores the same): waive them (recorded) instead of
    blocking promotion for good. ``cold_support`` is the evaluation's subgroup support
    (``{"enough", "interactions", "reason"}``)."""
    if cold_support["enough"]:
        return {}
    why = (
        f"not enough cold-start test data in the current split ({cold_support['reason']})"
        if cold_support["interactions"]
        else "the current test split has no interaction on a cold item (one without training interactions)"
    )
    return {m: why for m in policy.guardrails if m.startswith("cold_") and m != policy.gate_metric}


def _finite_or_none(value: object) -> float | None:
    return float(value) if _finite_number(value) else None


@dataclass(frozen=True)
class PromotionDecision:
    """What :func:`decide_promotion` concludes about one challenger version.

    ``label``: ``promoted`` (move the alias), ``rejected``, ``unchanged`` (the challenger already is the
    champion) or ``stale`` (see :meth:`stale`). ``challenger`` / ``champion`` are the scores compared
    (``champion`` is ``None`` without a champion)."""

    label: str
    reason: str
    policy: PromotionPolicy
    challenger_version: str
    champion_version: str | None
    challenger: Mapping[str, float]
    champion: Mapping[str, float] | None
    gate_delta: float = math.nan
    guardrail_deltas: Mapping[str, float] = field(default_factory=dict)
    not_applicable: Mapping[str, str] = field(default_factory=dict)
    cold_test_interactions: int = 0
    forget_request: str = ""

    @property
    def promote(self) -> bool:
        return self.label == PROMOTED

    def stale(self, why: str) -> PromotionDecision:
        """This decision once the alias turned out to have moved meanwhile (the compare-and-set failed,
        ``why``): not promoted; the reason keeps what was decided against which champion."""
        compared = f"v{self.champion_version}" if self.champion_version else "no champion"
        return replace(
            self, label=STALE, reason=f"not promoted: {why} (this run compared with {compared}: {self.reason})"
        )

    def scores_table(self) -> pd.DataFrame:
        """One row per metric either side has: ``metric``, ``challenger``, ``champion`` (NaN: absent)."""
        import pandas as pd

        champion = self.champion or {}
        rows = sorted(set(self.challenger) | set(champion))
        return pd.DataFrame(
            {
                "metric": rows,
                "challenger": [self.challenger.get(m, math.nan) for m in rows],
                "champion": [champion.get(m, math.nan) for m in rows],
            }
        )

    def rule_table(self) -> pd.DataFrame:
        """The rule, one row per metric it reads: ``metric``, ``role`` (gate / guardrail), ``threshold``
        (the gate's margin, a guardrail's max drop), ``challenger``, ``champion``, ``delta`` and
        ``status`` (passed / failed / not applicable / not compared)."""
        import pandas as pd

        rows = []
        for metric in self.policy.metrics:
            gate = metric == self.policy.gate_metric
            threshold = self.policy.min_improvement if gate else self.policy.guardrails[metric]
            delta = self.gate_delta if gate else self.guardrail_deltas.get(metric, math.nan)
            if metric in self.not_applicable:
                status = "not applicable"
            elif not math.isfinite(delta):
                status = "not compared"
            else:
                status = "passed" if (delta > threshold if gate else -delta <= threshold) else "failed"
            rows.append(
                {
                    "metric": metric,
                    "role": "gate" if gate else "guardrail",
                    "threshold": float(threshold),
                    "challenger": _finite_or_none(self.challenger.get(metric)),
                    "champion": _finite_or_none((self.champion or {}).get(metric)),
                    "delta": _finite_or_none(delta),
                    "status": status,
                }
            )
        return pd.DataFrame(rows)

    def version_tags(self) -> dict[str, object]:
        """What the challenger version is tagged with (under ``mm_pipeline.promotion.``)."""
        policy, champion = self.policy, self.champion
        return {
            "decision": self.label,
            "reason": self.reason,
            "gate_metric": policy.gate_metric,
            "min_improvement": policy.min_improvement,
            "guardrails": ",".join(f"{m}:{t:g}" for m, t in policy.guardrails.items()),
            "compared_with": self.champion_version or "none",
            "not_applicable": ",".join(self.not_applicable) or "none",
            "cold_test_interactions": self.cold_test_interactions,
            **{f"challenger.{m}": v for m, v in self.challenger.items() if m in policy.metrics},
            **({f"champion.{m}": v for m, v in champion.items() if m in policy.metrics} if champion else {}),
            **({"gate_delta": self.gate_delta} if math.isfinite(self.gate_delta) else {}),
            **({"forget_request": self.forget_request} if self.forget_request else {}),
        }


def decide_promotion(
    policy: PromotionPolicy,
    challenger_version: str,
    challenger: Mapping[str, float],
    champion_version: str | None,
    champion: Mapping[str, float] | None,
    cold_support: Mapping[str, object],
    forget_request: str = "",
) -> PromotionDecision:
    """The promotion decision for ``challenger_version`` against the current champion (``None``: there
    is none), from both versions' scores on the same test split and that split's cold-start support.

    The challenger already being the champion: ``unchanged``. Otherwise :func:`decide`, with the
    cold-start guardrails waived when the support says they cannot be measured
    (:func:`not_applicable_guardrails`).

    ``forget_request`` (set by ``mm-pipeline forget``): the champion was trained on data of a user
    forgotten since, so it cannot stay: a challenger with a finite gate metric replaces it whatever
    the comparison says (the comparison is still recorded); one that cannot be measured is not
    promoted, and the reason says the champion still holds the forgotten user."""
    challenger_version = str(challenger_version)
    champion_version = None if champion_version is None else str(champion_version)
    if (champion_version is None) != (champion is None):
        raise ValueError("champion_version and champion scores go together: give both or neither")
    waived = not_applicable_guardrails(policy, cold_support)
    common = {
        "policy": policy,
        "challenger_version": challenger_version,
        "champion_version": champion_version,
        "challenger": dict(challenger),
        "champion": None if champion is None else dict(champion),
        "not_applicable": waived,
        "cold_test_interactions": int(cold_support["interactions"]),
        "forget_request": forget_request,
    }
    if champion_version == challenger_version:
        return PromotionDecision(
            UNCHANGED,
            f"version {challenger_version} already is the champion",
            gate_delta=0.0,
            guardrail_deltas={m: 0.0 for m in policy.guardrails if m not in waived},
            **common,
        )
    decision = decide(challenger, champion, policy, not_applicable=waived)
    if forget_request and champion_version is not None:
        gate = policy.gate_metric
        if _missing(challenger, [gate]):
            promote, reason = (
                False,
                f"not promoted: the challenger has no finite value for the gate metric {gate!r}; the champion "
                f"v{champion_version} still holds data of a forgotten user (forget request {forget_request})",
            )
        elif decision.promote:
            promote, reason = (
                True,
                f"{decision.reason}; the champion had to be replaced anyway (forget request {forget_request})",
            )
        else:
            promote, reason = (
                True,
                f"promoted without the gate: the champion v{champion_version} was trained on data of a user "
                f"forgotten since (forget request {forget_request}) and must be replaced; the comparison "
                f"alone would say: {decision.reason}",
            )
        decision = replace(decision, promote=promote, reason=reason)
    return PromotionDecision(
        PROMOTED if decision.promote else REJECTED,
        decision.reason,
        gate_delta=decision.gate_delta,
        guardrail_deltas=dict(decision.guardrail_deltas),
        **common,
    )

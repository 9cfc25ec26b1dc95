"""The promotion rule: does a newly trained *challenger* replace the current *champion*?

Pure Python (no MLflow, no Dagster): metrics go in as plain ``{name: value}`` dicts, a
:class:`Decision` comes out. The Dagster asset ``model_promotion`` measures both models on the same
test split and applies :func:`decide`; the MLflow alias moves only when ``Decision.promote`` is true.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_GATE_METRIC = "ndcg@20"
DEFAULT_GUARDRAILS: dict[str, float] = {"coverage@20": 0.02, "cold_recall@20": 0.02}


def _default_guardrails() -> dict[str, float]:
    return dict(DEFAULT_GUARDRAILS)


def _finite_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(float(value)))


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
            raise TypeError(f"guardrails must be a mapping of metric -> max allowed drop, "
                            f"got {type(self.guardrails).__name__}")
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
        raise TypeError(f"not_applicable must be a mapping of guardrail metric -> reason, "
                        f"got {type(not_applicable).__name__}")
    if policy.gate_metric in not_applicable:
        raise ValueError(f"the gate metric {policy.gate_metric!r} cannot be marked not applicable: a challenger "
                         "that cannot be measured on it is never promoted")
    # Only guardrails of the policy can be waived; other names have nothing to waive.
    return {str(m): str(why) for m, why in not_applicable.items() if m in policy.guardrails}


def decide(challenger: Mapping[str, float], champion: Mapping[str, float] | None,
           policy: PromotionPolicy | None = None, not_applicable: Mapping[str, str] | None = None) -> Decision:
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
        return Decision(False, f"not promoted: the challenger has no finite value for the gate metric {gate!r}",
                        not_applicable=waived)
    if champion is None:
        return Decision(True, f"promoted: there is no champion yet (challenger {gate}={challenger[gate]:.6g})",
                        not_applicable=waived)

    needed = [m for m in policy.metrics if m not in waived]
    guardrails = {m: t for m, t in policy.guardrails.items() if m not in waived}
    missing = [f"challenger lacks {m!r}" for m in _missing(challenger, needed)]
    missing += [f"champion lacks {m!r}" for m in _missing(champion, needed)]
    if missing:
        return Decision(False, "not promoted: cannot compare, " + "; ".join(missing)
                        + " (a missing or non-finite metric never passes the rule)" + waived_note,
                        not_applicable=waived)

    gate_delta = float(challenger[gate]) - float(champion[gate])
    deltas = {m: float(challenger[m]) - float(champion[m]) for m in guardrails}
    broken = [f"{m} dropped by {-d:.6g} (> {guardrails[m]:.6g} allowed)"
              for m, d in deltas.items() if -d > guardrails[m]]
    comparison = (f"{gate}: challenger {float(challenger[gate]):.6g} vs champion {float(champion[gate]):.6g} "
                  f"(delta {gate_delta:+.6g}, needs > {policy.min_improvement:.6g})")
    failures = [] if gate_delta > policy.min_improvement else [f"gate not passed, {comparison}"]
    if broken:
        failures.append(f"guardrail broken, {'; '.join(broken)}")
    if failures:
        if len(failures) == 1 and broken:
            failures.append(comparison)
        return Decision(False, "not promoted: " + "; ".join(failures) + waived_note, gate_delta, deltas, waived)
    held = "every applicable guardrail held" if waived else "every guardrail held"
    return Decision(True, f"promoted: {comparison}; {held}{waived_note}", gate_delta, deltas, waived)

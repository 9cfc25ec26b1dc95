"""The promotion rule (pure): examples for every clause, and properties checked with hypothesis."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mm_pipeline.registry.promotion import DEFAULT_GUARDRAILS, Decision, PromotionPolicy, decide

GATE = "ndcg@20"
GUARDS = list(DEFAULT_GUARDRAILS)
METRICS = [GATE, *GUARDS]
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
tolerance = st.floats(min_value=0.0, max_value=0.2, allow_nan=False)
scores = st.fixed_dictionaries({m: unit for m in METRICS})


def policies():
    return st.builds(lambda margin, tols: PromotionPolicy(GATE, margin, dict(zip(GUARDS, tols))),
                     st.floats(min_value=0.0, max_value=0.1, allow_nan=False), st.tuples(tolerance, tolerance))


def test_no_champion_promotes():
    decision = decide({GATE: 0.1}, None)
    assert decision.promote and "no champion" in decision.reason and math.isnan(decision.gate_delta)


def test_challenger_without_gate_metric_is_never_promoted_even_without_champion():
    for challenger in ({}, {GATE: float("nan")}, {GATE: float("inf")}, {"recall@20": 0.5}):
        decision = decide(challenger, None)
        assert not decision.promote and GATE in decision.reason


def test_missing_metric_blocks_and_is_named():
    champion = {GATE: 0.1, "coverage@20": 0.5, "cold_recall@20": 0.2}
    decision = decide({GATE: 0.3, "coverage@20": 0.5}, champion)
    assert not decision.promote and "challenger lacks 'cold_recall@20'" in decision.reason
    decision = decide({GATE: 0.3, "coverage@20": 0.5, "cold_recall@20": 0.2}, {GATE: 0.1, "coverage@20": 0.5})
    assert not decision.promote and "champion lacks 'cold_recall@20'" in decision.reason


def test_gate_margin_and_guardrails():
    champion = {GATE: 0.20, "coverage@20": 0.50, "cold_recall@20": 0.30}
    better = {GATE: 0.25, "coverage@20": 0.49, "cold_recall@20": 0.29}  # drops within 0.02
    decision = decide(better, champion)
    assert decision.promote and decision.gate_delta == pytest.approx(0.05)
    assert decision.guardrail_deltas == pytest.approx({"coverage@20": -0.01, "cold_recall@20": -0.01})
    assert not decide(better, champion, PromotionPolicy(min_improvement=0.05)).promote  # needs > margin
    assert decide(better, champion, PromotionPolicy(min_improvement=0.04)).promote
    tie = decide(dict(champion), champion)
    assert not tie.promote and "gate not passed" in tie.reason
    narrow = {**better, "coverage@20": 0.45}
    decision = decide(narrow, champion)
    assert not decision.promote and "coverage@20 dropped" in decision.reason
    assert decide(narrow, champion, PromotionPolicy(guardrails={"coverage@20": 0.1})).promote
    assert decide(narrow, champion, PromotionPolicy(guardrails={})).promote


def test_policy_validation():
    with pytest.raises(ValueError, match="min_improvement"):
        PromotionPolicy(min_improvement=-0.1)
    with pytest.raises(ValueError, match="coverage@20"):
        PromotionPolicy(guardrails={"coverage@20": float("nan")})
    with pytest.raises(ValueError, match="gate_metric"):
        PromotionPolicy(gate_metric="")
    assert PromotionPolicy().guardrails == DEFAULT_GUARDRAILS
    assert PromotionPolicy().guardrails is not PromotionPolicy().guardrails


@settings(max_examples=300, deadline=None)
@given(challenger=scores, champion=scores, policy=policies())
def test_never_promotes_a_challenger_not_better_by_the_margin(challenger, champion, policy):
    decision = decide(challenger, champion, policy)
    assert isinstance(decision, Decision)
    if decision.promote:
        assert challenger[GATE] - champion[GATE] > policy.min_improvement
        assert challenger[GATE] > champion[GATE]


@settings(max_examples=300, deadline=None)
@given(challenger=scores, champion=scores, policy=policies())
def test_never_promotes_a_challenger_that_breaks_a_guardrail(challenger, champion, policy):
    decision = decide(challenger, champion, policy)
    if any(champion[m] - challenger[m] > t for m, t in policy.guardrails.items()):
        assert not decision.promote
        assert "guardrail broken" in decision.reason or "gate not passed" in decision.reason


@settings(max_examples=300, deadline=None)
@given(champion=scores, gain=st.floats(min_value=1e-9, max_value=0.5), drops=st.tuples(unit, unit),
       policy=policies())
def test_always_promotes_when_strictly_better_and_guardrails_hold(champion, gain, drops, policy):
    challenger = {GATE: champion[GATE] + policy.min_improvement + gain}
    for (metric, tol), share in zip(policy.guardrails.items(), drops):
        challenger[metric] = champion[metric] - tol * share / 2  # a drop well inside the tolerance
    if challenger[GATE] - champion[GATE] <= policy.min_improvement:
        return  # the float sum rounded the gain away: not strictly better by the margin
    decision = decide(challenger, champion, policy)
    assert decision.promote, decision.reason
    assert decision.gate_delta > policy.min_improvement


@settings(max_examples=200, deadline=None)
@given(challenger=scores, champion=scores, policy=policies())
def test_decision_matches_the_documented_rule(challenger, champion, policy):
    expected = (challenger[GATE] - champion[GATE] > policy.min_improvement
                and all(champion[m] - challenger[m] <= t for m, t in policy.guardrails.items()))
    assert decide(challenger, champion, policy).promote == expected


@settings(max_examples=100, deadline=None)
@given(challenger=scores, champion=scores, dropped=st.sampled_from(METRICS), side=st.booleans())
def test_a_missing_metric_never_promotes(challenger, champion, dropped, side):
    (challenger if side else champion).pop(dropped)
    decision = decide(challenger, champion)
    assert not decision.promote and repr(dropped) in decision.reason

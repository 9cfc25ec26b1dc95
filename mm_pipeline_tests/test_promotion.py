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
    return st.builds(
        lambda margin, tols: PromotionPolicy(GATE, margin, dict(zip(GUARDS, tols))),
        st.floats(min_value=0.0, max_value=0.1, allow_nan=False),
        st.tuples(tolerance, tolerance),
    )


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
@given(champion=scores, gain=st.floats(min_value=1e-9, max_value=0.5), drops=st.tuples(unit, unit), policy=policies())
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
    expected = challenger[GATE] - champion[GATE] > policy.min_improvement and all(
        champion[m] - challenger[m] <= t for m, t in policy.guardrails.items()
    )
    assert decide(challenger, champion, policy).promote == expected


@settings(max_examples=100, deadline=None)
@given(challenger=scores, champion=scores, dropped=st.sampled_from(METRICS), side=st.booleans())
def test_a_missing_metric_never_promotes(challenger, champion, dropped, side):
    (challenger if side else champion).pop(dropped)
    decision = decide(challenger, champion)
    assert not decision.promote and repr(dropped) in decision.reason


# ------------------------------------------------------------- guardrails that cannot be measured
NO_COLD = {"cold_recall@20": "the test split has no interaction on a cold item"}


def test_cold_guardrail_without_cold_items_is_not_applicable_instead_of_blocking():
    champion = {GATE: 0.20, "coverage@20": 0.50}  # no cold_recall@20: nothing cold to rank
    better = {GATE: 0.25, "coverage@20": 0.49}
    blocked = decide(better, champion)
    assert not blocked.promote and "lacks 'cold_recall@20'" in blocked.reason  # without the waiver: stuck
    decision = decide(better, champion, not_applicable=NO_COLD)
    assert decision.promote and decision.not_applicable == NO_COLD
    assert "every applicable guardrail held" in decision.reason
    assert "guardrail cold_recall@20 not applicable (the test split has no interaction" in decision.reason
    assert decision.guardrail_deltas == pytest.approx({"coverage@20": -0.01})
    # The other guardrails and the gate still apply.
    worse_coverage = decide({GATE: 0.25, "coverage@20": 0.40}, champion, not_applicable=NO_COLD)
    assert not worse_coverage.promote and "coverage@20 dropped" in worse_coverage.reason
    assert "not applicable" in worse_coverage.reason
    assert not decide({GATE: 0.20, "coverage@20": 0.5}, champion, not_applicable=NO_COLD).promote
    missing = decide({GATE: 0.3}, champion, not_applicable=NO_COLD)
    assert not missing.promote and "challenger lacks 'coverage@20'" in missing.reason
    first = decide(better, None, not_applicable=NO_COLD)
    assert first.promote and first.not_applicable == NO_COLD


def test_the_gate_metric_cannot_be_waived_and_unknown_names_are_ignored():
    with pytest.raises(ValueError, match="gate metric"):
        decide({GATE: 0.3}, {GATE: 0.1}, not_applicable={GATE: "no data"})
    with pytest.raises(TypeError, match="not_applicable"):
        decide({GATE: 0.3}, None, not_applicable=["cold_recall@20"])
    decision = decide(
        {GATE: 0.3, "coverage@20": 0.5, "cold_recall@20": 0.2},
        {GATE: 0.1, "coverage@20": 0.5, "cold_recall@20": 0.2},
        not_applicable={"mrr@5": "?"},
    )
    assert decision.promote and decision.not_applicable == {}


def test_promotion_asset_waives_cold_guardrails_only_without_enough_cold_test_data():
    import numpy as np
    import scipy.sparse as sp

    from mm_pipeline.defs.assets.promotion import cold_start_support
    from mm_pipeline.registry.promotion import not_applicable_guardrails

    policy = PromotionPolicy()
    enough = {"enough": True, "interactions": 90, "reason": None}
    few = {"enough": False, "interactions": 3, "reason": "3 test interactions (need 30)"}
    none = {"enough": False, "interactions": 0, "reason": "0 test interactions (need 30)"}
    assert not_applicable_guardrails(policy, enough) == {}
    assert "not enough cold-start test data" in not_applicable_guardrails(policy, few)["cold_recall@20"]
    assert "no interaction on a cold item" in not_applicable_guardrails(policy, none)["cold_recall@20"]
    assert not_applicable_guardrails(PromotionPolicy(gate_metric="cold_recall@20"), none) == {}  # never the gate

    class Split:  # the two fields the count reads
        train = sp.csr_matrix(np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32))
        test = sp.csr_matrix(np.array([[0, 1, 1], [0, 0, 1]], dtype=np.float32))
        warm_items = np.asarray(train.sum(axis=0)).ravel() > 0

    support = cold_start_support(Split)  # item 2 has no training interaction: 2 test interactions on it
    assert (support["interactions"], support["users"], support["items"], support["enough"]) == (2, 2, 1, False)
    assert "1 candidate items" in support["reason"]
    Split.test = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 0]], dtype=np.float32))
    assert cold_start_support(Split)["interactions"] == 0


@settings(max_examples=300, deadline=None)
@given(
    challenger=scores,
    champion=scores,
    policy=policies(),
    waive=st.sets(st.sampled_from(GUARDS)),
    drop_waived=st.booleans(),
)
def test_never_promotes_a_worse_challenger_or_one_breaking_an_applicable_guardrail(
    challenger, champion, policy, waive, drop_waived
):
    waived = {m: "not measurable" for m in waive}
    if drop_waived:  # what the evaluation yields when there is nothing to measure: the metric is absent
        for m in waive:
            challenger.pop(m)
            champion.pop(m)
    decision = decide(challenger, champion, policy, not_applicable=waived)
    assert decision.not_applicable == waived
    applicable = {m: t for m, t in policy.guardrails.items() if m not in waived}
    if decision.promote:
        assert challenger[GATE] - champion[GATE] > policy.min_improvement
        assert all(champion[m] - challenger[m] <= t for m, t in applicable.items())
    expected = challenger[GATE] - champion[GATE] > policy.min_improvement and all(
        champion[m] - challenger[m] <= t for m, t in applicable.items()
    )
    assert decision.promote == expected


# ------------------------------------------------------------------ the whole decision (core, no Dagster)
ENOUGH_SUPPORT = {"enough": True, "interactions": 90, "reason": None}
NO_COLD_SUPPORT = {"enough": False, "interactions": 0, "reason": "0 test interactions (need 30)"}
BETTER_SCORES = {GATE: 0.30, "coverage@20": 0.50, "cold_recall@20": 0.20, "known_user_share": 1.0}
CHAMPION_SCORES = {GATE: 0.20, "coverage@20": 0.50, "cold_recall@20": 0.20, "known_user_share": 1.0}


def test_decide_promotion_labels_each_case():
    from mm_pipeline.registry.promotion import decide_promotion

    policy = PromotionPolicy()
    first = decide_promotion(policy, "1", BETTER_SCORES, None, None, ENOUGH_SUPPORT)
    assert (first.label, first.promote, first.champion_version) == ("promoted", True, None)
    assert "no champion yet" in first.reason and math.isnan(first.gate_delta)
    better = decide_promotion(policy, 3, BETTER_SCORES, 2, CHAMPION_SCORES, ENOUGH_SUPPORT)
    assert better.label == "promoted" and better.challenger_version == "3" and better.champion_version == "2"
    assert better.gate_delta == pytest.approx(0.1) and better.guardrail_deltas == {
        "coverage@20": 0.0,
        "cold_recall@20": 0.0,
    }
    worse = decide_promotion(policy, "3", CHAMPION_SCORES, "2", BETTER_SCORES, ENOUGH_SUPPORT)
    assert (worse.label, worse.promote) == ("rejected", False) and "gate not passed" in worse.reason
    same = decide_promotion(policy, "2", BETTER_SCORES, "2", BETTER_SCORES, ENOUGH_SUPPORT)
    assert (same.label, same.promote, same.gate_delta) == ("unchanged", False, 0.0)
    assert same.reason == "version 2 already is the champion"
    with pytest.raises(ValueError, match="give both or neither"):
        decide_promotion(policy, "3", BETTER_SCORES, "2", None, ENOUGH_SUPPORT)


def test_decide_promotion_waives_cold_guardrails_from_the_support_only():
    from mm_pipeline.registry.promotion import decide_promotion

    cold_drop = {**BETTER_SCORES, "cold_recall@20": 0.0}  # better gate, cold-start recall fell by 0.2
    measured = decide_promotion(PromotionPolicy(), "3", cold_drop, "2", CHAMPION_SCORES, ENOUGH_SUPPORT)
    assert measured.label == "rejected" and "cold_recall@20 dropped" in measured.reason
    assert measured.not_applicable == {} and measured.cold_test_interactions == 90
    waived = decide_promotion(PromotionPolicy(), "3", cold_drop, "2", CHAMPION_SCORES, NO_COLD_SUPPORT)
    assert waived.label == "promoted" and "cold_recall@20" in waived.not_applicable
    assert "no interaction on a cold item" in waived.not_applicable["cold_recall@20"]
    assert waived.cold_test_interactions == 0 and "not applicable" in waived.reason


def test_promotion_decision_tables_tags_and_staleness():
    from mm_pipeline.registry.promotion import decide_promotion

    decision = decide_promotion(
        PromotionPolicy(), "3", {**BETTER_SCORES, "coverage@20": 0.40}, "2", CHAMPION_SCORES, NO_COLD_SUPPORT
    )
    assert decision.label == "rejected"
    rule = decision.rule_table().set_index("metric")
    assert list(rule.index) == [GATE, "coverage@20", "cold_recall@20"]
    assert rule.loc[GATE, "status"] == "passed" and rule.loc[GATE, "role"] == "gate"
    assert rule.loc["coverage@20", "status"] == "failed"
    assert rule.loc["coverage@20", "delta"] == pytest.approx(-0.1)
    assert rule.loc["coverage@20", "threshold"] == DEFAULT_GUARDRAILS["coverage@20"]
    assert rule.loc["cold_recall@20", "status"] == "not applicable"
    scores = decision.scores_table().set_index("metric")
    assert set(scores.index) == set(BETTER_SCORES) and scores.loc["coverage@20"].tolist() == [0.40, 0.50]
    tags = decision.version_tags()
    assert tags["decision"] == "rejected" and tags["compared_with"] == "2"
    assert tags["not_applicable"] == "cold_recall@20" and tags["challenger.ndcg@20"] == BETTER_SCORES[GATE]
    assert "challenger.known_user_share" not in tags and tags["gate_delta"] == pytest.approx(0.1)

    first = decide_promotion(PromotionPolicy(), "1", BETTER_SCORES, None, None, ENOUGH_SUPPORT)
    assert first.rule_table()["status"].tolist() == ["not compared"] * 3
    assert "champion." + GATE not in first.version_tags() and "gate_delta" not in first.version_tags()
    stale = decision.stale("the champion is v4, not v2")
    assert (stale.label, stale.promote) == ("stale", False) and decision.label == "rejected"  # frozen
    assert stale.reason.startswith("not promoted: the champion is v4, not v2 (this run compared with v2: ")

"""Complaint and bounce rates against the plan's thresholds (pure, table-driven)."""

from __future__ import annotations

import pytest

from aupmilter.policy.reputation import (
    Action,
    Measure,
    ReputationPlan,
    Thresholds,
    decide,
    format_percent,
)

PLAN = ReputationPlan()
C, B = Measure.COMPLAINTS, Measure.BOUNCES


@pytest.mark.parametrize(
    ("measure", "events", "delivered", "status", "action"),
    [
        # Below the minimum volume nothing counts, whatever the rate.
        (C, 1, 50, "active", Action.NONE),
        (C, 900, 999, "active", Action.NONE),
        (B, 150, 199, "active", Action.NONE),
        # From the minimum on: 0.1 % reviews, 0.3 % suspends.
        (C, 0, 1000, "active", Action.NONE),
        (C, 1, 1001, "active", Action.NONE),
        (C, 1, 1000, "active", Action.REVIEW),
        (C, 2, 1000, "active", Action.REVIEW),
        (C, 3, 1000, "active", Action.SUSPEND),
        (C, 29, 10_000, "active", Action.REVIEW),
        (C, 30, 10_000, "active", Action.SUSPEND),
        # Bounces: 5 % reviews, 10 % suspends, from 200 delivered.
        (B, 9, 200, "active", Action.NONE),
        (B, 10, 200, "active", Action.REVIEW),
        (B, 19, 200, "active", Action.REVIEW),
        (B, 20, 200, "active", Action.SUSPEND),
        # Never acted on unless active: already suspended, terminated, or unknown.
        (C, 50, 1000, "suspended", Action.NONE),
        (C, 50, 1000, "terminated", Action.NONE),
        (B, 50, 200, "suspended", Action.NONE),
        (C, 50, 1000, "None", Action.NONE),
    ],
)
def test_decision(
    measure: Measure, events: int, delivered: int, status: str, action: Action
) -> None:
    assert decide(measure, events, delivered, PLAN, status).action is action


def test_lifted_tenant_counts_only_what_came_after() -> None:
    # The counters were reset at the suspension: after ops set it active again the
    # same 1000 delivered recipients with the one complaint since do not suspend.
    before = decide(C, 3, 1000, PLAN, "active")
    after_lift = decide(C, 1, 1000, PLAN, "active")
    assert before.action is Action.SUSPEND
    assert after_lift.action is Action.REVIEW


def test_plan_thresholds_replace_the_defaults() -> None:
    plan = ReputationPlan(complaints=Thresholds(min_delivered=10, review_ppm=100, suspend_ppm=200))
    assert decide(C, 1, 10, plan, "active").action is Action.SUSPEND
    assert decide(C, 1, 10, PLAN, "active").action is Action.NONE


def test_figures_name_the_rate_the_counts_and_the_thresholds() -> None:
    decision = decide(C, 4, 1000, PLAN, "active")
    assert decision.figures == (
        "complaint rate 0.40 % (4 complaints / 1000 delivered recipients; "
        "review 0.10 %, suspend 0.30 %, from 1000 delivered)"
    )
    assert decide(C, 1, 10, PLAN, "active").why == "below the minimum volume of 1000"
    assert decide(C, 5, 1000, PLAN, "suspended").why == "tenant is suspended"


@pytest.mark.parametrize(
    ("ppm", "text"), [(0, "0.00 %"), (1000, "0.10 %"), (3333, "0.33 %"), (1_000_000, "100.00 %")]
)
def test_percent(ppm: int, text: str) -> None:
    assert format_percent(ppm) == text


def test_counter_is_bucketed_like_the_windows() -> None:
    window = PLAN.counter("delivered")
    assert window.period_ms == 7 * 86_400_000
    assert window.buckets == 60 and window.limit == -1

"""The warm-up ramp: scale by days of good standing, the pause, its changes (pure)."""

from __future__ import annotations

import pytest

from aupmilter.policy.limits import (
    LimitOverrides,
    Limits,
    RecipientGate,
    Scope,
    Unit,
    Window,
    WindowFill,
    open_gate,
    warmup_limit,
)
from aupmilter.policy.reputation import ReputationPlan
from aupmilter.policy.warmup import (
    Phase,
    RateCounts,
    WarmupPlan,
    WarmupState,
    at_mail_from,
    ramp,
    review_finding,
)

DAY = 86_400
T0 = 1_700_000_000.0
PLAN = WarmupPlan(enabled=True, start_percent=10, factor=2.0, step=DAY)


@pytest.mark.parametrize(
    ("days", "percent", "day"),
    [
        (0.0, 10, 1),
        (0.999, 10, 1),
        (1.0, 20, 2),
        (2.5, 40, 3),
        (3.0, 80, 4),
        (4.0, 100, 5),  # 160 capped
        (30.0, 100, 5),
    ],
)
def test_day_one_at_ten_percent_doubling_up_to_full(days: float, percent: int, day: int) -> None:
    got = ramp(PLAN, WarmupState(started_at=T0), T0 + days * DAY)
    assert (got.percent, got.day) == (percent, day)
    assert got.phase is (Phase.FINISHED if percent == 100 else Phase.RAMP)


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        (WarmupPlan(True, 10, 2.0), [10, 20, 40, 80, 100]),
        (WarmupPlan(True, 10, 1.5), [10, 15, 22, 33, 50, 75, 100]),
        (WarmupPlan(True, 1, 10.0), [1, 10, 100]),
        (WarmupPlan(True, 100, 2.0), [100]),
        (WarmupPlan(True, 50, 3.0), [50, 100]),
    ],
)
def test_the_scale_per_step_and_the_steps_to_full(plan: WarmupPlan, expected: list[int]) -> None:
    assert [plan.percent_at(k) for k in range(len(expected))] == expected
    assert plan.steps_to_full == len(expected) - 1


def test_a_plan_without_warmup_or_a_tenant_without_a_ramp_is_fully_warmed() -> None:
    assert ramp(WarmupPlan(), WarmupState(started_at=T0), T0).percent == 100
    assert ramp(PLAN, None, T0).phase is Phase.NONE
    assert ramp(PLAN, None, T0).percent == 100
    assert at_mail_from(PLAN, None, "complaint rate 5 %", T0) == (ramp(PLAN, None, T0), None)


def test_the_next_step_is_when_the_good_standing_reaches_it() -> None:
    got = ramp(PLAN, WarmupState(started_at=T0, paused_seconds=3600), T0 + DAY)
    assert got.percent == 10 and got.next_percent == 20
    assert got.next_step_at == T0 + DAY + 3600


def test_a_pause_holds_the_scale_and_its_time_is_not_good_standing() -> None:
    paused = WarmupState(started_at=T0, paused_at=T0 + 1.5 * DAY, pause_reason="complaints")
    for later in (2 * DAY, 5 * DAY, 40 * DAY):
        got = ramp(PLAN, paused, T0 + later)
        assert (got.phase, got.percent, got.day) == (Phase.PAUSED, 20, 2)
        assert got.next_step_at is None and got.pause_reason == "complaints"


def test_resume_counts_on_from_where_the_pause_held() -> None:
    # Paused at 1.5 days for 3 days: at 5 days since the start, 2 days of good standing.
    state = WarmupState(started_at=T0, paused_seconds=3 * DAY)
    got = ramp(PLAN, state, T0 + 5 * DAY)
    assert (got.percent, got.day, got.good_seconds) == (40, 3, 2 * DAY)


def test_a_restart_is_day_one_again() -> None:
    later = T0 + 10 * DAY
    assert ramp(PLAN, WarmupState(started_at=T0), later).percent == 100
    assert ramp(PLAN, WarmupState(started_at=later), later).percent == 10


def test_a_finished_ramp_is_full_whatever_its_start() -> None:
    got = ramp(PLAN, WarmupState(started_at=T0, finished_at=T0 + 60), T0 + 120)
    assert (got.phase, got.percent) == (Phase.FINISHED, 100)


REPUTATION = ReputationPlan()


@pytest.mark.parametrize(
    ("rates", "above"),
    [
        (None, False),
        (RateCounts(0, 0, 0), False),
        (RateCounts(5, 0, 999), False),  # under the complaints' minimum volume
        (RateCounts(0, 9, 199), False),  # under the bounces' minimum volume
        (RateCounts(1, 0, 1000), True),  # 0.1 %: review
        (RateCounts(0, 0, 1001), False),
        (RateCounts(0, 10, 200), True),  # 5 %: review
        (RateCounts(0, 9, 200), False),
        (RateCounts(4, 0, 1000), True),  # past suspend is past review too
    ],
)
def test_review_finding(rates: RateCounts | None, above: bool) -> None:
    finding = review_finding(rates, REPUTATION)
    assert (finding is not None) == above
    if finding is not None:
        assert "rate" in finding and "review" in finding


# --- the changes MAIL FROM records -------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "finding", "at_days", "change", "percent"),
    [
        # A fresh ramp's first transaction records day 1 at 10 %.
        (WarmupState(T0), None, 0.1, "step", 10),
        # Nothing changed since the last record.
        (WarmupState(T0, audited_percent=10), None, 0.5, None, 10),
        # A day of good standing: the step up.
        (WarmupState(T0, audited_percent=10), None, 1.2, "step", 20),
        # A rate above review: paused, at the scale in force.
        (WarmupState(T0, audited_percent=20), "complaints", 1.5, "paused", 20),
        # Still above review: nothing new.
        (
            WarmupState(T0, paused_at=T0 + 1.5 * DAY, pause_reason="c", audited_percent=20),
            "complaints",
            9.0,
            None,
            20,
        ),
        # Back below review: resumed, the pause's time not counted.
        (
            WarmupState(T0, paused_at=T0 + 1.5 * DAY, pause_reason="c", audited_percent=20),
            None,
            9.0,
            "resumed",
            20,
        ),
        # The last step: finished.
        (WarmupState(T0, audited_percent=80), None, 4.0, "finished", 100),
    ],
)
def test_at_mail_from_changes(
    state: WarmupState, finding: str | None, at_days: float, change: str | None, percent: int
) -> None:
    now = T0 + at_days * DAY
    got, transition = at_mail_from(PLAN, state, finding, now)
    assert got.percent == percent
    assert (transition.change if transition else None) == change
    if transition is not None:
        assert transition.percent == percent
        assert transition.expected_percent == state.audited_percent
        assert transition.expected_paused == (state.paused_at is not None)
        assert transition.started_at == T0
        assert f"{percent} %" in transition.detail


def test_a_pause_and_its_resume_account_the_paused_time() -> None:
    state = WarmupState(T0, audited_percent=10)
    _, paused = at_mail_from(PLAN, state, "complaint rate 0.20 %", T0 + 0.5 * DAY)
    assert paused is not None and paused.paused_at == T0 + 0.5 * DAY
    assert paused.pause_reason == "complaint rate 0.20 %"
    held = WarmupState(T0, paused_at=paused.paused_at, pause_reason="x", audited_percent=10)
    got, resumed = at_mail_from(PLAN, held, None, T0 + 3.5 * DAY)
    assert resumed is not None and resumed.change == "resumed"
    assert resumed.paused_at is None and resumed.paused_seconds == 3 * DAY
    assert (got.percent, got.good_seconds) == (10, 0.5 * DAY)


# --- the windows at the scale ------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "percent", "scaled"),
    [(2000, 10, 200), (5, 10, 1), (1, 10, 1), (0, 10, 0), (15, 50, 7), (7, 100, 7)],
)
def test_a_scaled_limit_is_floored_never_below_one(limit: int, percent: int, scaled: int) -> None:
    assert warmup_limit(limit, percent) == scaled


def test_the_gate_scales_the_windows_not_the_cap_and_says_so() -> None:
    window = Window("tenant-recipients-hour", Scope.TENANT, Unit.RECIPIENTS, 50, 3_600_000)
    limits = Limits(max_recipients=100, windows=(window,))
    gate = open_gate(
        limits, LimitOverrides(), [WindowFill(0)], sender="a", tenant="acme", now_ms=0,
        warmup_percent=10,
    )  # fmt: skip
    assert isinstance(gate, RecipientGate)
    assert gate.limits.max_recipients == 100
    assert gate.limits.windows[0].limit == 5
    assert [gate.decide(f"r{n}@example.net") for n in range(5)] == [None] * 5
    refusal = gate.refusal("r5@example.net")
    assert refusal is not None and refusal.reply is not None
    assert (refusal.reply.code, refusal.reply.status) == ("450", "4.7.1")
    assert "5 recipients per hour for tenant acme" in refusal.reply.text
    assert "in warm-up at 10 percent of its limits" in refusal.reply.text
    assert refusal.evidence is not None and refusal.evidence["warmup_percent"] == 10


def test_overrides_are_scaled_too() -> None:
    window = Window("w", Scope.SENDER, Unit.MESSAGES, 100, 60_000)
    gate = open_gate(
        Limits(10, (window,)), LimitOverrides(windows={"w": 40}), [WindowFill(0)],
        sender="a", tenant="t", now_ms=0, warmup_percent=20,
    )  # fmt: skip
    assert isinstance(gate, RecipientGate) and gate.limits.windows[0].limit == 8

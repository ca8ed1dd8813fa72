"""Warm-up: a new tenant's rate windows scaled down by its plan's ramp.

A plan with `[plan.NAME.warmup]` starts a tenant (at `tenant add`, or again
when ops restart the ramp, e.g. for a newly verified domain) at
`start_percent` of every window limit; each `step` (a day by default) of good
standing multiplies the scale by `factor`, up to 100 %. Scale k (the k-th
step done) is ``min(100, floor(start_percent * factor ** k))``, in whole
percent; a scaled limit is ``floor(limit * percent / 100)``, never below 1
(a window the plan sets to 0 stays 0). The per-message recipient cap is not
scaled: it is the shape of one message (the AUP's "at most N recipients per
message"), not volume; the windows bound volume, and a scaled recipients
window below the cap already limits a message to what is left of it.

Good standing, exactly: the ramp's clock is the time since the start minus
the time paused. The ramp pauses while the tenant's complaint or bounce rate
is at or above the plan's review threshold (policy.reputation.decide says
review or suspend: the same figures, minimum volume included, as the report
intake's). Where a pause begins and ends is recorded in the tenant hash
(store.keys FIELD_WARMUP_*), and the rule is:

- a pause begins at the first MAIL FROM of the tenant that finds a rate
  above review (its figures become the pause's reason);
- it ends at the first MAIL FROM that finds both rates below review (or
  under the minimum volume); the pause's length is added to the time paused;
- while paused, the ramp's clock stands still: the scale holds.

Why the MAIL FROM and not the report intake decides (the choice between the
two): the rate falls below review without any report (more delivered
recipients, complaints leaving the rolling period), which the intake never
sees; only a reader of the counters at each transaction knows when a pause
ends. So the MAIL FROM read (sender_state.lua) returns the three counters'
fills for a tenant in warm-up, at no round trip of its own. What the rule
leaves: the time between a rate crossing review and the tenant's next MAIL
FROM counts as good standing (nothing was sent meanwhile; the step that
time may have brought is then held by the pause from the first transaction
on), and the time between a rate falling back and the next MAIL FROM counts
as paused (the ramp errs slow, never fast).

Pure: the stored state, the rates' counts and the clock are passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import StrEnum

from aupmilter.policy.reputation import Action, Measure, ReputationPlan, decide

FULL = 100
MAX_STEPS = 1000
"""A ramp longer than this is a configuration no one meant; it ends at 100 %."""


@dataclass(frozen=True, slots=True)
class WarmupPlan:
    """A plan's `[plan.NAME.warmup]` table; `enabled` False (the default) means no ramp."""

    enabled: bool = False
    start_percent: int = 10
    """The scale of the first step (day 1), in whole percent of the plan's limits."""
    factor: float = 2.0
    """Each step of good standing multiplies the scale by this (more than 1)."""
    step: int = 86_400
    """Seconds of good standing per step."""

    def percent_at(self, steps: int) -> int:
        """The scale after `steps` steps of good standing, in whole percent."""
        if not self.enabled:
            return FULL
        scale = float(self.start_percent)
        for _ in range(min(steps, MAX_STEPS)):
            if scale >= FULL:
                break
            scale *= self.factor
        return FULL if steps >= MAX_STEPS else min(FULL, math.floor(scale))

    @property
    def steps_to_full(self) -> int:
        """How many steps of good standing reach 100 %."""
        steps = 0
        while self.percent_at(steps) < FULL and steps < MAX_STEPS:
            steps += 1
        return steps

    def describe(self) -> str:
        """``10 % of the limits, x2 per 1 day of good standing, 100 % after 4 days``."""
        return (
            f"{self.start_percent} % of the limits on day 1, x{self.factor:g} per"
            f" {_duration(self.step)} of good standing, 100 % after"
            f" {_duration(self.step * self.steps_to_full)}; paused while a complaint or"
            " bounce rate is above review"
        )


@dataclass(frozen=True, slots=True)
class WarmupState:
    """The ramp's fields of the tenant hash, parsed (store.tenants.warmup_state)."""

    started_at: float
    """Unix seconds the ramp (re)started."""
    paused_seconds: float = 0.0
    """Seconds of the pauses that ended since the start."""
    paused_at: float | None = None
    """When the pause in force began; None: not paused."""
    pause_reason: str = ""
    finished_at: float | None = None
    """When the ramp ended (100 % reached, or `tenant warmup --finish`)."""
    audited_percent: int | None = None
    """The scale last audited: a change is audited once, by the first to see it."""
    reason: str = ""
    """Why the ramp (re)started, as the admin said."""
    problems: tuple[str, ...] = ()
    """Stored values that are no time or number, for the operator (naming the field)."""


@dataclass(frozen=True, slots=True)
class RateCounts:
    """The tenant's rate counters over the plan's rate period, as the MAIL FROM read found them."""

    complaints: int
    bounces: int
    delivered: int


class Phase(StrEnum):
    NONE = "none"
    """The plan has no warm-up, or the tenant never had a ramp: fully warmed."""
    RAMP = "ramp"
    PAUSED = "paused"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class Ramp:
    """Where a tenant is on its ramp at one moment."""

    phase: Phase
    percent: int = FULL
    day: int = 0
    """The step in force, from 1 (day 1 of the ramp); 0 without a ramp."""
    good_seconds: float = 0.0
    """Seconds of good standing since the start."""
    next_step_at: float | None = None
    """When the next step comes if standing stays good; None when paused or at 100 %."""
    next_percent: int | None = None
    paused_at: float | None = None
    pause_reason: str = ""

    @property
    def scaling(self) -> bool:
        return self.percent < FULL

    def describe(self) -> str:
        if self.phase is Phase.NONE:
            return "no warm-up: windows at 100 % of the plan's limits"
        if self.phase is Phase.FINISHED:
            return "warm-up finished: windows at 100 % of the plan's limits"
        text = f"warm-up day {self.day}: windows at {self.percent} % of the plan's limits"
        if self.phase is Phase.PAUSED:
            return f"{text}; paused: {self.pause_reason or 'rate above review'}"
        return text


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of the scale or pause a tenant runs at, to record and audit once."""

    change: str
    """step | paused | resumed | finished"""
    started_at: float
    """The ramp it belongs to: a restart meanwhile makes it stale."""
    expected_percent: int | None
    """The stored `audited_percent` it replaces (compare-and-set)."""
    expected_paused: bool
    percent: int
    paused_at: float | None = None
    paused_seconds: float = 0.0
    pause_reason: str = ""
    finished_at: float | None = None
    detail: str = ""


def review_finding(rates: RateCounts | None, plan: ReputationPlan) -> str | None:
    """The figures of a rate at or above review (the first of complaints, bounces); else None."""
    if rates is None:
        return None
    measures = ((Measure.COMPLAINTS, rates.complaints), (Measure.BOUNCES, rates.bounces))
    for measure, events in measures:
        decision = decide(measure, events, rates.delivered, plan, "active")
        if decision.action is not Action.NONE:
            return decision.figures
    return None


def observe(state: WarmupState, finding: str | None, now: float) -> WarmupState:
    """The state with what this MAIL FROM found applied: a pause begun or ended."""
    if state.finished_at is not None:
        return state
    if finding is not None and state.paused_at is None:
        return replace(state, paused_at=now, pause_reason=finding)
    if finding is None and state.paused_at is not None:
        total = state.paused_seconds + max(0.0, now - state.paused_at)
        return replace(state, paused_at=None, pause_reason="", paused_seconds=total)
    return state


def ramp(plan: WarmupPlan, state: WarmupState | None, now: float) -> Ramp:
    """The scale in force at `now` for the state as stored (or as `observe` made it)."""
    if not plan.enabled or state is None:
        return Ramp(Phase.NONE)
    if state.finished_at is not None:
        return Ramp(Phase.FINISHED, day=plan.steps_to_full + 1)
    until = state.paused_at if state.paused_at is not None else now
    good = max(0.0, until - state.started_at - state.paused_seconds)
    steps = int(good // plan.step)
    percent = plan.percent_at(steps)
    if percent >= FULL:
        return Ramp(Phase.FINISHED, day=plan.steps_to_full + 1, good_seconds=good)
    if state.paused_at is not None:
        return Ramp(
            Phase.PAUSED,
            percent,
            steps + 1,
            good,
            paused_at=state.paused_at,
            pause_reason=state.pause_reason,
        )
    next_at = now + ((steps + 1) * plan.step - good)
    return Ramp(Phase.RAMP, percent, steps + 1, good, next_at, plan.percent_at(steps + 1))


def at_mail_from(
    plan: WarmupPlan, state: WarmupState | None, finding: str | None, now: float
) -> tuple[Ramp, Transition | None]:
    """The ramp in force for this transaction, and the change to record when it changed.

    A change is one of: a pause begun or ended (the pause's fields), a step
    up, or the end of the ramp (100 %), compared with the stored
    `audited_percent` and pause; the store writes it only if the stored
    state is still the one compared with (so of two workers or relays that
    see it at once, one records and audits it).
    """
    if not plan.enabled or state is None or state.finished_at is not None:
        return ramp(plan, state, now), None
    effective = observe(state, finding, now)
    current = ramp(plan, effective, now)
    was_paused = state.paused_at is not None

    def change(
        kind: str, percent: int, detail: str, finished_at: float | None = None
    ) -> Transition:
        return Transition(
            change=kind,
            started_at=state.started_at,
            expected_percent=state.audited_percent,
            expected_paused=was_paused,
            percent=percent,
            paused_at=effective.paused_at,
            paused_seconds=effective.paused_seconds,
            pause_reason=effective.pause_reason,
            finished_at=finished_at,
            detail=detail,
        )

    if current.phase is Phase.FINISHED:
        good = _duration(current.good_seconds)
        detail = f"warm-up finished: windows at 100 % after {good} of good standing"
        return current, change("finished", FULL, detail, finished_at=now)
    percent, day = current.percent, current.day
    if effective.paused_at is not None and not was_paused:
        detail = f"warm-up paused at {percent} % (day {day}): {effective.pause_reason}"
        return current, change("paused", percent, detail)
    if effective.paused_at is None and was_paused:
        detail = f"warm-up resumed at {percent} % (day {day}): rates below review"
        return current, change("resumed", percent, detail)
    if percent != state.audited_percent:
        before = "" if state.audited_percent is None else f" (was {state.audited_percent} %)"
        detail = f"warm-up day {day}: windows at {percent} %{before}"
        return current, change("step", percent, detail)
    return current, None


def _duration(seconds: float) -> str:
    whole = int(seconds)
    for unit, size in (("day", 86_400), ("hour", 3600), ("minute", 60)):
        if whole >= size and whole % size == 0:
            count = whole // size
            return f"1 {unit}" if count == 1 else f"{count} {unit}s"
    if whole >= 86_400:
        return f"{whole / 86_400:.1f} days"
    if whole >= 3600:
        return f"{whole / 3600:.1f} hours"
    return f"{whole} seconds"

"""Complaint and bounce rates of a tenant, and the automatic action they call for.

A rate is events (complaints, or hard bounces) over the tenant's delivered
recipients, both counted over the plan's rolling `period` in the same
bucketed counters as the rate windows (policy.limits: the span is between
`period` and `period + period/60`). It counts only from the plan's minimum
volume of delivered recipients on: one complaint from a tenant that sent 50
messages is not 2 % of anything.

`review` is a log warning and an audit event; `suspend` sets the tenant's
status to suspended. Neither is ever taken for a tenant that is not active
(already suspended or terminated), and nothing here lifts a status. The
event counters are reset when the suspension is made and are not counted
while the tenant is not active (store.reputation), so after ops lift a
suspension the rate's numerator holds only reports received since: the
evidence that suspended it cannot suspend it again.

Pure: counts and plan in, decision out; thresholds are compared exactly
(events * 1_000_000 against delivered * threshold in parts per million),
so no float rounding decides a suspension.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aupmilter.policy.limits import Scope, Unit, Window
from aupmilter.policy.tenancy import TenantStatus


class Measure(StrEnum):
    COMPLAINTS = "complaints"
    BOUNCES = "bounces"


class Action(StrEnum):
    NONE = "none"
    REVIEW = "review"
    SUSPEND = "suspend"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """One measure's thresholds, in parts per million of delivered recipients."""

    min_delivered: int
    review_ppm: int
    suspend_ppm: int


@dataclass(frozen=True, slots=True)
class ReputationPlan:
    """A plan's rolling period and thresholds (defaults: the mailbox providers' figures)."""

    period: int = 7 * 86_400
    """Seconds the rates look back over."""
    complaints: Thresholds = Thresholds(min_delivered=1000, review_ppm=1000, suspend_ppm=3000)
    """0.1 % review, 0.3 % suspend, from 1000 delivered recipients on."""
    bounces: Thresholds = Thresholds(min_delivered=200, review_ppm=50_000, suspend_ppm=100_000)
    """5 % review, 10 % suspend, from 200 delivered recipients on."""

    def thresholds(self, measure: Measure) -> Thresholds:
        return self.complaints if measure is Measure.COMPLAINTS else self.bounces

    def counter(self, name: str) -> Window:
        """A count-only window over the period: the rate counters share the windows' buckets."""
        return Window(
            name=name,
            scope=Scope.TENANT,
            unit=Unit.RECIPIENTS,
            limit=-1,
            period_ms=self.period * 1000,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    measure: Measure
    events: int
    delivered: int
    thresholds: Thresholds
    why: str = ""
    """Why no action, when there is none."""

    @property
    def figures(self) -> str:
        """``complaint rate 0.40 % (4 complaints / 1000 delivered recipients over 7 days; ...)``."""
        t = self.thresholds
        rate = format_percent(self.events * 1_000_000 // max(1, self.delivered))
        return (
            f"{self.measure.value[:-1]} rate {rate} ({self.events} {self.measure.value} / "
            f"{self.delivered} delivered recipients; review {format_percent(t.review_ppm)}, "
            f"suspend {format_percent(t.suspend_ppm)}, from {t.min_delivered} delivered)"
        )


def format_percent(ppm: int) -> str:
    """Parts per million as a percentage with two decimals (truncated, never rounded up)."""
    return f"{ppm // 10_000}.{ppm % 10_000 // 100:02d} %"


def decide(
    measure: Measure, events: int, delivered: int, plan: ReputationPlan, status: str
) -> Decision:
    """The action for a tenant whose counters now read ``events`` and ``delivered``.

    ``status`` is the tenant's stored status: only an ``active`` tenant is acted on.
    """
    thresholds = plan.thresholds(measure)

    def decision(action: Action, why: str = "") -> Decision:
        return Decision(action, measure, events, delivered, thresholds, why)

    if status != TenantStatus.ACTIVE.value:
        return decision(Action.NONE, f"tenant is {status}")
    if delivered < thresholds.min_delivered:
        return decision(Action.NONE, f"below the minimum volume of {thresholds.min_delivered}")
    scaled = events * 1_000_000
    if scaled >= delivered * thresholds.suspend_ppm:
        return decision(Action.SUSPEND)
    if scaled >= delivered * thresholds.review_ppm:
        return decision(Action.REVIEW)
    return decision(Action.NONE, "below the review threshold")

"""Recipient caps and sliding rate windows: the plan's limits and the RCPT decision.

A window counts recipients or messages, per sender or per tenant, over the last
``period`` seconds. Its fill is kept in ``BUCKETS_PER_WINDOW`` buckets of
``period / BUCKETS_PER_WINDOW`` each; the fill at time t is the sum of the
bucket holding t and the ``BUCKETS_PER_WINDOW`` buckets before it, so it spans
between ``period`` and ``period + bucket`` seconds. The error is therefore only
ever on the safe side: no span of ``period`` seconds ever holds more than the
limit, and room comes back at most one bucket (period/60) later than an exact
sliding log would give it.

Everything here is pure: the fills come from the MAIL FROM read, the clock is
passed in, and the RCPT decision is a few integer comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from aupmilter import replies
from aupmilter.policy.verdict import Verdict
from aupmilter.replies import Reply

BUCKETS_PER_WINDOW = 60


class Scope(StrEnum):
    SENDER = "sender"
    TENANT = "tenant"


class Unit(StrEnum):
    RECIPIENTS = "recipients"
    MESSAGES = "messages"


@dataclass(frozen=True, slots=True)
class Window:
    name: str
    scope: Scope
    unit: Unit
    limit: int
    period_ms: int
    warmup_percent: int = 100
    """The warm-up scale `limit` is at (policy.warmup); 100: the plan's (or override's) limit."""

    @property
    def bucket_ms(self) -> int:
        return bucket_ms(self.period_ms)

    @property
    def buckets(self) -> int:
        return math.ceil(self.period_ms / self.bucket_ms)

    @property
    def counter(self) -> tuple[Scope, Unit, int]:
        """What identifies the stored counts: windows differing only in limit share them."""
        return (self.scope, self.unit, self.period_ms)

    @property
    def rule(self) -> str:
        """``2000 recipients per hour, per sender``: the window as the plan states it."""
        return f"{self.limit} {self.unit} per {format_period(self.period_ms)}, per {self.scope}"

    def describe(self, sender: str, tenant: str) -> str:
        who = f"sender {sender}" if self.scope is Scope.SENDER else f"tenant {tenant}"
        text = f"{self.limit} {self.unit} per {format_period(self.period_ms)} for {who}"
        if self.warmup_percent < 100:
            scale = self.warmup_percent
            text += f" (tenant {tenant} is in warm-up at {scale} percent of its limits)"
        return text


def bucket_ms(period_ms: int) -> int:
    return max(1, math.ceil(period_ms / BUCKETS_PER_WINDOW))


def format_period(period_ms: int) -> str:
    seconds = period_ms // 1000
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0 and seconds >= size:
            count = seconds // size
            return unit if count == 1 else f"{count} {unit}s"
    return "second" if seconds == 1 else f"{seconds} seconds"


@dataclass(frozen=True, slots=True)
class Limits:
    max_recipients: int
    windows: tuple[Window, ...] = ()


@dataclass(frozen=True, slots=True)
class LimitOverrides:
    """A tenant's own limits in place of its plan's, as the store read them from the tenant hash."""

    max_recipients: int | None = None
    windows: Mapping[str, int] = field(default_factory=dict)
    """Window name -> limit, for windows the plan should have."""
    problems: tuple[str, ...] = ()
    """Stored values that are no limit, described for the operator (naming the field).

    Any of them keeps the tenant's mail waiting (451) until an operator fixes it:
    guessing a limit could let a tenant send more than it was allowed.
    """


class OverrideError(ValueError):
    """A tenant override that cannot apply: not a limit, or naming no window of the plan."""


def with_overrides(limits: Limits, overrides: LimitOverrides) -> Limits:
    """The plan's limits with the tenant's overrides applied; OverrideError when one is broken."""
    if overrides.problems:
        raise OverrideError(overrides.problems[0])
    names = {window.name for window in limits.windows}
    for name in overrides.windows:
        if name not in names:
            raise OverrideError(f"the override of window {name!r} names no window of the plan")
    cap = limits.max_recipients if overrides.max_recipients is None else overrides.max_recipients
    windows = limits.windows
    if overrides.windows:
        windows = tuple(
            replace(w, limit=overrides.windows[w.name]) if w.name in overrides.windows else w
            for w in windows
        )
    if cap == limits.max_recipients and windows is limits.windows:
        return limits
    return Limits(max_recipients=cap, windows=windows)


def with_warmup(limits: Limits, percent: int) -> Limits:
    """Every window's limit at the warm-up scale: floored, never below 1 (0 stays 0)."""
    windows = tuple(
        replace(w, limit=warmup_limit(w.limit, percent), warmup_percent=percent)
        for w in limits.windows
    )
    return Limits(max_recipients=limits.max_recipients, windows=windows)


def warmup_limit(limit: int, percent: int) -> int:
    """A limit at `percent` of itself, floored, never below 1 (a limit of 0 stays 0)."""
    if percent >= 100 or limit <= 0:
        return limit
    return max(1, limit * percent // 100)


@dataclass(frozen=True, slots=True)
class WindowFill:
    """A window's count at MAIL FROM, with the buckets that make it up."""

    used: int
    buckets: Sequence[tuple[int, int]] = ()
    """(bucket index, count) pairs, for computing when room comes back."""

    def seconds_until_room(self, window: Window, needed: int, now_ms: int) -> int:
        """Seconds until ``needed`` more units fit; the whole period when they never can."""
        excess = self.used + needed - window.limit
        if excess <= 0:
            return 0
        if needed > window.limit:
            return math.ceil(window.period_ms / 1000)
        freed = 0
        for index, count in sorted(self.buckets):
            freed += count
            if freed >= excess:
                # Bucket `index` stops counting once the current bucket is index + buckets + 1.
                free_at = (index + window.buckets + 1) * window.bucket_ms
                return max(1, math.ceil((free_at - now_ms) / 1000))
        return math.ceil(window.period_ms / 1000)


@dataclass(slots=True)
class RecipientGate:
    """Decides each RCPT of one transaction locally, from the MAIL FROM snapshot."""

    limits: Limits
    fills: Sequence[WindowFill]
    sender: str
    tenant: str
    now_ms: int
    accepted: dict[str, str] = field(default_factory=dict)
    """Accepted recipients: the comparison key -> the address as the client gave it."""
    room: int = field(init=False)
    """Recipients that still fit in every window; the cap is checked separately."""

    def __post_init__(self) -> None:
        room = self.limits.max_recipients
        for window, fill in zip(self.limits.windows, self.fills, strict=True):
            free = window.limit - fill.used
            if window.unit is Unit.MESSAGES:
                free = room if free >= 1 else 0
            room = min(room, free)
        self.room = max(0, room)

    def decide(self, recipient: str) -> Reply | None:
        """None accepts (and counts) the recipient; otherwise the reply that refuses it."""
        refusal = self.refusal(recipient)
        return refusal.reply if refusal is not None else None

    def refusal(self, recipient: str) -> Verdict | None:
        """As `decide`, with the rule and the numbers behind a refusal for the audit trail."""
        key = recipient_key(recipient)
        if key in self.accepted:
            return None
        taken = len(self.accepted)
        cap = self.limits.max_recipients
        if taken >= cap:
            reply = replies.too_many_recipients(cap)
            evidence = {"cap": cap, "accepted": taken}
            reason = f"per-message cap of {cap} recipients reached"
            return Verdict.refuse(
                reply, reason, self.tenant, rule="recipient-cap", evidence=evidence
            )
        if taken >= self.room:
            return self._window_refusal(taken)
        self.accepted[key] = recipient
        return None

    def admit(self, recipient: str) -> None:
        """Accept a recipient whatever the limits say (shadow mode only records the refusal)."""
        self.accepted.setdefault(recipient_key(recipient), recipient)

    def no_room_reply(self, window_index: int, fill: WindowFill, now_ms: int) -> Reply:
        """The 451 for a message whose window a concurrent transaction filled meanwhile."""
        window = self.limits.windows[window_index]
        needed = len(self.accepted) if window.unit is Unit.RECIPIENTS else 1
        wait = fill.seconds_until_room(window, needed, now_ms)
        return replies.window_taken(window.describe(self.sender, self.tenant), wait)

    def _window_refusal(self, taken: int) -> Verdict:
        for window, fill in zip(self.limits.windows, self.fills, strict=True):
            needed = taken + 1 if window.unit is Unit.RECIPIENTS else 1
            if fill.used + needed > window.limit:
                wait = fill.seconds_until_room(window, needed, self.now_ms)
                reply = replies.window_full(window.describe(self.sender, self.tenant), wait)
                evidence: dict[str, object] = {
                    "window": window.name,
                    "used": fill.used,
                    "limit": window.limit,
                    "accepted": taken,
                    "retry_after_s": wait,
                }
                if window.warmup_percent < 100:
                    evidence["warmup_percent"] = window.warmup_percent
                reason = f"window {window.name} full: {fill.used} of {window.limit} used"
                return Verdict.refuse(reply, reason, self.tenant, rule="window", evidence=evidence)
        raise AssertionError("room is below the cap but no window is full")


def open_gate(
    plan_limits: Limits,
    overrides: LimitOverrides,
    fills: Sequence[WindowFill],
    *,
    sender: str,
    tenant: str,
    now_ms: int,
    warmup_percent: int = 100,
) -> RecipientGate | Verdict:
    """The RCPT gate for a tenant's transaction, or a 451 when its overrides are broken.

    `warmup_percent` scales every window's limit after the overrides (policy.warmup);
    the per-message cap is not scaled.
    """
    try:
        limits = with_overrides(plan_limits, overrides)
    except OverrideError as exc:
        return Verdict.refuse(
            replies.ACCOUNT_MISCONFIGURED, f"tenant {tenant}: {exc}", tenant, rule="tenant-override"
        )
    if warmup_percent < 100:
        limits = with_warmup(limits, warmup_percent)
    if len(fills) != len(limits.windows):
        # The plan changed between the config snapshot and the read: when in doubt, tempfail.
        return Verdict.refuse(
            replies.ACCOUNT_MISCONFIGURED,
            f"tenant {tenant}: {len(fills)} window fills for {len(limits.windows)} windows",
            tenant,
            rule="plan-changed",
        )
    return RecipientGate(limits, fills, sender, tenant, now_ms)


def recipient_key(address: str) -> str:
    """Identical recipients compare equal: the local part as given, the domain in lower case."""
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if at else address


def sender_identity(auth_login: str | None, sender: str) -> str:
    """Whom per-sender windows count: the SASL login, else the envelope sender (``<>``)."""
    if auth_login:
        return auth_login
    return recipient_key(sender) if sender else "<>"

"""What `aup-milter top` shows, computed from audit events: pure (events in, rows out).

The audit stream is the source: each verdict event carries its tenant,
sender, login and recipient count, each refusal its rule, each automatic
action its subject. `frame` turns the newest events (newest first, as
XREVRANGE gives them) into the rows of one screen; the window fills of the
busiest tenants come in as `WindowStatus` values read beside them
(store.inspection). Nothing here reads Redis or the clock.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from aupmilter.audit import event_time
from aupmilter.policy.limits import sender_identity
from aupmilter.policy.window_view import WindowStatus

Entry = tuple[str, Mapping[str, str]]
K = TypeVar("K", str, tuple[str, str])

RATE_SPAN_S = 60
"""Recipients per minute: over the last minute."""
AUTOMATIC = frozenset(
    {"sender-suspended", "domain-suspended", "tenant-terminated", "auto-suspend", "auto-review"}
)
"""The events of automatic actions (the ladder's, the complaint and bounce rates')."""
PASSED = frozenset({"accept", "quarantine"})
"""Verdicts whose mail went into the MTA (and was charged to the windows)."""
REFUSED = frozenset({"reject", "tempfail"})


@dataclass(frozen=True, slots=True)
class Rate:
    tenant: str
    sender: str | None
    """None on a tenant's row."""
    recipients: int
    messages: int


@dataclass(frozen=True, slots=True)
class ActionRow:
    at: float
    event: str
    tenant: str
    subject: str
    detail: str


@dataclass(frozen=True, slots=True)
class Frame:
    now: float
    span_s: int
    """How far back refusals, held messages and actions are counted."""
    tenants: list[Rate] = field(default_factory=list)
    senders: list[Rate] = field(default_factory=list)
    refusals: list[tuple[str, int]] = field(default_factory=list)
    """(rule, count), most first."""
    held: int = 0
    held_by_tenant: list[tuple[str, int]] = field(default_factory=list)
    actions: list[ActionRow] = field(default_factory=list)
    """Newest first."""
    windows: list[tuple[str, WindowStatus]] = field(default_factory=list)
    """(tenant, window) of the busiest tenants, fullest first."""
    events: int = 0
    complete: bool = True
    """False when the read stopped at its bound before the span's start."""


def _int(text: str | None) -> int:
    return int(text) if text is not None and text.isdigit() else 0


def delivered(fields: Mapping[str, str]) -> int:
    """Recipients a passing verdict handed to the MTA: its count less those suppressed."""
    count = _int(fields.get("recipients"))
    try:
        removed = json.loads(fields.get("suppressed", "[]"))
    except ValueError:
        removed = []
    return max(0, count - (len(removed) if isinstance(removed, list) else 0))


def sender_of(fields: Mapping[str, str]) -> str:
    """Whom per-sender windows count, as their keys spell it: the login, else the envelope
    sender with its domain lower-cased (`<>` for the null sender)."""
    return sender_identity(fields.get("auth") or None, fields.get("sender", ""))


def passed(verdict: str) -> bool:
    return verdict in PASSED or verdict.startswith("would-")


def frame(
    entries: Iterable[Entry],
    now: float,
    span_s: int,
    top: int = 10,
    windows: Sequence[tuple[str, WindowStatus]] = (),
    complete: bool = True,
) -> Frame:
    """One screen from the events of the last `span_s` seconds (newest first)."""
    tenant_rcpt: Counter[str] = Counter()
    tenant_msgs: Counter[str] = Counter()
    sender_rcpt: Counter[tuple[str, str]] = Counter()
    sender_msgs: Counter[tuple[str, str]] = Counter()
    refusals: Counter[str] = Counter()
    held: Counter[str] = Counter()
    actions: list[ActionRow] = []
    count = 0
    for entry_id, fields in entries:
        at = event_time(entry_id, fields)
        if at < now - span_s:
            continue
        count += 1
        kind = fields.get("event") or ("verdict" if "verdict" in fields else "")
        tenant = fields.get("tenant") or "-"
        if kind == "verdict":
            verdict = fields.get("verdict", "")
            if passed(verdict) and at >= now - RATE_SPAN_S and tenant != "-":
                rcpt = delivered(fields)
                tenant_rcpt[tenant] += rcpt
                tenant_msgs[tenant] += 1
                sender_rcpt[(tenant, sender_of(fields))] += rcpt
                sender_msgs[(tenant, sender_of(fields))] += 1
            if verdict == "quarantine":
                held[tenant] += 1
            if verdict in REFUSED:
                refusals[fields.get("rule") or "-"] += 1
        elif kind == "recipient-refused":
            refusals[fields.get("rule") or "-"] += 1
        elif kind in AUTOMATIC:
            subject = fields.get("subject") or fields.get("measure") or ""
            detail = fields.get("detail") or fields.get("reason") or ""
            actions.append(ActionRow(at, kind, tenant, subject, detail))
    tenants = [Rate(t, None, n, tenant_msgs[t]) for t, n in _busiest(tenant_rcpt, tenant_msgs, top)]
    senders = [
        Rate(t, s, n, sender_msgs[(t, s)]) for (t, s), n in _busiest(sender_rcpt, sender_msgs, top)
    ]
    actions.sort(key=lambda a: -a.at)
    return Frame(
        now=now,
        span_s=span_s,
        tenants=tenants,
        senders=senders,
        refusals=sorted(refusals.items(), key=lambda kv: (-kv[1], kv[0]))[:top],
        held=sum(held.values()),
        held_by_tenant=sorted(held.items(), key=lambda kv: (-kv[1], kv[0]))[:top],
        actions=actions[:top],
        windows=sorted(windows, key=lambda tw: (-tw[1].fraction, tw[0], tw[1].window.name)),
        events=count,
        complete=complete,
    )


def _busiest(recipients: Counter[K], messages: Counter[K], top: int) -> list[tuple[K, int]]:
    keys = sorted(recipients, key=lambda k: (-recipients[k], -messages[k], k))
    return [(k, recipients[k]) for k in keys[:top]]


def busiest_tenants(frame_: Frame) -> list[str]:
    return [rate.tenant for rate in frame_.tenants]


def busiest_senders(frame_: Frame) -> list[tuple[str, str]]:
    return [(rate.tenant, rate.sender) for rate in frame_.senders if rate.sender is not None]


def bar(fraction: float, width: int = 20) -> str:
    """`[#######.............]`: plain characters, readable over any terminal."""
    filled = round(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def with_windows(frame_: Frame, windows: Sequence[tuple[str, WindowStatus]]) -> Frame:
    """The frame with the window fills of its busiest tenants, fullest first."""
    ordered = sorted(windows, key=lambda tw: (-tw[1].fraction, tw[0], tw[1].window.name))
    return replace(frame_, windows=ordered)

"""The warm-up ramp's writes: a change recorded once (warmup_mark.lua), restart and finish.

A change the MAIL FROM computes (policy.warmup.at_mail_from) becomes a
`Mark`: the fields to set and delete in the tenant hash and its audit event,
written by scripts/warmup_mark.lua only if the hash still holds the state the
change was computed from. Marks wait in the milter's `store.client.Store`
and ride, pipelined, in front of the next script call it makes anyway (as
the audit events do), so they add no round trip; one per change per tenant.

Duplicates: of the workers and relays that see one change at once, one
writes it, and on one server or Sentinel the same script adds the event to
the stream, so the stream holds it once. On a Cluster the stream is on
another slot: the daemon's flusher runs the script (tenant slot only) and
audits the change itself when the script answers 1, so there too it is
audited once. What remains: the log line of the change is written by the
process that recorded it only; a process that saw the change but lost the
compare logs nothing (the next MAIL FROM sees the recorded state).

Restart and finish (`aup-milter tenant warmup`) are administrative writes
with their own audit event, in the same pipeline (as `tenant set-status`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aupmilter.policy.warmup import FULL, Transition
from aupmilter.store import keys

EVENT_PREFIX = "warmup-"
"""Audit events: warmup-step, -paused, -resumed, -finished, -restarted."""


@dataclass(frozen=True, slots=True)
class Mark:
    """One change of one tenant's ramp, to write once."""

    tenant_id: str
    transition: Transition
    now: float

    @property
    def event(self) -> dict[str, str]:
        t = self.transition
        return {
            "event": EVENT_PREFIX + t.change,
            "tenant": self.tenant_id,
            "kind": "tenant",
            "subject": self.tenant_id,
            "percent": str(t.percent),
            "detail": t.detail,
            "ts": f"{self.now:.3f}",
        }

    def fields(self) -> tuple[dict[str, str], list[str]]:
        """What to set and what to delete in the tenant hash."""
        t = self.transition
        sets = {
            keys.FIELD_WARMUP_SCALE: str(t.percent),
            keys.FIELD_WARMUP_PAUSED_SECONDS: _seconds(t.paused_seconds),
        }
        deletes: list[str] = []
        if t.paused_at is not None and t.finished_at is None:
            sets[keys.FIELD_WARMUP_PAUSED_AT] = _seconds(t.paused_at)
            sets[keys.FIELD_WARMUP_PAUSE_REASON] = t.pause_reason
        else:
            deletes += [keys.FIELD_WARMUP_PAUSED_AT, keys.FIELD_WARMUP_PAUSE_REASON]
        if t.finished_at is not None:
            sets[keys.FIELD_WARMUP_FINISHED_AT] = _seconds(t.finished_at)
        return sets, deletes

    def script_call(self, audit_minid: int | None) -> tuple[list[str], list[str]]:
        """KEYS and ARGV of warmup_mark.lua; with the stream when `audit_minid` is given."""
        t = self.transition
        sets, deletes = self.fields()
        args = [
            _seconds(t.started_at),
            "" if t.expected_percent is None else str(t.expected_percent),
            "1" if t.expected_paused else "0",
            keys.FIELD_WARMUP_STARTED_AT,
            keys.FIELD_WARMUP_SCALE,
            keys.FIELD_WARMUP_PAUSED_AT,
            keys.FIELD_WARMUP_FINISHED_AT,
            str(len(sets)),
            *(x for pair in sets.items() for x in pair),
            str(len(deletes)),
            *deletes,
        ]
        script_keys = [keys.tenant(self.tenant_id)]
        if audit_minid is not None:
            script_keys.append(keys.AUDIT_STREAM)
            args += [str(audit_minid), *(x for pair in self.event.items() for x in pair)]
        return script_keys, args


def _seconds(value: float) -> str:
    """Unix seconds as stored: whole when whole, else to the millisecond."""
    return str(int(value)) if value == int(value) else f"{value:.3f}"


def restart_fields(now: str, reason: str) -> tuple[dict[str, str], list[str]]:
    """A ramp (re)started now: the start, its reason; pause, scale and end forgotten."""
    sets = {keys.FIELD_WARMUP_STARTED_AT: now, keys.FIELD_WARMUP_REASON: reason}
    deletes = [
        keys.FIELD_WARMUP_PAUSED_AT,
        keys.FIELD_WARMUP_PAUSE_REASON,
        keys.FIELD_WARMUP_PAUSED_SECONDS,
        keys.FIELD_WARMUP_SCALE,
        keys.FIELD_WARMUP_FINISHED_AT,
    ]
    return sets, deletes


def finish_fields(now: str, reason: str) -> tuple[dict[str, str], list[str]]:
    """The ramp ended now by ops: 100 %, no pause (the start is kept for the record)."""
    sets = {
        keys.FIELD_WARMUP_FINISHED_AT: now,
        keys.FIELD_WARMUP_SCALE: str(FULL),
        keys.FIELD_WARMUP_REASON: reason,
    }
    return sets, [keys.FIELD_WARMUP_PAUSED_AT, keys.FIELD_WARMUP_PAUSE_REASON]


def queue_fields(pipe: Any, tenant_key: str, sets: dict[str, str], deletes: list[str]) -> None:
    pipe.hset(tenant_key, mapping=sets)
    if deletes:
        pipe.hdel(tenant_key, *deletes)

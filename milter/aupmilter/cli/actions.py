"""The automatic actions in force on a tenant, for `aup-milter tenant show`, each with
its evidence: the latest audit event that took it.

In force: the ladder's suspensions of senders and domains (the suspended
hash), the tenant's automatic suspension (complaint or bounce rate;
`auto_suspended_at`) while it is still suspended by it, and the ladder's
termination (`auto_terminated_at`) while still terminated. The offence counts
go with them. Each action's event is looked for in the stream near the time
the action stored (store.inspection.Inspection.event_near: a few seconds of
the stream, bounded), so the lookup stays cheap however long the trail is.
Which actions are in force, and their words, are pure functions.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aupmilter.audit import event_time
from aupmilter.cli.auditlog import describe, record, utc
from aupmilter.store import keys
from aupmilter.store.ladder import Subject, Suspension

Entry = tuple[str, Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class Action:
    kind: str
    """sender | domain | tenant"""
    subject: str
    state: str
    """suspended | terminated"""
    since: int
    """Unix seconds the action stored (0: none stored)."""
    reason: str
    event: str
    """The audit event that takes it."""

    @property
    def match(self) -> dict[str, str]:
        """The fields its audit event has."""
        if self.kind == "tenant":
            return {"event": self.event}
        return {"event": self.event, "subject": self.subject}


@dataclass(frozen=True, slots=True)
class InForce:
    actions: list[tuple[Action, Entry | None]] = field(default_factory=list)
    offences: dict[str, int] = field(default_factory=dict)


def _seconds(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def actions_in_force(fields: Mapping[str, str], suspensions: Sequence[Suspension]) -> list[Action]:
    """The automatic actions a tenant's hash and suspended hash say are in force."""
    found = [
        Action(
            kind=s.kind.value,
            subject=s.subject,
            state="suspended",
            since=s.since,
            reason=s.reason,
            event="sender-suspended" if s.kind is Subject.SENDER else "domain-suspended",
        )
        for s in suspensions
    ]
    status = fields.get(keys.FIELD_STATUS, "")
    updated = _seconds(fields.get(keys.FIELD_UPDATED_AT)) or 0
    for state, stamp_field, event in (
        ("suspended", keys.FIELD_AUTO_SUSPENDED_AT, "auto-suspend"),
        ("terminated", keys.FIELD_AUTO_TERMINATED_AT, "tenant-terminated"),
    ):
        at = _seconds(fields.get(stamp_field))
        # A later status change by hand (updated_at past the stamp) is no longer automatic.
        if status == state and at is not None and at >= updated:
            found.append(
                Action(
                    kind="tenant",
                    subject="",
                    state=state,
                    since=at,
                    reason=fields.get(keys.FIELD_REASON, ""),
                    event=event,
                )
            )
    return found


def gather(client: Any, tenant_id: str, fields: Mapping[str, str]) -> InForce:
    """The actions in force with their events, and the offence counts."""
    from aupmilter.store.inspection import Inspection
    from aupmilter.store.ladder import LadderStore

    ladder = LadderStore(client)
    inspection = Inspection(client)
    actions = actions_in_force(fields, ladder.suspensions(tenant_id))
    evidence = []
    for action in actions:
        match = {**action.match, "tenant": tenant_id}
        evidence.append((action, inspection.event_near(action.since, match)))
    return InForce(evidence, ladder.offences(tenant_id))


def _since(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(seconds)) if seconds else "-"


def lines(tenant_id: str, in_force: InForce) -> list[str]:
    """The words `tenant show` prints under the tenant: one line per action, its
    evidence indented under it, then the offence counts."""
    out: list[str] = []
    for action, entry in in_force.actions:
        subject = tenant_id if action.kind == "tenant" else action.subject
        head = f"{action.state} {action.kind} {subject} since {_since(action.since)}"
        if action.kind == "tenant":
            head += " (automatic)"
        out.append(head)
        if entry is None:
            why = f": {action.reason}" if action.reason else ""
            out.append(f"  evidence: no {action.event} event found in the audit trail{why}")
        else:
            entry_id, event = entry
            out.append(f"  evidence: {utc(event_time(entry_id, event), 'Z')}: {describe(event)}")
    for sender, count in sorted(in_force.offences.items()):
        out.append(f"near-cap-repeat offences of {sender}: {count}")
    return out


def as_json(in_force: InForce) -> dict[str, object]:
    """The `--json` keys: `automatic_actions` (each with `evidence`, the event or null)
    and `offences`."""
    return {
        "automatic_actions": [
            {
                "kind": action.kind,
                "subject": action.subject or None,
                "state": action.state,
                "since": action.since or None,
                "reason": action.reason,
                "event": action.event,
                "evidence": None if entry is None else record(*entry),
            }
            for action, entry in in_force.actions
        ],
        "offences": dict(sorted(in_force.offences.items())),
    }

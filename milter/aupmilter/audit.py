"""One structured line per verdict: who sent what, and what the milter decided."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from aupmilter.policy.verdict import Verdict

log = logging.getLogger("aupmilter.verdict")


@dataclass(frozen=True, slots=True)
class Envelope:
    """What an audit line says of the transaction it is about."""

    sender: str
    auth_login: str | None
    queue_id: str | None
    recipients: int


def verdict_event(
    conn_id: str, envelope: Envelope, verdict: Verdict, stage: str
) -> dict[str, object]:
    return {
        "conn": conn_id,
        "queue_id": envelope.queue_id,
        "stage": stage,
        "tenant": verdict.tenant,
        "sender": envelope.sender,
        "auth": envelope.auth_login,
        "recipients": envelope.recipients,
        "verdict": verdict.action.value,
        "reply": f"{verdict.reply.code} {verdict.reply.status}" if verdict.reply else None,
        "reason": verdict.reason,
        "warnings": list(verdict.warnings),
    }


def record(
    conn_id: str,
    envelope: Envelope,
    verdict: Verdict,
    stage: str,
    extra: Mapping[str, object] | None = None,
) -> None:
    """`extra`: more facts for the line (e.g. the bulk/transactional class)."""
    event = verdict_event(conn_id, envelope, verdict, stage)
    if extra:
        event.update(extra)
    if log.isEnabledFor(logging.INFO):
        # JSON output flattens `event` fields into the line; text output appends it as JSON.
        log.info("verdict %s", verdict.action.value, extra={"conn": conn_id, "event": event})


def suppressed(
    conn_id: str, envelope: Envelope, tenant: str, recipient: str, stage: str = "eom"
) -> None:
    """A recipient removed from a message (eom), or refused at RCPT (suppression_check = "rcpt"),
    because it is on the tenant's suppression list."""
    event: dict[str, object] = {
        "conn": conn_id,
        "queue_id": envelope.queue_id,
        "stage": stage,
        "tenant": tenant,
        "sender": envelope.sender,
        "event": "suppressed-recipient-removed"
        if stage == "eom"
        else "suppressed-recipient-refused",
        "recipient": recipient,
    }
    log.info("recipient suppressed", extra={"conn": conn_id, "event": event})

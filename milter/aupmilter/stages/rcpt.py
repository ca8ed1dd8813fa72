"""RCPT TO: decided locally from the MAIL FROM snapshot, without Redis.

The per-message cap and the windows' room come with the gate opened at MAIL
FROM. Only when the plan or the configuration asks for unsubscribe work at
RCPT (one recipient per bulk message, or `suppression_check = "rcpt"`) does
a recipient cost more: the suppression lookup is one Redis call per new
recipient, which is why it is opt-in (end of message checks every recipient
in its one script call anyway).
"""

from __future__ import annotations

from aupmilter import replies
from aupmilter.policy.limits import recipient_key
from aupmilter.policy.tenancy import decide_store_error, unbracket
from aupmilter.policy.unsubscribe import one_recipient_per_bulk_message
from aupmilter.policy.verdict import Verdict
from aupmilter.stages.transaction import Transaction
from aupmilter.store.client import StoreUnavailable

SUPPRESSED = "suppressed"
"""The rule of a recipient refused because it is on the tenant's suppression list."""


def decide(txn: Transaction, rcpt_to: str) -> Verdict | None:
    """None accepts the recipient (and counts it); otherwise the verdict refusing this RCPT only.

    In shadow mode a refused recipient is accepted all the same (and counted); the
    verdict is still returned, for the audit trail.
    """
    recipient = unbracket(rcpt_to)
    gate = txn.gate
    if gate is None:
        txn.ungated.append(recipient)
        return None
    refusal = _unsubscribe_work(txn, recipient) if txn.unsubscribe_at_rcpt else None
    refusal = refusal or gate.refusal(recipient)
    if refusal is not None and txn.shadow:
        gate.admit(recipient)
    return refusal


def _unsubscribe_work(txn: Transaction, recipient: str) -> Verdict | None:
    """One recipient per bulk message (plan option), and suppression_check = "rcpt"."""
    gate = txn.gate
    assert gate is not None
    key = recipient_key(recipient)
    if key in gate.accepted:
        return None
    if txn.plan is not None:
        reply = one_recipient_per_bulk_message(txn.stream, txn.plan.unsubscribe, len(gate.accepted))
        if reply is not None:
            reason = "the plan sends bulk mail one recipient per message"
            return Verdict.refuse(reply, reason, gate.tenant, rule="one-recipient-per-bulk-message")
    if not txn.suppression_at_rcpt:
        return None
    runtime = txn.runtime
    try:
        suppressed = runtime.store.is_suppressed(gate.tenant, key)
    except StoreUnavailable as exc:
        fallback = decide_store_error(str(exc), runtime.sender_policy)
        return fallback if fallback.refuses else None
    if not suppressed:
        return None
    reply = replies.recipient_unsubscribed(gate.tenant)
    reason = f"{recipient} is on the suppression list of tenant {gate.tenant}"
    return Verdict.refuse(reply, reason, gate.tenant, rule=SUPPRESSED)

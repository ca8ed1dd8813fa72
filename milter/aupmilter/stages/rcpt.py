"""RCPT TO: decided locally from the MAIL FROM snapshot, without Redis.

The per-message cap and the windows' room come with the gate opened at MAIL
FROM. Only when the plan or the configuration asks for unsubscribe work at
RCPT (one recipient per bulk message, or `suppression_check = "rcpt"`) does
a recipient cost more: the suppression lookup is one Redis call per new
recipient, which is why it is opt-in (end of message checks every recipient
in its one script call anyway).
"""

from __future__ import annotations

from aupmilter import audit, replies
from aupmilter.policy.limits import recipient_key
from aupmilter.policy.tenancy import decide_store_error, unbracket
from aupmilter.policy.unsubscribe import one_recipient_per_bulk_message
from aupmilter.replies import Reply
from aupmilter.stages.transaction import Transaction
from aupmilter.store.client import StoreUnavailable


def decide(txn: Transaction, rcpt_to: str) -> Reply | None:
    """None accepts the recipient (and counts it); otherwise the reply refusing this RCPT only."""
    recipient = unbracket(rcpt_to)
    gate = txn.gate
    if gate is None:
        txn.ungated.append(recipient)
        return None
    if txn.unsubscribe_at_rcpt:
        refusal = _unsubscribe_work(txn, recipient)
        if refusal is not None:
            return refusal
    return gate.decide(recipient)


def _unsubscribe_work(txn: Transaction, recipient: str) -> Reply | None:
    """One recipient per bulk message (plan option), and suppression_check = "rcpt"."""
    gate = txn.gate
    assert gate is not None
    key = recipient_key(recipient)
    if key in gate.accepted:
        return None
    if txn.plan is not None:
        refusal = one_recipient_per_bulk_message(
            txn.stream, txn.plan.unsubscribe, len(gate.accepted)
        )
        if refusal is not None:
            return refusal
    if not txn.suppression_at_rcpt:
        return None
    runtime = txn.runtime
    try:
        suppressed = runtime.store.is_suppressed(gate.tenant, key)
    except StoreUnavailable as exc:
        return decide_store_error(str(exc), runtime.sender_policy).reply
    if not suppressed:
        return None
    audit.suppressed(txn.conn_id, txn.envelope, gate.tenant, recipient, stage="rcpt")
    return replies.recipient_unsubscribed(gate.tenant)

"""The warm-up ramp at MAIL FROM: the scale in force, and its change queued to record once.

The tenant's ramp fields come with its hash and, for a tenant in warm-up,
its rate counters with the same read (sender_state.lua): the scale costs no
round trip. A change (step, pause, resume, end) becomes a `store.warmup.Mark`
that rides the next script call, written only if the stored state is still
the one it was computed from (so a change is recorded and audited once).
"""

from __future__ import annotations

from aupmilter.policy.plans import Plan
from aupmilter.policy.warmup import Ramp, at_mail_from, review_finding
from aupmilter.stages.transaction import Transaction
from aupmilter.store.client import SenderState
from aupmilter.store.warmup import Mark


def ramp_at_mail_from(txn: Transaction, plan: Plan, state: SenderState) -> Ramp:
    """The ramp for this transaction (kept on it); a change is queued for the store."""
    now = txn.now_ms / 1000
    finding = review_finding(state.rates, plan.reputation)
    ramp, transition = at_mail_from(plan.warmup, state.record.warmup, finding, now)
    if transition is not None:
        txn.runtime.store.queue_mark(Mark(state.record.tenant_id, transition, now))
    txn.ramp = ramp
    return ramp

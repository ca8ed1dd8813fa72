"""MAIL FROM: who sends, under which plan, and with what room in the rate windows.

One Redis round trip (the sender-state script) answers the tenant, its
sender stream and the fill of every window that applies; everything after
that is decided locally. The steps run in the order of `STEPS`; the first
one whose verdict refuses ends the stage, so a forged sender domain is never
asked about in DNS, and a suspended tenant's mail still opens its gate
(quarantined mail is counted like any other).
"""

from __future__ import annotations

from collections.abc import Callable

from aupmilter import replies
from aupmilter.live_config import Runtime
from aupmilter.logs import ConnectionLog
from aupmilter.policy.ladder import decide_suspended
from aupmilter.policy.limits import open_gate, sender_identity
from aupmilter.policy.tenancy import (
    decide_sender,
    decide_store_error,
    sender_domain,
    tenant_lookup,
    unbracket,
)
from aupmilter.policy.verdict import Action, Verdict
from aupmilter.stages.listmail import list_mail_for
from aupmilter.stages.message_checks import MessageChecks, sender_for
from aupmilter.stages.transaction import Connection, Transaction
from aupmilter.stages.warmup import ramp_at_mail_from
from aupmilter.store.client import RegistryMissing, SenderState, StoreUnavailable

Step = Callable[[Transaction, Verdict], Verdict]


def begin(
    runtime: Runtime,
    connection: Connection,
    log: ConnectionLog,
    mail_from: str,
    esmtp_params: tuple[str, ...],
    *,
    auth_login: str | None,
    queue_id: str | None,
    now: float,
) -> Transaction:
    """A new transaction with the configuration in force now; nothing decided yet."""
    return Transaction(
        runtime=runtime,
        connection=connection,
        log=log,
        sender=unbracket(mail_from),
        auth_login=auth_login,
        queue_id=queue_id,
        smtputf8=any(p.upper() == "SMTPUTF8" for p in esmtp_params),
        now_ms=int(now * 1000),
    )


def decide(txn: Transaction) -> Verdict:
    """Run the MAIL FROM steps; the transaction keeps what they learnt, and the verdict."""
    verdict = Verdict.accept("no check has run")
    for _name, step in STEPS:
        decided = step(txn, verdict)
        if txn.overrules(decided):
            continue  # shadow mode: the next steps run on what passed so far
        verdict = decided
        if verdict.refuses:
            break
    txn.verdict = verdict
    return verdict


def _tenant(txn: Transaction, _passed: Verdict) -> Verdict:
    """The one Redis read: the tenant mapped to the login or the sender's domain, and its state."""
    runtime = txn.runtime
    lookup = tenant_lookup(txn.auth_login, txn.sender)
    try:
        state = runtime.store.sender_state(
            lookup,
            catalog=runtime.windows,
            sender_id=sender_identity(txn.auth_login, txn.sender),
            auth_login=txn.auth_login,
            sender=txn.sender,
            now_ms=txn.now_ms,
        )
    except RegistryMissing as exc:
        return decide_store_error(str(exc), runtime.sender_policy, rule="registry-missing")
    except StoreUnavailable as exc:
        return decide_store_error(str(exc), runtime.sender_policy)
    verdict = decide_sender(state.record if state else None, lookup, runtime.sender_policy)
    if state is None:
        return verdict
    plan = runtime.config.plans.get(state.record.plan)
    txn.shadow = state.record.shadow(plan.mode if plan is not None else "enforce")
    if verdict.refuses and not txn.shadow:
        return verdict
    taken = _take_state(txn, state, verdict)
    # In shadow mode a terminated tenant's mail still opens its gate, to be counted.
    return verdict if verdict.refuses else taken


def _take_state(txn: Transaction, state: SenderState, passed: Verdict) -> Verdict:
    """The plan is looked up here once; a plan the configuration lost meanwhile tempfails.

    A sender or sender domain the ladder suspended (policy.ladder) is quarantined
    like a suspended tenant; the read that found the tenant also found those.
    """
    record = state.record
    plan = txn.runtime.config.plans.get(record.plan)
    if plan is None:
        reason = f"tenant {record.tenant_id} has unknown plan {record.plan!r}"
        return Verdict.refuse(
            replies.ACCOUNT_MISCONFIGURED, reason, record.tenant_id, rule="tenant-misconfigured"
        )
    txn.tenant, txn.plan, txn.stream, txn.fills = record, plan, state.stream, state.fills
    txn.offences = state.offences
    ramp_at_mail_from(txn, plan, state)
    if passed.action is not Action.ACCEPT:
        return passed
    return decide_suspended(
        passed,
        record.tenant_id,
        sender_identity(txn.auth_login, txn.sender),
        sender_domain(txn.sender),
        state.suspended_sender,
        state.suspended_domain,
    )


def _windows(txn: Transaction, passed: Verdict) -> Verdict:
    """The RCPT gate: the plan's cap and windows, with the tenant's overrides, over their fill;
    the windows at the warm-up ramp's scale (stages/warmup)."""
    if txn.plan is None or txn.tenant is None:
        return passed
    opened = open_gate(
        txn.plan.limits,
        txn.tenant.overrides,
        txn.fills,
        sender=sender_identity(txn.auth_login, txn.sender),
        tenant=txn.tenant.tenant_id,
        now_ms=txn.now_ms,
        warmup_percent=txn.ramp.percent if txn.ramp is not None else 100,
    )
    if isinstance(opened, Verdict):
        return opened
    txn.gate = opened
    return passed


def _list_mail(txn: Transaction, passed: Verdict) -> Verdict:
    """What end of message does for list mail, and whether RCPT has unsubscribe work to do."""
    if txn.gate is None or txn.plan is None:
        return passed
    config = txn.runtime.config
    txn.suppression_at_rcpt = config.policy.suppression_check == "rcpt"
    txn.unsubscribe_at_rcpt = (
        txn.suppression_at_rcpt or txn.plan.unsubscribe.bulk_one_recipient_per_message
    )
    txn.listmail = list_mail_for(config, txn.gate.tenant, txn.stream, txn.plan)
    return passed


def _envelope(txn: Transaction, passed: Verdict) -> Verdict:
    """The MAIL FROM domain: the tenant's own, and able to receive bounces (DNS)."""
    runtime = txn.runtime
    plan_checks = txn.plan.checks if txn.plan is not None else None
    sender = sender_for(txn.sender, txn.tenant, plan_checks, txn.smtputf8)
    checks = MessageChecks(sender, runtime.config, runtime.resolver)
    ladder = txn.plan is not None and txn.plan.ladder.enabled  # its fingerprint needs the body
    checks.collected.keep_body = ladder or (txn.listmail is not None and txn.listmail.needs_body)
    txn.checks = checks
    return checks.at_mail_from(passed)


STEPS: tuple[tuple[str, Step], ...] = (
    ("tenant", _tenant),
    ("rate windows", _windows),
    ("list mail", _list_mail),
    ("envelope", _envelope),
)

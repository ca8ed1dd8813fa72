"""The libmilter connection object: callbacks in, verdicts out.

No policy lives here. Each callback gathers facts, asks a pure function in
`policy/` for a verdict, and turns the verdict into libmilter actions. Every
callback is guarded: an unexpected exception becomes a deliberate 451 with one
logged traceback, instead of pymilter's generic "untrapped exception".
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import Milter

from aupmilter import audit, replies
from aupmilter.config import UnsubscribePlan
from aupmilter.live_config import LiveRuntime
from aupmilter.logs import ConnectionLog
from aupmilter.mailauth.dkimsign import SigningError
from aupmilter.policy.limits import RecipientGate, open_gate, recipient_key, sender_identity
from aupmilter.policy.tenancy import (
    decide_sender,
    decide_store_error,
    tenant_lookup,
    unbracket,
)
from aupmilter.policy.unsubscribe import (
    UnsubscribeLinks,
    one_recipient_per_bulk_message,
)
from aupmilter.policy.verdict import Action, Verdict
from aupmilter.replies import Reply
from aupmilter.stages.listmail import (
    ListMail,
    ListMailOutcome,
    header_pairs,
    list_mail_for,
    message_fingerprint,
    message_id_of,
)
from aupmilter.stages.message_checks import MessageChecks, sender_for
from aupmilter.store import keys
from aupmilter.store.client import (
    AllSuppressed,
    Charged,
    NoRoom,
    ReferenceWrite,
    StoreUnavailable,
)
from aupmilter.transaction import Connection, Transaction

log = logging.getLogger("aupmilter.milter")
_connection_numbers = itertools.count(1)

F = TypeVar("F", bound=Callable[..., int])

# pymilter is untyped: name what the glue uses, with types.
CONTINUE: int = Milter.CONTINUE
REJECT: int = Milter.REJECT
TEMPFAIL: int = Milter.TEMPFAIL
noreply: Callable[[F], F] = Milter.noreply
P_HDR_LEADSPC: int = Milter.P_HDR_LEADSPC


class Lifecycle:
    """Counts open transactions so a stop can let them finish."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = 0
        self.stopping = False

    def begin(self) -> bool:
        with self._cond:
            if self.stopping:
                return False
            self._open += 1
            return True

    def end(self) -> None:
        with self._cond:
            self._open -= 1
            self._cond.notify_all()

    @property
    def open_transactions(self) -> int:
        return self._open

    def stop_and_drain(self, grace: float) -> int:
        """Refuse new transactions, wait up to `grace` seconds; return how many remain."""
        with self._cond:
            self.stopping = True
            self._cond.wait_for(lambda: self._open == 0, timeout=grace)
            return self._open


def guarded(stage: str) -> Callable[[F], F]:
    def wrap(callback: F) -> F:
        @functools.wraps(callback)
        def run(self: AupMilter, *args: Any) -> int:
            try:
                return callback(self, *args)
            except Exception:
                self.log.exception("unexpected error in %s callback; answering 451", stage)
                self._end_transaction()
                return self._refuse(replies.INTERNAL_ERROR)

        return run  # type: ignore[return-value]

    return wrap


# Header values arrive with their leading white space, so DKIM's "simple" header
# canonicalization sees the bytes that were signed. The flip side: a header the milter
# adds must bring its own leading space (`_add_header`).
@Milter.header_leading_space
class AupMilter(Milter.Base):  # type: ignore[misc]
    """One instance per MTA connection; many transactions per instance."""

    def __init__(self, live: LiveRuntime, lifecycle: Lifecycle) -> None:
        self.live = live
        self.lifecycle = lifecycle
        self.conn = Connection(conn_id=f"c{next(_connection_numbers):x}", client_name="")
        self.log = ConnectionLog(log, self.conn.conn_id)
        self.txn: Transaction | None = None
        # Collected per RCPT and frozen into the Transaction at end of message:
        # rebuilding a frozen dataclass per recipient costs ~10 us each at 100 RCPTs.
        # With a tenant's limits the gate holds them; without, this list does.
        self.recipients: list[str] = []
        self.gate: RecipientGate | None = None
        self.unsubscribe_plan: UnsubscribePlan | None = None
        # Decided at MAIL FROM: most transactions need nothing but the gate at RCPT.
        self.suppression_at_rcpt = False
        self.unsubscribe_at_rcpt = False
        self.listmail: ListMail | None = None
        self.fingerprint_recipients: int | None = None
        self.pending: Verdict | None = None
        self.clock: Callable[[], float] = time.time
        self.checks: MessageChecks | None = None
        self.mta_host: str | None = None

    # --- callbacks -----------------------------------------------------------

    @noreply
    @guarded("connect")
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        address = hostaddr[0] if isinstance(hostaddr, tuple) else None
        self.conn = Connection(
            conn_id=self.conn.conn_id,
            client_name=hostname,
            client_addr=address,
            daemon_name=self.getsymval("{daemon_name}"),
        )
        self.mta_host = self.getsymval("j") or None
        self.log.debug("connect from %s [%s]", hostname, address)
        return CONTINUE

    @guarded("envfrom")
    def envfrom(self, mail_from: str, *esmtp_params: str) -> int:
        self._end_transaction()
        txn = Transaction(
            sender=unbracket(mail_from),
            auth_login=self.getsymval("{auth_authen}") or None,
            queue_id=self.getsymval("i") or None,
        )
        if not self.lifecycle.begin():
            verdict = Verdict.refuse(replies.SHUTTING_DOWN, "milter is stopping")
            audit.record(self.conn.conn_id, txn, verdict, "mail")
            return self._refuse(replies.SHUTTING_DOWN)
        self.txn = txn
        runtime = self.live.current
        policy = runtime.sender_policy
        lookup = tenant_lookup(txn.auth_login, txn.sender)
        now_ms = int(self.clock() * 1000)
        sender_id = sender_identity(txn.auth_login, txn.sender)
        state = None
        try:
            state = runtime.store.sender_state(
                lookup,
                catalog=runtime.windows,
                sender_id=sender_id,
                auth_login=txn.auth_login,
                sender=txn.sender,
                now_ms=now_ms,
            )
        except StoreUnavailable as exc:
            verdict = decide_store_error(str(exc), policy)
        else:
            verdict = decide_sender(state.record if state else None, lookup, policy)
            if state is not None and not verdict.refuses:
                self.txn = txn = txn.with_stream(state.stream)
                plan = runtime.config.plans[state.record.fields["plan"]]
                opened = open_gate(
                    plan.limits,
                    state.record.fields,
                    state.fills,
                    sender=sender_id,
                    tenant=state.record.tenant_id,
                    now_ms=now_ms,
                )
                if isinstance(opened, Verdict):
                    verdict = opened
                else:
                    self.gate = opened
                    self.unsubscribe_plan = plan.unsubscribe
                    self.suppression_at_rcpt = runtime.config.policy.suppression_check == "rcpt"
                    self.unsubscribe_at_rcpt = (
                        self.suppression_at_rcpt or plan.unsubscribe.bulk_one_recipient_per_message
                    )
                    self.listmail = list_mail_for(runtime.config, opened.tenant, txn, plan)
        if not verdict.refuses:
            smtputf8 = any(p.upper() == "SMTPUTF8" for p in esmtp_params)
            record = state.record if state is not None else None
            sender = sender_for(txn.sender, record, runtime.config, smtputf8)
            self.checks = MessageChecks(sender, runtime.config, runtime.resolver)
            self.checks.collected.keep_body = self.listmail is not None and self.listmail.needs_body
            verdict = self.checks.at_mail_from(verdict)
        if verdict.refuses:
            audit.record(self.conn.conn_id, txn, verdict, "mail")
            self._end_transaction()
            return self._refuse(verdict.reply)
        self.pending = verdict
        return CONTINUE

    @guarded("envrcpt")
    def envrcpt(self, rcpt_to: str, *esmtp_params: str) -> int:
        if self.txn is None:
            return CONTINUE
        if self.gate is None:
            self.recipients.append(unbracket(rcpt_to))
            return CONTINUE
        recipient = unbracket(rcpt_to)
        refusal = None
        if self.unsubscribe_at_rcpt:
            refusal = self._unsubscribe_at_rcpt(self.txn, self.gate, recipient)
        refusal = refusal or self.gate.decide(recipient)
        if refusal is None:
            return CONTINUE
        # Only this RCPT is refused: the transaction and its other recipients stand.
        self.log.info("recipient %s refused: %s", rcpt_to, refusal)
        return self._reply(refusal)

    def header_bytes(self, name: str, value: bytes) -> int:
        # The raw bytes, not pymilter's decoded text: the checks look for NUL, bare CR
        # and 8-bit bytes, and DKIM needs the exact value.
        return self.header(name, value)

    @noreply
    def header(self, name: str, value: bytes) -> int:
        self._collect(lambda checks: checks.collected.add_header(name, value), "header")
        return CONTINUE

    @noreply
    def body(self, chunk: bytes) -> int:
        self._collect(lambda checks: checks.collected.add_body(chunk), "body")
        return CONTINUE

    def _collect(self, step: Callable[[MessageChecks], None], stage: str) -> None:
        """No reply is possible here (no-reply steps): a failure is answered at end of message."""
        checks = self.checks
        if checks is None or self.txn is None:
            return
        try:
            step(checks)
        except Exception:
            self.log.exception("unexpected error in %s callback; the message gets 451", stage)
            checks.close()
            self.checks = None

    @guarded("eom")
    def eom(self) -> int:
        txn, verdict, checks = self.txn, self.pending, self.checks
        if txn is None or verdict is None or checks is None:
            # MAIL FROM was never seen by this instance, or collecting failed: refuse.
            self.log.error("end of message without an open transaction; answering 451")
            self._end_transaction()
            return self._refuse(replies.INTERNAL_ERROR)
        gate = self.gate
        recipients = list(gate.accepted.values()) if gate else self.recipients
        txn = txn.with_recipients(recipients).with_queue_id(self.getsymval("i"))
        # The pure checks first: a message they refuse is not charged to the windows.
        result = checks.at_end_of_message(
            verdict, datetime.now(UTC), self.mta_host, bulk_stream=txn.stream == "bulk"
        )
        verdict = result.verdict
        listmail, collected = self.listmail, checks.collected
        headers = header_pairs(collected.fields)
        body = collected.body_bytes() if listmail is not None and listmail.needs_body else None
        if not verdict.refuses and listmail is not None and gate is not None:
            # Broken unsubscribe headers on a reject plan: refused before any charge.
            verdict = listmail.before_charge(headers, len(gate.accepted)) or verdict
        charged: Charged | None = None
        links: UnsubscribeLinks | None = None
        if not verdict.refuses and gate is not None:
            write = None
            if listmail is not None:
                message_id = message_id_of(headers, result.add_headers) or txn.queue_id
                links, write = listmail.links_for_charge(
                    headers, list(gate.accepted), message_id or self.conn.conn_id, self.clock()
                )
            verdict, charged = self._charge(txn, gate, verdict, listmail, headers, body, write)
        outcome: ListMailOutcome | None = None
        if not verdict.refuses and listmail is not None and gate is not None and charged:
            gone = set(charged.suppressed)
            remaining = [key for key in gate.accepted if key not in gone]
            outcome = listmail.after_charge(headers, remaining, self.fingerprint_recipients, links)
        extra = outcome.log_fields() if outcome is not None else None
        if verdict.refuses:
            audit.record(self.conn.conn_id, txn, verdict, "eom", extra)
            self._end_transaction()
            return self._refuse(verdict.reply)
        if outcome is not None:
            for deletion in outcome.decision.delete:
                self.chgheader(deletion.name, deletion.index, "")
        for name, value in result.add_headers:
            self._add_header(name, value)
        if outcome is not None and listmail is not None:
            for name, value in outcome.decision.add:
                self._add_header(name, value)
            self._sign(listmail, outcome, headers, result.add_headers, body, collected.complete)
        if verdict.action is Action.QUARANTINE:
            self.quarantine(f"aup-milter: {verdict.reason}")
        audit.record(self.conn.conn_id, txn, verdict, "eom", extra)
        self._end_transaction()
        return CONTINUE

    @guarded("abort")
    def abort(self) -> int:
        if self.txn is not None:
            count = len(self.gate.accepted) if self.gate else len(self.recipients)
            self.log.debug("transaction aborted after %d recipients", count)
        self._end_transaction()
        return CONTINUE

    @guarded("close")
    def close(self) -> int:
        self._end_transaction()
        return CONTINUE

    # --- helpers -------------------------------------------------------------

    def _charge(
        self,
        txn: Transaction,
        gate: RecipientGate,
        verdict: Verdict,
        listmail: ListMail | None,
        headers: list[tuple[str, str]],
        body: bytes | None,
        references: ReferenceWrite | None,
    ) -> tuple[Verdict, Charged | None]:
        """The end-of-message script: suppression, then the windows' re-check and charge.

        With list mail whose content is counted, the content fingerprint's
        recipients are counted in the same call (an uncapped window), and the
        references behind the message's unsubscribe links are stored in it too.
        """
        runtime = self.live.current
        now_ms = int(self.clock() * 1000)
        counters = []
        if listmail is not None and listmail.counts_fingerprints and body is not None:
            window = listmail.fingerprint_window()
            fingerprint = message_fingerprint(headers, body)
            key = keys.fingerprint_counter(gate.tenant, fingerprint, window.period_ms)
            counters.append((key, window))
        try:
            result = runtime.store.charge(
                gate.tenant,
                gate.limits.windows,
                gate.sender,
                list(gate.accepted),
                now_ms,
                counters=counters,
                references=references,
            )
        except StoreUnavailable as exc:
            fallback = decide_store_error(str(exc), runtime.sender_policy)
            return (fallback if fallback.refuses else verdict), None
        tenant = gate.tenant
        if isinstance(result, NoRoom):
            reply = gate.no_room_reply(result.window_index, result.fill, now_ms)
            window_name = gate.limits.windows[result.window_index].name
            return Verdict.refuse(
                reply, f"window {window_name} filled by concurrent mail", tenant
            ), None
        for key in result.suppressed:
            self.delrcpt(f"<{gate.accepted[key]}>")
            audit.suppressed(self.conn.conn_id, txn, tenant, gate.accepted[key])
        if isinstance(result, AllSuppressed):
            reply = replies.recipients_unsubscribed(tenant)
            return Verdict.refuse(reply, "every recipient has unsubscribed", tenant), None
        if counters:
            self.fingerprint_recipients = result.fills[-1]
        return verdict, result

    def _sign(
        self,
        listmail: ListMail,
        outcome: ListMailOutcome,
        headers: list[tuple[str, str]],
        added: tuple[tuple[str, str], ...],
        body: bytes | None,
        complete: bool,
    ) -> None:
        """DKIM-sign bulk mail as the MTA will deliver it; a failure is logged, not fatal."""
        if not complete:
            self.log.warning("header fields past the collection limits: the message is not signed")
            return
        try:
            signature = listmail.signature(headers, added, outcome, body)
        except SigningError as exc:
            self.log.error("DKIM signing failed, the message goes unsigned: %s", exc)
            return
        if signature is not None:
            name, value = signature
            spaced = f" {value}" if self._protocol & P_HDR_LEADSPC else value
            self.addheader(name, spaced, 0)  # idx 0: smfi_insheader at the top

    def _unsubscribe_at_rcpt(
        self, txn: Transaction, gate: RecipientGate, recipient: str
    ) -> Reply | None:
        """One recipient per bulk message (plan option), and suppression_check = "rcpt"."""
        key = recipient_key(recipient)
        if key in gate.accepted:
            return None
        runtime = self.live.current
        plan = self.unsubscribe_plan
        if plan is not None:
            refusal = one_recipient_per_bulk_message(txn.stream, plan, len(gate.accepted))
            if refusal is not None:
                return refusal
        if not self.suppression_at_rcpt:
            return None
        try:
            suppressed = runtime.store.is_suppressed(gate.tenant, key)
        except StoreUnavailable as exc:
            return decide_store_error(str(exc), runtime.sender_policy).reply
        if not suppressed:
            return None
        audit.suppressed(self.conn.conn_id, txn, gate.tenant, recipient, stage="rcpt")
        return replies.recipient_unsubscribed(gate.tenant)

    def _end_transaction(self) -> None:
        if self.checks is not None:
            self.checks.close()
            self.checks = None
        if self.txn is not None:
            self.txn = None
            self.recipients = []
            self.gate = None
            self.unsubscribe_plan = None
            self.suppression_at_rcpt = self.unsubscribe_at_rcpt = False
            self.listmail = None
            self.fingerprint_recipients = None
            self.pending = None
            self.lifecycle.end()

    def _add_header(self, name: str, value: str) -> None:
        # With leading space negotiated, the MTA inserts the value exactly as given.
        spaced = f" {value}" if self._protocol & P_HDR_LEADSPC else value
        self.addheader(name, spaced)

    def _refuse(self, reply: Reply | None) -> int:
        return self._reply(reply or replies.INTERNAL_ERROR)

    def _reply(self, reply: Reply) -> int:
        self.setreply(reply.code, reply.status, reply.text)
        return TEMPFAIL if reply.is_temporary else REJECT

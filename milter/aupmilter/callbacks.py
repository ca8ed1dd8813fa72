"""The libmilter connection object: callbacks in, stage calls, actions applied.

It decides nothing. Each callback hands what the MTA said to a stage
(`stages/mail_from`, `stages/rcpt`, `stages/end_of_message`), which returns a
verdict and the typed actions to take; this class turns the verdict into a
reply and applies the actions in one place (`_apply`). Everything about the
transaction in progress is one `Transaction`, dropped by one assignment.
Every callback is guarded: an unexpected exception becomes a deliberate 451
with one logged traceback, instead of pymilter's generic "untrapped exception".
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import Milter

from aupmilter import audit, replies
from aupmilter.live_config import LiveRuntime
from aupmilter.logs import ConnectionLog
from aupmilter.message.collect import Collected
from aupmilter.metrics import METRICS
from aupmilter.policy.actions import (
    AddHeader,
    ChangeHeader,
    DeleteRecipient,
    InsertHeader,
    MilterAction,
    Quarantine,
    ReplaceBody,
)
from aupmilter.policy.tenancy import unbracket
from aupmilter.policy.verdict import Verdict
from aupmilter.replies import Reply
from aupmilter.stages import end_of_message, mail_from, rcpt
from aupmilter.stages.transaction import Connection, Transaction

log = logging.getLogger("aupmilter.milter")
_connection_numbers = itertools.count(1)
_connection_prefix = "c"


def name_connections(prefix: str) -> None:
    """Connection ids become PREFIX + a number: a worker's (`w1-c`) differ from its siblings'."""
    global _connection_prefix
    _connection_prefix = prefix


F = TypeVar("F", bound=Callable[..., int])

# pymilter is untyped: name what the glue uses, with types.
CONTINUE: int = Milter.CONTINUE
REJECT: int = Milter.REJECT
TEMPFAIL: int = Milter.TEMPFAIL
noreply: Callable[[F], F] = Milter.noreply
P_HDR_LEADSPC: int = Milter.P_HDR_LEADSPC
BODY_CHUNK = 65_535
"""MILTER_CHUNK_SIZE: the largest body packet an MTA reads."""


class Lifecycle:
    """Counts open transactions so a stop can let them finish, and open connections."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = 0
        self._connections = 0
        self.stopping = False

    def connected(self) -> None:
        with self._cond:
            self._connections += 1

    def disconnected(self) -> None:
        with self._cond:
            self._connections -= 1

    @property
    def open_connections(self) -> int:
        return self._connections

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


timed = METRICS.callback
"""The callback's time into aup_callback_seconds (outside `guarded`: its 451 path counts too)."""


# Header values arrive with their leading white space, so DKIM's "simple" header
# canonicalization sees the bytes that were signed. The flip side: a header the milter
# adds must bring its own leading space (`_spaced`).
@Milter.header_leading_space
class AupMilter(Milter.Base):  # type: ignore[misc]
    """One instance per MTA connection; many transactions per instance."""

    def __init__(self, live: LiveRuntime, lifecycle: Lifecycle) -> None:
        self.live = live
        self.lifecycle = lifecycle
        self.conn = Connection(
            conn_id=f"{_connection_prefix}{next(_connection_numbers):x}", client_name=""
        )
        self.log = ConnectionLog(log, self.conn.conn_id)
        self.txn: Transaction | None = None
        self.counted = False
        """Counted as an open connection (connect seen), so close uncounts it once."""
        self.clock: Callable[[], float] = time.time

    @property
    def rcpt_may_wait(self) -> bool:
        """RCPT calls Redis for this transaction (`suppression_check = "rcpt"`): for `engine`,
        which then runs it off the event loop."""
        txn = self.txn
        return txn is not None and txn.suppression_at_rcpt

    # --- callbacks -----------------------------------------------------------

    @noreply
    @timed("connect")
    @guarded("connect")
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        if not self.counted:
            self.counted = True
            self.lifecycle.connected()
        address = hostaddr[0] if isinstance(hostaddr, tuple) else None
        self.conn = Connection(
            conn_id=self.conn.conn_id,
            client_name=hostname,
            client_addr=address,
            daemon_name=self.getsymval("{daemon_name}"),
            mta_host=self.getsymval("j") or None,
        )
        self.log.debug("connect from %s [%s]", hostname, address)
        return CONTINUE

    @timed("envfrom")
    @guarded("envfrom")
    def envfrom(self, sender: str, *esmtp_params: str) -> int:
        self._end_transaction()
        txn = mail_from.begin(
            self.live.current,
            self.conn,
            self.log,
            sender,
            esmtp_params,
            auth_login=self.getsymval("{auth_authen}") or None,
            queue_id=self.getsymval("i") or None,
            now=self.clock(),
        )
        if not self.lifecycle.begin():
            verdict = Verdict.refuse(replies.SHUTTING_DOWN, "milter is stopping", rule="stopping")
            self._record(txn, verdict, "mail")
            txn.close()
            return self._reply(replies.SHUTTING_DOWN)
        self.txn = txn
        verdict = mail_from.decide(txn)
        if verdict.refuses:
            self._record(txn, verdict, "mail")
            self._end_transaction()
            return self._refuse(verdict.reply)
        return CONTINUE

    @timed("envrcpt")
    @guarded("envrcpt")
    def envrcpt(self, recipient: str, *esmtp_params: str) -> int:
        txn = self.txn
        if txn is None:
            return CONTINUE
        refusal = rcpt.decide(txn, recipient)
        if refusal is None:
            return CONTINUE
        kind = (
            audit.EventKind.RECIPIENT_SUPPRESSED
            if refusal.rule == rcpt.SUPPRESSED
            else audit.EventKind.RECIPIENT_REFUSED
        )
        event = audit.verdict_event(
            self.conn.conn_id, txn.envelope, refusal, "rcpt", kind=kind, shadow=txn.shadow
        )
        event["recipient"] = unbracket(recipient)
        self.live.audit.record(event, self.clock())
        if kind == audit.EventKind.RECIPIENT_REFUSED:
            METRICS.recipient_refused(refusal.rule, str(event["verdict"]))
        elif not txn.shadow:
            METRICS.recipients_suppressed.inc()
        if txn.shadow:
            return CONTINUE
        # Only this RCPT is refused: the transaction and its other recipients stand.
        return self._reply(refusal.reply or replies.INTERNAL_ERROR)

    # pymilter's own *_bytes callbacks look up an error strategy on every call and
    # build a list per argument; these decode the same way (UTF-8, surrogate escapes),
    # once per RCPT of every message.
    def envfrom_bytes(self, sender: bytes, *esmtp_params: bytes) -> int:
        return self.envfrom(
            sender.decode("utf-8", "surrogateescape"),
            *(param.decode("utf-8", "surrogateescape") for param in esmtp_params),
        )

    def envrcpt_bytes(self, recipient: bytes, *esmtp_params: bytes) -> int:
        return self.envrcpt(
            recipient.decode("utf-8", "surrogateescape"),
            *(param.decode("utf-8", "surrogateescape") for param in esmtp_params),
        )

    def header_bytes(self, name: str, value: bytes) -> int:
        # The raw bytes, not pymilter's decoded text: the checks look for NUL, bare CR
        # and 8-bit bytes, and DKIM needs the exact value.
        return self.header(name, value)

    @noreply
    def header(self, name: str, value: bytes) -> int:
        collected = self._collecting()
        if collected is not None:
            try:
                collected.add_header(name, value)
            except Exception:
                self._collect_failed()
        return CONTINUE

    @noreply
    def body(self, chunk: bytes) -> int:
        collected = self._collecting()
        if collected is not None:
            try:
                collected.add_body(chunk)
            except Exception:
                self._collect_failed()
        return CONTINUE

    def _collecting(self) -> Collected | None:
        txn = self.txn
        return txn.checks.collected if txn is not None and txn.checks is not None else None

    def _collect_failed(self) -> None:
        """No reply is possible here (no-reply steps): a failure is answered at end of message."""
        self.log.exception("unexpected error collecting the message; the message gets 451")
        if self.txn is not None:
            self.txn.close()

    @timed("eom")
    @guarded("eom")
    def eom(self) -> int:
        txn = self.txn
        if txn is None or txn.verdict is None or txn.checks is None:
            # MAIL FROM was never seen by this instance, or collecting failed: refuse.
            self.log.error("end of message without an open transaction; answering 451")
            self._end_transaction()
            return self._refuse(replies.INTERNAL_ERROR)
        txn.queue_id = self.getsymval("i") or txn.queue_id
        now = self.clock()
        result = end_of_message.decide(txn, txn.checks, now)
        verdict = result.verdict
        self._recipient_events(
            txn, verdict, now, result.suppressed, audit.EventKind.RECIPIENT_SUPPRESSED,
            "removed", rcpt.SUPPRESSED, shadow=False,
        )  # fmt: skip
        if result.suppressed:
            METRICS.recipients_suppressed.inc(len(result.suppressed))
        removed = result.lapse_enforced and not txn.shadow
        self._recipient_events(
            txn, verdict, now, result.lapsed, audit.EventKind.RECIPIENT_LAPSED,
            "removed" if removed else "warned", end_of_message.CONSENT_LAPSED, shadow=txn.shadow,
        )  # fmt: skip
        if not verdict.refuses:
            self._apply(result.actions)
        extra: dict[str, object] = dict(result.log_fields or {})
        if result.suppressed:
            extra["suppressed"] = len(result.suppressed)
        if result.lapsed:
            extra["lapsed"] = len(result.lapsed)
        added = [a.name for a in result.actions if isinstance(a, AddHeader | InsertHeader)]
        if added and not verdict.refuses:
            extra["headers"] = added
        self._record(txn, verdict, "eom", extra, now)
        self._end_transaction()
        return self._refuse(verdict.reply) if verdict.refuses else CONTINUE

    @guarded("abort")
    def abort(self) -> int:
        if self.txn is not None:
            self.log.debug("transaction aborted after %d recipients", len(self.txn.recipients))
        self._end_transaction()
        return CONTINUE

    @guarded("close")
    def close(self) -> int:
        self._end_transaction()
        if self.counted:
            self.counted = False
            self.lifecycle.disconnected()
        return CONTINUE

    # --- recording -----------------------------------------------------------

    def _record(
        self,
        txn: Transaction,
        verdict: Verdict,
        stage: str,
        extra: dict[str, object] | None = None,
        now: float | None = None,
    ) -> None:
        """The transaction's one verdict event; in shadow mode, named after what would have been.

        Shadow mode: the verdict given is an accept; the event's verdict is the first
        refusal or quarantine the stages would have given (`would-reject`, ...), with
        every one of them listed in `shadowed`.
        """
        shown = txn.shadowed[0] if txn.shadowed else verdict
        event = audit.verdict_event(
            self.conn.conn_id,
            txn.envelope,
            shown,
            stage,
            shadow=txn.shadow and bool(txn.shadowed),
            recipients=txn.recipients[: self.live.audit.recipients_listed],
        )
        if txn.shadow:
            event["mode"] = "shadow"
        if len(txn.shadowed) > 1:
            event["shadowed"] = [
                {"verdict": audit.verdict_name(v, True), "rule": v.rule, "reason": v.reason}
                for v in txn.shadowed
            ]
        if extra:
            event.update(extra)
        self.live.audit.record(event, self.clock() if now is None else now)
        METRICS.transaction(str(event["verdict"]), shown.rule or "", shown.tenant)

    # --- applying ------------------------------------------------------------

    def _recipient_events(
        self,
        txn: Transaction,
        verdict: Verdict,
        now: float,
        recipients: Sequence[str],
        kind: str,
        outcome: str,
        rule: str,
        *,
        shadow: bool,
    ) -> None:
        """One audit event per recipient the end of message took off (at most MAX_LISTED)."""
        for recipient in recipients[: audit.MAX_LISTED]:
            event = audit.verdict_event(
                self.conn.conn_id, txn.envelope, verdict, "eom", kind=kind, shadow=shadow
            )
            event.update(recipient=recipient, verdict=outcome, rule=rule)
            self.live.audit.record(event, now)

    def _apply(self, actions: Iterable[MilterAction]) -> None:
        """The one place where the milter changes the message, in the stage's order."""
        for action in actions:
            match action:
                case DeleteRecipient(address):
                    self.delrcpt(f"<{address}>")
                case ChangeHeader(name, index, value):
                    self.chgheader(name, index, value)
                case AddHeader(name, value):
                    self.addheader(name, self._spaced(value))
                case InsertHeader(name, value, index):
                    self.addheader(name, self._spaced(value), index)
                case Quarantine(reason):
                    self.quarantine(reason)
                case ReplaceBody(body):
                    # libmilter sends what it is given as one SMFIR_REPLBODY packet:
                    # the MTA takes at most 64 KiB per packet.
                    for start in range(0, len(body), BODY_CHUNK):
                        self.replacebody(body[start : start + BODY_CHUNK])

    def _spaced(self, value: str) -> str:
        # With leading space negotiated, the MTA inserts the value exactly as given.
        return f" {value}" if self._protocol & P_HDR_LEADSPC else value

    def _end_transaction(self) -> None:
        txn, self.txn = self.txn, None
        if txn is not None:
            txn.close()
            self.lifecycle.end()

    def _refuse(self, reply: Reply | None) -> int:
        return self._reply(reply or replies.INTERNAL_ERROR)

    def _reply(self, reply: Reply) -> int:
        self.setreply(reply.code, reply.status, reply.text)
        return TEMPFAIL if reply.is_temporary else REJECT

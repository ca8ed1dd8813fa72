"""A bounded stream of numbered messages through the relay while something breaks.

The fault tests (tests/faults/) ask one question: with Redis, the milter or
DNS failing in the middle of real traffic, does every message end up either
delivered exactly once or refused 5xx by a deliberate policy, and does
nothing slip past the policy? :class:`FaultStream` answers it the way the
world would see it:

* it sends ``count`` numbered messages through the relay's SMTP port,
  authenticated as a tenant (like ``tests/e2e/conftest.py``'s ``connect``),
  paced at ``interval`` seconds, one connection per attempt, up to
  ``concurrency`` sessions at once;
* it behaves like a sending MTA: a 4xx reply, a dropped or refused
  connection or a timeout defers the copies concerned, which are tried again
  after an exponential backoff (:class:`RetryPolicy`: bounded in attempts and
  in time); a recipient refused 4xx at RCPT is retried on its own while the
  ones accepted in the same transaction are done, as an MTA does;
* a 5xx reply refuses the copies concerned for good;
* :class:`Fault` hooks run at message k or at second t of the stream, each
  in a thread of its own, so the stream keeps flowing during the fault (an
  action may kill Redis, sleep, and start it again);
* at the end it waits (bounded) for the sink and correlates by the
  ``X-Faultstream-Id`` header each message carries.

The unit of every count is a *copy*: one message to one recipient (the
default messages have one recipient each, so copies are messages). Counts
(:class:`StreamTally`):

``sent``        copies offered (``count`` x recipients per message)
``delivered``   copies that reached the sink at least once
``retried``     copies that needed more than one attempt
``refused``     copies answered 5xx (``refusals`` lists each with its reply)
``lost``        copies neither delivered nor refused: gave up after the retry
                budget, or accepted with 250 and never seen at the sink.
                Copies of a ``must_not_deliver`` message that were accepted
                and then withheld (recipient removed, message held) are
                ``withheld``, not lost.
``duplicates``  copies the sink received more than once (an SMTP client that
                lost the 250 after DATA retries; RFC 1047)
``bypassed``    copies of a ``must_not_deliver`` message that reached the sink:
                the policy was skipped
``ok``          lost == duplicates == bypassed == 0

Bounds: at most ``count`` x ``RetryPolicy.max_attempts`` SMTP sessions,
at most ``concurrency`` (<= 32) at once, each bounded by ``smtp_timeout``;
the whole run by ``max_seconds`` plus ``settle_timeout``; fault threads
are joined for at most ``fault_join_timeout``.

Use (a pytest test with the e2e ``stack`` fixture)::

    stream = FaultStream(stack, "acme", "acme-demo", count=120, interval=0.05,
                         faults=[Fault(kill_and_restart_redis, at_message=30)])
    tally = stream.run()
    print(tally.summary())
    assert tally.ok and tally.unexpected_refusals == [], tally.report()

Or by hand against ``make demo``::

    python -m testbed.faultstream --port 2525 --mail-dir run/demo/mail \\
        --login acme --password acme-demo --count 300 --interval 0.01
"""

from __future__ import annotations

import argparse
import heapq
import smtplib
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Literal, Protocol

from testbed.client import TOKEN_HEADER, Reply, SmtpClient
from testbed.parts.sinkservice import SinkMessage, read_sink_message

STREAM_HEADER = "X-Faultstream-Id"

CopyState = Literal["pending", "accepted", "refused", "gave-up"]


class Relay(Protocol):
    """What the stream needs of a stack: where to send, and what the sink got.

    ``testbed.Stack`` is one; :class:`SinkFolder` is one for a running ``make demo``.
    """

    @property
    def host(self) -> str: ...

    @property
    def smtp_port(self) -> int: ...

    def sink_messages(self) -> list[SinkMessage]: ...


@dataclass(frozen=True)
class SinkFolder:
    """A relay given by its SMTP address and its sink's mail folder (make demo: run/demo/mail)."""

    host: str
    smtp_port: int
    mail_dir: Path

    def sink_messages(self) -> list[SinkMessage]:
        return [read_sink_message(path) for path in sorted(self.mail_dir.glob("*.eml"))]


@dataclass(frozen=True)
class MessageSpec:
    """What message number ``seq`` is: its envelope, its content, what the policy must do.

    ``must_not_deliver``: the policy must stop it (over a limit, to a
    suppressed address, ...); reaching the sink counts as ``bypassed``.
    ``headers`` are added as given (From:, To:, Subject:, Date: and
    Message-ID: are made unless given here).
    """

    sender: str
    recipients: tuple[str, ...]
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    must_not_deliver: bool = False


MessageFactory = Callable[[int], MessageSpec]


def numbered_messages(sender: str, recipient: str = "stream-{seq}@example.net") -> MessageFactory:
    """One recipient per message (``recipient`` formatted with ``seq``), each body distinct."""

    def make(seq: int) -> MessageSpec:
        return MessageSpec(
            sender=sender,
            recipients=(recipient.format(seq=seq),),
            body=f"Fault stream message number {seq}.\n",
        )

    return make


@dataclass(frozen=True)
class Fault:
    """``action`` run once, in a thread of its own, at message ``at_message`` (0-based:
    just before its first attempt) or ``at_seconds`` after the stream started.

    Exactly one of the two is given. An exception in ``action`` fails the run
    (:class:`FaultStreamError`): a fault that did not happen proves nothing.
    """

    action: Callable[[], object]
    at_message: int | None = None
    at_seconds: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if (self.at_message is None) == (self.at_seconds is None):
            raise ValueError("a Fault needs exactly one of at_message and at_seconds")

    @property
    def label(self) -> str:
        when = (
            f"message {self.at_message}" if self.at_message is not None else f"{self.at_seconds}s"
        )
        return f"{self.name or getattr(self.action, '__name__', 'fault')} at {when}"


@dataclass(frozen=True)
class RetryPolicy:
    """How the stream retries a deferred copy, like an MTA's queue manager (but in seconds).

    Attempt n (n >= 2) waits ``first_delay * 2**(n-2)`` seconds, at most
    ``max_delay``; a copy gives up after ``max_attempts`` attempts or once
    ``give_up_after`` seconds passed since its first attempt.
    """

    max_attempts: int = 12
    first_delay: float = 0.5
    max_delay: float = 4.0
    give_up_after: float = 90.0

    def delay(self, attempts_made: int) -> float:
        return min(self.max_delay, self.first_delay * 2.0 ** max(0, attempts_made - 1))


@dataclass(frozen=True)
class Attempt:
    """One SMTP session of the stream: which message, when, how long, how it ended."""

    seq: int
    started: float  # seconds since the stream started
    seconds: float
    replies: tuple[Reply, ...]
    error: str = ""

    @property
    def last(self) -> str:
        return self.error or (str(self.replies[-1]) if self.replies else "")


@dataclass
class Copy:
    """One message to one recipient: the unit every count is made of."""

    seq: int
    recipient: str
    must_not_deliver: bool
    state: CopyState = "pending"
    attempts: int = 0
    final: Reply | None = None
    last_error: str = ""
    deliveries: int = 0


@dataclass
class StreamTally:
    """The outcome of a run; see the module docstring for what each count means."""

    run_id: str
    copies: list[Copy]
    attempts: list[Attempt]
    seconds: float
    fault_log: list[str] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.copies)

    @property
    def delivered(self) -> int:
        return sum(1 for c in self.copies if c.deliveries > 0)

    @property
    def retried(self) -> int:
        return sum(1 for c in self.copies if c.attempts > 1)

    @property
    def refused(self) -> int:
        return sum(1 for c in self.copies if c.state == "refused")

    @property
    def lost_copies(self) -> list[Copy]:
        return [
            c
            for c in self.copies
            if c.deliveries == 0
            and c.state != "refused"
            and not (c.must_not_deliver and c.state == "accepted")
        ]

    @property
    def lost(self) -> int:
        return len(self.lost_copies)

    @property
    def withheld(self) -> int:
        return sum(
            1
            for c in self.copies
            if c.must_not_deliver and c.state == "accepted" and not c.deliveries
        )

    @property
    def duplicates(self) -> int:
        return sum(1 for c in self.copies if c.deliveries > 1)

    @property
    def bypassed(self) -> int:
        return sum(1 for c in self.copies if c.must_not_deliver and c.deliveries > 0)

    @property
    def gave_up(self) -> int:
        return sum(1 for c in self.copies if c.state == "gave-up")

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicates == 0 and self.bypassed == 0

    @property
    def refusals(self) -> list[tuple[int, str, Reply]]:
        """(seq, recipient, reply) of every copy refused 5xx."""
        return [
            (c.seq, c.recipient, c.final)
            for c in self.copies
            if c.state == "refused" and c.final is not None
        ]

    @property
    def unexpected_refusals(self) -> list[tuple[int, str, Reply]]:
        """Refusals of copies the policy had no reason to refuse (a 5xx during a fault)."""
        flagged = {(c.seq, c.recipient) for c in self.copies if c.must_not_deliver}
        return [r for r in self.refusals if (r[0], r[1]) not in flagged]

    @property
    def max_attempt_seconds(self) -> float:
        """The longest SMTP session: a hung transaction shows here."""
        return max((a.seconds for a in self.attempts), default=0.0)

    def reply_counts(self) -> Counter[str]:
        """How often each reply (code and enhanced code) or error ended an attempt."""
        counts: Counter[str] = Counter()
        for attempt in self.attempts:
            if attempt.error:
                counts[attempt.error.split(":")[0]] += 1
            for reply in attempt.replies:
                if reply.code >= 400:
                    counts[f"{reply.code} {reply.enhanced or ''}".strip()] += 1
        return counts

    def summary(self) -> str:
        """The one line each fault test prints."""
        return (
            f"sent={self.sent} delivered={self.delivered} retried={self.retried} "
            f"refused={self.refused} lost={self.lost} duplicates={self.duplicates} "
            f"bypassed={self.bypassed} withheld={self.withheld} "
            f"attempts={len(self.attempts)} max_attempt={self.max_attempt_seconds:.2f}s "
            f"in {self.seconds:.1f}s"
        )

    def report(self) -> str:
        """The summary plus what went wrong, for an assertion message."""
        lines = [self.summary(), f"faults: {'; '.join(self.fault_log) or 'none'}"]
        lines.append(f"deferrals/refusals seen: {dict(self.reply_counts())}")
        for copy in self.lost_copies[:20]:
            lines.append(
                f"lost: #{copy.seq} <{copy.recipient}> state={copy.state} "
                f"attempts={copy.attempts} last={copy.final or copy.last_error}"
            )
        for seq, recipient, reply in self.unexpected_refusals[:20]:
            lines.append(f"refused: #{seq} <{recipient}> {reply}")
        for copy in self.copies:
            if copy.deliveries > 1 or (copy.must_not_deliver and copy.deliveries):
                lines.append(f"delivered {copy.deliveries}x: #{copy.seq} <{copy.recipient}>")
        return "\n".join(lines)


class FaultStreamError(RuntimeError):
    """A fault action failed, or the stream could not run at all."""


@dataclass
class _Pending:
    seq: int
    spec: MessageSpec
    payload: bytes
    first_attempt: float | None = None


class FaultStream:
    """Send ``count`` numbered messages through ``relay`` as ``login``, inject ``faults``, tally.

    ``factory`` says what message ``seq`` is (default: :func:`numbered_messages`
    from ``sender``, one recipient each). ``interval`` paces first attempts
    (message k is due at k x interval); retries come in between as they fall
    due. ``concurrency`` sessions run at once (an MTA's parallel deliveries:
    a fault then meets several transactions in flight, at every stage).
    ``smtp_timeout`` bounds each socket operation of a session: keep it
    above Postfix's milter timeouts, so the relay's own answer is what is seen.
    ``max_seconds`` bounds the sending phase; copies still pending then give up.
    ``settle_timeout`` bounds the wait for the sink.
    """

    def __init__(
        self,
        relay: Relay,
        login: str,
        password: str,
        *,
        count: int,
        interval: float = 0.05,
        concurrency: int = 1,
        sender: str | None = None,
        factory: MessageFactory | None = None,
        faults: Sequence[Fault] = (),
        retry: RetryPolicy | None = None,
        smtp_timeout: float = 60.0,
        max_seconds: float = 300.0,
        settle_timeout: float = 60.0,
        fault_join_timeout: float = 60.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        if not 1 <= concurrency <= 32:
            raise ValueError("concurrency must be from 1 to 32")
        self.relay = relay
        self.login, self.password = login, password
        self.count = count
        self.interval = interval
        self.concurrency = concurrency
        if factory is None:
            factory = numbered_messages(sender or f"stream@{login}.example")
        self.factory = factory
        self.faults = list(faults)
        self.retry = retry or RetryPolicy()
        self.smtp_timeout = smtp_timeout
        self.max_seconds = max_seconds
        self.settle_timeout = settle_timeout
        self.fault_join_timeout = fault_join_timeout
        self.log = log or (lambda line: None)
        self.run_id = uuid.uuid4().hex[:12]
        self._t0 = 0.0
        self._fault_threads: list[threading.Thread] = []
        self._fault_errors: list[str] = []
        self._fault_log: list[str] = []
        self._fault_lock = threading.Lock()

    # ---- the messages --------------------------------------------------------

    def stream_id(self, seq: int) -> str:
        return f"{self.run_id}.{seq}"

    def render(self, seq: int, spec: MessageSpec) -> bytes:
        message = EmailMessage()
        given = {name.lower() for name, _ in spec.headers}
        defaults = (
            ("From", spec.sender),
            ("To", ", ".join(spec.recipients)),
            ("Subject", f"fault stream {self.run_id} message {seq}"),
            ("Date", formatdate(localtime=True)),
            ("Message-ID", f"<{self.run_id}.{seq}@faultstream.testbed.invalid>"),
        )
        for name, value in defaults:
            if name.lower() not in given:
                message[name] = value
        for name, value in spec.headers:
            message[name] = value
        message[STREAM_HEADER] = self.stream_id(seq)
        message[TOKEN_HEADER] = self.stream_id(seq)
        message.set_content(spec.body or f"Fault stream message number {seq}.\n")
        return message.as_bytes()

    # ---- faults ----------------------------------------------------------------

    def _now(self) -> float:
        return time.monotonic() - self._t0

    def _fire(self, fault: Fault, delay: float = 0.0) -> None:
        def run() -> None:
            if delay > 0:
                time.sleep(delay)
            started = self._now()
            try:
                fault.action()
            except BaseException:  # reported, then the run fails
                with self._fault_lock:
                    self._fault_errors.append(f"{fault.label}: {traceback.format_exc()}")
            with self._fault_lock:
                self._fault_log.append(f"{fault.label}: ran {started:.2f}s-{self._now():.2f}s")
            self.log(f"fault {fault.label} done at {self._now():.2f}s")

        thread = threading.Thread(target=run, name=f"fault {fault.label}", daemon=True)
        self._fault_threads.append(thread)
        thread.start()

    # ---- one SMTP session ------------------------------------------------------

    def _attempt(self, item: _Pending, copies: list[Copy]) -> Attempt:
        """One session for the still pending ``copies`` of ``item``; updates their state."""
        started = self._now()
        replies: list[Reply] = []
        error = ""
        spec = item.spec
        for copy in copies:
            copy.attempts += 1
        # Copies in flight: whatever is not decided below stays deferred.
        deferred = {copy.recipient: copy for copy in copies}
        try:
            with SmtpClient(
                self.relay.host, self.relay.smtp_port, timeout=self.smtp_timeout
            ) as client:
                auth = client.login(self.login, self.password)
                replies.append(auth)
                if auth.code != 235:
                    self._decide(deferred, list(deferred), auth)
                else:
                    self._transaction(client, spec, item.payload, deferred, replies)
        except (OSError, smtplib.SMTPException) as exc:
            error = f"{type(exc).__name__}: {exc}"
            for copy in deferred.values():
                copy.last_error = error
        return Attempt(item.seq, started, self._now() - started, tuple(replies), error)

    def _transaction(
        self,
        client: SmtpClient,
        spec: MessageSpec,
        payload: bytes,
        deferred: dict[str, Copy],
        replies: list[Reply],
    ) -> None:
        mail = client.mail(spec.sender)
        replies.append(mail)
        if mail.code != 250:
            self._decide(deferred, list(deferred), mail)
            client.rset()
            return
        accepted: list[str] = []
        for recipient in list(deferred):
            reply = client.rcpt(recipient)
            replies.append(reply)
            if reply.code in (250, 251):
                accepted.append(recipient)
            else:
                self._decide(deferred, [recipient], reply)
        if not accepted:
            client.rset()
            return
        data = client.data(payload)
        replies.append(data)
        self._decide(deferred, accepted, data)
        if data.code != 250:
            client.rset()

    @staticmethod
    def _decide(deferred: dict[str, Copy], recipients: list[str], reply: Reply) -> None:
        """2xx: accepted; 5xx: refused; 4xx (or anything else): stays deferred."""
        for recipient in recipients:
            copy = deferred[recipient]
            copy.final = reply
            if 200 <= reply.code < 300:
                copy.state = "accepted"
                del deferred[recipient]
            elif 500 <= reply.code < 600:
                copy.state = "refused"
                del deferred[recipient]

    # ---- the run ---------------------------------------------------------------

    def run(self) -> StreamTally:
        """Send, retry, inject, wait for the sink; the tally (raises if a fault action failed)."""
        self._t0 = time.monotonic()
        items = [self._item(seq) for seq in range(self.count)]
        copies = {
            seq: [Copy(seq, r, item.spec.must_not_deliver) for r in item.spec.recipients]
            for seq, item in enumerate(items)
        }
        for fault in self.faults:
            if fault.at_seconds is not None:
                self._fire(fault, delay=fault.at_seconds)
        by_message = {f.at_message: f for f in self.faults if f.at_message is not None}
        due: list[tuple[float, int]] = [(seq * self.interval, seq) for seq in range(self.count)]
        heapq.heapify(due)
        attempts: list[Attempt] = []
        ready = threading.Condition()
        in_flight = 0

        def step(seq: int) -> float | None:
            """One attempt of message ``seq``; when it is due again, or None when it is done."""
            item = items[seq]
            pending = [c for c in copies[seq] if c.state == "pending"]
            if item.first_attempt is None:
                item.first_attempt = self._now()
                fault = by_message.get(seq)
                if fault is not None:
                    self._fire(fault)
            if self._now() > self.max_seconds or (
                self._now() - item.first_attempt > self.retry.give_up_after
            ):
                self._give_up(pending)
                return None
            attempt = self._attempt(item, pending)
            attempts.append(attempt)
            if attempt.error or any(r.code >= 400 for r in attempt.replies):
                self.log(f"#{seq} attempt {pending[0].attempts}: {attempt.last}")
            still = [c for c in pending if c.state == "pending"]
            if not still:
                return None
            if still[0].attempts >= self.retry.max_attempts:
                self._give_up(still)
                return None
            return self._now() + self.retry.delay(still[0].attempts)

        def sender() -> None:
            # A message is in the heap or in flight, never both: one sender at a time owns it.
            nonlocal in_flight
            while True:
                with ready:
                    while True:
                        if not due and in_flight == 0:
                            ready.notify_all()
                            return
                        if due and due[0][0] <= self._now():
                            seq = heapq.heappop(due)[1]
                            in_flight += 1
                            break
                        ready.wait(due[0][0] - self._now() if due else None)
                again: float | None = None
                try:
                    again = step(seq)
                finally:
                    with ready:
                        in_flight -= 1
                        if again is not None:
                            heapq.heappush(due, (again, seq))
                        ready.notify_all()

        senders = [
            threading.Thread(target=sender, name=f"faultstream sender {n}", daemon=True)
            for n in range(self.concurrency)
        ]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join()
        self._join_faults()
        all_copies = [c for seq in range(self.count) for c in copies[seq]]
        self._settle(all_copies)
        tally = StreamTally(
            self.run_id,
            sorted(all_copies, key=lambda c: c.seq),
            sorted(attempts, key=lambda a: a.started),
            self._now(),
            fault_log=list(self._fault_log),
        )
        if self._fault_errors:
            raise FaultStreamError(
                "a fault action failed:\n" + "\n".join(self._fault_errors) + "\n" + tally.report()
            )
        return tally

    def _item(self, seq: int) -> _Pending:
        spec = self.factory(seq)
        if not spec.recipients:
            raise ValueError(f"message {seq} has no recipients")
        return _Pending(seq, spec, self.render(seq, spec))

    @staticmethod
    def _give_up(copies: list[Copy]) -> None:
        for copy in copies:
            if copy.state == "pending":
                copy.state = "gave-up"

    def _join_faults(self) -> None:
        deadline = time.monotonic() + self.fault_join_timeout
        for thread in self._fault_threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self._fault_errors.append(f"{thread.name}: still running after the stream")

    def _count_deliveries(self, copies: list[Copy]) -> None:
        index = {(c.seq, c.recipient.lower()): c for c in copies}
        for copy in copies:
            copy.deliveries = 0
        prefix = f"{self.run_id}."
        for message in self.relay.sink_messages():
            stream_id = str(message.message.get(STREAM_HEADER, ""))
            if not stream_id.startswith(prefix):
                continue
            seq = int(stream_id[len(prefix) :])
            for recipient in message.rcpt_to:
                delivered = index.get((seq, recipient.lower()))
                if delivered is not None:
                    delivered.deliveries += 1

    def _settle(self, copies: list[Copy]) -> None:
        """Wait until every accepted copy the policy lets through reached the sink (bounded),
        then a little longer, so late duplicates and bypasses are counted too."""
        expected = [c for c in copies if c.state == "accepted" and not c.must_not_deliver]
        deadline = time.monotonic() + self.settle_timeout
        while True:
            self._count_deliveries(copies)
            if all(c.deliveries for c in expected) or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        time.sleep(1.0)
        self._count_deliveries(copies)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.faultstream",
        description="Send a numbered stream through a running relay (make demo) and tally it.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="the relay's SMTP port")
    parser.add_argument("--mail-dir", type=Path, required=True, help="the sink's mail folder")
    parser.add_argument("--login", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--sender", help="envelope sender (default: stream@LOGIN.example)")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.05)
    args = parser.parse_args(argv)
    stream = FaultStream(
        SinkFolder(args.host, args.port, args.mail_dir),
        args.login,
        args.password,
        count=args.count,
        interval=args.interval,
        sender=args.sender,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    tally = stream.run()
    print(tally.report())
    return 0 if tally.ok else 1


if __name__ == "__main__":
    sys.exit(main())

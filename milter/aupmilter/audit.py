"""The audit trail: one event per decision, as a log line and as an entry of the audit stream.

Every verdict (accept, reject, tempfail, quarantine; `would-...` in shadow
mode), every refused or suppressed recipient and every automatic action is
one event. The same event is written twice:

- at once, as one log line of the `aupmilter.verdict` logger (JSON output
  puts the fields flat in the line; text output appends them as JSON);
- to the audit stream in Redis (store.keys.AUDIT_STREAM), for
  `aup-milter log` and `aup-milter explain`, with flat string fields (lists
  and objects as JSON text; `ts` in Unix seconds).

The stream write adds no round trip of its own: events wait in the process's
`AuditTrail` and ride on the next Redis call the milter makes anyway (the
MAIL FROM read or the end-of-message charge of any transaction), pipelined
in front of it. When no transaction comes, the daemon's flusher writes what
waits after at most `FLUSH_AFTER` seconds, in one pipelined call. So under
load there are still exactly two round trips per transaction, and when idle
at most one more per `FLUSH_AFTER` seconds, whatever the number of events.

Bounds: at most `MAX_PENDING` events wait (when Redis is down for long, the
oldest are dropped from the stream, counted and logged; their log lines
stay); a verdict lists at most `[audit] recipients_listed` recipients (default
10, at most `MAX_LISTED`; the count is always complete) and at most
`MAX_LISTED` suppressed ones (and as many lapsed ones) get an event each; at
most `MAX_PER_RIDE` events ride on one call.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aupmilter.policy.verdict import Action, Verdict

log = logging.getLogger("aupmilter.verdict")
"""Verdict events: exactly one line per transaction (tests and log readers count on it)."""
events_log = logging.getLogger("aupmilter.audit")
"""Every other event (refused and suppressed recipients, automatic actions)."""

MAX_PENDING = 20_000
MAX_PER_RIDE = 500
MAX_LISTED = 50
FLUSH_AFTER = 1.0
"""Seconds an event may wait for a ride before the flusher writes it."""
MIN_RETENTION_DAYS = 7

StreamFields = dict[str, str]


class EventKind:
    """The `event` field: what the entry is about."""

    VERDICT = "verdict"
    RECIPIENT_REFUSED = "recipient-refused"
    RECIPIENT_SUPPRESSED = "recipient-suppressed"
    RECIPIENT_LAPSED = "recipient-lapsed"
    """A bulk recipient whose consent lapsed (policy.consent): removed, or only warned."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """What an audit event says of the transaction it is about."""

    sender: str
    auth_login: str | None
    queue_id: str | None
    recipients: int


def verdict_name(verdict: Verdict, shadow: bool = False) -> str:
    """accept | reject | tempfail | quarantine; `would-` in front when shadow mode let it pass."""
    name = verdict.action.value
    if shadow and verdict.action is not Action.ACCEPT:
        return f"would-{name}"
    return name


def verdict_event(
    conn_id: str,
    envelope: Envelope,
    verdict: Verdict,
    stage: str,
    *,
    kind: str = EventKind.VERDICT,
    shadow: bool = False,
    recipients: Sequence[str] = (),
) -> dict[str, object]:
    """The event as typed values (the log line's form); `recipients` as the caller cut them."""
    event: dict[str, object] = {
        "event": kind,
        "conn": conn_id,
        "queue_id": envelope.queue_id,
        "stage": stage,
        "tenant": verdict.tenant,
        "sender": envelope.sender,
        "auth": envelope.auth_login,
        "recipients": envelope.recipients,
        "verdict": verdict_name(verdict, shadow),
        "mode": "shadow" if shadow else "enforce",
        "reply": str(verdict.reply) if verdict.reply else None,
        "rule": verdict.rule or None,
        "reason": verdict.reason,
        "warnings": list(verdict.warnings),
    }
    if recipients:
        event["rcpt"] = list(recipients)
    if verdict.evidence:
        event["evidence"] = dict(verdict.evidence)
    return event


_SORTED_JSON = json.JSONEncoder(default=str, ensure_ascii=False, sort_keys=True)
"""json.dumps(..., default=str, ensure_ascii=False, sort_keys=True), built once."""


def stream_fields(event: Mapping[str, object], now: float) -> StreamFields:
    """The stream's form of an event: strings only, lists and objects as JSON, no empty values.

    The exact types an event holds (str, None, int, float, bool, list, dict) take a
    shortcut on `type(value)`; anything else (subclasses, tuples, other objects) the
    general rules below them, so the output is the same.
    """
    fields: StreamFields = {"ts": f"{now:.3f}"}
    for key, value in event.items():
        kind = type(value)
        if kind is str:
            fields[key] = value  # type: ignore[assignment]
        elif value is None:
            continue
        elif kind is int or kind is float:
            fields[key] = str(value)
        elif kind is bool:
            fields[key] = "1" if value else "0"
        elif kind is list or kind is dict:
            if value:
                fields[key] = _SORTED_JSON.encode(value)
        elif value == [] or value == {}:
            continue
        elif isinstance(value, str):
            fields[key] = value
        elif isinstance(value, bool):
            fields[key] = "1" if value else "0"
        elif isinstance(value, int | float):
            fields[key] = str(value)
        else:
            fields[key] = _SORTED_JSON.encode(value)
    return fields


def event_time(entry_id: str, fields: Mapping[str, str]) -> float:
    """When a stream entry happened: its `ts` when that reads as a number, else its id's time."""
    try:
        return float(fields["ts"])
    except (KeyError, ValueError):
        pass
    try:
        return int(entry_id.split("-", 1)[0]) / 1000
    except ValueError:
        return 0.0


_SOURCE = __file__
"""The record's pathname (findCaller would give this file's code's file name: the same)."""


class AuditTrail:
    """Events waiting for a ride to the audit stream; one per process, shared by every thread.

    `retention_seconds`: the stream keeps entries younger than this (trimmed by MINID as
    entries are added; never less than MIN_RETENTION_DAYS).
    """

    def __init__(
        self, retention_seconds: float, clock: Any = time.time, recipients_listed: int = 10
    ) -> None:
        if retention_seconds < MIN_RETENTION_DAYS * 86_400:
            raise ValueError(f"audit retention must be at least {MIN_RETENTION_DAYS} days")
        self.retention_seconds = retention_seconds
        self.recipients_listed = recipients_listed
        """How many recipients a verdict event names (all are counted)."""
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: deque[tuple[float, StreamFields]] = deque()
        self.dropped = 0
        self.written = 0

    def record(self, event: Mapping[str, object], now: float | None = None) -> None:
        """Log the event now and queue it for the stream."""
        when = self._clock() if now is None else now
        kind = event.get("event")
        logger = log if kind == EventKind.VERDICT else events_log
        if logger.isEnabledFor(logging.INFO):
            subject = event.get("verdict") if kind == EventKind.VERDICT else event.get("recipient")
            # logger.info(...) but for its walk up the stack to find the caller: the record
            # names this function (where that walk would stop) by its first line.
            logger.handle(
                logger.makeRecord(
                    logger.name,
                    logging.INFO,
                    _SOURCE,
                    _RECORD_LINE,
                    "%s %s",
                    (kind, subject or ""),
                    None,
                    "record",
                    {"conn": event.get("conn"), "event": dict(event)},
                )
            )
        self.add(stream_fields(event, when), when)

    def add(self, fields: StreamFields, now: float) -> None:
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                self._pending.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.error(
                        "audit trail: %d events dropped from the stream so far"
                        " (Redis unreachable for long); their log lines are kept",
                        self.dropped,
                    )
            self._pending.append((now, fields))

    def take(self, limit: int = MAX_PER_RIDE) -> list[tuple[float, StreamFields]]:
        """Up to `limit` waiting events, oldest first; give them back if the write fails."""
        if not self._pending:
            return []
        with self._lock:
            count = min(limit, len(self._pending))
            return [self._pending.popleft() for _ in range(count)]

    def give_back(self, events: Iterable[tuple[float, StreamFields]]) -> None:
        with self._lock:
            self._pending.extendleft(reversed(list(events)))
            while len(self._pending) > MAX_PENDING:
                self._pending.popleft()
                self.dropped += 1

    def waiting_since(self) -> float | None:
        """When the oldest waiting event was recorded; None when nothing waits."""
        with self._lock:
            return self._pending[0][0] if self._pending else None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def oldest_kept_ms(self, now: float) -> int:
        """The MINID: entries with an older id may be trimmed."""
        return max(0, int((now - self.retention_seconds) * 1000))

    def now(self) -> float:
        return float(self._clock())


_RECORD_LINE = AuditTrail.record.__code__.co_firstlineno

"""Logging to stderr (the journal under systemd) as JSON lines or plain text.

Every line about an SMTP connection carries its connection id, so one
connection's story can be pulled out of a busy log with one grep.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import deque
from collections.abc import MutableMapping
from typing import Any, TextIO

from aupmilter.config import LogSettings

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_LATE = frozenset({"message", "asctime"})
"""Reserved attributes that formatters add to a record after its `extra=` ones."""
_OWN = _RESERVED - _LATE
"""What LogRecord.__init__ sets, before makeRecord adds the `extra=` attributes."""

_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)
"""json.dumps(..., default=str, ensure_ascii=False), without building an encoder per line."""


def record_extras(record: logging.LogRecord) -> list[str]:
    """The names of the record's `extra=` attributes, in the order they were added.

    Walked from the end of the record's attribute dict: makeRecord adds the extras after
    LogRecord.__init__'s own attributes (dicts keep insertion order), so the walk stops at
    the first of those instead of visiting all ~20; attributes that formatters add later
    still (message, asctime) and private ones are skipped, as before.
    """
    found: list[str] = []
    for key in reversed(record.__dict__):
        if key in _OWN:
            break
        if key not in _LATE and not key.startswith("_"):
            found.append(key)
    found.reverse()
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, then the extras (an `event`
    dict's fields flat), then `exc`.

    Per line it costs one json encoding and no time formatting but the milliseconds
    (the date and time to the second are kept from the previous line while it lasts).
    """

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")

    def timestamp(self, record: logging.LogRecord) -> str:
        """`YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC) of the record's creation."""
        second = int(record.created)
        cached = self._second  # one tuple: read and replaced whole, safe across threads
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)))
            self._second = cached
        return f"{cached[1]}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self.timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = record.__dict__
        for key in record_extras(record):
            value = fields[key]
            if key == "event" and isinstance(value, dict):
                line.update(value)
            else:
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(line)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        conn = getattr(record, "conn", None)
        if conn:
            prefix = f" {record.name} "
            text = text.replace(prefix, f"{prefix}[{conn}] ", 1)
        event = getattr(record, "event", None)
        if event is not None:
            text += " " + json.dumps(event, default=str, ensure_ascii=False)
        return text


class LineHandler(logging.StreamHandler[TextIO]):
    """StreamHandler whose callers never wait for each other: lines are formatted outside
    the lock, and a thread that finds the stream busy leaves its line to the writer.

    With StreamHandler every record took the handler's lock for its formatting and its
    write; under 32 MTA connections the threads queued on that lock (30% of wall samples
    in Handler.acquire), each wait a futex sleep and a wake-up. Here a record is formatted
    first, appended to a deque (thread-safe appends and pops), and written by whichever
    thread gets the lock without waiting: that thread writes every waiting line in one
    write, then looks again once it let go of the lock, so a line appended meanwhile is
    never left behind (its thread either got the lock, or it was appended before the
    writer's last look). Uncontended, a line is written before `handle` returns, as
    before; contended, it is written by the thread writing at that moment, in its next
    write. One line per record, in each thread's order; a process that dies (SIGKILL)
    loses only the lines waiting on a write in progress, as StreamHandler's threads
    waiting on its lock would lose theirs.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._waiting: deque[tuple[str, logging.LogRecord]] = deque()

    def handle(self, record: logging.LogRecord) -> Any:
        passed = self.filter(record)
        if isinstance(passed, logging.LogRecord):  # 3.12: a filter may give another record
            record = passed
        if passed:
            try:
                line = self.format(record) + self.terminator
            except Exception:
                self.handleError(record)
                return passed
            self._waiting.append((line, record))
            self.write_waiting()
        return passed

    def write_waiting(self) -> None:
        """Write what waits, unless another thread is writing (it writes it then)."""
        waiting = self._waiting
        lock = self.lock
        assert lock is not None  # Handler.__init__ made it
        while waiting and lock.acquire(blocking=False):
            try:
                batch = [waiting.popleft() for _ in range(len(waiting))]  # only we pop
                try:
                    self.stream.write("".join(line for line, _ in batch))
                    self.stream.flush()
                except RecursionError:
                    raise
                except Exception:
                    for _, record in batch:
                        self.handleError(record)
            finally:
                lock.release()

    def release(self) -> None:
        """Let go of the lock, then write what waited meanwhile.

        Others take the lock through acquire/release too (StreamHandler.flush and
        setStream, logging.shutdown): a line that found the lock held by them is written
        here, not left until the next record.
        """
        super().release()
        self.write_waiting()

    def flush(self) -> None:
        self.write_waiting()
        super().flush()

    def _at_fork_reinit(self) -> None:
        """In a forked child: the parent's waiting lines are the parent's to write."""
        super()._at_fork_reinit()  # type: ignore[misc]  # Handler has it since 3.9
        self._waiting.clear()


def configure(settings: LogSettings) -> None:
    """Install (or re-install on reload) the single stderr handler."""
    root = logging.getLogger()
    formatter: logging.Formatter = JsonFormatter() if settings.format == "json" else TextFormatter()
    handler = next((h for h in root.handlers if getattr(h, "_aup", False)), None)
    if handler is None:
        handler = LineHandler(sys.stderr)
        handler._aup = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(formatter)
    root.setLevel(settings.level_number)


class ConnectionLog(logging.LoggerAdapter[logging.Logger]):
    """A logger that stamps the connection id on every record."""

    def __init__(self, logger: logging.Logger, conn_id: str) -> None:
        super().__init__(logger, {"conn": conn_id})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs

"""The cheaper log and audit paths give the same bytes as the plain ones they replaced.

`reference_json` and `reference_stream_fields` are the former implementations,
kept here as the specification: every record and event below must come out of
the new code exactly as out of them. LineHandler is checked for what a log
reader counts on: one whole line per record, none lost, each thread's lines in
its order, and a line that found the stream busy written once it is free.
"""

from __future__ import annotations

import enum
import io
import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from aupmilter import audit, replies
from aupmilter.logs import JsonFormatter, LineHandler, record_extras
from aupmilter.policy.verdict import Verdict

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def reference_json(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    line: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in record.__dict__.items():
        if key == "event" and isinstance(value, dict):
            line.update(value)
        elif key not in _RESERVED and not key.startswith("_"):
            line[key] = value
    if record.exc_info:
        line["exc"] = formatter.formatException(record.exc_info)
    return json.dumps(line, default=str, ensure_ascii=False)


def reference_stream_fields(event: Mapping[str, object], now: float) -> dict[str, str]:
    fields = {"ts": f"{now:.3f}"}
    for key, value in event.items():
        if value is None or value == [] or value == {}:
            continue
        if isinstance(value, str):
            fields[key] = value
        elif isinstance(value, bool):
            fields[key] = "1" if value else "0"
        elif isinstance(value, int | float):
            fields[key] = str(value)
        else:
            fields[key] = json.dumps(value, default=str, ensure_ascii=False, sort_keys=True)
    return fields


class Tone(enum.StrEnum):
    LOUD = "loud"


class Level(enum.IntEnum):
    HIGH = 3


def verdict_event() -> dict[str, object]:
    envelope = audit.Envelope(sender="ä@acme.example", auth_login=None, queue_id="Q1", recipients=2)
    verdict = Verdict.refuse(replies.ACCOUNT_TERMINATED, "terminated", "acme", rule="t")
    return audit.verdict_event("c7", envelope, verdict, "mail", recipients=["r1@x", "r2@x"])


ODD_EVENT: dict[str, object] = {
    "empty": "",
    "zero": 0,
    "float": 0.5,
    "yes": True,
    "no": False,
    "none": None,
    "no_list": [],
    "no_dict": {},
    "tuple": (),
    "pair": (1, "é"),
    "nested": {"b": 1, "a": [2, {"z": None, "y": "\u2028"}]},
    "tone": Tone.LOUD,
    "level": Level.HIGH,
    "set": {3},
    "type": object,
    "bytes": b"x",
    "big": 10**30,
}


def records() -> list[logging.LogRecord]:
    logger = logging.getLogger("aupmilter.test")
    made = [
        logger.makeRecord(
            "aupmilter.verdict", logging.INFO, "f", 1, "%s %s", ("verdict", "reject"), None,
            extra={"conn": "c7", "event": verdict_event()},
        ),
        logger.makeRecord(
            "aupmilter.x", logging.WARNING, "f", 1, "plain %d", (3,), None,
            extra={"conn": "c8", "_private": 1, "odd": ODD_EVENT, "event": "not a dict"},
        ),
        logger.makeRecord("aupmilter.x", logging.DEBUG, "f", 1, "no extras", (), None),
    ]  # fmt: skip
    try:
        raise ValueError("boom ü")
    except ValueError:
        import sys

        made.append(
            logger.makeRecord("aupmilter.x", logging.ERROR, "f", 1, "failed", (), sys.exc_info())
        )
    logging.Formatter("%(asctime)s %(message)s").format(made[1])  # message, asctime added late
    made[1].created = made[0].created + 1.5  # another second: the cached one must not be used
    made[1].msecs = 500.0
    return made


@pytest.mark.parametrize("index", range(4))
def test_json_lines_are_the_same_bytes_as_before(index: int) -> None:
    record = records()[index]
    formatter = JsonFormatter()
    assert formatter.format(record) == reference_json(formatter, record)


def test_the_cached_second_follows_the_clock() -> None:
    formatter = JsonFormatter()
    made = records()
    for record in (made[0], made[1], made[0], made[2]):
        assert formatter.format(record) == reference_json(formatter, record)
    assert formatter.timestamp(made[0]) != formatter.timestamp(made[1])


def test_extras_keep_their_order_and_skip_private_and_late_attributes() -> None:
    assert record_extras(records()[1]) == ["conn", "odd", "event"]
    assert record_extras(records()[2]) == []


@pytest.mark.parametrize("event", [verdict_event(), ODD_EVENT], ids=["verdict", "odd"])
def test_stream_fields_are_the_same_as_before(event: dict[str, object]) -> None:
    ours = audit.stream_fields(event, 1_764_600_000.25)
    theirs = reference_stream_fields(event, 1_764_600_000.25)
    assert list(ours.items()) == list(theirs.items())
    assert all(type(ours[key]) is type(theirs[key]) for key in ours)


def test_a_recorded_event_logs_as_logger_info_did() -> None:
    stream = io.StringIO()
    handler = LineHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("aupmilter.verdict")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    kept: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            kept.append(record)

    keep = Keep()
    logger.addHandler(keep)
    try:
        audit.AuditTrail(8 * 86_400).record(verdict_event(), now=1.0)
    finally:
        logger.removeHandler(handler)
        logger.removeHandler(keep)
    (record,) = kept
    assert record.funcName == "record" and record.filename == "audit.py"
    assert record.getMessage() == "verdict reject" and record.conn == "c7"  # type: ignore[attr-defined]
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line) == {
        "ts": json.loads(line)["ts"],
        "level": "info",
        "logger": "aupmilter.verdict",
        "msg": "verdict reject",
        **verdict_event(),
    }


def test_many_threads_write_whole_lines_none_lost_each_in_order(tmp_path: Path) -> None:
    path = tmp_path / "log"
    threads, each = 32, 400
    with path.open("w", buffering=1) as stream:
        handler = LineHandler(stream)
        handler.setFormatter(JsonFormatter())
        logger = logging.Logger("lines")
        logger.addHandler(handler)
        start = threading.Barrier(threads)

        def work(n: int) -> None:
            start.wait()
            for i in range(each):
                logger.warning("line", extra={"worker": n, "i": i, "pad": "x" * (i % 200)})

        running = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for thread in running:
            thread.start()
        for thread in running:
            thread.join()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == threads * each
    for n in range(threads):
        assert [line["i"] for line in lines if line["worker"] == n] == list(range(each))


def test_a_line_that_finds_the_stream_busy_is_written_when_it_is_free() -> None:
    stream = io.StringIO()
    handler = LineHandler(stream)
    logger = logging.Logger("busy")
    logger.addHandler(handler)
    handler.acquire()  # as StreamHandler.flush or logging.shutdown hold it
    try:
        done = threading.Thread(target=lambda: logger.warning("while busy"))
        done.start()
        done.join(timeout=5)
        assert not done.is_alive(), "the logging thread waited for the lock"
        assert stream.getvalue() == ""
    finally:
        handler.release()
    assert stream.getvalue() == "while busy\n"

"""Log lines: JSON objects with the verdict fields flat; text with the connection id."""

from __future__ import annotations

import json
import logging

from aupmilter import audit, replies
from aupmilter.logs import ConnectionLog, JsonFormatter, TextFormatter
from aupmilter.policy.verdict import Verdict


def make_record(logger: logging.Logger, emit: object) -> logging.LogRecord:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        emit()  # type: ignore[operator]
    finally:
        logger.removeHandler(handler)
    assert len(records) == 1
    return records[0]


def test_verdict_line_has_every_field() -> None:
    txn = audit.Envelope(sender="a@acme.example", auth_login="acme", queue_id="4AbC", recipients=2)
    verdict = Verdict.refuse(
        replies.ACCOUNT_TERMINATED, "tenant acme is terminated", "acme", rule="tenant-terminated"
    )
    logger = logging.getLogger("aupmilter.verdict")
    trail = audit.AuditTrail(8 * 86_400, clock=lambda: 1_764_600_000.0)
    event = audit.verdict_event("c7", txn, verdict, "mail")
    record = make_record(logger, lambda: trail.record(event))
    line = json.loads(JsonFormatter().format(record))
    assert line["conn"] == "c7"
    assert line["queue_id"] == "4AbC"
    assert line["tenant"] == "acme"
    assert line["sender"] == "a@acme.example"
    assert line["auth"] == "acme"
    assert line["recipients"] == 2
    assert line["verdict"] == "reject"
    assert line["reply"].startswith("550 5.7.1 ")
    assert line["rule"] == "tenant-terminated" and line["mode"] == "enforce"
    assert line["event"] == "verdict" and line["msg"] == "verdict reject"
    assert trail.pending == 1
    assert line["reason"] == "tenant acme is terminated"
    assert line["stage"] == "mail"
    assert line["level"] == "info" and line["ts"].endswith("Z")


def test_connection_log_prefixes_text_lines() -> None:
    logger = logging.getLogger("aupmilter.test")
    record = make_record(logger, lambda: ConnectionLog(logger, "c2a").warning("hello %s", "x"))
    assert "aupmilter.test [c2a] hello x" in TextFormatter().format(record)
    assert json.loads(JsonFormatter().format(record))["conn"] == "c2a"

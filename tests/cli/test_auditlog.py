"""`aup-milter log` and `explain`: the renderings as data, the commands on a real Redis."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import IO

import pytest
import redis

from aupmilter.cli import auditlog
from aupmilter.cli.auditlog import Filters, describe, evidence_words, headline, parse_time
from aupmilter.cli.main import main
from aupmilter.exitcodes import EX_FAILURE, EX_OK, EX_UNAVAILABLE, EX_USAGE
from aupmilter.store.keys import AUDIT_STREAM
from tests.milter.harness import child_env
from tests.support import RedisServer, as_from_a_terminal, free_port

DAY = 1796083200  # 2026-12-01T00:00:00Z
T10 = DAY + 10 * 3600 + 3  # 2026-12-01 10:00:03
HEADERS_ADDED = '["List-Unsubscribe","List-Unsubscribe-Post","Feedback-ID","DKIM-Signature"]'

DELIVERED = {
    "event": "verdict",
    "ts": f"{T10}.123",
    "conn": "c1",
    "queue_id": "4XyZ12",
    "tenant": "acme",
    "sender": "bob@acme.example",
    "auth": "bob",
    "stage": "eom",
    "verdict": "accept",
    "mode": "enforce",
    "recipients": "5",
    "rcpt": '["a@x.example","b@y.example","c@z.example","d@z.example","e@z.example"]',
    "suppressed": '["a@x.example","b@y.example"]',
    "headers": HEADERS_ADDED,
    "class": "bulk",
}
HELD = {
    "event": "verdict",
    "ts": str(T10),
    "queue_id": "5AbC34",
    "tenant": "acme",
    "sender": "bob@acme.example",
    "auth": "bob",
    "stage": "eom",
    "verdict": "quarantine",
    "mode": "enforce",
    "rule": "tenant-suspended",
    "reason": "tenant acme is suspended (reason: spam reports)",
}
RATE_REFUSED = {
    "event": "verdict",
    "ts": str(T10),
    "queue_id": "6DeF56",
    "tenant": "acme",
    "sender": "bob@acme.example",
    "stage": "eom",
    "verdict": "tempfail",
    "mode": "enforce",
    "reply": "451 4.7.1 Sending rate exceeded, try again later",
    "rule": "window",
    "evidence": '{"window": "sender-hour", "used": 100, "limit": 100}',
}
SHADOW = {
    "event": "verdict",
    "ts": str(T10),
    "queue_id": "7GhI78",
    "tenant": "globex",
    "sender": "news@globex.example",
    "auth": "globex",
    "stage": "eom",
    "verdict": "would-reject",
    "mode": "shadow",
    "reply": "550 5.6.0 Message has two From fields",
    "reason": "two From header fields",
    "rule": "header-structure",
    "warnings": '["SPF softfail for globex.example"]',
}


# --- pure: time ----------------------------------------------------------------------------

NOW = float(DAY + 12 * 3600)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2026-12-01T10:00:00Z", DAY + 36_000),
        ("2026-12-01T10:00:00", DAY + 36_000),
        ("2026-12-01T11:00:00+01:00", DAY + 36_000),
        ("2026-12-01", DAY),
        ("30m", NOW - 1800),
        ("2h", NOW - 7200),
        ("7d", NOW - 7 * 86_400),
        ("45s", NOW - 45),
    ],
)
def test_times_read(text: str, seconds: float) -> None:
    assert parse_time(text, NOW) == seconds


@pytest.mark.parametrize("text", ["yesterday", "10x", "", "2026-13-01", "-2h"])
def test_times_refused(text: str) -> None:
    with pytest.raises(auditlog.TimeError, match="expected ISO 8601"):
        parse_time(text, NOW)


# --- pure: records and filters ---------------------------------------------------------


def test_the_json_record_decodes_json_fields_and_keeps_the_rest_as_given() -> None:
    fields = {
        "event": "verdict",
        "ts": "1796119203.120",
        "recipients": "2",
        "rcpt": '["a@x.example", "b@x.example"]',
        "evidence": '{"window": "sender-hour", "used": 98, "limit": 100}',
        "warnings": "[broken",
        "headers": "[]",
        "future-field": "kept",
    }
    assert auditlog.record("1796119203120-0", fields) == {
        "id": "1796119203120-0",
        "event": "verdict",
        "ts": "1796119203.120",
        "recipients": "2",
        "rcpt": ["a@x.example", "b@x.example"],
        "evidence": {"window": "sender-hour", "used": 98, "limit": 100},
        "warnings": "[broken",
        "headers": [],
        "future-field": "kept",
    }


FILTER_CASES = [
    (Filters(tenant="acme"), DELIVERED, True),
    (Filters(tenant="acm"), DELIVERED, False),
    (Filters(sender="Bob@Acme.Example"), DELIVERED, True),
    (Filters(sender="bob@acme.example"),
     {"event": "sender-suspended", "subject": "bob@acme.example"}, True),
    (Filters(recipient="C@Z.example"), DELIVERED, True),
    (Filters(recipient="q@z.example"), DELIVERED, False),
    (Filters(recipient="r@x.example"),
     {"event": "recipient-refused", "recipient": "r@x.example"}, True),
    (Filters(recipient="r@x.example"), {"event": "suppress", "address": "r@x.example"}, True),
    (Filters(recipient="r@x.example"), {"event": "verdict", "rcpt": "not json"}, False),
    (Filters(queue_id="4XyZ12"), DELIVERED, True),
    (Filters(queue_id="4xyz12"), DELIVERED, False),
    (Filters(verdicts=frozenset({"would-reject", "reject"})), SHADOW, True),
    (Filters(verdicts=frozenset({"reject"})), SHADOW, False),
    (Filters(rule="window"), RATE_REFUSED, True),
    (Filters(rule="window"), HELD, False),
    (Filters(events=frozenset({"verdict"})), {"verdict": "accept"}, True),
    (Filters(events=frozenset({"auto-suspend"})), DELIVERED, False),
    (Filters(tenant="acme", rule="tenant-suspended"), HELD, True),
    (Filters(tenant="globex", rule="tenant-suspended"), HELD, False),
]  # fmt: skip


@pytest.mark.parametrize(("filters", "fields", "expected"), FILTER_CASES)
def test_filters(filters: Filters, fields: dict[str, str], expected: bool) -> None:
    assert filters.match(fields) is expected


# --- pure: the table -------------------------------------------------------------------

TABLE_CASES = [
    (DELIVERED, ("2026-12-01 10:00:03", "acme", "4XyZ12", "eom", "accept", "-",
                  "5 recipients; bulk")),
    (HELD, ("2026-12-01 10:00:03", "acme", "5AbC34", "eom", "quarantine", "tenant-suspended",
            "tenant acme is suspended (reason: spam reports)")),
    (SHADOW, ("2026-12-01 10:00:03", "globex", "7GhI78", "eom", "would-reject", "header-structure",
              "550 5.6.0 Message has two From fields; two From header fields")),
    ({"event": "recipient-refused", "ts": str(T10), "stage": "rcpt", "recipient": "z@x.example",
      "reply": "452 4.5.3 Too many recipients", "rule": "recipient-cap"},
     ("2026-12-01 10:00:03", "-", "-", "rcpt", "recipient-refused", "recipient-cap",
      "z@x.example: 452 4.5.3 Too many recipients")),
    ({"event": "suppress", "tenant": "acme", "address": "a@x.example", "source": "one-click",
      "ts": str(DAY), "new": "1"},
     ("2026-12-01 00:00:00", "acme", "-", "-", "suppress", "-", "a@x.example (one-click)")),
    ({"event": "sender-suspended", "stage": "intake", "subject": "bob@acme.example",
      "offence": "1", "detail": "same content to the cap 3 times"},
     ("2026-12-01 00:00:01", "-", "-", "intake", "sender-suspended", "-",
      "bob@acme.example; same content to the cap 3 times")),
    ({"event": "lifted", "tenant": "acme", "stage": "cli", "subject": "acme", "by": "ops"},
     ("2026-12-01 00:00:01", "acme", "-", "cli", "lifted", "-", "acme; by ops")),
    ({"event": "auto-review", "tenant": "acme", "measure": "complaints", "detail": "0.2% of 1000"},
     ("2026-12-01 00:00:01", "acme", "-", "-", "auto-review", "-", "complaints; 0.2% of 1000")),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "row"), TABLE_CASES)
def test_table_rows(fields: dict[str, str], row: tuple[str, ...]) -> None:
    # Without a usable ts the entry id's milliseconds tell the time.
    assert auditlog.table_row(f"{(DAY + 1) * 1000}-0", fields) == row


def test_table_lines_are_trimmed_to_the_terminal() -> None:
    row = auditlog.table_row("1-0", HELD)
    assert auditlog.table_line(row, auditlog.column_widths([row], 120)) == (
        "2026-12-01 10:00:03  acme    5AbC34    eom    quarantine     tenant-suspended"
        "  tenant acme is suspended (reason: spam r…"
    )
    # Narrow: the wide columns give way so that the reason keeps some room.
    narrow = auditlog.column_widths([row], 80)
    assert auditlog.table_line(row, narrow) == (
        "2026-12-01 10:00:03  acme    5AbC34   eom    quaran…  tenant-…  tenant acme is …"
    )
    assert auditlog.table_line(auditlog.HEADERS, narrow) == (
        "TIME (UTC)           TENANT  QUEUE …  STAGE  EVENT/…  RULE      REPLY/REASON"
    )
    wide = auditlog.column_widths([row], 200)
    assert auditlog.table_line(row, wide).endswith(
        "tenant acme is suspended (reason: spam reports)"
    )


# --- pure: explanations ----------------------------------------------------------------

HEADLINES = [
    (DELIVERED, "4XyZ12",
     "Message 4XyZ12 from bob@acme.example (tenant acme, login bob) at 2026-12-01 10:00:03Z:"
     " DELIVERED to 3 recipients (2 removed: on the suppression list: a@x.example,"
     " b@y.example); headers added: List-Unsubscribe, List-Unsubscribe-Post, Feedback-ID,"
     " DKIM-Signature; class bulk."),
    (HELD, "5AbC34",
     "Message 5AbC34 from bob@acme.example (tenant acme, login bob) at 2026-12-01 10:00:03Z:"
     " HELD in the Postfix hold queue: tenant acme is suspended (reason: spam reports)."
     " Rule: tenant-suspended."),
    (RATE_REFUSED, "6DeF56",
     "Message 6DeF56 from bob@acme.example (tenant acme) at 2026-12-01 10:00:03Z:"
     " REFUSED with 451 4.7.1 Sending rate exceeded, try again later: window sender-hour full,"
     " 100 of 100 recipients used (temporary: the client may try again). Rule: window."),
    (SHADOW, "7GhI78",
     "Message 7GhI78 from news@globex.example (tenant globex, login globex) at"
     " 2026-12-01 10:00:03Z: would have been refused with 550 5.6.0 Message has two From"
     " fields: two From header fields (shadow mode: the message passed)."
     " Rule: header-structure. Warnings: SPF softfail for globex.example."),
    ({"verdict": "reject", "sender": "", "reply": "550 5.7.1 Unknown sender",
      "reason": "550 5.7.1 Unknown sender", "evidence": "{not json"}, "Q",
     "Message Q from <> at 1970-01-01 00:00:01Z: REFUSED with 550 5.7.1 Unknown sender:"
     " evidence: {not json."),
    ({"verdict": "would-quarantine", "mode": "shadow", "reason": "content repeated"}, "Q",
     "Message Q at 1970-01-01 00:00:01Z: would have been held in the Postfix hold queue:"
     " content repeated (shadow mode: the message passed)."),
    ({"verdict": "accept", "recipients": "1", "warnings": '["no DMARC record"]'}, "Q",
     "Message Q at 1970-01-01 00:00:01Z: DELIVERED to 1 recipient; Warnings: no DMARC record."),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "queue_id", "text"), HEADLINES)
def test_headlines(fields: dict[str, str], queue_id: str, text: str) -> None:
    assert headline("1000-0", fields, queue_id) == text


DESCRIPTIONS = [
    ({"event": "recipient-refused", "stage": "rcpt", "recipient": "z@x.example",
      "reply": "452 4.5.3 Too many recipients", "rule": "recipient-cap",
      "evidence": '{"cap": 100, "accepted": 100}'},
     "Recipient z@x.example refused at RCPT with 452 4.5.3 Too many recipients:"
     " cap 100, accepted 100. Rule: recipient-cap."),
    ({"event": "recipient-refused", "stage": "rcpt", "recipient": "w@x.example",
      "reply": "450 4.7.1 Rate limit", "rule": "window",
      "evidence": '{"window": "tenant-day", "used": 40, "limit": 100, "unit": "messages"}'},
     "Recipient w@x.example refused at RCPT with 450 4.7.1 Rate limit: window tenant-day"
     " 40 of 100 messages used. Rule: window."),
    ({"event": "recipient-suppressed", "stage": "eom", "recipient": "a@x.example"},
     "Recipient a@x.example removed from the message: on the suppression list."),
    ({"event": "recipient-suppressed", "stage": "rcpt", "recipient": "a@x.example"},
     "Recipient a@x.example refused at RCPT: on the suppression list."),
    ({"event": "sender-suspended", "subject": "bob@acme.example", "offence": "1",
      "detail": "same content to the cap 3 times",
      "evidence": '{"fingerprint": "ab12", "messages": 3, "max_recipients": 100}'},
     "The sender bob@acme.example was suspended automatically (offence 1): same content to"
     " the cap 3 times; fingerprint ab12, messages 3, max recipients 100."),
    ({"event": "domain-suspended", "subject": "acme.example", "offence": "2"},
     "The domain acme.example was suspended automatically (offence 2)."),
    ({"event": "tenant-terminated", "subject": "acme", "offence": "3", "detail": "third offence"},
     "The tenant acme was terminated automatically (offence 3): third offence."),
    ({"event": "auto-suspend", "tenant": "acme", "measure": "complaints", "events": "5",
      "delivered": "1000",
      "evidence": '{"complaints": 5, "delivered": 1000, "rate": "0.5%", "threshold": "0.3%"}'},
     "Tenant acme was suspended automatically for its complaint rate (5 complaints,"
     " 1000 delivered): complaints 5, delivered 1000, rate 0.5%, threshold 0.3%."),
    ({"event": "auto-review", "tenant": "acme", "measure": "bounces", "detail": "6% of 200"},
     "Tenant acme was flagged for review for its bounce rate: 6% of 200."),
    ({"event": "lifted", "subject": "bob@acme.example", "by": "ops"},
     "The automatic action on bob@acme.example was lifted by ops."),
    ({"event": "suppress", "tenant": "acme", "address": "a@x.example", "source": "complaint",
      "new": "0"},
     "a@x.example added to the suppression list of tenant acme (source complaint)"
     " (it already was)."),
    ({"event": "unsuppress", "tenant": "acme", "address": "a@x.example", "source": "manual",
      "new": "1", "detail": "by ops"},
     "a@x.example removed from the suppression list of tenant acme (source manual): by ops."),
    ({"event": "mystery", "ts": "1", "colour": "blue"}, "mystery: colour blue."),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "text"), DESCRIPTIONS)
def test_descriptions(fields: dict[str, str], text: str) -> None:
    assert describe(fields) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({"window": "sender-hour", "used": 98, "limit": 100},
         "window sender-hour 98 of 100 recipients used"),
        ({"window": "w", "used": 5, "limit": 5, "period": "1h"},
         "window w full, 5 of 5 recipients used, period 1h"),
        ({"rate": "0.5%", "seen": ["a", "b"], "nested": {"x": 1}},
         "rate 0.5%, seen a, b, nested (x 1)"),
        ("raw", "evidence: raw"),
        ("", ""),
    ],
)  # fmt: skip
def test_evidence_in_words(value: object, text: str) -> None:
    assert evidence_words(value) == text


def test_the_removed_recipients_come_from_their_events_when_the_verdict_lists_none() -> None:
    verdict = {k: v for k, v in DELIVERED.items() if k not in ("suppressed", "headers")}
    removed = {"event": "recipient-suppressed", "stage": "eom", "ts": str(T10)}
    refused = {"event": "recipient-suppressed", "stage": "rcpt", "recipient": "r@x.example"}
    entries = [
        ("1-0", {**refused, "ts": str(T10 - 5)}),
        ("2-0", {**removed, "recipient": "a@x.example"}),
        ("3-0", {**removed, "recipient": "b@y.example"}),
        ("4-0", verdict),
    ]
    assert auditlog.explain_lines("4XyZ12", entries) == [
        "  2026-12-01 09:59:58Z: Recipient r@x.example refused at RCPT: on the suppression list.",
        "  2026-12-01 10:00:03Z: Recipient a@x.example removed from the message: on the"
        " suppression list.",
        "  2026-12-01 10:00:03Z: Recipient b@y.example removed from the message: on the"
        " suppression list.",
        "Message 4XyZ12 from bob@acme.example (tenant acme, login bob) at 2026-12-01 10:00:03Z:"
        " DELIVERED to 3 recipients (2 removed: on the suppression list: a@x.example,"
        " b@y.example); class bulk.",
    ]


def test_retention_comes_from_the_config_when_it_has_one() -> None:
    assert auditlog.retention_days(None) == "at least 7"
    assert auditlog.retention_days(SimpleNamespace()) == "at least 7"
    assert auditlog.retention_days(SimpleNamespace(audit=SimpleNamespace(retention_days=9))) == "9"
    assert auditlog.unknown_message("X1", "9") == (
        "nothing is known about queue id X1 in the audit trail (kept 9 days)"
    )


# --- the commands on a real Redis ------------------------------------------------------

Cli = Callable[..., int]


@pytest.fixture
def cli(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Cli:
    monkeypatch.setenv("COLUMNS", "200")
    absent = str(tmp_path / "absent.toml")

    def run(command: str, *args: str) -> int:
        return main([command, "-c", absent, "--redis", redis_server.url, *args])

    return run


def add(client: redis.Redis, fields: dict[str, str], entry_id: str = "*") -> str:
    return str(client.xadd(AUDIT_STREAM, fields, id=entry_id))  # type: ignore[arg-type]


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_log_shows_the_newest_fifty_oldest_first(
    cli: Cli, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    for n in range(60):
        add(redis_client, {"event": "verdict", "verdict": "accept", "queue_id": f"Q{n:02d}",
                           "tenant": "acme", "ts": str(T10 + n)},
            f"{(T10 + n) * 1000}-0")  # fmt: skip
    assert cli("log") == EX_OK
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 51
    assert lines[0].split()[:4] == ["TIME", "(UTC)", "TENANT", "QUEUE"]
    assert lines[1].split() == ["2026-12-01", "10:00:13", "acme", "Q10", "-", "accept", "-", "-"]
    assert lines[-1].split()[3] == "Q59"
    assert cli("log", "--limit", "3", "--json") == EX_OK
    records = json_lines(capsys.readouterr().out)
    assert [r["queue_id"] for r in records] == ["Q57", "Q58", "Q59"]
    assert records[0] == {
        "id": f"{(T10 + 57) * 1000}-0",
        "event": "verdict",
        "verdict": "accept",
        "queue_id": "Q57",
        "tenant": "acme",
        "ts": str(T10 + 57),
    }


def test_log_filters_and_time_bounds(
    cli: Cli, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    add(redis_client, dict(DELIVERED), f"{T10 * 1000}-0")
    add(redis_client, dict(HELD), f"{(T10 + 3600) * 1000}-0")
    add(redis_client, dict(SHADOW), f"{(T10 + 7200) * 1000}-0")
    add(redis_client, {"event": "recipient-refused", "tenant": "acme", "stage": "rcpt",
                       "recipient": "z@x.example", "reply": "452 4.5.3 Too many recipients",
                       "rule": "recipient-cap"}, f"{(T10 + 7201) * 1000}-0")  # fmt: skip

    def ids(*args: str) -> list[str]:
        assert cli("log", "--json", *args) == EX_OK
        return [str(r.get("queue_id", r["event"])) for r in json_lines(capsys.readouterr().out)]

    assert ids() == ["4XyZ12", "5AbC34", "7GhI78", "recipient-refused"]
    assert ids("--tenant", "acme") == ["4XyZ12", "5AbC34", "recipient-refused"]
    assert ids("--verdict", "would-reject", "--verdict", "quarantine") == ["5AbC34", "7GhI78"]
    assert ids("--event", "recipient-refused") == ["recipient-refused"]
    assert ids("--recipient", "Z@x.example") == ["recipient-refused"]
    assert ids("--recipient", "C@z.example") == ["4XyZ12"]
    assert ids("--sender", "news@globex.example") == ["7GhI78"]
    assert ids("--rule", "tenant-suspended") == ["5AbC34"]
    assert ids("--queue-id", "4XyZ12") == ["4XyZ12"]
    assert ids("--since", "2026-12-01T11:00:03Z") == ["5AbC34", "7GhI78", "recipient-refused"]
    assert ids("--until", "2026-12-01T11:00:03Z") == ["4XyZ12", "5AbC34"]
    assert ids("--since", "2026-12-01T10:30:00Z", "--until", "2026-12-01T12:00:00Z") == ["5AbC34"]
    assert ids("--since", "2026-12-02") == []
    record = json_lines((cli("log", "--json", "--queue-id", "4XyZ12"), capsys.readouterr().out)[1])[
        0
    ]
    assert record["suppressed"] == ["a@x.example", "b@y.example"]
    assert record["ts"] == f"{T10}.123" and record["recipients"] == "5"
    assert cli("log", "--tenant", "acme", "--verdict", "quarantine") == EX_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == (
        "2026-12-01 10:00:03  acme    5AbC34    eom    quarantine     tenant-suspended"
        "  tenant acme is suspended (reason: spam reports)"
    )


def test_log_with_no_match_says_so_and_exits_zero(
    cli: Cli, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    add(redis_client, dict(HELD))
    assert cli("log", "--tenant", "nobody") == EX_OK
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "aup-milter log: no matching events\n"


def test_log_reads_a_bounded_number_of_entries(
    cli: Cli,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auditlog, "LOG_SCAN_BOUND", 1500)
    add(redis_client, dict(HELD))
    with redis_client.pipeline(transaction=False) as pipe:
        for _ in range(1600):
            pipe.xadd(AUDIT_STREAM, {"event": "verdict", "verdict": "accept", "tenant": "other"})
        pipe.execute()
    assert cli("log", "--tenant", "acme") == EX_OK
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "aup-milter log: read the newest 1500 events in range and stopped;"
        " --since/--until narrow the span",
        "aup-milter log: no matching events",
    ]
    monkeypatch.setattr(auditlog, "LOG_SCAN_BOUND", 2000)
    assert cli("log", "--tenant", "acme", "--json") == EX_OK
    assert [r["queue_id"] for r in json_lines(capsys.readouterr().out)] == ["5AbC34"]


@pytest.mark.parametrize("option", ["--since", "--until"])
def test_log_bad_time_is_a_usage_error(
    cli: Cli, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("log", option, "last tuesday") == EX_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"aup-milter log: {option}: cannot read the time 'last tuesday'")
    assert "expected ISO 8601 (2026-12-01T10:00:00Z, 2026-12-01) or a time ago (30m" in err


def test_log_follow_with_until_is_a_usage_error(
    cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("log", "--follow", "--until", "1h") == EX_USAGE
    assert "--follow and --until" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["log"], ["explain", "4XyZ12"]])
def test_unreachable_redis_is_unavailable(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    code = main([command[0], "-c", str(tmp_path / "x.toml"), "--redis", url, *command[1:]])
    assert code == EX_UNAVAILABLE
    assert f"aup-milter {command[0]}: cannot use Redis at {url}: " in capsys.readouterr().err


def test_explain_a_delivered_message_with_its_transaction(
    cli: Cli, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    def ms(offset: float) -> str:
        return f"{int((T10 + offset) * 1000)}-0"

    rcpt = {"conn": "c1", "stage": "rcpt", "tenant": "acme", "sender": "bob@acme.example"}
    # The connection's previous transaction: not this message's.
    add(
        redis_client,
        {
            **rcpt,
            "event": "recipient-refused",
            "recipient": "old@x.example",
            "reply": "452 4.5.3 Too many recipients",
            "ts": str(T10 - 20),
        },
        ms(-20),
    )
    add(redis_client, {**DELIVERED, "queue_id": "3PrEv0", "ts": str(T10 - 10)}, ms(-10))
    # This one: a refusal at RCPT (no queue id yet), removals at end of message, the verdict.
    add(
        redis_client,
        {
            **rcpt,
            "event": "recipient-refused",
            "recipient": "f@z.example",
            "reply": "450 4.7.1 Rate limit",
            "rule": "window",
            "evidence": '{"window": "sender-hour", "used": 99, "limit": 100}',
            "ts": str(T10 - 2),
        },
        ms(-2),
    )
    add(
        redis_client,
        {
            "event": "verdict",
            "conn": "c9",
            "queue_id": "9OtHeR",
            "verdict": "accept",
            "ts": str(T10 - 1),
        },
        ms(-1),
    )
    for n, who in enumerate(("a@x.example", "b@y.example")):
        add(redis_client, {"event": "recipient-suppressed", "conn": "c1", "queue_id": "4XyZ12",
                           "stage": "eom", "tenant": "acme", "recipient": who, "ts": str(T10)},
            ms(0.1 * (n + 1)))  # fmt: skip
    add(redis_client, dict(DELIVERED), ms(0.5))
    # Days later, an automatic action that names the message.
    add(redis_client, {"event": "sender-suspended", "stage": "intake", "queue_id": "4XyZ12",
                       "subject": "bob@acme.example", "offence": "1", "tenant": "acme",
                       "detail": "3 complaints", "ts": str(T10 + 3 * 86_400)},
        ms(3 * 86_400))  # fmt: skip
    assert cli("explain", "4XyZ12") == EX_OK
    assert capsys.readouterr().out.splitlines() == [
        "  2026-12-01 10:00:01Z: Recipient f@z.example refused at RCPT with 450 4.7.1 Rate limit:"
        " window sender-hour 99 of 100 recipients used. Rule: window.",
        "  2026-12-01 10:00:03Z: Recipient a@x.example removed from the message: on the"
        " suppression list.",
        "  2026-12-01 10:00:03Z: Recipient b@y.example removed from the message: on the"
        " suppression list.",
        headline("", DELIVERED, "4XyZ12"),
        "  2026-12-04 10:00:03Z: The sender bob@acme.example was suspended automatically"
        " (offence 1): 3 complaints.",
    ]
    assert cli("explain", "4XyZ12", "--json") == EX_OK
    payload = json.loads(capsys.readouterr().out)
    assert payload["queue_id"] == "4XyZ12" and len(payload["explanation"]) == 5
    assert [e["event"] for e in payload["events"]] == [
        "recipient-refused",
        "recipient-suppressed",
        "recipient-suppressed",
        "verdict",
        "sender-suspended",
    ]
    assert payload["events"][3]["headers"] == json.loads(HEADERS_ADDED)
    # --since past the verdict leaves only the later action.
    assert cli("explain", "4XyZ12", "--since", "2026-12-02") == EX_OK
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Message 4XyZ12: no verdict recorded; its events:" and len(out) == 2


def test_explain_shadow_and_held(
    cli: Cli, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    add(redis_client, dict(SHADOW))
    add(redis_client, dict(HELD))
    assert cli("explain", "7GhI78") == EX_OK
    assert capsys.readouterr().out == headline("", SHADOW, "7GhI78") + "\n"
    assert cli("explain", "5AbC34") == EX_OK
    assert "HELD in the Postfix hold queue: tenant acme is suspended" in capsys.readouterr().out


def test_explain_an_unknown_queue_id_fails(
    cli: Cli, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    add(redis_client, dict(HELD))
    assert cli("explain", "NOSUCH1") == EX_FAILURE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "aup-milter explain: nothing is known about queue id NOSUCH1 in the audit trail"
        " (kept at least 7 days)\n"
    )


def test_explain_reads_across_batches(
    cli: Cli, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    add(redis_client, dict(HELD), f"{T10 * 1000}-0")
    with redis_client.pipeline(transaction=False) as pipe:
        for n in range(2 * auditlog.BATCH + 5):
            pipe.xadd(AUDIT_STREAM, {"event": "verdict", "verdict": "accept", "queue_id": f"N{n}"})
        pipe.execute()
    assert cli("explain", "5AbC34") == EX_OK
    assert capsys.readouterr().out.startswith("Message 5AbC34 from bob@acme.example")


# --- --follow, as a person runs it -----------------------------------------------------


def _lines(stream: IO[str]) -> queue.Queue[str]:
    found: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            found.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return found


@pytest.fixture
def follower(
    redis_server: RedisServer, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "aupmilter", "log", "-c", str(tmp_path / "absent.toml"),
                "--redis", redis_server.url, "--follow", *args]  # fmt: skip
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            preexec_fn=as_from_a_terminal,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_follow_prints_new_matching_events_until_ctrl_c(
    follower: Callable[..., subprocess.Popen[str]], redis_client: redis.Redis
) -> None:
    add(redis_client, dict(HELD))
    process = follower("--json", "--tenant", "acme")
    assert process.stdout is not None and process.stderr is not None
    lines = _lines(process.stdout)
    assert json.loads(lines.get(timeout=20))["queue_id"] == "5AbC34"
    # Whatever is added from now on is read after the initial listing.
    add(redis_client, dict(SHADOW))  # globex: filtered out
    add(redis_client, dict(DELIVERED))
    second = json.loads(lines.get(timeout=10))
    assert second["queue_id"] == "4XyZ12" and second["headers"] == json.loads(HEADERS_ADDED)
    time.sleep(0.2)
    assert lines.empty()
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == EX_OK
    assert "Traceback" not in process.stderr.read()


def test_follow_an_empty_stream_prints_the_header_then_the_table_rows(
    follower: Callable[..., subprocess.Popen[str]], redis_client: redis.Redis
) -> None:
    process = follower()
    assert process.stdout is not None and process.stderr is not None
    lines = _lines(process.stdout)
    assert lines.get(timeout=20).split()[:3] == ["TIME", "(UTC)", "TENANT"]
    add(redis_client, dict(HELD))
    assert lines.get(timeout=10).split()[:6] == [
        "2026-12-01", "10:00:03", "acme", "5AbC34", "eom", "quarantine"
    ]  # fmt: skip
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == EX_OK
    err = process.stderr.read()
    assert err == "aup-milter log: no matching events\n"

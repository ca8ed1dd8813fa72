"""The consent ledger end to end: the private Postfix, the milter, Redis and the sink.

acme goes on a plan with the ledger enforced and a 30-day lapse; consent
times are imported in the past with `aup-milter consent import` (the milter's
clock is real). A lapsed recipient is removed from a bulk message (the sink
gets it without that recipient, delrcpt), a fresh one gets it; a message to
lapsed recipients only, and one to mostly never-mailed addresses, are refused
with replies that say what to do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import cast

import pytest
import redis

from aupmilter.cli.main import main
from testbed import Stack
from testbed.client import ClientFactory, make_message
from testbed.proc import wait_until

pytestmark = pytest.mark.e2e

SENDER = "news@acme.example"
FRESH, LAPSED = "fresh-reader@example.net", "lapsed-reader@example.net"
DAY = 86_400


def bulk(rcpts: list[str]) -> tuple[EmailMessage, str]:
    message, token = make_message(SENDER, rcpts, subject="Winter news")
    message["Precedence"] = "bulk"
    return message, token


@pytest.fixture
def ledger(stack: Stack, tmp_path: Path) -> Iterator[Stack]:
    """acme on the consent plan (the stack's reset puts its plan back), a ledger imported."""
    for key in ("consent", "consent:src", "lastbulk", "suppressed"):
        stack.redis_cli("DEL", f"aup:{{acme}}:{key}")
    stack.redis_cli("HSET", "aup:tenant:acme", "plan", "e2e-consent")
    now = int(time.time())
    consent(stack, tmp_path, f"{FRESH},{now - DAY},signup\n{LAPSED},{now - 60 * DAY},fair-2026\n")
    yield stack
    for key in ("consent", "consent:src", "lastbulk"):
        stack.redis_cli("DEL", f"aup:{{acme}}:{key}")


def consent(stack: Stack, tmp_path: Path, lines: str) -> None:
    data = tmp_path / f"ledger-{time.monotonic_ns()}.csv"
    data.write_text(lines)
    code = main(["consent", "-c", str(tmp_path / "absent.toml"), "--redis", stack.redis_url,
                 "import", "-t", "acme", "--progress", "never", str(data)])  # fmt: skip
    assert code == 0


def lapsed_events(stack: Stack) -> list[dict[str, str]]:
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    try:
        entries = cast(list[tuple[str, dict[str, str]]], client.xrange("aup:audit"))
    finally:
        client.close()
    return [fields for _id, fields in entries if fields.get("event") == "recipient-lapsed"]


def test_a_lapsed_recipient_is_removed_and_a_fresh_one_delivered(
    ledger: Stack, connect: ClientFactory, tmp_path: Path
) -> None:
    message, token = bulk([FRESH, LAPSED])
    client = connect("acme")
    outcome = client.send(SENDER, [FRESH, LAPSED], message)
    assert outcome.accepted, outcome
    delivered = ledger.wait_for_sink(token)
    assert delivered.rcpt_to == (FRESH,), "the lapsed recipient was removed (delrcpt)"
    assert ledger.redis_cli("HEXISTS", "aup:{acme}:lastbulk", FRESH) == "1"
    assert ledger.redis_cli("HEXISTS", "aup:{acme}:lastbulk", LAPSED) == "0", "no self-healing"
    events = wait_until(
        lambda: lapsed_events(ledger) or None, timeout=5, what="the recipient-lapsed event"
    )
    event = events[0]
    assert (event["recipient"], event["verdict"], event["rule"]) == (
        LAPSED,
        "removed",
        "consent-lapsed",
    )

    alone, _ = bulk([LAPSED])
    refused = client.send(SENDER, [LAPSED], alone)
    assert refused.data is not None and refused.data.code == 550, refused
    assert (
        "5.7.1" in refused.data.text
        and "consent of every recipient has lapsed" in refused.data.text
    )
    assert "aup-milter consent import" in refused.data.text

    consent(ledger, tmp_path, f"{LAPSED},{int(time.time())},reconfirmed\n")
    again, again_token = bulk([FRESH, LAPSED])
    assert client.send(SENDER, [FRESH, LAPSED], again).accepted
    assert sorted(ledger.wait_for_sink(again_token).rcpt_to) == sorted([FRESH, LAPSED])


def test_a_message_to_mostly_never_mailed_addresses_is_refused(
    ledger: Stack, connect: ClientFactory
) -> None:
    strangers = [f"bought-{i}@example.net" for i in range(6)]
    message, _ = bulk([FRESH, *strangers])
    outcome = connect("acme").send(SENDER, [FRESH, *strangers], message)
    assert outcome.data is not None and outcome.data.code == 550, outcome
    assert "6 of the 7 recipients of this bulk message never got mail" in outcome.data.text
    assert ledger.redis_cli("HLEN", "aup:{acme}:lastbulk") == "0", "a refusal records nothing"

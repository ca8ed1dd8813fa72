"""The daemon's Prometheus metrics through the real Postfix, scraped over HTTP.

Mail goes through the private Postfix as tenants send it (SMTP AUTH from
127.0.0.2); a complaint goes through the report intake (a pipe process per
message, which cannot be scraped: it counts into the shared Redis hash the
daemon exports). Each scrape is parsed with prometheus_client's parser and the
counts are compared, exactly, with what this test sent: the session's stack
has carried other tests' mail, so the test compares a scrape before with one
after.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testbed import Stack
from testbed.client import ClientFactory, SmtpClient, make_message
from testbed.proc import wait_until
from testbed.unsubscribe import REPORT_ADDRESS
from tests.e2e.test_reports_e2e import SUPPRESSED, feedback_report, send_bulk

pytestmark = pytest.mark.e2e

SENDER = "alice@acme.example"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(stack: Stack) -> Samples:
    with urllib.request.urlopen(stack.metrics_url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def grown(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@pytest.fixture
def capped(stack: Stack) -> Iterator[Stack]:
    stack.redis_cli("DEL", SUPPRESSED)
    yield stack
    stack.redis_cli("HDEL", "aup:tenant:acme", "max_recipients_per_message")
    stack.redis_cli("DEL", SUPPRESSED)


def test_metrics_count_the_mail_sent_through_postfix_and_the_intake(
    capped: Stack, connect: ClientFactory
) -> None:
    stack = capped
    before = scrape(stack)
    assert stack.metrics_url.startswith("http://127.0.0.1:")

    # 1: two recipients against a cap of one: the second RCPT gets 452, the message goes.
    stack.redis_cli("HSET", "aup:tenant:acme", "max_recipients_per_message", "1")
    recipients = ["one@example.net", "two@example.net"]
    message, token = make_message(SENDER, recipients, subject="capped")
    outcome = connect("acme").send(SENDER, recipients, message)
    assert outcome.accepted and [r.code for r in outcome.rcpts] == [250, 452], outcome
    stack.wait_for_sink(token)
    stack.redis_cli("HDEL", "aup:tenant:acme", "max_recipients_per_message")

    # 2: bulk mail to a reader, who then complains through the feedback loop.
    reader = "complainer-metrics@example.net"
    client = connect("acme")
    original = send_bulk(client, stack, reader)
    with SmtpClient(stack.host, stack.intake_port) as provider:
        sent = provider.send("fbl@provider.example", [REPORT_ADDRESS], feedback_report(original))
    assert sent.accepted, sent
    wait_until(
        lambda: re.search(r"relay=aup-reports.*status=sent", stack.postfix_log()),
        timeout=30,
        interval=0.1,
        what="the report intake to take the complaint",
        on_timeout=lambda: stack.postfix_log()[-3000:],
    )
    wait_until(
        lambda: stack.redis_cli("HGET", SUPPRESSED, reader).startswith("complaint "),
        timeout=30,
        interval=0.1,
        what="the complainer suppressed",
    )

    # 3: held (suspended tenant) and 4: refused (unknown sender) at MAIL FROM.
    stack.set_tenant_status("acme", "suspended", reason="metrics test")
    message, _ = make_message(SENDER, ["held@example.net"], subject="held")
    held = connect("acme").send(SENDER, ["held@example.net"], message)
    assert held.accepted and held.queue_id
    stack.wait_for_queue(held.queue_id, "hold")
    message, _ = make_message("x@unknown.example", ["x@example.net"], subject="stranger")
    refused = connect().send("x@unknown.example", ["x@example.net"], message)
    assert refused.mail.code == 550, refused

    after = scrape(stack)
    assert grown(before, after, "aup_transactions_total", verdict="accept", rule="") == 2
    assert (
        grown(
            before, after, "aup_transactions_total", verdict="quarantine", rule="tenant-suspended"
        )
        == 1
    )
    assert (
        grown(before, after, "aup_transactions_total", verdict="reject", rule="unknown-sender") == 1
    )
    assert (
        grown(
            before, after, "aup_recipients_refused_total", rule="recipient-cap", verdict="tempfail"
        )
        == 1
    )
    assert (
        grown(before, after, "aup_tenant_transactions_total", tenant="acme", verdict="accept") == 2
    )
    assert grown(before, after, "aup_callback_seconds_count", callback="envfrom") == 4
    assert grown(before, after, "aup_callback_seconds_count", callback="eom") == 3
    assert grown(before, after, "aup_redis_round_trips_total", call="sender_state") == 4
    assert grown(before, after, "aup_redis_errors_total", call="sender_state") == 0
    # The MAIL FROM domain's bounce route is looked up (or found in the cache) per message.
    dns = sum(
        grown(before, after, name, **dict(labels))
        for name, labels in after
        if name in ("aup_dns_lookups_total", "aup_dns_cache_hits_total")
    )
    assert dns >= 3
    # The intake's counts, through the shared hash.
    assert grown(before, after, "aup_intake_reports_total", kind="complaint") == 1
    assert grown(before, after, "aup_suppressions_total", source="complaint") == 1
    assert after[("aup_open_transactions", ())] == 0

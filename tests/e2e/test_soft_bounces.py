"""Temporary failures end to end: the private Postfix's delay notices and expiry bounces.

The sink answers a `refuse-450-*` recipient `450 4.2.1` every time, so the
relay keeps the message in its deferred queue and retries it. With
`delay_warning_time` set, Postfix sends a delay notice, and with
`notify_classes = delay` and `delay_notice_recipient` (postfix-sample/
main.cf.intake) its postmaster copy reaches the report intake, which counts
the address as delayed and suppresses nothing. When the message outlives
`maximal_queue_lifetime`, Postfix returns it with the last (4.x.x) status;
the intake counts a soft bounce, and the plan's `soft_bounces_to_suppress`
of one address suppress it, source bounce.

Postfix's timings are set for these tests only (`Stack.postfix_settings`),
in seconds, which every one of them accepts (postconf(5): a time value
with a unit suffix; queue_run_delay and the backoff times must be non-zero,
maximal_queue_lifetime may be 0, "tried only once").
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
import redis

from aupmilter.policy.plans import BouncePlan
from aupmilter.store import keys
from testbed import Stack
from testbed.client import ClientFactory, SmtpClient, make_message
from testbed.proc import wait_until
from testbed.sink import DEFER_PREFIX
from testbed.unsubscribe import BOUNCE_ADDRESS

pytestmark = pytest.mark.e2e

SENDER = "news@acme.example"
SUPPRESSED = keys.suppressed("acme")
RETRY_QUICKLY = {
    "queue_run_delay": "1s",
    "minimal_backoff_time": "1s",
    "maximal_backoff_time": "2s",
}
"""Deferred mail retried every second or two (the test bed's own: 10 s to 30 s)."""
DELAY_NOTICE = {**RETRY_QUICKLY, "delay_warning_time": "1s"}
"""A delay notice at the first retry that finds the message a second old."""
EXPIRE = {**RETRY_QUICKLY, "maximal_queue_lifetime": "2s", "bounce_queue_lifetime": "2s"}
"""Given up after two seconds of retries: returned with the last temporary status."""
WAIT = 20.0
"""Each wait's deadline; each step takes one to three seconds."""


@pytest.fixture
def fresh(stack: Stack) -> Iterator[Stack]:
    stack.redis_cli("DEL", SUPPRESSED)
    yield stack
    stack.redis_cli("DEL", SUPPRESSED)
    stack.delete_queued("ALL")


def counter(stack: Stack, key: str) -> int:
    value = stack.redis_cli("GET", key)
    return int(value) if value else 0


def send(client: SmtpClient, reader: str) -> str:
    message, _ = make_message(SENDER, [reader], subject="Winter news")
    outcome = client.send(SENDER, [reader], message)
    assert outcome.accepted and outcome.queue_id, outcome
    return outcome.queue_id


def suppression_event(stack: Stack, address: str) -> dict[str, str]:
    """The newest audit event that suppressed ``address`` for acme."""
    client = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    with client:
        for _, raw in client.xrevrange(keys.AUDIT_STREAM, count=200) or []:
            fields = {str(k): str(v) for k, v in (raw or {}).items()}
            if fields.get("event") == "suppress" and fields.get("address") == address:
                return fields
    raise AssertionError(f"no suppress event for {address} in {keys.AUDIT_STREAM}")


def logged(stack: Stack, pattern: str) -> re.Match[str] | None:
    return re.search(pattern, stack.postfix_log())


def test_a_delay_notice_is_counted_and_suppresses_no_one(
    fresh: Stack, connect: ClientFactory
) -> None:
    reader = f"{DEFER_PREFIX}slow@example.net"
    delayed = keys.delays("acme", reader)
    fresh.redis_cli("DEL", delayed, keys.soft_bounces("acme", reader))
    with fresh.postfix_settings(DELAY_NOTICE):
        started = time.monotonic()
        queue_id = send(connect("acme"), reader)
        wait_until(
            lambda: counter(fresh, delayed) >= 1,
            timeout=WAIT,
            interval=0.1,
            what="Postfix's delay notice to reach the intake and be counted",
            on_timeout=lambda: fresh.relay.diagnostics(),
        )
        took = time.monotonic() - started
        # Deferred with the sink's 450, still queued: a delay is no failure.
        assert logged(fresh, rf"{queue_id}: to=<{re.escape(reader)}>.*status=deferred.*450 4\.2\.1")
        assert fresh.relay.queue_entry(queue_id) is not None
        assert fresh.redis_cli("HGET", SUPPRESSED, reader) == ""
        assert counter(fresh, keys.soft_bounces("acme", reader)) == 0
        ttl = int(fresh.redis_cli("TTL", delayed))
        assert 0 < ttl <= BouncePlan().soft_bounce_window
        # The tenant got its delay notice too, through the sink.
        wait_until(
            lambda: logged(fresh, rf"{queue_id}: sender delay notification: \w+"),
            timeout=WAIT,
            what="the sender's delay notification",
        )
        # The count lands before the pipe command exits and Postfix logs the delivery.
        wait_until(
            lambda: logged(fresh, rf"to=<{re.escape(BOUNCE_ADDRESS)}>.*relay=aup-reports.*sent"),
            timeout=WAIT,
            what="Postfix to log the delay notice's pipe delivery as sent",
        )
    print(f"delay notice counted {took:.1f}s after the message was accepted")
    fresh.relay.postsuper("-d", queue_id)


def test_soft_bounces_past_the_queue_lifetime_suppress_after_the_plans_count(
    fresh: Stack, connect: ClientFactory
) -> None:
    reader = f"{DEFER_PREFIX}full@example.net"
    soft = keys.soft_bounces("acme", reader)
    fresh.redis_cli("DEL", soft, keys.delays("acme", reader))
    limit = BouncePlan().soft_bounces_to_suppress
    assert limit == 3, "the acme plan keeps the default"
    client = connect("acme")
    with fresh.postfix_settings(EXPIRE):
        started = time.monotonic()
        first = send(client, reader)
        wait_until(
            lambda: counter(fresh, soft) >= 1,
            timeout=WAIT,
            interval=0.1,
            what="Postfix's expiry bounce to reach the intake as a soft bounce",
            on_timeout=lambda: fresh.relay.diagnostics(),
        )
        one = time.monotonic() - started
        assert logged(fresh, rf"{first}: from=<{re.escape(SENDER)}>.*status=expired")
        assert fresh.relay.queue_entry(first) is None
        assert fresh.redis_cli("HGET", SUPPRESSED, reader) == "", (
            "one soft bounce suppresses no one"
        )
        more = [send(client, reader) for _ in range(limit - 1)]
        entry = wait_until(
            lambda: fresh.redis_cli("HGET", SUPPRESSED, reader) or None,
            timeout=WAIT,
            interval=0.1,
            what=f"{limit} soft bounces to suppress {reader}",
            on_timeout=lambda: fresh.relay.diagnostics(),
        )
        took = time.monotonic() - started
    assert entry.startswith("bounce "), entry
    event = suppression_event(fresh, reader)
    assert f"{limit} soft bounces" in event["detail"] and "4.2.1" in event["detail"], event
    for queue_id in more:
        assert logged(fresh, rf"{queue_id}: from=<{re.escape(SENDER)}>.*status=expired")
    assert counter(fresh, soft) == 0, "the count that suppressed is dropped"
    message, _ = make_message(SENDER, [reader], subject="More news")
    last = client.send(SENDER, [reader], message).last
    assert (last.code, last.enhanced) == (550, "5.7.1"), last
    print(f"first soft bounce counted after {one:.1f}s, suppressed after {took:.1f}s")


def test_settings_for_one_test_replace_the_test_beds_own_and_are_restored(stack: Stack) -> None:
    before = stack.postconf(*EXPIRE)
    assert before["queue_run_delay"] == "10s"
    with stack.postfix_settings(EXPIRE):
        assert stack.postconf(*EXPIRE) == EXPIRE
        # In place, not appended: a duplicate entry would make every daemon warn.
        assert stack.postconf_warnings() == []
    assert stack.postconf(*EXPIRE) == before

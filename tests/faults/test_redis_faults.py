"""Redis failing under a stream of mail: killed and restarted with its data, or answering slowly.

Each test sends a numbered stream through the private Postfix (testbed.faultstream),
breaks Redis in the middle of it and prints ``sent, delivered, retried, refused,
lost``. The bar (assert_nothing_lost): lost = 0, no duplicates, no policy probe
delivered, no 5xx but the probes'. A Redis that answers slowly must become a
tempfail well inside Postfix's milter timeouts, never a hung SMTP session.
"""

from __future__ import annotations

import os
import signal
import time

from testbed import Stack
from testbed.faultstream import Fault, FaultStream
from tests.faults.conftest import (
    PASSWORDS,
    assert_nothing_lost,
    probed_messages,
    run_stream,
    sigkill,
)

COUNT = 120
INTERVAL = 0.03
CONCURRENCY = 4
FAULT_AT = 30
OUTAGE = 2.0


def stream(stack: Stack, fault: Fault, count: int = COUNT) -> FaultStream:
    return FaultStream(
        stack,
        "acme",
        PASSWORDS["acme"],
        count=count,
        interval=INTERVAL,
        factory=probed_messages(),
        faults=[fault],
        concurrency=CONCURRENCY,
    )


def postfix_milter_timeouts(stack: Stack) -> float:
    """The shortest of the milter timeouts Postfix applies to one exchange, in seconds."""
    values = stack.postconf("milter_command_timeout", "milter_content_timeout")
    return min(float(value.rstrip("s")) for value in values.values())


def test_redis_sigkilled_and_restarted_with_its_data_loses_nothing(fault_stack: Stack) -> None:
    killed: list[int] = []

    def kill_and_restart() -> None:
        killed.append(sigkill(fault_stack.redis))
        time.sleep(OUTAGE)
        fault_stack.start_redis()

    tally = run_stream(stream(fault_stack, Fault(kill_and_restart, at_message=FAULT_AT)))

    assert killed, "the fault never ran"
    assert_nothing_lost(tally)
    # The outage was seen (copies were retried), and the stream recovered after it.
    assert tally.retried > 0, tally.report()
    assert set(tally.reply_counts()) <= {"451 4.3.0", "550 5.7.1", "553 5.7.1"}, tally.report()
    # The append-only file brought the tenants back: no "no tenant mapped" refusals.
    assert fault_stack.tenant_info("acme")["status"] == "active"


def test_redis_sigkilled_with_on_store_error_accept_delivers_without_retries(
    fault_stack: Stack,
) -> None:
    """``on_store_error = "accept"``: the operator chose availability over the policy, so
    mail flows through the outage unchecked (the probes may pass) and none is lost."""
    fault_stack.milter_config_extra += '[policy]\non_store_error = "accept"\n'
    # Restarted, not reloaded: every worker must run the new config before the stream starts.
    fault_stack.restart_milter()
    try:

        def kill_and_restart() -> None:
            sigkill(fault_stack.redis)
            time.sleep(OUTAGE)
            fault_stack.start_redis()

        tally = run_stream(stream(fault_stack, Fault(kill_and_restart, at_message=FAULT_AT)))
    finally:
        fault_stack.milter_config_extra = fault_stack.milter_config_extra.replace(
            '[policy]\non_store_error = "accept"\n', ""
        )
        fault_stack.restart_milter()

    assert tally.lost == 0 and tally.duplicates == 0, tally.report()
    assert tally.unexpected_refusals == [], tally.report()
    assert tally.retried == 0, tally.report()


def test_redis_in_debug_sleep_tempfails_inside_the_milter_timeouts(fault_stack: Stack) -> None:
    def sleep_redis() -> None:
        # Blocks this fault thread (redis-cli waits for its OK) for as long as Redis sleeps.
        fault_stack.redis_cli("DEBUG", "SLEEP", "3")

    tally = run_stream(stream(fault_stack, Fault(sleep_redis, at_message=FAULT_AT)))

    assert_nothing_lost(tally)
    assert tally.retried > 0, tally.report()
    assert "451 4.3.0" in tally.reply_counts(), tally.report()
    assert tally.max_attempt_seconds < postfix_milter_timeouts(fault_stack) / 2, tally.report()
    assert "milter" not in _postfix_timeouts(fault_stack)


def test_redis_stopped_with_sigstop_tempfails_inside_the_milter_timeouts(
    fault_stack: Stack,
) -> None:
    def pause_redis() -> None:
        pid = fault_stack.redis.running_pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(3.0)
        finally:
            os.kill(pid, signal.SIGCONT)

    tally = run_stream(stream(fault_stack, Fault(pause_redis, at_message=FAULT_AT)))

    assert_nothing_lost(tally)
    assert tally.retried > 0, tally.report()
    assert "451 4.3.0" in tally.reply_counts(), tally.report()
    assert tally.max_attempt_seconds < postfix_milter_timeouts(fault_stack) / 2, tally.report()
    assert "milter" not in _postfix_timeouts(fault_stack)


def _postfix_timeouts(stack: Stack) -> str:
    """Postfix log lines where a milter exchange timed out (there must be none)."""
    lines = [
        line
        for line in stack.postfix_log().splitlines()
        if "milter" in line and "timeout" in line.lower()
    ]
    return "\n".join(lines)

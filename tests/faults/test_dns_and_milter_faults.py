"""DNS and the milter failing under a stream of mail.

DNS gone (the server killed) or answering SERVFAIL: the sender-domain check
cannot be made, so the mail is tempfailed (451 4.4.3), never refused 5xx.
The milter SIGKILLed mid-stream: Postfix's ``milter_default_action =
tempfail`` answers 4xx for the transactions it had in flight and for those
that come while it is down; once it is back, mail flows again. One of two
worker processes SIGKILLed: only its open transactions are tempfailed, the
other worker serves on, and the supervisor starts a new one. Each test
prints ``sent, delivered, retried, refused, lost``; lost must be 0.
"""

from __future__ import annotations

import os
import signal
import time

from testbed import Stack
from testbed.faultstream import Fault, FaultStream
from testbed.proc import wait_until
from tests.faults.conftest import (
    PASSWORDS,
    assert_nothing_lost,
    probed_messages,
    run_stream,
    sigkill,
)
from tests.support import worker_pids

COUNT = 100
INTERVAL = 0.03
CONCURRENCY = 4
FAULT_AT = 25
OUTAGE = 2.0


def stream(stack: Stack, fault: Fault) -> FaultStream:
    return FaultStream(
        stack,
        "acme",
        PASSWORDS["acme"],
        count=COUNT,
        interval=INTERVAL,
        concurrency=CONCURRENCY,
        factory=probed_messages(),
        faults=[fault],
    )


def test_dns_server_gone_tempfails_and_loses_nothing(fault_stack: Stack) -> None:
    def kill_dns() -> None:
        sigkill(fault_stack.dns)
        time.sleep(OUTAGE)
        fault_stack.start_dns()

    tally = run_stream(stream(fault_stack, Fault(kill_dns, at_message=FAULT_AT)))

    assert_nothing_lost(tally)
    assert tally.retried > 0, tally.report()
    assert "451 4.4.3" in tally.reply_counts(), tally.report()


def test_dns_answering_servfail_tempfails_and_loses_nothing(fault_stack: Stack) -> None:
    def servfail() -> None:
        fault_stack.stop_dns()
        fault_stack.dns.servfail = True
        fault_stack.start_dns()
        time.sleep(OUTAGE)
        fault_stack.stop_dns()
        fault_stack.dns.servfail = False
        fault_stack.start_dns()

    tally = run_stream(stream(fault_stack, Fault(servfail, at_message=FAULT_AT)))

    assert_nothing_lost(tally)
    assert tally.retried > 0, tally.report()
    assert "451 4.4.3" in tally.reply_counts(), tally.report()


def test_milter_sigkilled_and_restarted_loses_nothing(fault_stack: Stack) -> None:
    assert fault_stack.postconf("milter_default_action") == {"milter_default_action": "tempfail"}

    def kill_milter() -> None:
        sigkill(fault_stack.milter)
        time.sleep(1.0)
        fault_stack.start_milter()

    tally = run_stream(stream(fault_stack, Fault(kill_milter, at_message=FAULT_AT)))

    assert_nothing_lost(tally)
    assert tally.retried > 0, tally.report()
    # Postfix's own answer while the milter is away (milter_default_action = tempfail):
    # "454 4.3.0 ... Server configuration problem" on Postfix 3.7; a 4xx in any case.
    assert "454 4.3.0" in tally.reply_counts(), tally.report()


def test_one_worker_sigkilled_while_the_other_serves_loses_nothing(fault_stack: Stack) -> None:
    fault_stack.milter_config_extra += "[milter]\nworkers = 2\n"
    fault_stack.restart_milter()
    try:
        supervisor = fault_stack.milter.running_pid()
        assert supervisor is not None
        wait_until(lambda: len(worker_pids(supervisor)) == 2 or None, timeout=30.0,
                   what="two workers")  # fmt: skip
        killed: list[int] = []

        def kill_one_worker() -> None:
            victim = min(worker_pids(supervisor))
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

        tally = run_stream(stream(fault_stack, Fault(kill_one_worker, at_message=FAULT_AT)))
        assert_nothing_lost(tally)
        # Postfix never saw the milter as a whole go away: no 454 "configuration problem"
        # for a stretch of time, at most the victim's own open transactions.
        assert tally.reply_counts().get("454 4.3.0", 0) <= CONCURRENCY, tally.report()
        after = worker_pids(supervisor)
        assert len(after) == 2 and killed[0] not in after, "the supervisor replaced the worker"
        assert fault_stack.milter.running_pid() == supervisor
    finally:
        fault_stack.milter_config_extra = fault_stack.milter_config_extra.replace(
            "[milter]\nworkers = 2\n", ""
        )
        fault_stack.restart_milter()

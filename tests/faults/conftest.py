"""The stack the fault tests break: a private Postfix, a persistent Redis, aup-milter, DNS, sink.

A stack of its own (``run/faults/``, ports of its own), not the e2e one: these
tests kill Redis and the milter, stop DNS, and run Redis with an append-only
file, and the e2e tests must not inherit any of that.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from testbed import DEMO_ACCOUNTS, Stack
from testbed.faultstream import (
    FaultStream,
    MessageFactory,
    MessageSpec,
    StreamTally,
    numbered_messages,
)
from testbed.parts.service import Service, python_env
from testbed.proc import is_alive, run, wait_until
from testbed.stack import default_run_dir, port_offset

PASSWORDS = {account.tenant.id: account.password for account in DEMO_ACCOUNTS}
FAULTS_RUN_DIR = default_run_dir("faults")
REDIS_PORT, SMTP_PORT, SINK_PORT = (port + port_offset() for port in (6405, 2575, 2576))


@pytest.fixture(scope="session")
def fault_session_stack() -> Iterator[Stack]:
    stack = Stack(
        FAULTS_RUN_DIR,
        redis_port=REDIS_PORT,
        smtp_port=SMTP_PORT,
        sink_port=SINK_PORT,
        redis_persistence=True,
        # Every transaction asks DNS: a DNS fault cannot hide behind the resolver's cache.
        milter_config_extra="[dns]\nmax_ttl = 0\nnegative_ttl = 0\n",
    )
    stack.start(clean=True)
    try:
        yield stack
    finally:
        stack.stop()


def restore(stack: Stack) -> None:
    """Every part up (a test may have left one down), demo tenants active, windows empty."""
    stack.start_redis()
    if stack.dns.servfail:
        stack.dns.servfail = False
        stack.stop_dns()
    stack.start_dns()
    stack.start_milter()
    stack.add_demo_tenants()
    stack.clear_rate_windows()
    stack.delete_queued("ALL")
    suppress(stack, "acme", SUPPRESSED)


@pytest.fixture
def fault_stack(fault_session_stack: Stack) -> Iterator[Stack]:
    restore(fault_session_stack)
    yield fault_session_stack
    restore(fault_session_stack)


def suppress(stack: Stack, tenant: str, address: str) -> None:
    """Put ``address`` on ``tenant``'s suppression list, as ops do (``aup-milter suppress add``)."""
    argv = [stack.python, "-m", "aupmilter", "suppress", "--redis", stack.redis_url,
            "add", "--tenant", tenant, "--source", "manual", address]  # fmt: skip
    run(argv, what="aup-milter suppress add", env=python_env())


SENDER = "alice@acme.example"
SUPPRESSED = "gone@example.net"
"""On acme's suppression list in every fault test: mail to it must never reach the sink."""


def probed_messages(sender: str = SENDER, every: int = 7) -> MessageFactory:
    """The default numbered stream, with a policy probe in every ``every`` messages.

    The probes alternate between a message to :data:`SUPPRESSED` and one whose
    From: is another tenant's domain (not aligned with the login). Both
    verdicts need the tenant's state from Redis, so a milter that let mail
    through unchecked while a part was down would deliver them (``bypassed``).
    """
    plain = numbered_messages(sender)

    def make(seq: int) -> MessageSpec:
        if seq % every != every - 1:
            return plain(seq)
        if (seq // every) % 2 == 0:
            return MessageSpec(sender, (SUPPRESSED,), must_not_deliver=True)
        return MessageSpec(
            sender,
            (f"stream-{seq}@example.net",),
            headers=(("From", "someone@globex.example"),),
            must_not_deliver=True,
        )

    return make


def sigkill(service: Service) -> int:
    """SIGKILL the part's whole process group (its own session: pgid = pid); the pid killed."""
    pid = service.running_pid()
    assert pid is not None, f"{service.what} is not running: nothing to kill"
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: not is_alive(pid), timeout=10.0, what=f"{service.what} to die")
    return pid


def assert_nothing_lost(tally: StreamTally) -> None:
    """The issue's bar: every copy delivered exactly once or refused 5xx by a deliberate
    policy (a probe), none vanished, none of the probes delivered."""
    assert tally.lost == 0, tally.report()
    assert tally.duplicates == 0, tally.report()
    assert tally.bypassed == 0, tally.report()
    assert tally.unexpected_refusals == [], tally.report()
    assert tally.delivered + tally.refused + tally.withheld == tally.sent, tally.report()


def run_stream(stream: FaultStream) -> StreamTally:
    """Run ``stream`` and print its tally line (pytest -s shows it; -ra keeps it on failure)."""
    tally = stream.run()
    print(f"\n{tally.report()}")
    return tally

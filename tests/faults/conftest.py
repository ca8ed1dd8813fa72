"""The stack the fault tests break: a private Postfix, a persistent Redis, aup-milter, DNS, sink.

A stack of its own (``run/faults/``, ports of its own), not the e2e one: these
tests kill Redis and the milter, stop DNS, and run Redis with an append-only
file, and the e2e tests must not inherit any of that.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed import Stack
from testbed.faultstream import FaultStream, StreamTally
from testbed.parts.service import python_env
from testbed.proc import run
from testbed.stack import default_run_dir, port_offset
from tests.e2e.conftest import PASSWORDS

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
    )
    stack.start(clean=True)
    try:
        yield stack
    finally:
        stack.stop()


def restore(stack: Stack) -> None:
    """Every part up (a test may have left one down), demo tenants active, windows empty."""
    stack.start_redis()
    stack.start_dns()
    stack.start_milter()
    stack.add_demo_tenants()
    stack.clear_rate_windows()
    stack.delete_queued("ALL")


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


def run_stream(stream: FaultStream) -> StreamTally:
    """Run ``stream`` and print its tally line (pytest -s shows it; -ra keeps it on failure)."""
    tally = stream.run()
    print(f"\n{tally.report()}")
    return tally


__all__ = ["PASSWORDS", "run_stream", "suppress"]

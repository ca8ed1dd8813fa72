"""Test support shared by every layer: bounded waits, log tails, the private redis-server.

Nothing is mocked: ``RedisServer`` (the test bed's one Redis launcher,
``testbed.parts.redisserver``) runs the real redis-server on a free loopback
port, without persistence. Every wait is bounded; a timeout fails with the
tail of the relevant log.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import redis

from aupmilter.policy.tenancy import Lookup, TenantRecord
from aupmilter.store.client import Store
from testbed.parts.redisserver import RedisServer
from testbed.proc import child_pids, free_port, tail, wait_until

STARTUP_TIMEOUT = 15.0
ROOT = Path(__file__).resolve().parents[1]


__all__ = [
    "STARTUP_TIMEOUT",
    "HarnessError",
    "RedisServer",
    "client_commands",
    "free_port",
    "record_of",
    "tail",
    "wait_until",
]


class HarnessError(AssertionError):
    """A component did not come up or answer in time; the text carries its log tail."""

    __test__ = False


def client_commands(server: RedisServer, action: Callable[[], object]) -> list[str]:
    """Commands clients sent while `action` ran (not those run inside Lua scripts).

    MONITOR shows every command with its origin; a marker command from a
    separate connection says where the action ended.
    """
    marker = f"end-of-action-{time.monotonic_ns()}"
    seen: list[str] = []
    marker_client = redis.Redis(port=server.port, socket_timeout=5)
    marker_client.ping()  # its handshake happens before monitoring starts
    monitor_client = redis.Redis(port=server.port, decode_responses=True, socket_timeout=5)
    with monitor_client.monitor() as monitor:  # type: ignore[no-untyped-call]
        action()
        marker_client.echo(marker)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            entry = monitor.next_command()
            if marker in entry["command"]:
                break
            if entry.get("client_type") == "lua" or entry.get("client_address") == "lua":
                continue
            seen.append(entry["command"])
    monitor_client.close()
    marker_client.close()
    return seen


def round_trips(sent: list[str]) -> list[str]:
    """The command names of `client_commands`, one per round trip: audit events ride along.

    An XADD to the audit stream is pipelined in front of the next script call (one
    round trip for both); one that is not followed by another command of the same
    kind or by a call would be a round trip of its own, which the milter must not
    make while transactions come: that fails here.
    """
    names = [c.split()[0].upper() for c in sent]
    trips: list[str] = []
    for index, name in enumerate(names):
        if name != "XADD":
            trips.append(name)
            continue
        rest = names[index + 1 :]
        following = next((n for n in rest if n != "XADD"), None)
        assert following is not None, f"audit events written without a ride: {sent}"
    return trips


def record_of(store: Store, lookup: Lookup) -> TenantRecord | None:
    """Just the tenant the MAIL FROM read finds (the tests of tenancy ignore windows)."""
    state = store.sender_state(lookup)
    return state.record if state else None


def as_from_a_terminal() -> None:
    """`preexec_fn` for a child that a test stops with SIGINT, as Ctrl-C would.

    A job started in the background by a non-interactive shell (CI runners, nohup)
    inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler:
    the default disposition is what a terminal gives a foreground command.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def worker_pids(supervisor: int) -> set[int]:
    """The live worker processes of `supervisor`."""
    return child_pids(supervisor)


def promtool_path() -> str:
    """promtool from Debian's prometheus, unpacked by the bootstrap into .promtool/ (or on PATH)."""
    unpacked = ROOT / ".promtool" / "usr" / "bin" / "promtool"
    found = str(unpacked) if unpacked.exists() else shutil.which("promtool")
    assert found is not None, "no promtool: `make bootstrap` unpacks it into .promtool/"
    return found

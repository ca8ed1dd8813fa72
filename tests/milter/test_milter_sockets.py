"""Where the MTA connects: a unix socket with an exact mode, TCP, or a socket from systemd."""

from __future__ import annotations

import os
import signal
import socket
import stat
import sys
from pathlib import Path

import pytest

from tests.milter.harness import Daemon, StartDaemon
from tests.milter.mta import Kind
from tests.support import free_port

# Socket activation as systemd does it: the listening socket on fd 3, LISTEN_FDS=1, and
# LISTEN_PID naming the process that gets it (so set after fork, just before exec).
ACTIVATOR = """
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


def deliver_one(daemon: Daemon, qid: str) -> None:
    with daemon.client() as client:
        result = client.send_message(
            "a@acme.example", ["r@d.example"], auth_login="acme", queue_id=qid
        )
    assert result.refused_at is None, result
    assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE
    verdict = daemon.log.verdict(qid)
    assert verdict["tenant"] == "acme" and verdict["verdict"] == "accept"


ENGINES = pytest.mark.parametrize("engine", ["libmilter", "event-loop"])
"""libmilter opens the socket itself; for the event loop the daemon does (open_own_listener)."""


@ENGINES
@pytest.mark.parametrize("mode", ["0600", "0660"])
def test_unix_socket_gets_exactly_the_configured_mode(
    start_daemon: StartDaemon, mode: str, engine: str
) -> None:
    # umask 0: whatever the mode is, the daemon set it, not the environment.
    daemon = start_daemon(milter={"socket_mode": mode, "engine": engine}, umask=0)
    info = os.stat(daemon.socket_path)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == int(mode, 8), oct(stat.S_IMODE(info.st_mode))


@ENGINES
def test_inet_listener(start_daemon: StartDaemon, acme: str, engine: str) -> None:
    port = free_port()
    daemon = start_daemon(listen=f"inet:{port}@127.0.0.1", milter={"engine": engine})
    assert daemon.address == f"inet:{port}@127.0.0.1"
    deliver_one(daemon, "TCP1")


def test_systemd_socket_activation(start_daemon: StartDaemon, acme: str, socket_dir: Path) -> None:
    path = socket_dir / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        listener.listen(16)
        fd = listener.fileno()
        daemon = start_daemon(
            listen="systemd",
            address=f"unix:{path}",
            wrapper=[sys.executable, "-c", ACTIVATOR, str(fd)],
            pass_fds=[fd],
        )
    finally:
        listener.close()  # the daemon holds its own copy now
    assert daemon.log.matching("listening on systemd socket activation")
    deliver_one(daemon, "SYS1")
    deliver_one(daemon, "SYS2")


def test_systemd_listen_without_a_passed_socket_is_refused(start_daemon: StartDaemon) -> None:
    """LISTEN_PID naming another process: the sockets are not ours, do not start."""
    daemon = start_daemon(
        listen="systemd",
        env={"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid())},
        wait=False,
    )
    status = daemon.wait_exit(timeout=15)
    assert status == 78, daemon.log.text()
    assert "LISTEN_PID" in daemon.log.text()


def test_systemd_notify_ready_and_stopping(start_daemon: StartDaemon, socket_dir: Path) -> None:
    """Type=notify: READY=1 once it listens, STOPPING=1 when SIGTERM starts the stop."""
    notify_path = socket_dir / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(15)
        daemon = start_daemon(env={"NOTIFY_SOCKET": str(notify_path)})
        assert notify.recv(256) == b"READY=1"
        assert daemon.accepts()
        daemon.signal(signal.SIGTERM)
        assert notify.recv(256) == b"STOPPING=1"
        assert daemon.wait_exit(timeout=15) == 0

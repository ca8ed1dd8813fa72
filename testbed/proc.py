"""Process plumbing for the testbed: pidfiles, bounded waits, readiness probes.

Everything here is careful to act only on processes the testbed started: a
pid read from a pidfile is trusted only while its command line still carries
a marker we chose (pids get recycled, and a stale pidfile must never make us
signal a stranger).
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import os
import shlex
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
# What socket.connect takes: a unix path, or (host, port).
SocketTarget = str | tuple[str, int]


class TestbedError(RuntimeError):
    """A component of the testbed failed; the message says which and why."""

    # pytest would otherwise try to collect this class as a test case.
    __test__ = False


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns something other than None/False.

    ``on_timeout`` returns extra diagnostics (typically log tails) so that a
    timeout explains itself instead of just saying "timed out".
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            detail = on_timeout() if on_timeout else ""
            raise TestbedError(f"timed out after {timeout:g}s waiting for {what}{detail}")
        time.sleep(interval)


def tail(path: Path, lines: int = 30) -> str:
    """Last lines of a log file, formatted for inclusion in an error message."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"\n--- {path}: (missing) ---"
    body = "\n".join(text.splitlines()[-lines:]) or "(empty)"
    return f"\n--- last {lines} lines of {path} ---\n{body}\n--- end of {path.name} ---"


def read_pidfile(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    # Postfix pads master.pid with spaces; anything unparsable is a stale file.
    try:
        pid = int(text.split()[0]) if text else 0
    except ValueError:
        return None
    return pid if pid > 0 else None


def write_pidfile(path: Path, pid: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def is_alive(pid: int) -> bool:
    """True for a running process; zombies count as dead (nobody may reap them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state field follows the parenthesised command name, which may contain spaces.
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def owned_pid(pidfile: Path, marker: str) -> int | None:
    """The pid in ``pidfile`` if that process is alive and is ours (cmdline has ``marker``)."""
    pid = read_pidfile(pidfile)
    if pid is None or not is_alive(pid):
        return None
    return pid if marker in cmdline(pid) else None


def session_members(sid: int) -> list[int]:
    """Pids of live processes in session ``sid``.

    Daemons we start get their own session (setsid), so this finds the
    children they forked without touching anything else on the machine.
    """
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        # After the state: ppid, pgrp, session.
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def terminate(pid: int, *, timeout: float, what: str, session: bool = True) -> None:
    """SIGTERM ``pid`` and wait; SIGKILL it (and its session if ``session``) on timeout.

    With ``session`` the leftovers of the process's own session are killed
    too, which is only right for processes that we started with setsid.
    """
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
    if is_alive(pid):
        _signal(pid, signal.SIGKILL)
    if session:
        for member in session_members(pid):
            _signal(member, signal.SIGKILL)
    _reap(pid)
    try:
        wait_until(lambda: not is_alive(pid), timeout=5.0, what=f"{what} (pid {pid}) to exit")
    except TestbedError:
        raise TestbedError(f"{what} (pid {pid}) survived SIGKILL") from None


def _reap(pid: int) -> None:
    # Only our own children can be reaped; for anything else this is a no-op.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def tcp_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1", *, udp: bool = False) -> int:
    """A port the kernel picks as free on ``host`` now; with ``udp``, free for UDP as well.

    For components that may run anywhere (tests side by side); the demo and
    the end-to-end stacks use fixed ports instead, so people can find them.
    A port free for TCP may be taken for UDP (the DNS server needs both), so
    that pick is retried a bounded number of times.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            if not udp:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagram:
                try:
                    datagram.bind((host, port))
                except OSError:
                    continue
            return port
    raise TestbedError(f"no port free for both UDP and TCP on {host}")


def tcp_port_free(host: str, port: int) -> bool:
    """True if nobody listens on host:port (so a component of ours may bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def smtp_banner(host: str, port: int, timeout: float = 2.0) -> str | None:
    """The 220 greeting of an SMTP server, or None if it does not (yet) give one."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data:
                chunk = sock.recv(512)
                if not chunk:
                    break
                data += chunk
            sock.sendall(b"QUIT\r\n")
    except OSError:
        return None
    line = data.decode(errors="replace").strip()
    return line if line.startswith("220") else None


def http_answers(host: str, port: int, path: str, timeout: float = 2.0) -> bool:
    """True if an HTTP server on host:port answers GET path with 200."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


# Milter protocol v6 option negotiation, as Postfix sends it (see libmilter's mfdef.h).
_SMFIC_OPTNEG = b"O"
_SMFI_VERSION = 6
_ALL_ACTIONS = 0x1FF
_ALL_PROTOCOL_STEPS = 0x1FFFFF


def milter_socket_address(address: str | Path) -> tuple[socket.AddressFamily, SocketTarget]:
    """Socket family and target of a milter address as the daemon's ``listen`` takes it.

    ``unix:/path`` (or ``local:``), ``inet:PORT@HOST``, ``inet6:PORT@HOST``; a
    bare path is a unix socket.
    """
    if isinstance(address, Path):
        return socket.AF_UNIX, str(address)
    kind, sep, rest = address.partition(":")
    if sep and kind in ("unix", "local"):
        return socket.AF_UNIX, rest
    if sep and kind in ("inet", "inet6"):
        port, _, host = rest.partition("@")
        if kind == "inet":
            return socket.AF_INET, (host or "127.0.0.1", int(port))
        return socket.AF_INET6, (host or "::1", int(port))
    raise ValueError(f"not a milter socket address: {address!r}")


def milter_answers(address: str | Path, timeout: float = 2.0) -> bool:
    """True if a milter listens on ``address`` and answers option negotiation.

    A bare connect would also succeed on a socket whose milter is wedged (or
    on a socket somebody else bound and passed on); a negotiation round trip
    proves the daemon really serves requests.
    """
    family, target = milter_socket_address(address)
    body = _SMFIC_OPTNEG + struct.pack(">III", _SMFI_VERSION, _ALL_ACTIONS, _ALL_PROTOCOL_STEPS)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(target)
            sock.sendall(struct.pack(">I", len(body)) + body)
            header = _recv_exact(sock, 5)
    except OSError:
        return False
    return header is not None and header[4:5] == _SMFIC_OPTNEG


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def run(
    argv: Sequence[str],
    *,
    what: str,
    timeout: float = 30.0,
    check: bool = True,
    input_text: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short command with a time limit; failures name the command and its output."""
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TestbedError(
            f"{what}: `{shlex.join(argv)}` did not finish within {timeout:g}s"
        ) from None
    except FileNotFoundError:
        raise TestbedError(
            f"{what}: `{argv[0]}` is not installed (run scripts/bootstrap.sh)"
        ) from None
    if check and done.returncode != 0:
        raise TestbedError(
            f"{what}: `{shlex.join(argv)}` exited {done.returncode}\n"
            f"stdout: {done.stdout.strip()}\nstderr: {done.stderr.strip()}"
        )
    return done


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the parenthesised name (the state is [0])."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def child_pids(parent: int) -> set[int]:
    """The live children of `parent`, from /proc (zombies left out)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = stat_fields(int(entry.name))
        except OSError:
            continue  # ended between the listing and the read
        if int(fields[1]) == parent and fields[0] != "Z":
            found.add(int(entry.name))
    return found

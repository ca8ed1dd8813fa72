"""What every long-running part of the test bed shares: spawn, find, wait for, stop.

A part runs as a child in its own session, with its working directory, log
and pidfile in its run folder. The pidfile lets another process (``make
demo-stop`` after ``make demo``) find it again; a pid read from it is
trusted only while that process is alive, its command line carries the
part's marker and its working directory lies inside the run folder: pids get
recycled, and another checkout's stack must never be signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from testbed.proc import (
    TestbedError,
    cmdline,
    is_alive,
    read_pidfile,
    tail,
    tcp_port_free,
    terminate,
    wait_until,
    write_pidfile,
)

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
MILTER_SOURCE_ROOT = REPO_ROOT / "milter"
STOP_TIMEOUT = 10.0


def python_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment, with the checkout's source roots first on PYTHONPATH.

    A child then imports this checkout's ``aupmilter`` and ``testbed`` even
    without ``pip install -e .``, and never another copy that PYTHONPATH
    happens to name.
    """
    env = dict(os.environ)
    paths = [str(MILTER_SOURCE_ROOT), str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra or {})
    return env


def command_line(*words: str | Path, **options: object) -> list[str]:
    """``words``, then ``--name value`` for each option in order (``_`` in a name becomes ``-``)."""
    argv = [str(word) for word in words]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def owned_pid(pidfile: Path, marker: str, run_dir: Path) -> int | None:
    """Pid in ``pidfile`` if alive, its cmdline has ``marker`` and it runs inside ``run_dir``."""
    pid = read_pidfile(pidfile)
    if pid is None or not is_alive(pid) or marker not in cmdline(pid):
        return None
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    return pid if cwd == run_dir or run_dir in cwd.parents else None


def require_free_port(host: str, port: int, what: str, run_dir: Path) -> None:
    """Fail with a message a person can act on when someone else holds ``port``."""
    if not tcp_port_free(host, port):
        raise TestbedError(
            f"cannot start {what}: {host}:{port} is already in use by a process "
            f"that is not this testbed's (run folder {run_dir}); "
            "stop it or choose another port"
        )


class Service:
    """One long-running child process of the test bed, known by ``STEM.pid`` in ``run_dir``.

    ``proc`` is the child when this process started it (tests signal it,
    wait for its exit status); ``running_pid()`` also finds one started by
    an earlier process from the same run folder.
    """

    def __init__(
        self, run_dir: Path, *, stem: str, marker: str, what: str, timeout: float = 30.0
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.stem = stem
        self.marker = marker
        self.what = what
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pidfile(self) -> Path:
        return self.run_dir / f"{self.stem}.pid"

    @property
    def log_path(self) -> Path:
        return self.run_dir / f"{self.stem}.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def running_pid(self) -> int | None:
        """Pid of this part's process if it runs (ours, or started earlier from ``run_dir``)."""
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        return owned_pid(self.pidfile, self.marker, self.run_dir)

    @property
    def running(self) -> bool:
        return self.running_pid() is not None

    def launch(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
        umask: int = -1,
        record_pid: bool = True,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in ``run_dir``, output to the log; ``record_pid`` writes the pidfile.

        Its own session: a Ctrl-C in the demo's terminal does not reach it,
        and a stop can clean up whatever it forked. Parts that write their
        pidfile themselves once they serve pass ``record_pid=False``.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # A stale pidfile would pass for the readiness of a part that writes its own.
        self.pidfile.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            child = subprocess.Popen(
                list(argv),
                cwd=self.run_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                pass_fds=tuple(pass_fds),
                umask=umask,
                start_new_session=True,
            )
        self.proc = child
        if record_pid:
            write_pidfile(self.pidfile, child.pid)
        return child

    def wait_ready(self, probe: Callable[[], bool]) -> None:
        """Wait for ``probe``; fail early, with the log, if the process ends first."""
        proc = self.proc
        assert proc is not None, f"{self.what} was not spawned"

        def ready() -> bool:
            if probe():
                return True
            if proc.poll() is not None:
                raise TestbedError(
                    f"{self.what} (pid {proc.pid}) exited with {proc.returncode} during startup"
                    f"{tail(self.log_path)}"
                )
            return False

        wait_until(
            ready,
            timeout=self.timeout,
            what=f"{self.what} to get ready",
            on_timeout=lambda: tail(self.log_path),
        )

    def stop(self) -> None:
        """SIGTERM, SIGKILL (with its session) after a while; idempotent."""
        pid = self.running_pid()
        if pid is not None:
            terminate(pid, timeout=STOP_TIMEOUT, what=self.what)
        proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
        self.pidfile.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL to our child's whole process group at once (test teardown: no grace wait).

        Only while the leader is our live child is the group id surely ours.
        """
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)

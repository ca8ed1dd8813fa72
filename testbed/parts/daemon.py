"""The one launcher of the aup-milter daemon, for the stack and for the milter-protocol tests.

It starts ``python -m aupmilter run -c CONFIG`` (or a replacement command)
and knows where the daemon answers; what goes into the config file is the
caller's business (the stack derives it from the shipped sample, the tests
write exactly the settings under test).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from testbed.parts.service import Service, python_env
from testbed.proc import TestbedError, milter_answers, tail

DAEMON_MARKER = "aupmilter"


class MilterDaemon(Service):
    """aup-milter with ``config_path``, answering on ``address`` (``unix:/path``, ``inet:P@H``).

    ``command`` replaces the real daemon (argv; ``{config}`` and ``{socket}``
    are substituted); ``wrapper`` goes in front of the command (a socket
    activator, say), ``pass_fds``, ``env`` (on top of ours) and ``umask`` are
    handed to the child.
    """

    def __init__(
        self,
        run_dir: Path,
        config_path: Path,
        address: str,
        *,
        command: Sequence[str] | None = None,
        wrapper: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
        umask: int = -1,
        python: str = sys.executable,
        timeout: float = 30.0,
    ) -> None:
        self.command = list(command) if command is not None else None
        marker = DAEMON_MARKER if self.command is None else self.command[0]
        super().__init__(run_dir, stem="milter", marker=marker, what="aup-milter", timeout=timeout)
        self.config_path = config_path
        self.address = address
        self.wrapper = list(wrapper)
        self.pass_fds = tuple(pass_fds)
        self.env = dict(env or {})
        self.umask = umask
        self.python = python

    @property
    def argv(self) -> list[str]:
        if self.command is None:
            daemon = [self.python, "-m", "aupmilter", "run", "-c", str(self.config_path)]
        else:
            config, socket = str(self.config_path), self.address.partition(":")[2]
            daemon = [
                a.replace("{config}", config).replace("{socket}", socket) for a in self.command
            ]
        return [*self.wrapper, *daemon]

    @property
    def socket_path(self) -> Path:
        kind, _, path = self.address.partition(":")
        if kind not in ("unix", "local"):
            raise ValueError(f"{self.address} is not a unix socket")
        return Path(path)

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the daemon and return at once (for tests of a daemon that must not start)."""
        return self.launch(self.argv, env=python_env(self.env), pass_fds=self.pass_fds,
                           umask=self.umask)  # fmt: skip

    def start(self, ready: Callable[[], bool] | None = None) -> None:
        """Start it unless it already runs from ``run_dir``; return once ``ready`` holds.

        By default ready means the daemon answers milter option negotiation on ``address``.
        """
        if self.running:
            return
        self.spawn()
        self.wait_ready(ready or self.answers)

    def answers(self) -> bool:
        """True once the daemon answers milter option negotiation on its address."""
        return milter_answers(self.address)

    @property
    def pid(self) -> int:
        """Pid of the daemon this process started."""
        if self.proc is None:
            raise TestbedError("aup-milter was not started by this process")
        return self.proc.pid

    def signal(self, signum: int) -> None:
        if self.proc is None:
            raise TestbedError("aup-milter was not started by this process")
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        """The daemon's exit status (negative: the signal that ended it)."""
        if self.proc is None:
            raise TestbedError("aup-milter was not started by this process")
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TestbedError(
                f"aup-milter (pid {self.proc.pid}) still running after {timeout:g}s"
                f"{tail(self.log_path)}"
            ) from None

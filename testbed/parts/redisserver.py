"""The one launcher of a private redis-server, for the stack and for the tests.

No persistence, loopback only, in the foreground under its own session
rather than ``--daemonize``: the pid is known at once and the same stop path
works for every part. ``stop()`` then ``start()`` keeps the port, so a test
can take Redis away and bring it back where clients expect it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import redis

from testbed.parts.service import HOST, Service, require_free_port
from testbed.proc import TestbedError, free_port, run

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# redis-server rewrites its command line to "PATH HOST:PORT"; this part of it stays.
MARKER = "redis-server"


class RedisServer(Service):
    """redis-server on ``host:port`` (a free port when none is given), run from ``run_dir``."""

    def __init__(
        self,
        run_dir: Path,
        port: int | None = None,
        *,
        host: str = HOST,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(run_dir, stem="redis", marker=MARKER, what="redis-server", timeout=timeout)
        self.host = host
        self.port = port or free_port(host)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self) -> redis.Redis:
        """A redis-py client that decodes replies (the caller closes it)."""
        return redis.Redis(
            host=self.host, port=self.port, db=0, decode_responses=True, socket_timeout=5
        )

    def argv(self) -> list[str]:
        return [
            REDIS_SERVER,
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--pidfile", str(self.pidfile),
            "--dir", str(self.run_dir),
            "--logfile", "",
        ]  # fmt: skip

    def start(self) -> None:
        """Start it unless it already runs from ``run_dir``; return once it answers PING."""
        if self.running:
            return
        require_free_port(self.host, self.port, self.what, self.run_dir)
        try:
            self.launch(self.argv())
        except FileNotFoundError:
            raise TestbedError(
                f"{REDIS_SERVER} is not installed (run scripts/bootstrap.sh)"
            ) from None
        self.wait_ready(self.ping)

    def ping(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def cli(self, *args: str) -> str:
        """Run one redis-cli command (as ops would type it); its reply as text."""
        argv = ["redis-cli", "-h", self.host, "-p", str(self.port), *args]
        done = run(argv, what=f"redis-cli {' '.join(args)}", timeout=10.0)
        reply = done.stdout.strip()
        if reply.startswith(("ERR", "WRONGTYPE", "(error)")) or "Could not connect" in done.stderr:
            raise TestbedError(f"redis-cli {' '.join(args)}: {reply or done.stderr.strip()}")
        return reply

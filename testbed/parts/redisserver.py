"""The one launcher of a private redis-server, for the stack and for the tests.

No persistence unless asked (``persistence=True``: an append-only file
fsynced at every write, so a SIGKILLed server comes back with every
acknowledged write), loopback only, in the foreground under its own session
rather than ``--daemonize``: the pid is known at once and the same stop path
works for every part. ``stop()`` then ``start()`` keeps the port, so a test
can take Redis away and bring it back where clients expect it.
"""

from __future__ import annotations

import shutil
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from testbed.parts.service import HOST, Service, require_free_port
from testbed.parts.tlsfiles import TlsFiles
from testbed.proc import TestbedError, free_port, run

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# redis-server rewrites its command line to "PATH HOST:PORT"; this part of it stays.
MARKER = "redis-server"


class RedisServer(Service):
    """redis-server on ``host:port`` (a free port when none is given), run from ``run_dir``.

    With ``unix_socket`` it listens on that socket (owner only), and on TCP
    only when ``port`` is given too: the tests of ``unix://`` URLs must prove
    the socket alone carries them. ``password`` is the default user's
    (``requirepass``); ``acl_users`` are ACL rules, one user each, as
    ``ACL SETUSER`` takes them (``"milter on >secret ~aup:* +@all"``).
    Clients made here (``client``, ``cli``, ``url``) use the socket when
    there is one, and the default user's password. ``persistence`` keeps an
    append-only file in ``run_dir`` (``appendfsync always``).
    """

    def __init__(
        self,
        run_dir: Path,
        port: int | None = None,
        *,
        host: str = HOST,
        unix_socket: Path | None = None,
        password: str | None = None,
        acl_users: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        persistence: bool = False,
        tls: TlsFiles | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(run_dir, stem="redis", marker=MARKER, what="redis-server", timeout=timeout)
        self.host = host
        self.unix_socket = unix_socket
        # Port 0 keeps redis-server off TCP altogether.
        self.port = port or (0 if unix_socket is not None else free_port(host))
        self.password = password
        self.acl_users = tuple(acl_users)
        self.extra_args = tuple(extra_args)
        """More `--option value` words (a cluster node's, a replica's `--replicaof`)."""
        self.persistence = persistence
        self.tls = tls
        """TLS only (`--tls-port`, no plain port), replication and cluster bus too."""

    @property
    def url(self) -> str:
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        if self.unix_socket is not None:
            return f"unix://{auth}{self.unix_socket}?db=0"
        if self.tls is not None:
            return f"rediss://{auth}{self.host}:{self.port}/0?ssl_ca_certs={self.tls.ca}"
        return f"redis://{auth}{self.host}:{self.port}/0"

    def client(self) -> redis.Redis:
        """A redis-py client that decodes replies (the caller closes it)."""
        if self.unix_socket is not None:
            return redis.Redis(
                unix_socket_path=str(self.unix_socket), password=self.password, db=0,
                decode_responses=True, socket_timeout=5,
            )  # fmt: skip
        tls: dict[str, Any] = (
            {"ssl": True, "ssl_ca_certs": str(self.tls.ca)} if self.tls is not None else {}
        )
        return redis.Redis(
            host=self.host, port=self.port, db=0, password=self.password,
            decode_responses=True, socket_timeout=5, **tls,
        )  # fmt: skip

    def argv(self) -> list[str]:
        argv = [
            REDIS_SERVER,
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "yes" if self.persistence else "no",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--pidfile", str(self.pidfile),
            "--dir", str(self.run_dir),
            "--logfile", "",
            # DEBUG SLEEP makes a slow Redis for the fault tests; loopback clients only.
            "--enable-debug-command", "local",
        ]  # fmt: skip
        if self.unix_socket is not None:
            argv += ["--unixsocket", str(self.unix_socket), "--unixsocketperm", "700"]
        if self.password is not None:
            argv += ["--requirepass", self.password]
        for rule in self.acl_users:
            argv += ["--user", *rule.split()]
        if self.tls is not None:
            argv[argv.index("--port") + 1] = "0"
            argv += [
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert),
                "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca),
                "--tls-auth-clients", "no",
                "--tls-replication", "yes",
                "--tls-cluster", "yes",
            ]  # fmt: skip
        return argv + list(self.extra_args)

    def start(self) -> None:
        """Start it unless it already runs from ``run_dir``; return once it answers PING."""
        if self.running:
            return
        if self.port:
            require_free_port(self.host, self.port, self.what, self.run_dir)
        try:
            self.launch(self.argv())
        except FileNotFoundError:
            raise TestbedError(
                f"{REDIS_SERVER} is not installed (run scripts/bootstrap.sh)"
            ) from None
        self.wait_ready(self.ping)
        self._require_own_answer()

    def _require_own_answer(self) -> None:
        """Fail loudly when the server that answered PING is not the one just launched.

        Two checkouts' test runs on one host (a chroot shares the host's network
        and pids) can race for a freed port; a test that then talks to the other
        run's Redis fails far from the cause.
        """
        assert self.proc is not None
        with self.client() as client:
            answered = int(client.info("server").get("process_id", -1))
        if answered != self.proc.pid:
            raise TestbedError(
                f"{self.what} on {self.host}:{self.port}: pid {answered} answers, not the"
                f" pid {self.proc.pid} this test bed launched (another run uses the port)"
            )

    def ping(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def cli(self, *args: str) -> str:
        """Run one redis-cli command (as ops would type it); its reply as text."""
        if self.unix_socket is not None:
            argv = ["redis-cli", "-s", str(self.unix_socket)]
        else:
            argv = ["redis-cli", "-h", self.host, "-p", str(self.port)]
            if self.tls is not None:
                argv += ["--tls", "--cacert", str(self.tls.ca)]
        if self.password is not None:
            argv += ["--no-auth-warning", "-a", self.password]
        done = run([*argv, *args], what=f"redis-cli {' '.join(args)}", timeout=10.0)
        reply = done.stdout.strip()
        if reply.startswith(("ERR", "WRONGTYPE", "(error)")) or "Could not connect" in done.stderr:
            raise TestbedError(f"redis-cli {' '.join(args)}: {reply or done.stderr.strip()}")
        return reply

"""The processes behind the milter-protocol tests: a private Redis and the real daemon.

Nothing here is mocked: the tests talk the milter protocol (``mta.py``) to
``python -m aupmilter run`` in a subprocess, backed by a real redis-server on
a free loopback port. Tenants are made with the real CLI or written with
redis-py per the key schema in ``aupmilter.store.keys``. The daemon's stderr
(JSON log lines) goes to a file the tests read.

Every wait is bounded; a timeout fails with the tail of the relevant log.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from testbed import toml
from testbed.parts.daemon import MilterDaemon
from testbed.parts.service import python_env
from tests.milter.mta import MilterClient, MilterError
from tests.support import STARTUP_TIMEOUT, RedisServer, tail, wait_until

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
PLANS_DIR = REPO_ROOT / "policies"
LOG_TIMEOUT = 5.0


def short_tempdir() -> Path:
    """A directory whose socket paths fit in sun_path (108 bytes), unlike pytest's tmp_path."""
    return Path(tempfile.mkdtemp(prefix="aupm-", dir="/tmp"))


# --- the daemon ----------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """Our environment, with the checkout's source roots for finding ``aupmilter``."""
    return python_env()


DNS_TIMEOUT = 0.5
DNS_LIFETIME = 1.0
"""Short, so the tests of names that never answer stay quick."""


def daemon_settings(
    listen: str,
    redis_url: str,
    dns_address: str | None = None,
    **overrides: Mapping[str, object],
) -> dict[str, dict[str, object]]:
    settings: dict[str, dict[str, object]] = {
        "milter": {"listen": listen, "socket_mode": "0600", "shutdown_grace": 5, "workers": 1},
        "redis": {"url": redis_url},
        "policy": {
            "on_store_error": "tempfail",
            "unknown_sender": "reject",
            "plans_dir": str(PLANS_DIR),
        },
        "log": {"format": "json", "level": "debug"},
        # No metrics endpoint unless a test asks for one (on a free port): many daemons run.
        "metrics": {"listen": ""},
    }
    if dns_address is not None:
        settings["dns"] = {
            "nameservers": [dns_address],
            "timeout": DNS_TIMEOUT,
            "lifetime": DNS_LIFETIME,
        }
    for table, values in overrides.items():
        settings.setdefault(table, {}).update(values)
    return settings


class DaemonLog:
    """The daemon's stderr: JSON lines (anything else is kept as {'raw': line})."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def text(self) -> str:
        try:
            return self.path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def mark(self) -> int:
        """Position to pass as ``since`` to look only at lines written from now on."""
        return len(self.entries())

    def entries(self, since: int = 0) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for line in self.text().splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = {"raw": line}
            out.append(entry if isinstance(entry, dict) else {"raw": line})
        return out[since:]

    def matching(
        self,
        msg_contains: str | None = None,
        *,
        since: int = 0,
        level: str | None = None,
        logger: str | None = None,
        **fields: object,
    ) -> list[dict[str, Any]]:
        found = []
        for entry in self.entries(since):
            if msg_contains is not None and msg_contains not in str(entry.get("msg", "")):
                continue
            if level is not None and entry.get("level") != level:
                continue
            if logger is not None and entry.get("logger") != logger:
                continue
            if any(entry.get(k) != v for k, v in fields.items()):
                continue
            found.append(entry)
        return found

    def wait_for(
        self,
        msg_contains: str | None = None,
        *,
        since: int = 0,
        timeout: float = LOG_TIMEOUT,
        level: str | None = None,
        logger: str | None = None,
        **fields: object,
    ) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            found = self.matching(msg_contains, since=since, level=level, logger=logger, **fields)
            return found[0] if found else None

        what = f"a log line {msg_contains!r} {fields or ''} in {self.path.name}"
        return wait_until(probe, timeout=timeout, what=what, on_timeout=lambda: tail(self.path))

    def verdict(self, queue_id: str, timeout: float = LOG_TIMEOUT) -> dict[str, Any]:
        """The verdict line of the transaction with this queue id (exactly one expected)."""
        first = self.wait_for(logger="aupmilter.verdict", queue_id=queue_id, timeout=timeout)
        found = self.matching(logger="aupmilter.verdict", queue_id=queue_id)
        assert len(found) == 1, f"expected one verdict line for {queue_id}, got {found}"
        return first

    def verdicts(self, since: int = 0) -> list[dict[str, Any]]:
        return self.matching(logger="aupmilter.verdict", since=since)


class Daemon(MilterDaemon):
    """``python -m aupmilter run -c CONFIG`` as a subprocess, with exactly ``settings``.

    The process is the test bed's one daemon launcher; this adds what the
    milter-protocol tests need: the config written from a dict and changed
    in place, the JSON log, and MTA-side clients.
    """

    def __init__(
        self,
        workdir: Path,
        settings: dict[str, dict[str, object]],
        address: str,
        wrapper: Sequence[str] = (),
        pass_fds: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
        umask: int = -1,
    ) -> None:
        super().__init__(
            workdir, workdir / "aup-milter.toml", address,
            wrapper=wrapper, pass_fds=pass_fds, env=env, umask=umask, timeout=STARTUP_TIMEOUT,
        )  # fmt: skip
        self.workdir = workdir
        self.settings = settings
        self.log = DaemonLog(self.log_path)
        self.write_config(settings)

    # --- configuration ---

    def write_config(
        self, settings: Mapping[str, Mapping[str, object]] | None = None, extra: str = ""
    ) -> None:
        """Rewrite the config file in place (as `cat > file` or an editor would)."""
        text = toml.dumps(settings if settings is not None else self.settings) + extra
        with self.config_path.open("w") as handle:
            handle.write(text)

    def reconfigure(self, extra: str = "", **overrides: Mapping[str, object]) -> None:
        settings = {table: dict(values) for table, values in self.settings.items()}
        for table, values in overrides.items():
            settings.setdefault(table, {}).update(values)
        self.write_config(settings, extra)

    # --- process ---

    def start(self, ready: Callable[[], bool] | None = None) -> None:
        """Start and wait until the daemon logged that it listens and accepts a connection.

        The log line matters where the socket exists before the daemon does
        (systemd socket activation): a connect alone would succeed at once.
        """
        mark = self.log.mark()

        def listening() -> bool:
            if not self.log.matching("listening on", since=mark, logger="aupmilter.daemon"):
                return False
            return self.accepts()

        self.spawn()
        self.wait_ready(ready or listening)

    def accepts(self) -> bool:
        try:
            probe = MilterClient(self.address, timeout=2.0)
        except OSError:
            return False
        probe.close()
        return True

    # --- clients ---

    def client(self, timeout: float = 5.0, negotiate: bool = True) -> MilterClient:
        """A connection as an MTA makes it: OPTNEG, CONNECT ({daemon_name}), HELO."""
        client = MilterClient(self.address, timeout)
        if negotiate:
            try:
                client.open_session()
            except (OSError, MilterError):
                client.close()
                raise
        return client


# --- tenants ---------------------------------------------------------------------------


class Tenants:
    """Tenant administration through the real CLI, and raw writes through redis-py."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``aup-milter tenant --redis URL ...``; no config file, so no host config is read."""
        return subprocess.run(
            [
                sys.executable, "-m", "aupmilter", "tenant",
                "-c", "/nonexistent/aup-milter.toml",
                "--redis", self.server.url,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=child_env(),
        )  # fmt: skip

    def add(
        self,
        tenant_id: str,
        plan: str = "standard",
        logins: Sequence[str] = (),
        domains: Sequence[str] = (),
        status: str = "active",
        reason: str = "",
    ) -> None:
        args = ["add", tenant_id, "--plan", plan, "--status", status]
        for login in logins:
            args += ["--login", login]
        for domain in domains:
            args += ["--domain", domain]
        if reason:
            args += ["--reason", reason]
        done = self.cli(*args)
        assert done.returncode == 0, f"tenant add failed: {done.stderr}"

    def set_status(self, tenant_id: str, status: str, reason: str = "") -> None:
        args = ["set-status", tenant_id, status]
        if reason:
            args += ["--reason", reason]
        done = self.cli(*args)
        assert done.returncode == 0, f"tenant set-status failed: {done.stderr}"

    def hset(self, tenant_id: str, **fields: str) -> None:
        """What ops do with redis-cli: HSET aup:tenant:<id> field value ..."""
        with self.server.client() as client:
            client.hset(f"aup:tenant:{tenant_id}", mapping=fields)

    def map_raw(self, kind: str, name: str, tenant_id: str) -> None:
        """SET aup:login:<name> / aup:domain:<name> <tenant> without touching the tenant hash."""
        assert kind in ("login", "domain")
        with self.server.client() as client:
            client.set(f"aup:{kind}:{name}", tenant_id)


StartDaemon = Callable[..., Daemon]


UNSUBSCRIBE_HOST = "unsub.relay.example"


def unsubscribe_folder(folder: Path, extra_plans: str, secret: str) -> Path:
    """``folder`` with the shipped plans plus ``extra_plans`` and a 0600 secrets file."""
    (folder / "policies").mkdir(parents=True)
    shutil.copy(PLANS_DIR / "plans.toml", folder / "policies" / "plans.toml")
    (folder / "policies" / "extra.toml").write_text(extra_plans)
    secrets = folder / "unsubscribe.secrets"
    secrets.write_text(secret + "\n")
    secrets.chmod(0o600)
    return folder


def unsubscribe_settings(folder: Path) -> dict[str, object]:
    """The [unsubscribe] table for a folder made by `unsubscribe_folder`."""
    return {
        "url_base": f"https://{UNSUBSCRIBE_HOST}",
        "mailto_domain": UNSUBSCRIBE_HOST,
        "secrets_file": str(folder / "unsubscribe.secrets"),
    }

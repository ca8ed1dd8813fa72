"""The whole mail path on one machine: Redis, aup-milter, Postfix, and a sink.

One implementation serves ``make demo`` (``python -m testbed demo-up``) and
the end-to-end tests (``tests/e2e/conftest.py``), so what the demo shows is
what the tests check.

Everything lives under ``run_dir``: configs, pidfiles, logs, the Postfix
queue, the delivered mail. ``stop()`` signals only pids read from those
pidfiles, and only while the process still runs with its working directory
inside ``run_dir`` (so a recycled pid or another checkout's stack is never
touched).
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal, get_args

from testbed import postfix as pf
from testbed import toml
from testbed import unsubscribe as unsub
from testbed.client import TOKEN_HEADER
from testbed.dnsserver import answers as dns_answers
from testbed.proc import (
    TestbedError,
    cmdline,
    http_answers,
    is_alive,
    milter_answers,
    read_pidfile,
    run,
    session_members,
    smtp_banner,
    tail,
    tcp_port_free,
    terminate,
    wait_until,
    write_pidfile,
)
from testbed.tenants import DEMO_ACCOUNTS, DEMO_SASL_USERS, Tenant

REPO_ROOT = pf.REPO_ROOT
SAMPLE_CONFIG = REPO_ROOT / "etc" / "aup-milter.toml"
MILTER_SOURCE_ROOT = REPO_ROOT / "milter"
POLICIES_DIR = REPO_ROOT / "policies"


def untraversable_parent(path: Path) -> Path | None:
    """The first existing folder at or above ``path`` that other users cannot enter."""
    for folder in (path, *path.parents):
        if folder.exists() and not folder.stat().st_mode & 0o001:
            return folder
    return None


def port_offset() -> int:
    """``AUP_TESTBED_PORT_OFFSET`` shifts the fixed test ports: checkouts can test side by side."""
    raw = os.environ.get("AUP_TESTBED_PORT_OFFSET", "0")
    if not raw.isdigit() or int(raw) > 20000:
        raise ValueError(f"AUP_TESTBED_PORT_OFFSET: expected a number from 0 to 20000, got {raw!r}")
    return int(raw)


def default_run_dir(name: str) -> Path:
    """``run/NAME`` in the checkout, or /var/tmp when ``postfix`` cannot reach the checkout.

    smtpd runs as ``postfix`` and must traverse to the milter socket and the
    sasldb; a checkout under a private directory (mode 0700 above it) cannot
    host the run folder.
    """
    preferred = REPO_ROOT / "run" / name
    if untraversable_parent(preferred) is None:
        return preferred
    return Path("/var/tmp") / f"aup-milter-{name}-{os.getuid()}"


HOST = "127.0.0.1"
# Marks a folder as a testbed run folder: only such a folder is ever wiped.
RUN_DIR_MARKER = ".testbed-run-dir"

# "files": testbed.sink keeps every message as an .eml file (what the tests read);
# "smtp-sink": Postfix's own smtp-sink, which discards mail (for benchmarks).
SinkKind = Literal["files", "smtp-sink"]
# smtp-sink refuses to run as root unless told whose privileges to drop to.
SMTP_SINK_USER = "postfix"
SMTP_SINK_BACKLOG = 256


@dataclass(frozen=True)
class SinkMessage:
    """One message delivered to the sink, with the envelope the sink recorded."""

    path: Path
    mail_from: str
    rcpt_to: tuple[str, ...]
    message: EmailMessage

    @property
    def raw(self) -> bytes:
        return self.path.read_bytes()


class Stack:
    """A private Redis + aup-milter + Postfix + SMTP sink under ``run_dir``.

    ``milter_config_extra`` is TOML merged into the generated
    ``aup-milter.toml`` (its keys win); ``sasl_realm`` sets ``smtpd_sasl_local_domain``
    (then the milter sees ``{auth_authen}`` as ``login@realm``);
    ``postfix_overrides`` are main.cf settings applied last;
    ``milter_command`` replaces the real daemon (argv; ``{config}`` and
    ``{socket}`` are substituted), and ``with_milter=False`` runs Postfix
    without any milter. With a milter, a ``testbed.dnsserver`` serving
    ``testbed.zones`` (plus ``dns_records``, zone-file lines) listens on
    ``dns_port`` (default: the sink's port + 1) and the milter resolves with it.
    ``sink="smtp-sink"`` runs Postfix's ``smtp-sink`` (which keeps nothing)
    instead of the file-writing ``testbed.sink``.
    ``extra_plans`` is a plan file (TOML) served beside the shipped ones.
    ``unsubscribe=True`` (the demo, the end-to-end tests) adds the one-click
    unsubscribe: ``[unsubscribe]`` and ``[dkim]`` in the milter config, the
    web service (``aup-milter web``) on ``web_port`` (default: the sink's port
    + 2), and the mailto intake in Postfix (``postfix-sample/*.intake``) with a
    milter-free listener on ``intake_port`` (default: the sink's port + 3);
    see ``testbed.unsubscribe``.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        redis_port: int,
        smtp_port: int,
        sink_port: int,
        milter_config_extra: str = "",
        extra_plans: str = "",
        sasl_realm: str | None = None,
        sasl_users: Mapping[str, str] = DEMO_SASL_USERS,
        postfix_overrides: Mapping[str, str] | None = None,
        milter_command: Sequence[str] | None = None,
        with_milter: bool = True,
        dns_port: int | None = None,
        dns_records: Sequence[str] = (),
        unsubscribe: bool = False,
        web_port: int | None = None,
        intake_port: int | None = None,
        sink: SinkKind = "files",
        python: str = sys.executable,
        timeout: float = 30.0,
    ) -> None:
        if sink not in get_args(SinkKind):
            raise ValueError(f"sink must be one of {get_args(SinkKind)}, not {sink!r}")
        self.run_dir = Path(run_dir).resolve()
        self.redis_port = redis_port
        self.smtp_port = smtp_port
        self.sink_port = sink_port
        self.milter_config_extra = milter_config_extra
        self.extra_plans = extra_plans
        self.sasl_realm = sasl_realm
        self.sasl_users = dict(sasl_users)
        self.postfix_overrides = dict(postfix_overrides or {})
        self.milter_command = list(milter_command) if milter_command is not None else None
        self.with_milter = with_milter
        self.dns_port = dns_port if dns_port is not None else sink_port + 1
        self.dns_records = list(dns_records)
        self.unsubscribe = unsubscribe and with_milter
        self.web_port = web_port if web_port is not None else sink_port + 2
        self.intake_port = intake_port if intake_port is not None else sink_port + 3
        self.sink = sink
        self.python = python
        self.timeout = timeout
        self.postfix = pf.PostfixLayout(self.run_dir)
        # Our own children, kept so that we can reap them (no zombies in long test runs).
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # ---- paths ---------------------------------------------------------------

    @property
    def host(self) -> str:
        return HOST

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}/0"

    @property
    def redis_pidfile(self) -> Path:
        return self.run_dir / "redis.pid"

    @property
    def redis_log(self) -> Path:
        return self.run_dir / "redis.log"

    @property
    def milter_config(self) -> Path:
        return self.run_dir / "aup-milter.toml"

    @property
    def milter_socket(self) -> Path:
        return self.run_dir / "milter.sock"

    @property
    def milter_pidfile(self) -> Path:
        return self.run_dir / "milter.pid"

    @property
    def milter_log(self) -> Path:
        return self.run_dir / "milter.log"

    @property
    def sink_pidfile(self) -> Path:
        return self.run_dir / "sink.pid"

    @property
    def sink_log(self) -> Path:
        return self.run_dir / "sink.log"

    @property
    def dns_pidfile(self) -> Path:
        return self.run_dir / "dns.pid"

    @property
    def dns_log(self) -> Path:
        return self.run_dir / "dns.log"

    @property
    def dns_records_file(self) -> Path:
        return self.run_dir / "dns-records.txt"

    @property
    def mail_dir(self) -> Path:
        return self.run_dir / "mail"

    def auth_authen(self, login: str) -> str:
        """What the milter sees in ``{auth_authen}`` after ``login`` authenticated."""
        return f"{login}@{self.sasl_realm}" if self.sasl_realm else login

    # ---- whole stack ---------------------------------------------------------

    def start(self, *, clean: bool = False) -> None:
        """Bring every component up; return once each one answers.

        Components already running (from this run folder) are kept and get
        their configuration rewritten (Postfix is reloaded, the milter
        reloads its config file by itself). ``clean`` first stops everything
        and wipes the run folder (queue, mail, logs). If anything fails,
        whatever was started is stopped again before the error propagates.
        """
        if clean:
            self.stop()
            self.wipe()
        self._prepare_run_dir()
        try:
            self.start_redis()
            self.start_sink()
            if self.with_milter:
                self.start_dns()
                self.start_milter()
                if self.unsubscribe:
                    self.start_web()
            self.start_postfix()
        except BaseException:
            self._stop_quietly()
            raise

    def stop(self) -> None:
        """Stop every component this run folder started. Idempotent."""
        errors: list[str] = []
        stops = (
            self.stop_postfix,
            self.stop_web,
            self.stop_milter,
            self.stop_dns,
            self.stop_sink,
            self.stop_redis,
        )
        for stop in stops:
            try:
                stop()
            except TestbedError as exc:
                errors.append(str(exc))
        if errors:
            raise TestbedError("stopping the testbed left problems:\n" + "\n".join(errors))

    def _stop_quietly(self) -> None:
        # The original error matters more than a follow-up one while cleaning up.
        try:
            self.stop()
        except TestbedError as exc:
            print(f"testbed: while cleaning up: {exc}", file=sys.stderr)

    def wipe(self) -> None:
        """Delete the run folder (only if it is one: it carries our marker file)."""
        if not self.run_dir.exists():
            return
        if not (self.run_dir / RUN_DIR_MARKER).exists():
            raise TestbedError(
                f"refusing to wipe {self.run_dir}: it has no {RUN_DIR_MARKER} marker, "
                "so it was not created by the testbed"
            )
        running = {name: pid for name, pid in self.status().items() if pid is not None}
        if running:
            raise TestbedError(f"refusing to wipe {self.run_dir}: still running: {running}")
        shutil.rmtree(self.run_dir)

    def status(self) -> dict[str, int | None]:
        """Pid of each component that is running from this run folder, else None."""
        return {
            "redis": self._redis_pid(),
            "sink": self._sink_pid(),
            "dns": self._dns_pid(),
            "milter": self._milter_pid(),
            "web": self._web_pid(),
            "postfix": self._postfix_pid(),
        }

    def _prepare_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / RUN_DIR_MARKER).touch()
        # smtpd and the other Postfix daemons run as `postfix`: they must
        # traverse into the run folder to reach the milter socket and sasldb.
        folder = untraversable_parent(self.run_dir)
        if folder is not None:
            raise TestbedError(
                f"{folder} is not traversable by other users (mode "
                f"{folder.stat().st_mode & 0o777:o}); the postfix user cannot reach "
                f"{self.run_dir}. Use a run folder outside such a directory."
            )

    def _owned(self, pidfile: Path, marker: str) -> int | None:
        """Pid in ``pidfile`` if alive, its cmdline has ``marker`` and it runs in our run folder."""
        pid = read_pidfile(pidfile)
        if pid is None or not is_alive(pid) or marker not in cmdline(pid):
            return None
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            return None
        return pid if cwd == self.run_dir or self.run_dir in cwd.parents else None

    def _require_free_port(self, port: int, what: str) -> None:
        if not tcp_port_free(HOST, port):
            raise TestbedError(
                f"cannot start {what}: {HOST}:{port} is already in use by a process "
                f"that is not this testbed's (run folder {self.run_dir}); "
                "stop it or choose another port"
            )

    def _spawn(self, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> int:
        with open(log, "ab") as log_fh:
            child = subprocess.Popen(
                list(argv),
                cwd=self.run_dir,
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                # Own session: a Ctrl-C in the demo's terminal does not reach
                # it, and stop() can clean up its whole session.
                start_new_session=True,
            )
        self._children[child.pid] = child
        return child.pid

    def _terminate(self, pid: int, what: str) -> None:
        terminate(pid, timeout=10.0, what=what)
        child = self._children.pop(pid, None)
        if child is not None:
            child.wait(timeout=5.0)

    def _wait_ready(self, what: str, pid: int, probe: Callable[[], bool], log: Path) -> None:
        """Wait for ``probe``; fail early (with the log) if the process dies first."""

        def ready() -> bool:
            if probe():
                return True
            if not is_alive(pid):
                raise TestbedError(f"{what} (pid {pid}) exited during startup{tail(log)}")
            return False

        wait_until(
            ready, timeout=self.timeout, what=f"{what} to get ready", on_timeout=lambda: tail(log)
        )

    # ---- redis ---------------------------------------------------------------

    def _redis_pid(self) -> int | None:
        return self._owned(self.redis_pidfile, "redis-server")

    def start_redis(self) -> None:
        self._prepare_run_dir()
        if self._redis_pid() is not None:
            return
        self._require_free_port(self.redis_port, "redis-server")
        self.redis_pidfile.unlink(missing_ok=True)
        # Foreground under our own session rather than --daemonize: the pid is
        # known at once, and the same stop path works for every component.
        pid = self._spawn(
            _argv(
                "redis-server",
                bind=HOST,
                port=self.redis_port,
                save="",
                appendonly="no",
                daemonize="no",
                pidfile=self.redis_pidfile,
                dir=self.run_dir,
                logfile="",
            ),
            self.redis_log,
        )
        write_pidfile(self.redis_pidfile, pid)
        self._wait_ready("redis-server", pid, lambda: self._redis_ping() == "PONG", self.redis_log)

    def stop_redis(self) -> None:
        pid = self._redis_pid()
        if pid is not None:
            self._terminate(pid, "redis-server")
        self.redis_pidfile.unlink(missing_ok=True)

    def _redis_ping(self) -> str:
        done = run(self._redis_cli_argv("PING"), what="redis ping", timeout=5.0, check=False)
        return done.stdout.strip()

    def _redis_cli_argv(self, *args: str) -> list[str]:
        return ["redis-cli", "-h", HOST, "-p", str(self.redis_port), *args]

    def redis_cli(self, *args: str) -> str:
        """Run one redis-cli command against the stack's Redis; its reply as text."""
        done = run(self._redis_cli_argv(*args), what=f"redis-cli {' '.join(args)}", timeout=10.0)
        reply = done.stdout.strip()
        if reply.startswith(("ERR", "WRONGTYPE", "(error)")) or "Could not connect" in done.stderr:
            raise TestbedError(f"redis-cli {' '.join(args)}: {reply or done.stderr.strip()}")
        return reply

    # ---- sink ----------------------------------------------------------------

    def _sink_pid(self) -> int | None:
        return self._owned(
            self.sink_pidfile, "smtp-sink" if self.sink == "smtp-sink" else "testbed.sink"
        )

    def start_sink(self) -> None:
        self._prepare_run_dir()
        if self._sink_pid() is not None:
            return
        self._require_free_port(self.sink_port, "the SMTP sink")
        self.sink_pidfile.unlink(missing_ok=True)
        if self.sink == "smtp-sink":
            self._start_smtp_sink()
            return
        self.mail_dir.mkdir(exist_ok=True)
        pid = self._spawn(
            _argv(
                self.python,
                "-m",
                "testbed.sink",
                host=HOST,
                port=self.sink_port,
                maildir=self.mail_dir,
                pidfile=self.sink_pidfile,
            ),
            self.sink_log,
            env=self._python_env(),
        )
        # The sink writes its pidfile itself once bound; accepting SMTP is the real test.
        self._wait_ready(
            "SMTP sink",
            pid,
            lambda: self.sink_pidfile.exists() and smtp_banner(HOST, self.sink_port) is not None,
            self.sink_log,
        )

    def _start_smtp_sink(self) -> None:
        # smtp-sink has no pidfile option: record the pid ourselves, as for Redis.
        argv = [
            "smtp-sink",
            "-u",
            SMTP_SINK_USER,
            f"{HOST}:{self.sink_port}",
            str(SMTP_SINK_BACKLOG),
        ]
        try:
            pid = self._spawn(argv, self.sink_log)
        except FileNotFoundError:
            raise TestbedError(
                "smtp-sink is not installed (it comes with the postfix package)"
            ) from None
        write_pidfile(self.sink_pidfile, pid)
        self._wait_ready(
            "smtp-sink", pid, lambda: smtp_banner(HOST, self.sink_port) is not None, self.sink_log
        )

    def stop_sink(self) -> None:
        pid = self._sink_pid()
        if pid is not None:
            self._terminate(pid, "SMTP sink")
        self.sink_pidfile.unlink(missing_ok=True)

    def sink_messages(self) -> list[SinkMessage]:
        """Messages delivered so far, oldest first."""
        return [_read_sink_message(path) for path in sorted(self.mail_dir.glob("*.eml"))]

    def find_sink_message(self, token: str) -> SinkMessage | None:
        """The delivered message carrying ``token`` (see testbed.client.make_message)."""
        for message in self.sink_messages():
            if message.message.get(TOKEN_HEADER) == token:
                return message
        return None

    def wait_for_sink(self, token: str, timeout: float = 20.0) -> SinkMessage:
        """Wait until the message carrying ``token`` reached the sink."""
        return wait_until(
            lambda: self.find_sink_message(token),
            timeout=timeout,
            what=f"the message with {TOKEN_HEADER} {token} in {self.mail_dir}",
            on_timeout=self._mail_diagnostics,
        )

    def clear_sink(self) -> None:
        for path in self.mail_dir.glob("*.eml"):
            path.unlink(missing_ok=True)

    # ---- dns -----------------------------------------------------------------

    def _dns_pid(self) -> int | None:
        return self._owned(self.dns_pidfile, "testbed.dnsserver")

    def start_dns(self) -> None:
        """The test zones on ``dns_port`` (UDP and TCP); kept if already running from here.

        A running server keeps the records it started with: restart it (``stop_dns``)
        after changing ``dns_records``.
        """
        self._prepare_run_dir()
        if self._dns_pid() is not None:
            return
        self._require_free_port(self.dns_port, "the DNS server")
        self.dns_pidfile.unlink(missing_ok=True)
        self.dns_records_file.write_text("".join(f"{line}\n" for line in self.dns_records))
        pid = self._spawn(
            _argv(
                self.python,
                "-m",
                "testbed.dnsserver",
                host=HOST,
                port=self.dns_port,
                pidfile=self.dns_pidfile,
                records=self.dns_records_file,
            ),
            self.dns_log,
            env=self._python_env(),
        )
        self._wait_ready(
            "DNS server",
            pid,
            lambda: self.dns_pidfile.exists() and dns_answers(HOST, self.dns_port),
            self.dns_log,
        )

    def stop_dns(self) -> None:
        pid = self._dns_pid()
        if pid is not None:
            self._terminate(pid, "DNS server")
        self.dns_pidfile.unlink(missing_ok=True)

    # ---- milter --------------------------------------------------------------

    def _milter_pid(self) -> int | None:
        marker = "aupmilter" if self.milter_command is None else self.milter_command[0]
        return self._owned(self.milter_pidfile, marker)

    def milter_settings(self) -> dict[str, Any]:
        """The shipped sample config, pointed at this stack, with ``milter_config_extra`` merged in.

        Starting from ``etc/aup-milter.toml`` keeps the sample honest: the demo
        and every end-to-end test run with it.
        """
        with SAMPLE_CONFIG.open("rb") as handle:
            base: dict[str, Any] = tomllib.load(handle)
        base["milter"]["listen"] = f"unix:{self.milter_socket}"
        base["redis"]["url"] = self.redis_url
        base["policy"]["plans_dir"] = str(self.plans_dir)
        # The stack's own DNS server: short timeouts keep the failure cases quick.
        base["dns"] = {"nameservers": [f"{HOST}:{self.dns_port}"], "timeout": 1.0, "lifetime": 2.0}
        if self.unsubscribe:
            base.update(unsub.milter_sections(self.run_dir, self.web_port))
        return toml.merged(base, self.milter_config_extra)

    @property
    def plans_dir(self) -> Path:
        return self.run_dir / "policies" if self.extra_plans else POLICIES_DIR

    def write_plans(self) -> None:
        """The shipped plan files plus ``extra_plans``, when there are extra plans."""
        if not self.extra_plans:
            return
        self.plans_dir.mkdir(exist_ok=True)
        for shipped in POLICIES_DIR.glob("*.toml"):
            (self.plans_dir / shipped.name).write_text(shipped.read_text())
        (self.plans_dir / "testbed-extra.toml").write_text(self.extra_plans)

    def milter_config_text(self) -> str:
        header = "# Generated by testbed.stack from etc/aup-milter.toml; rewritten on start.\n"
        return header + toml.dumps(self.milter_settings())

    def write_milter_config(self, text: str | None = None) -> None:
        """(Re)write aup-milter.toml atomically; the running daemon reloads it by itself.

        ``text`` replaces the whole file; by default it is the generated one.
        """
        content = self.milter_config_text() if text is None else text
        tmp = self.milter_config.with_name(self.milter_config.name + ".tmp")
        tmp.write_text(content)
        tmp.replace(self.milter_config)

    def _milter_argv(self) -> list[str]:
        if self.milter_command is None:
            return [self.python, "-m", "aupmilter", "run", "-c", str(self.milter_config)]
        return [
            arg.replace("{config}", str(self.milter_config)).replace(
                "{socket}", str(self.milter_socket)
            )
            for arg in self.milter_command
        ]

    def _python_env(self) -> dict[str, str]:
        # Works from a checkout without `pip install -e .`: the daemon's source
        # root and this repo (for testbed itself) go first on the path.
        env = dict(os.environ)
        paths = [str(MILTER_SOURCE_ROOT), str(REPO_ROOT)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    def start_milter(self) -> None:
        self._prepare_run_dir()
        if self.unsubscribe:
            unsub.prepare_files(self.run_dir)
        self.write_plans()
        self.write_milter_config()
        if self._milter_pid() is not None:
            return
        self.milter_socket.unlink(missing_ok=True)
        pid = self._spawn(self._milter_argv(), self.milter_log, env=self._python_env())
        write_pidfile(self.milter_pidfile, pid)
        self._wait_ready("aup-milter", pid, self.milter_ready, self.milter_log)

    def milter_ready(self) -> bool:
        return self.milter_socket.is_socket() and milter_answers(self.milter_socket)

    def stop_milter(self) -> None:
        pid = self._milter_pid()
        if pid is not None:
            self._terminate(pid, "aup-milter")
        self.milter_pidfile.unlink(missing_ok=True)
        # A leftover socket would make the next start's readiness probe racy.
        if self.milter_socket.is_socket():
            self.milter_socket.unlink()

    def restart_milter(self) -> None:
        self.stop_milter()
        self.start_milter()

    # ---- the unsubscribe web service --------------------------------------------

    @property
    def web_pidfile(self) -> Path:
        return self.run_dir / "web.pid"

    @property
    def web_log(self) -> Path:
        return self.run_dir / "web.log"

    @property
    def web_url(self) -> str:
        return f"http://{HOST}:{self.web_port}"

    def _web_pid(self) -> int | None:
        return self._owned(self.web_pidfile, "aupmilter")

    def start_web(self) -> None:
        """``aup-milter web`` with the milter's config; kept if already running from here."""
        self._prepare_run_dir()
        if self._web_pid() is not None:
            return
        self._require_free_port(self.web_port, "the unsubscribe web service")
        argv = [self.python, "-m", "aupmilter", "web", "-c", str(self.milter_config)]
        pid = self._spawn(argv, self.web_log, env=self._python_env())
        write_pidfile(self.web_pidfile, pid)
        self._wait_ready(
            "unsubscribe web service",
            pid,
            lambda: http_answers(HOST, self.web_port, "/healthz"),
            self.web_log,
        )

    def stop_web(self) -> None:
        pid = self._web_pid()
        if pid is not None:
            self._terminate(pid, "unsubscribe web service")
        self.web_pidfile.unlink(missing_ok=True)

    # ---- postfix -------------------------------------------------------------

    def _postfix_pid(self) -> int | None:
        return self._owned(self.postfix.master_pidfile, "master")

    def _postfix_argv(self, *args: str) -> list[str]:
        return ["postfix", "-c", str(self.postfix.config_dir), *args]

    def write_postfix_config(self) -> None:
        layout = self.postfix
        layout.config_dir.mkdir(parents=True, exist_ok=True)
        layout.sasl_conf.parent.mkdir(exist_ok=True)
        layout.queue_dir.mkdir(exist_ok=True)
        layout.data_dir.mkdir(exist_ok=True)
        shutil.chown(layout.data_dir, "postfix", "postfix")
        (layout.config_dir / "main.cf").write_text(
            pf.main_cf(
                layout,
                smtp_port=self.smtp_port,
                sink_port=self.sink_port,
                milter_socket=self.milter_socket if self.with_milter else None,
                sasl_realm=self.sasl_realm,
                overrides=self.postfix_overrides,
                extra=unsub.main_cf_lines(self.run_dir) if self.unsubscribe else (),
            )
        )
        master_extra: list[str] = []
        if self.unsubscribe:
            master_extra = unsub.master_cf_lines(self.milter_config, self.intake_port)
            unsub.transport_map(self.run_dir).write_text(unsub.transport_lines())
            map_file = f"hash:{unsub.transport_map(self.run_dir)}"
            run(["postmap", "-c", str(layout.config_dir), map_file], what="postmap")
        (layout.config_dir / "master.cf").write_text(pf.master_cf(self.smtp_port, master_extra))
        layout.sasl_conf.write_text(pf.sasl_smtpd_conf(layout))
        for login, password in self.sasl_users.items():
            self.add_sasl_user(login, password)

    def add_sasl_user(self, login: str, password: str) -> None:
        """Create (or update) a SASL user that can AUTH to the stack's smtpd."""
        argv = ["saslpasswd2", "-p", "-c", "-f", str(self.postfix.sasldb)]
        argv += ["-u", self._sasl_user_realm(), login]
        run(argv, what=f"creating SASL user {login}", input_text=password)
        # smtpd runs as `postfix` and opens the sasldb itself.
        shutil.chown(self.postfix.sasldb, "root", "postfix")
        self.postfix.sasldb.chmod(0o640)

    def _sasl_user_realm(self) -> str:
        # Without smtpd_sasl_local_domain, Postfix hands Cyrus no user realm and
        # Cyrus falls back to the server name Postfix passes: $myhostname (seen
        # in experiments; a user in any other realm fails password verification).
        return self.sasl_realm or pf.MYHOSTNAME

    def start_postfix(self) -> None:
        self._prepare_run_dir()
        self.write_postfix_config()
        if self._postfix_pid() is not None:
            run(self._postfix_argv("reload"), what="postfix reload")
            return
        self._require_free_port(self.smtp_port, "postfix smtpd")
        done = run(self._postfix_argv("start"), what="postfix start", check=False, timeout=60.0)
        if done.returncode != 0:
            raise TestbedError(
                f"`postfix -c {self.postfix.config_dir} start` exited {done.returncode}:\n"
                f"{done.stdout.strip()}\n{done.stderr.strip()}{tail(self.postfix.log_file)}"
            )
        pid = wait_until(
            self._postfix_pid,
            timeout=self.timeout,
            what="the Postfix master process",
            on_timeout=lambda: tail(self.postfix.log_file),
        )
        self._wait_ready(
            "postfix smtpd",
            pid,
            lambda: smtp_banner(HOST, self.smtp_port) is not None,
            self.postfix.log_file,
        )

    def stop_postfix(self) -> None:
        pid = self._postfix_pid()
        if pid is None:
            return
        # `postfix stop` lets master end its children. Master runs in its own
        # session (it calls setsid), so whatever outlives it is found by session id.
        run(self._postfix_argv("stop"), what="postfix stop", check=False, timeout=30.0)
        try:
            wait_until(lambda: not session_members(pid), timeout=10.0, what="postfix to exit")
        except TestbedError:
            for member in session_members(pid):
                terminate(member, timeout=2.0, what="postfix process", session=False)

    def postconf(self, *names: str) -> dict[str, str]:
        """Effective main.cf values of ``names`` in the stack's Postfix."""
        done = run(["postconf", "-c", str(self.postfix.config_dir), *names], what="postconf")
        # An empty value prints as "name =", without the trailing space.
        pairs = (line.partition(" =") for line in done.stdout.splitlines())
        return {name: value.strip() for name, sep, value in pairs if sep}

    def postconf_warnings(self) -> list[str]:
        """What postconf complains about in the generated config (e.g. unknown parameters)."""
        done = run(["postconf", "-c", str(self.postfix.config_dir), "-n"], what="postconf -n")
        return [line for line in done.stderr.splitlines() if line.strip()]

    def reload_postfix(self) -> None:
        self.write_postfix_config()
        run(self._postfix_argv("reload"), what="postfix reload")

    def postfix_log(self) -> str:
        try:
            return self.postfix.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def milter_log_text(self) -> str:
        try:
            return self.milter_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ---- the queue -----------------------------------------------------------

    def queue(self) -> list[dict[str, Any]]:
        """Every queued message, as ``postqueue -j`` describes it."""
        done = run(["postqueue", "-c", str(self.postfix.config_dir), "-j"], what="postqueue -j")
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def hold_queue(self) -> list[dict[str, Any]]:
        """Messages on hold (quarantined by the milter, or held by an admin)."""
        return [entry for entry in self.queue() if entry.get("queue_name") == "hold"]

    def queue_entry(self, queue_id: str) -> dict[str, Any] | None:
        return next((e for e in self.queue() if e.get("queue_id") == queue_id), None)

    def wait_for_queue(
        self, queue_id: str, queue_name: str, timeout: float = 20.0
    ) -> dict[str, Any]:
        """Wait until message ``queue_id`` sits in ``queue_name`` (``hold``, ``deferred``...)."""

        def probe() -> dict[str, Any] | None:
            entry = self.queue_entry(queue_id)
            return entry if entry and entry.get("queue_name") == queue_name else None

        return wait_until(
            probe,
            timeout=timeout,
            what=f"message {queue_id} in the {queue_name} queue",
            on_timeout=self._mail_diagnostics,
        )

    def _mail_diagnostics(self) -> str:
        try:
            queue = "\n".join(json.dumps(entry) for entry in self.queue()) or "(empty)"
        except TestbedError as exc:
            queue = str(exc)
        logs = tail(self.postfix.log_file) + tail(self.milter_log)
        return f"\n--- postqueue -j ---\n{queue}{logs}"

    def postsuper(self, *args: str) -> None:
        run(["postsuper", "-c", str(self.postfix.config_dir), *args], what="postsuper")

    def delete_queued(self, queue: str = "hold") -> None:
        """Delete every message of one queue (``hold``, ``deferred``, ...) or ``ALL``."""
        self.postsuper("-d", "ALL", *([] if queue == "ALL" else [queue]))

    def release_hold(self) -> None:
        """Release every held message and deliver it now.

        Released mail moves to the deferred queue, which qmgr only scans
        every queue_run_delay; the flush makes delivery immediate.
        """
        self.postsuper("-H", "ALL")
        self.flush_queue()

    def flush_queue(self) -> None:
        """Ask Postfix to retry deferred mail now."""
        run(["postqueue", "-c", str(self.postfix.config_dir), "-f"], what="postqueue -f")

    # ---- tenants -------------------------------------------------------------

    def tenant_cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``aup-milter tenant ARGS`` against the stack's Redis."""
        argv = [self.python, "-m", "aupmilter", "tenant", "--redis", self.redis_url, *args]
        return run(argv, what=f"aup-milter tenant {args[0]}", env=self._python_env(), check=check)

    def add_tenant(self, tenant: Tenant) -> None:
        """Register ``tenant`` afresh (replacing any tenant of that id).

        Logins are registered in the form {auth_authen} takes in this stack's
        SASL setup (``login@realm`` when ``sasl_realm`` is set).
        """
        self.remove_tenant(tenant.id)
        logins = [self.auth_authen(login) for login in tenant.logins]
        self.tenant_cli(*tenant.add_args(logins))

    def remove_tenant(self, tenant_id: str) -> None:
        """Remove a tenant and its mappings; a missing tenant is fine."""
        done = self.tenant_cli("remove", tenant_id, check=False)
        if done.returncode != 0 and "no tenant" not in done.stderr:
            raise TestbedError(f"aup-milter tenant remove {tenant_id}: {done.stderr.strip()}")

    def set_tenant_status(self, tenant_id: str, status: str, reason: str = "") -> None:
        self.tenant_cli("set-status", tenant_id, status, "--reason", reason)

    def tenant_info(self, tenant_id: str) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(self.tenant_cli("show", tenant_id, "--json").stdout)
        return info

    def clear_rate_windows(self) -> None:
        """Forget every tenant's window counts (the tests start from empty windows)."""
        found = self.redis_cli("--scan", "--pattern", "aup:{*}:w:*")
        for key in found.splitlines():
            self.redis_cli("DEL", key)

    def add_demo_tenants(self) -> None:
        """The demo's tenants acme and globex, active, with their SASL users."""
        for account in DEMO_ACCOUNTS:
            for login in account.tenant.logins:
                if self.sasl_users.get(login) != account.password:
                    self.sasl_users[login] = account.password
                    self.add_sasl_user(login, account.password)
            self.add_tenant(account.tenant)


def _argv(*words: str, **options: object) -> list[str]:
    """A command line: ``words`` then ``--name value`` for each option (in order)."""
    argv = list(words)
    for name, value in options.items():
        argv += [f"--{name}", str(value)]
    return argv


def _read_sink_message(path: Path) -> SinkMessage:
    raw = path.read_bytes()
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    mail_from = str(message.get("Return-Path", "")).strip().strip("<>")
    rcpts = str(message.get("X-Sink-Rcpt-To", ""))
    rcpt_to = tuple(r.strip().strip("<>") for r in rcpts.split(",") if r.strip())
    return SinkMessage(path=path, mail_from=mail_from, rcpt_to=rcpt_to, message=message)


__all__ = ["HOST", "SinkMessage", "Stack"]

"""The stack's private Postfix instance: its configuration, SASL users, process and queue.

Postfix's master daemonizes itself and writes its own pidfile; ``postfix
-c DIR start|stop|reload`` drives it. Master runs in a session of its own
(it calls setsid), so whatever outlives a stop is found by that session.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from testbed import postfix as pf
from testbed import unsubscribe as unsub
from testbed.parts.service import HOST, owned_pid, require_free_port
from testbed.proc import (
    TestbedError,
    is_alive,
    run,
    session_members,
    smtp_banner,
    tail,
    terminate,
    wait_until,
)

RELOAD_LOGGED = "reload -- version"
"""What master logs on `postfix reload`."""
RELOAD_SETTLE = 0.3
"""Seconds for the old generation's idle daemons to exit after a reload."""


class PostfixInstance:
    """Postfix under ``run_dir``: smtpd on ``smtp_port``, relaying to the sink on ``sink_port``.

    ``milter_socket`` None runs it without any milter; ``sasl_realm`` sets
    ``smtpd_sasl_local_domain``; ``overrides`` are main.cf settings applied
    last; ``intake`` (the milter config and a port) adds the unsubscribe
    mailto intake of ``testbed.unsubscribe``. ``sasl_users`` and
    ``overrides`` are kept by reference and read on every config write.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        smtp_port: int,
        sink_port: int,
        milter_socket: Path | None,
        sasl_realm: str | None,
        sasl_users: dict[str, str],
        overrides: dict[str, str],
        intake: tuple[Path, int] | None = None,
        host: str = HOST,
        timeout: float = 30.0,
    ) -> None:
        self.run_dir = run_dir
        self.layout = pf.PostfixLayout(run_dir)
        self.smtp_port = smtp_port
        self.sink_port = sink_port
        self.milter_socket = milter_socket
        self.sasl_realm = sasl_realm
        self.sasl_users = sasl_users
        self.overrides = overrides
        self.intake = intake
        self.host = host
        self.timeout = timeout

    def auth_authen(self, login: str) -> str:
        """What the milter sees in ``{auth_authen}`` after ``login`` authenticated."""
        return f"{login}@{self.sasl_realm}" if self.sasl_realm else login

    # ---- configuration -------------------------------------------------------

    def write_config(self) -> None:
        layout = self.layout
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
                milter_socket=self.milter_socket,
                sasl_realm=self.sasl_realm,
                overrides=self.overrides,
                extra=unsub.main_cf_lines(self.run_dir) if self.intake else (),
            )
        )
        master_extra: list[str] = []
        if self.intake:
            milter_config, intake_port = self.intake
            master_extra = unsub.master_cf_lines(milter_config, intake_port)
            unsub.transport_map(self.run_dir).write_text(unsub.transport_lines())
            map_file = f"hash:{unsub.transport_map(self.run_dir)}"
            run(["postmap", "-c", str(layout.config_dir), map_file], what="postmap")
        (layout.config_dir / "master.cf").write_text(pf.master_cf(self.smtp_port, master_extra))
        layout.sasl_conf.write_text(pf.sasl_smtpd_conf(layout))
        for login, password in self.sasl_users.items():
            self.add_sasl_user(login, password)

    def add_sasl_user(self, login: str, password: str) -> None:
        """Create (or update) a SASL user that can AUTH to this smtpd."""
        argv = ["saslpasswd2", "-p", "-c", "-f", str(self.layout.sasldb)]
        argv += ["-u", self.sasl_user_realm(), login]
        run(argv, what=f"creating SASL user {login}", input_text=password)
        # smtpd runs as `postfix` and opens the sasldb itself.
        shutil.chown(self.layout.sasldb, "root", "postfix")
        self.layout.sasldb.chmod(0o640)

    def sasl_user_realm(self) -> str:
        # Without smtpd_sasl_local_domain, Postfix hands Cyrus no user realm and
        # Cyrus falls back to the server name Postfix passes: $myhostname (seen
        # in experiments; a user in any other realm fails password verification).
        return self.sasl_realm or pf.MYHOSTNAME

    def postconf(self, *names: str) -> dict[str, str]:
        """Effective main.cf values of ``names``."""
        done = run(["postconf", "-c", str(self.layout.config_dir), *names], what="postconf")
        # An empty value prints as "name =", without the trailing space.
        pairs = (line.partition(" =") for line in done.stdout.splitlines())
        return {name: value.strip() for name, sep, value in pairs if sep}

    def postconf_warnings(self) -> list[str]:
        """What postconf complains about in the generated config (e.g. unknown parameters)."""
        done = run(["postconf", "-c", str(self.layout.config_dir), "-n"], what="postconf -n")
        return [line for line in done.stderr.splitlines() if line.strip()]

    # ---- the process ---------------------------------------------------------

    def running_pid(self) -> int | None:
        """Pid of the master process if it runs from ``run_dir``."""
        return owned_pid(self.layout.master_pidfile, "master", self.run_dir)

    def _postfix(self, *args: str) -> list[str]:
        return ["postfix", "-c", str(self.layout.config_dir), *args]

    def start(self) -> None:
        """Write the config; start Postfix (or reload a running one); return once smtpd greets."""
        self.write_config()
        if self.running_pid() is not None:
            run(self._postfix("reload"), what="postfix reload")
            return
        require_free_port(self.host, self.smtp_port, "postfix smtpd", self.run_dir)
        done = run(self._postfix("start"), what="postfix start", check=False, timeout=60.0)
        if done.returncode != 0:
            raise TestbedError(
                f"`postfix -c {self.layout.config_dir} start` exited {done.returncode}:\n"
                f"{done.stdout.strip()}\n{done.stderr.strip()}{tail(self.layout.log_file)}"
            )
        pid = wait_until(
            self.running_pid,
            timeout=self.timeout,
            what="the Postfix master process",
            on_timeout=lambda: tail(self.layout.log_file),
        )

        def greets() -> bool:
            if smtp_banner(self.host, self.smtp_port) is not None:
                return True
            if not is_alive(pid):
                raise TestbedError(
                    f"postfix smtpd (pid {pid}) exited during startup{tail(self.layout.log_file)}"
                )
            return False

        wait_until(
            greets,
            timeout=self.timeout,
            what="postfix smtpd to get ready",
            on_timeout=lambda: tail(self.layout.log_file),
        )

    def stop(self) -> None:
        pid = self.running_pid()
        if pid is None:
            return
        # `postfix stop` lets master end its children.
        run(self._postfix("stop"), what="postfix stop", check=False, timeout=30.0)
        try:
            wait_until(lambda: not session_members(pid), timeout=10.0, what="postfix to exit")
        except TestbedError:
            for member in session_members(pid):
                terminate(member, timeout=2.0, what="postfix process", session=False)

    def reload(self) -> None:
        """Rewrite the config and reload; return once master logged the reload.

        Master then stops its idle children and starts new ones with the new
        settings (qmgr and cleanup included) as they are needed.
        """
        before = self.log_text().count(RELOAD_LOGGED)
        self.write_config()
        run(self._postfix("reload"), what="postfix reload")
        wait_until(
            lambda: self.log_text().count(RELOAD_LOGGED) > before,
            timeout=self.timeout,
            what="Postfix's master to log the reload",
            on_timeout=lambda: tail(self.layout.log_file),
        )
        # Children of the old generation finish what they are doing first.
        time.sleep(RELOAD_SETTLE)

    @contextmanager
    def settings(self, values: Mapping[str, str]) -> Iterator[None]:
        """main.cf ``values`` in force for the block (Postfix reloaded), the previous ones after.

        For a test that needs Postfix timings the others must not get (a
        short ``maximal_queue_lifetime``, ``delay_warning_time``).
        """
        saved = dict(self.overrides)
        self.overrides.update(values)
        try:
            self.reload()
            yield
        finally:
            self.overrides.clear()
            self.overrides.update(saved)
            self.reload()

    def log_text(self) -> str:
        try:
            return self.layout.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ---- the queue -----------------------------------------------------------

    def queue(self) -> list[dict[str, Any]]:
        """Every queued message, as ``postqueue -j`` describes it."""
        config = str(self.layout.config_dir)
        done = run(["postqueue", "-c", config, "-j"], what="postqueue -j")
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def hold_queue(self) -> list[dict[str, Any]]:
        """Messages on hold (quarantined by the milter, or held by an admin)."""
        return [entry for entry in self.queue() if entry.get("queue_name") == "hold"]

    def queue_entry(self, queue_id: str) -> dict[str, Any] | None:
        return next((e for e in self.queue() if e.get("queue_id") == queue_id), None)

    def wait_for_queue(
        self,
        queue_id: str,
        queue_name: str,
        timeout: float = 20.0,
        on_timeout: Callable[[], str] | None = None,
    ) -> dict[str, Any]:
        """Wait until message ``queue_id`` sits in ``queue_name`` (``hold``, ``deferred``...)."""

        def probe() -> dict[str, Any] | None:
            entry = self.queue_entry(queue_id)
            return entry if entry and entry.get("queue_name") == queue_name else None

        return wait_until(
            probe,
            timeout=timeout,
            what=f"message {queue_id} in the {queue_name} queue",
            on_timeout=on_timeout or (lambda: self.diagnostics()),
        )

    def diagnostics(self, *logs: Path) -> str:
        """The queue and the tails of Postfix's log and ``logs``, for a timeout's message."""
        try:
            queue = "\n".join(json.dumps(entry) for entry in self.queue()) or "(empty)"
        except TestbedError as exc:
            queue = str(exc)
        tails = tail(self.layout.log_file) + "".join(tail(log) for log in logs)
        return f"\n--- postqueue -j ---\n{queue}{tails}"

    def postsuper(self, *args: str) -> None:
        run(["postsuper", "-c", str(self.layout.config_dir), *args], what="postsuper")

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
        run(["postqueue", "-c", str(self.layout.config_dir), "-f"], what="postqueue -f")

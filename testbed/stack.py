"""The whole mail path on one machine: Redis, aup-milter, Postfix, and a sink.

One implementation serves ``make demo`` (``python -m testbed demo-up``), the
end-to-end tests (``tests/e2e/conftest.py``) and the bench, so what the demo
shows is what the tests check and what the bench measures.

Everything lives under ``run_dir``: configs, pidfiles, logs, the Postfix
queue, the delivered mail. Each part is a class of ``testbed.parts``; this
class composes them, keeps their order and owns the run folder. ``stop()``
signals only pids read from the parts' pidfiles, and only while the process
still runs with its working directory inside ``run_dir`` (so a recycled pid
or another checkout's stack is never touched).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from testbed.parts import runfolder
from testbed.parts.daemon import MilterDaemon
from testbed.parts.dnsservice import DnsService
from testbed.parts.milterconfig import MilterConfig
from testbed.parts.postfixinstance import PostfixInstance
from testbed.parts.rdapservice import RdapService
from testbed.parts.redisserver import RedisServer
from testbed.parts.runfolder import default_run_dir, port_offset
from testbed.parts.service import HOST, REPO_ROOT
from testbed.parts.sinkservice import SinkKind, SinkMessage, SinkService
from testbed.parts.tenantadmin import TenantAdmin
from testbed.parts.unsubscribeweb import UnsubscribeWeb
from testbed.proc import TestbedError
from testbed.tenants import DEMO_SASL_USERS


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
    see ``testbed.unsubscribe``. The milter serves its Prometheus metrics on
    ``metrics_port`` (default: the sink's port + 4; the demo's is 8896), at
    ``metrics_url``. ``redis_persistence`` gives Redis an append-only file
    (fsynced at every write), so a killed Redis restarts with its data.
    ``onboarding=True`` (the demo) adds what ``aup-milter tenant
    verify-domain`` needs offline: a ``testbed.rdapserver`` process on
    ``rdap_port`` (default: the sink's port + 5; the demo's is 8897) serving
    the recorded answers, and the milter config's ``[onboarding]
    rdap_bootstrap`` pointing at it, with ``[messages] relay_ips`` the address
    the test zones' SPF authorizes. The end-to-end tests leave it off: the
    few that need RDAP run ``RdapServer`` in process, and the SPF check of
    the other tests' mail stays as the sample has it (no relay addresses).

    The parts are attributes: ``redis``, ``sink_service``, ``dns``, ``rdap``,
    ``milter_conf`` and ``milter`` (the daemon), ``web``, ``relay`` (Postfix)
    and ``tenants``; the methods below are the stack-level view of them.
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
        metrics_port: int | None = None,
        onboarding: bool = False,
        rdap_port: int | None = None,
        sink: SinkKind = "files",
        redis_persistence: bool = False,
        python: str = sys.executable,
        timeout: float = 30.0,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.with_milter = with_milter
        self.unsubscribe = unsubscribe and with_milter
        self.onboarding = onboarding and with_milter
        self.milter_command = list(milter_command) if milter_command is not None else None
        self.intake_port = intake_port if intake_port is not None else sink_port + 3
        self.python = python
        self.timeout = timeout
        self.sasl_users = dict(sasl_users)
        self.postfix_overrides = dict(postfix_overrides or {})
        self.dns_records = list(dns_records)
        folder = self.run_dir
        self.redis = RedisServer(folder, redis_port, persistence=redis_persistence, timeout=timeout)
        self.sink_service = SinkService(folder, sink_port, sink, python=python, timeout=timeout)
        dns_port = dns_port if dns_port is not None else sink_port + 1
        self.dns = DnsService(folder, dns_port, self.dns_records, python=python, timeout=timeout)
        web_port = web_port if web_port is not None else sink_port + 2
        metrics_port = metrics_port if metrics_port is not None else sink_port + 4
        rdap_port = rdap_port if rdap_port is not None else sink_port + 5
        self.rdap = RdapService(folder, rdap_port, python=python, timeout=timeout)
        self.milter_conf = MilterConfig(
            folder,
            redis_url=self.redis.url,
            dns_address=self.dns.address,
            web_port=web_port,
            metrics_port=metrics_port,
            unsubscribe=self.unsubscribe,
            rdap_bootstrap=self.rdap.bootstrap_url if self.onboarding else None,
            extra=milter_config_extra,
            extra_plans=extra_plans,
        )
        self.milter = MilterDaemon(
            folder,
            self.milter_conf.path,
            f"unix:{self.milter_conf.socket_path}",
            command=self.milter_command,
            python=python,
            timeout=timeout,
        )
        self.web = UnsubscribeWeb(
            folder, web_port, self.milter_conf.path, python=python, timeout=timeout
        )
        self.relay = PostfixInstance(
            folder,
            smtp_port=smtp_port,
            sink_port=sink_port,
            milter_socket=self.milter_conf.socket_path if with_milter else None,
            sasl_realm=sasl_realm,
            sasl_users=self.sasl_users,
            overrides=self.postfix_overrides,
            intake=(self.milter_conf.path, self.intake_port) if self.unsubscribe else None,
            timeout=timeout,
        )
        self.tenants = TenantAdmin(self.redis, self.relay, python=python)
        # Where a person or a test finds each part (fixed for the stack's life).
        self.host = HOST
        self.redis_port, self.redis_url = redis_port, self.redis.url
        self.smtp_port, self.sink_port = smtp_port, sink_port
        self.dns_port, self.web_port, self.web_url = dns_port, web_port, self.web.url
        self.metrics_port = metrics_port
        self.rdap_port, self.rdap_url = rdap_port, self.rdap.bootstrap_url
        self.metrics_url = f"http://{HOST}:{metrics_port}/metrics"
        self.postfix = self.relay.layout
        self.milter_config, self.milter_socket = self.milter_conf.path, self.milter_conf.socket_path
        self.milter_log, self.sink_log = self.milter.log_path, self.sink_service.log_path
        self.mail_dir = self.sink_service.mail_dir

    # ---- the stack-level view of its parts ----------------------------------

    @property
    def milter_config_extra(self) -> str:
        """TOML merged into the milter config; a change takes effect at ``write_milter_config``."""
        return self.milter_conf.extra

    @milter_config_extra.setter
    def milter_config_extra(self, text: str) -> None:
        self.milter_conf.extra = text

    def auth_authen(self, login: str) -> str:
        """What the milter sees in ``{auth_authen}`` after ``login`` authenticated."""
        return self.relay.auth_authen(login)

    # ---- whole stack ---------------------------------------------------------

    def start(self, *, clean: bool = False) -> None:
        """Bring every part up; return once each one answers.

        Parts already running (from this run folder) are kept and get their
        configuration rewritten (Postfix is reloaded, the milter reloads its
        config file by itself). ``clean`` first stops everything and wipes the
        run folder (queue, mail, logs). If anything fails, whatever was
        started is stopped again before the error propagates.
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
                if self.onboarding:
                    self.start_rdap()
                self.start_milter()
                if self.unsubscribe:
                    self.start_web()
            self.start_postfix()
        except BaseException:
            self._stop_quietly()
            raise

    def stop(self) -> None:
        """Stop every part this run folder started, in reverse order. Idempotent."""
        errors: list[str] = []
        stops: Sequence[Callable[[], None]] = (
            self.stop_postfix,
            self.stop_web,
            self.stop_milter,
            self.stop_rdap,
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
        runfolder.wipe(self.run_dir, self.status)

    def status(self) -> dict[str, int | None]:
        """Pid of each part that is running from this run folder, else None."""
        return {
            "redis": self.redis.running_pid(),
            "sink": self.sink_service.running_pid(),
            "dns": self.dns.running_pid(),
            "rdap": self.rdap.running_pid(),
            "milter": self.milter.running_pid(),
            "web": self.web.running_pid(),
            "postfix": self.relay.running_pid(),
        }

    def _prepare_run_dir(self) -> None:
        runfolder.prepare(self.run_dir)

    def _mail_diagnostics(self) -> str:
        return self.relay.diagnostics(self.milter.log_path)

    # ---- redis ---------------------------------------------------------------

    def start_redis(self) -> None:
        self._prepare_run_dir()
        self.redis.start()

    def stop_redis(self) -> None:
        self.redis.stop()

    def redis_cli(self, *args: str) -> str:
        """Run one redis-cli command against the stack's Redis; its reply as text."""
        return self.redis.cli(*args)

    # ---- sink ----------------------------------------------------------------

    def start_sink(self) -> None:
        self._prepare_run_dir()
        self.sink_service.start()

    def stop_sink(self) -> None:
        self.sink_service.stop()

    def sink_messages(self) -> list[SinkMessage]:
        """Messages delivered so far, oldest first."""
        return self.sink_service.messages()

    def find_sink_message(self, token: str) -> SinkMessage | None:
        """The delivered message carrying ``token`` (see testbed.client.make_message)."""
        return self.sink_service.find(token)

    def wait_for_sink(self, token: str, timeout: float = 20.0) -> SinkMessage:
        """Wait until the message carrying ``token`` reached the sink."""
        return self.sink_service.wait_for(token, timeout, on_timeout=self._mail_diagnostics)

    # ---- dns -----------------------------------------------------------------

    def start_dns(self) -> None:
        """The test zones on ``dns_port`` (UDP and TCP); kept if already running from here.

        A running server keeps the records it started with: restart it (``stop_dns``)
        after changing ``dns_records``.
        """
        self._prepare_run_dir()
        self.dns.start()

    def stop_dns(self) -> None:
        self.dns.stop()

    # ---- rdap ----------------------------------------------------------------

    def start_rdap(self) -> None:
        """The recorded RDAP answers on ``rdap_port``; kept if already running from here."""
        self._prepare_run_dir()
        self.rdap.start()

    def stop_rdap(self) -> None:
        self.rdap.stop()

    # ---- milter --------------------------------------------------------------

    def write_milter_config(self, text: str | None = None) -> None:
        """(Re)write aup-milter.toml atomically; the running daemon reloads it by itself.

        ``text`` replaces the whole file; by default it is the generated one.
        """
        self.milter_conf.write(text)

    def start_milter(self) -> None:
        self._prepare_run_dir()
        self.milter_conf.prepare()
        if self.milter.running:
            return
        # A socket left by a killed daemon would make the readiness probe racy.
        self.milter_socket.unlink(missing_ok=True)
        self.milter.start()

    def stop_milter(self) -> None:
        self.milter.stop()
        # A leftover socket would make the next start's readiness probe racy.
        if self.milter_socket.is_socket():
            self.milter_socket.unlink()

    def restart_milter(self) -> None:
        self.stop_milter()
        self.start_milter()

    # ---- the unsubscribe web service -----------------------------------------

    def start_web(self) -> None:
        """``aup-milter web`` with the milter's config; kept if already running from here."""
        self._prepare_run_dir()
        self.web.start()

    def stop_web(self) -> None:
        self.web.stop()

    # ---- postfix -------------------------------------------------------------

    def start_postfix(self) -> None:
        self._prepare_run_dir()
        self.relay.start()

    def stop_postfix(self) -> None:
        self.relay.stop()

    def postfix_settings(self, values: Mapping[str, str]) -> AbstractContextManager[None]:
        """main.cf ``values`` in force for a ``with`` block, Postfix reloaded before and after."""
        return self.relay.settings(values)

    def postconf(self, *names: str) -> dict[str, str]:
        """Effective main.cf values of ``names`` in the stack's Postfix."""
        return self.relay.postconf(*names)

    def postconf_warnings(self) -> list[str]:
        """What postconf complains about in the generated config (e.g. unknown parameters)."""
        return self.relay.postconf_warnings()

    def postfix_log(self) -> str:
        return self.relay.log_text()

    # ---- the queue -----------------------------------------------------------

    def queue(self) -> list[dict[str, Any]]:
        """Every queued message, as ``postqueue -j`` describes it."""
        return self.relay.queue()

    def wait_for_queue(
        self, queue_id: str, queue_name: str, timeout: float = 20.0
    ) -> dict[str, Any]:
        """Wait until message ``queue_id`` sits in ``queue_name`` (``hold``, ``deferred``...)."""
        return self.relay.wait_for_queue(queue_id, queue_name, timeout, self._mail_diagnostics)

    def delete_queued(self, queue: str = "hold") -> None:
        """Delete every message of one queue (``hold``, ``deferred``, ...) or ``ALL``."""
        self.relay.delete_queued(queue)

    def release_hold(self) -> None:
        """Release every held message and deliver it now."""
        self.relay.release_hold()

    # ---- tenants -------------------------------------------------------------

    def tenant_cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``aup-milter tenant ARGS`` against the stack's Redis."""
        return self.tenants.cli(*args, check=check)

    def remove_tenant(self, tenant_id: str) -> None:
        """Remove a tenant and its mappings; a missing tenant is fine."""
        self.tenants.remove(tenant_id)

    def set_tenant_status(self, tenant_id: str, status: str, reason: str = "") -> None:
        self.tenants.set_status(tenant_id, status, reason)

    def tenant_info(self, tenant_id: str) -> dict[str, Any]:
        return self.tenants.info(tenant_id)

    def clear_rate_windows(self) -> None:
        """Forget every tenant's window counts (the tests start from empty windows)."""
        self.tenants.clear_rate_windows()

    def add_demo_tenants(self) -> None:
        """The demo's tenants (acme, globex, initech), active, with their SASL users."""
        self.tenants.add_demo_tenants()


# What callers import from here (the demo, the end-to-end tests, the bench).
__all__ = ["HOST", "REPO_ROOT", "SinkMessage", "Stack", "default_run_dir", "port_offset"]

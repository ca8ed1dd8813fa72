"""Stopping: SIGTERM lets open transactions finish, refuses new ones, and exits 0."""

from __future__ import annotations

import signal
import time

from tests.milter.harness import Daemon, StartDaemon
from tests.milter.mta import Kind, MilterClient, MilterError, Response
from tests.support import HarnessError, tail

GRACE = 5.0
STOP_NOTICE = 7.0
"""libmilter's listener looks at a stop request every 5 s; a little slack on top."""


def test_sigterm_drains_the_open_transaction_and_refuses_new_ones(
    start_daemon: StartDaemon, acme: str
) -> None:
    daemon = start_daemon(milter={"shutdown_grace": GRACE})
    auth = {"{auth_authen}": "acme"}
    with daemon.client() as open_txn, daemon.client() as idle, daemon.client() as dropped:
        warm = idle.send_message("a@acme.example", ["r@d.example"], queue_id="SD0")
        assert warm.eom is not None and warm.eom.response.kind is Kind.CONTINUE

        # A transaction in progress when the stop comes: MAIL and RCPT done, no EOM yet.
        assert open_txn.mail("a@acme.example", macros={**auth, "i": "SD1"}).kind is Kind.CONTINUE
        open_txn.rcpt("r1@d.example")
        # And one whose MTA went away mid-transaction: it must not hold up the stop.
        assert dropped.mail("a@acme.example", macros=auth).kind is Kind.CONTINUE
        dropped.rcpt("r2@d.example")
        dropped.close()

        mark = daemon.log.mark()
        sent_at = time.monotonic()
        daemon.signal(signal.SIGTERM)
        late = refused_after_stop(daemon, idle)
        # A new transaction on an existing connection is turned away with 421.
        assert late.kind is Kind.TEMPFAIL
        assert late.reply == "421 4.3.2", late

        # The open one is still served to the end.
        open_txn.content("a@acme.example", ["r1@d.example"])
        eom = open_txn.eom(macros={"i": "SD1"})
        assert eom.response.kind is Kind.CONTINUE
        assert eom.quarantine_reason is None
        eom_at = time.monotonic()
        status = daemon.wait_exit(timeout=GRACE + 2)
        exited_at = time.monotonic()

    assert status == 0
    assert exited_at - sent_at < STOP_NOTICE + GRACE
    assert exited_at > eom_at
    assert daemon.log.verdict("SD1")["verdict"] == "accept"
    shut = daemon.log.verdict("SD2")
    assert shut["verdict"] == "tempfail" and shut["reply"].startswith("421 4.3.2 ")
    assert not daemon.log.matching("still open", since=mark), "nothing was left unfinished"


def test_sigterm_when_idle_exits_zero(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(milter={"shutdown_grace": GRACE})
    with daemon.client():
        daemon.signal(signal.SIGTERM)
        status = daemon.wait_exit(timeout=STOP_NOTICE + 2)
    assert status == 0, f"exit status {status} (-15: killed by SIGTERM instead of stopping)"


def refused_after_stop(daemon: Daemon, client: MilterClient) -> Response:
    """Probe with MAIL (aborted while still accepted) until the daemon turns it away.

    Bounded: libmilter may take up to its 5 s poll to act on the signal. A daemon
    that stops answering its existing connections fails here.
    """
    proc = daemon.proc
    assert proc is not None
    deadline = time.monotonic() + STOP_NOTICE
    while True:
        if proc.poll() is not None:
            raise HarnessError(
                f"aup-milter exited with {proc.returncode} on SIGTERM instead of draining "
                "its open transaction (-15: killed by the signal itself)"
            )
        try:
            response = client.mail("a@acme.example", macros={"{auth_authen}": "acme", "i": "SD2"})
        except MilterError as exc:
            raise HarnessError(
                f"after SIGTERM, MAIL on an existing connection got no answer ({exc}): "
                f"the daemon stopped serving its connections{tail(daemon.log.path)}"
            ) from None
        if response.refuses:
            return response
        client.abort()
        if time.monotonic() > deadline:
            raise HarnessError(f"MAIL still accepted {STOP_NOTICE:g}s after SIGTERM")
        time.sleep(0.1)


def test_restart_after_a_crash_reuses_the_socket_path(start_daemon: StartDaemon, acme: str) -> None:
    """A killed daemon leaves its socket file behind; the next start must not trip over it."""
    daemon = start_daemon()
    daemon.signal(signal.SIGKILL)
    assert daemon.wait_exit(timeout=10) == -signal.SIGKILL
    assert daemon.socket_path.exists(), "precondition: a stale socket file"
    daemon.start()
    with daemon.client() as client:
        result = client.send_message("a@acme.example", ["r@d.example"], queue_id="RS1")
    assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE


def test_sighup_reloads_instead_of_stopping(start_daemon: StartDaemon, acme: str) -> None:
    """libmilter alone would stop on SIGHUP; the daemon takes it as 'reload now'."""
    daemon = start_daemon()
    with daemon.client() as client:
        mark = daemon.log.mark()
        daemon.signal(signal.SIGHUP)
        daemon.log.wait_for("SIGHUP received", since=mark)
        daemon.log.wait_for("configuration reloaded", since=mark)
        # Past libmilter's 5 s stop poll: a libmilter that saw the signal would be gone.
        time.sleep(STOP_NOTICE)
        assert daemon.proc is not None and daemon.proc.poll() is None
        result = client.send_message("a@acme.example", ["r@d.example"], queue_id="HUP1")
    assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE

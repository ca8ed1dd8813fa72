"""Configuration and plan files are watched: edits apply without a restart, bad ones are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.milter.harness import PLANS_DIR, Daemon, StartDaemon, Tenants
from tests.milter.mta import Kind, TransactionResult

RELOAD_TIMEOUT = 8.0
"""The watcher polls every second; allow for a slow machine."""

RELOADED = "configuration reloaded"
REFUSED = "config reload refused"


def stranger(daemon: Daemon, qid: str) -> TransactionResult:
    """One transaction from an unmapped sender, on a new connection."""
    with daemon.client() as client:
        return client.send_message("x@stranger.example", ["r@dest.example"], queue_id=qid)


def test_config_edit_applies_and_an_invalid_edit_is_refused(start_daemon: StartDaemon) -> None:
    daemon = start_daemon(policy={"unknown_sender": "reject"})
    assert stranger(daemon, "CF1").mail.reply == "550 5.7.1"

    mark = daemon.log.mark()
    daemon.reconfigure(policy={"unknown_sender": "accept"})
    daemon.log.wait_for(RELOADED, since=mark, level="info", timeout=RELOAD_TIMEOUT)
    accepted = stranger(daemon, "CF2")
    assert accepted.refused_at is None and accepted.eom is not None
    assert accepted.eom.response.kind is Kind.CONTINUE

    # A typo'd key: the whole file is refused, even its valid part (unknown_sender = reject).
    mark = daemon.log.mark()
    daemon.reconfigure(policy={"unknown_sender": "reject", "unknown_sendr": "reject"})
    error = daemon.log.wait_for(REFUSED, since=mark, timeout=RELOAD_TIMEOUT)
    assert error["level"] == "error"
    assert "policy.unknown_sendr" in error["msg"] and "unknown key" in error["msg"]
    assert str(daemon.config_path.name) in error["msg"], "the error names the file"
    assert not daemon.log.matching(RELOADED, since=mark)
    still = stranger(daemon, "CF3")
    assert still.refused_at is None, "the running configuration stays in force"

    # The refusal is logged once, not at every poll.
    kept = stranger(daemon, "CF4")
    assert kept.refused_at is None
    assert len(daemon.log.matching(REFUSED, since=mark)) == 1

    # Fixing the file is picked up again: the watcher survived the bad file.
    mark = daemon.log.mark()
    daemon.reconfigure(policy={"unknown_sender": "reject"})
    daemon.log.wait_for(RELOADED, since=mark, timeout=RELOAD_TIMEOUT)
    assert stranger(daemon, "CF5").mail.reply == "550 5.7.1"
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_new_plan_file_is_picked_up(
    start_daemon: StartDaemon, tenants: Tenants, tmp_path: Path
) -> None:
    """A tenant on a plan that does not exist gets 451 4.7.0 until the plan is defined."""
    plans = tmp_path / "plans"
    shutil.copytree(PLANS_DIR, plans)
    daemon = start_daemon(policy={"plans_dir": str(plans)})
    tenants.add("acme", logins=["acme"], domains=["acme.example"])
    tenants.hset("acme", plan="gold")

    def send(qid: str) -> TransactionResult:
        with daemon.client() as client:
            return client.send_message("a@acme.example", ["r@d.example"], queue_id=qid)

    assert send("PL1").mail.reply == "451 4.7.0"
    mark = daemon.log.mark()
    (plans / "gold.toml").write_text('[plan.gold]\ndescription = "Gold sending"\n')
    daemon.log.wait_for(RELOADED, since=mark, timeout=RELOAD_TIMEOUT)
    result = send("PL2")
    assert result.refused_at is None and result.eom is not None
    assert daemon.log.verdict("PL2")["verdict"] == "accept"


def test_plan_limit_edits_apply_without_restart(
    start_daemon: StartDaemon, tenants: Tenants, tmp_path: Path
) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    gold = plans / "gold.toml"
    gold.write_text("[plan.gold]\nmax_recipients_per_message = 2\n")
    daemon = start_daemon(policy={"plans_dir": str(plans)})
    tenants.add("acme", logins=["acme"], domains=["acme.example"], plan="gold")

    def rcpt_codes() -> list[str]:
        with daemon.client() as client:
            client.mail("a@acme.example")
            codes = [client.rcpt(f"<r{n}@d.example>").reply or "ok" for n in range(3)]
            client.abort()
        return codes

    assert rcpt_codes() == ["ok", "ok", "452 4.5.3"]
    mark = daemon.log.mark()
    gold.write_text(
        "[plan.gold]\nmax_recipients_per_message = 5\n"
        "[plan.gold.windows.tiny]\nper = 'tenant'\ncount = 'recipients'\nlimit = 1\n"
        "period = '1h'\n"
    )
    daemon.log.wait_for(RELOADED, since=mark, timeout=RELOAD_TIMEOUT)
    assert rcpt_codes() == ["ok", "450 4.7.1", "450 4.7.1"]
    # A broken edit is refused and the last good plan stays in force.
    mark = daemon.log.mark()
    gold.write_text("[plan.gold]\nmax_recipients_per_message = 'many'\n")
    daemon.log.wait_for(REFUSED, since=mark, timeout=RELOAD_TIMEOUT)
    assert rcpt_codes() == ["ok", "450 4.7.1", "450 4.7.1"]

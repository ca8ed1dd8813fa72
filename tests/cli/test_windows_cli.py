"""`aup-milter windows show/reset` and `tenant show`'s automatic actions with their
evidence, on a real Redis, with the windows charged by the milter's own script."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import redis

from aupmilter.cli.auditlog import describe
from aupmilter.cli.main import main
from aupmilter.config import RedisSettings, load_config
from aupmilter.exitcodes import EX_CONFIG, EX_FAILURE, EX_OK, EX_UNAVAILABLE
from aupmilter.policy.limits import Window
from aupmilter.store import keys
from aupmilter.store.client import Store
from aupmilter.store.tenants import TenantAdmin
from tests.support import RedisServer, free_port

PLAN = """\
[plan.tight]
max_recipients_per_message = 10

[plan.tight.windows]
sender-recipients-hour = { per = "sender", count = "recipients", limit = 10, period = "1h" }
tenant-messages-day    = { per = "tenant", count = "messages",   limit = 5,  period = "1d" }
tenant-recipients-day  = { per = "tenant", count = "recipients", limit = 30, period = "1d" }
"""

Cli = Callable[..., int]


@pytest.fixture
def config_path(redis_server: RedisServer, tmp_path: Path) -> Path:
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / "tight.toml").write_text(PLAN)
    path = tmp_path / "aup-milter.toml"
    path.write_text(f'[redis]\nurl = "{redis_server.url}"\n[policy]\nplans_dir = "{plans}"\n')
    return path


@pytest.fixture
def windows(config_path: Path) -> tuple[Window, ...]:
    return load_config(config_path).plans["tight"].limits.windows


@pytest.fixture
def cli(redis_client: redis.Redis, config_path: Path) -> Cli:
    TenantAdmin(redis_client).add("acme", "tight", ["acme"], ["acme.example"])

    def run(*args: str) -> int:
        return main([args[0], "-c", str(config_path), *args[1:]])

    return run


@pytest.fixture
def charge(redis_server: RedisServer, windows: tuple[Window, ...]) -> Callable[[str, int], None]:
    store = Store(RedisSettings(url=redis_server.url, connect_timeout=2.0, timeout=5.0))

    def send(sender: str, recipients: int) -> None:
        rcpt = [f"r{i}@dest.example" for i in range(recipients)]
        store.charge("acme", windows, sender, rcpt, int(time.time() * 1000))

    return send


def audit(client: redis.Redis, event: str) -> list[dict[str, str]]:
    entries = cast(list[tuple[str, dict[str, str]]], client.xrange(keys.AUDIT_STREAM))
    return [fields for _, fields in entries if fields.get("event") == event]


def test_show_lists_tenant_windows_and_the_senders_counted(
    cli: Cli, charge: Callable[[str, int], None], capsys: pytest.CaptureFixture[str]
) -> None:
    charge("bob", 4)
    charge("alice@acme.example", 2)
    assert cli("windows", "show", "acme") == EX_OK
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "tenant acme, plan tight"
    assert out[1].split()[:4] == ["WINDOW", "PER", "SENDER", "USED"]
    rows = {line.split()[0]: line.split() for line in out[2:4]}
    assert rows["tenant-messages-day"][1:6] == ["tenant", "-", "2", "messages", "5"]
    assert rows["tenant-recipients-day"][3:7] == ["6", "recipients", "30", "24"]
    assert "sender-recipients-hour" not in "\n".join(out[2:4])
    assert out[4] == (
        "senders counted in per-sender windows (sender-recipients-hour): alice@acme.example, bob"
    )


def test_show_one_sender_as_json_with_an_override(
    cli: Cli,
    charge: Callable[[str, int], None],
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    redis_client.hset("aup:tenant:acme", "window.sender-recipients-hour", "8")
    for _ in range(2):
        charge("bob", 4)
    assert cli("windows", "show", "acme", "bob", "--json") == EX_OK
    shown = json.loads(capsys.readouterr().out)
    by_name = {w["window"]: w for w in shown["windows"]}
    sender = by_name["sender-recipients-hour"]
    assert (sender["sender"], sender["used"], sender["limit"], sender["plan_limit"]) == (
        "bob",
        8,
        8,
        10,
    )
    assert sender["free"] == 0
    # Full: room when the buckets charged now stop counting, about an hour on.
    assert 3600 - 5 <= sender["room_in_s"] <= 3600 + 60
    assert sender["oldest_expires_in_s"] == sender["room_in_s"]
    day = by_name["tenant-messages-day"]
    assert (day["sender"], day["used"], day["room_in_s"]) == (None, 2, 0)
    assert "senders" not in shown and shown["override_problem"] is None


def test_show_a_broken_override_says_so(
    cli: Cli, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    redis_client.hset("aup:tenant:acme", "window.no-such-window", "8")
    assert cli("windows", "show", "acme") == EX_OK
    out = capsys.readouterr().out
    assert "override problem (its mail gets 451 until fixed; plan limits shown)" in out
    assert "'no-such-window' names no window of the plan" in out


def test_reset_one_senders_window_is_audited(
    cli: Cli,
    charge: Callable[[str, int], None],
    redis_client: redis.Redis,
    windows: tuple[Window, ...],
    capsys: pytest.CaptureFixture[str],
) -> None:
    charge("bob", 4)
    charge("carol", 3)
    assert cli("windows", "reset", "acme", "bob", "--window", "sender-recipients-hour") == EX_OK
    assert "emptied window sender-recipients-hour of sender bob (1 keys)" in capsys.readouterr().out
    assert not redis_client.exists(keys.window_key("acme", windows[0], "bob"))
    assert redis_client.exists(keys.window_key("acme", windows[0], "carol"))
    assert redis_client.exists(keys.window_key("acme", windows[1], ""))
    (event,) = audit(redis_client, "window-reset")
    assert {k: event[k] for k in ("tenant", "subject", "window", "by")} == {
        "tenant": "acme",
        "subject": "bob",
        "window": "sender-recipients-hour",
        "by": "cli",
    }
    assert "emptied by cli" in event["detail"] and event["ts"].isdigit()
    assert describe(event) == "Window sender-recipients-hour of bob was emptied by cli."
    # Empty already: nothing to do, nothing audited.
    assert cli("windows", "reset", "acme", "bob", "--window", "sender-recipients-hour") == EX_OK
    assert "already empty" in capsys.readouterr().out
    assert len(audit(redis_client, "window-reset")) == 1


def test_reset_a_tenant_window_keeps_the_others(
    cli: Cli,
    charge: Callable[[str, int], None],
    redis_client: redis.Redis,
    windows: tuple[Window, ...],
    capsys: pytest.CaptureFixture[str],
) -> None:
    charge("bob", 1)
    assert cli("windows", "reset", "acme", "--window", "tenant-messages-day") == EX_OK
    out = capsys.readouterr().out
    assert "emptied window tenant-messages-day of tenant acme (1 keys)" in out
    assert not redis_client.exists(keys.window_key("acme", windows[1], ""))
    assert redis_client.exists(keys.window_key("acme", windows[0], "bob"))
    assert redis_client.exists(keys.window_key("acme", windows[2], ""))


def test_reset_all_empties_every_sender_and_the_tenant(
    cli: Cli,
    charge: Callable[[str, int], None],
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    charge("bob", 1)
    charge("carol", 1)
    assert cli("windows", "reset", "acme", "--all") == EX_OK
    assert "(4 keys)" in capsys.readouterr().out  # 2 senders, 2 tenant windows
    assert not list(redis_client.scan_iter(match="aup:{acme}:w:*"))
    (event,) = audit(redis_client, "window-reset")
    assert (event["subject"], event["window"]) == ("acme", "all")


def test_refusals(
    cli: Cli, config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("windows", "reset", "acme", "--window", "nope") == EX_FAILURE
    assert "no window 'nope' (its windows: sender-recipients-hour" in capsys.readouterr().err
    assert cli("windows", "reset", "acme", "bob", "--window", "tenant-messages-day") == EX_FAILURE
    assert "per-tenant window: give no SENDER" in capsys.readouterr().err
    assert cli("windows", "show", "globex") == EX_FAILURE
    assert "no tenant 'globex'" in capsys.readouterr().err
    missing = str(tmp_path / "absent.toml")
    assert main(["windows", "-c", missing, "show", "acme"]) == EX_CONFIG
    assert "cannot read the configuration" in capsys.readouterr().err
    url = f"redis://127.0.0.1:{free_port()}/0"
    # The options go before the action, or after it.
    assert main(["windows", "show", "acme", "-c", str(config_path), "--redis", url]) == (
        EX_UNAVAILABLE
    )
    assert f"cannot use Redis at {url}" in capsys.readouterr().err


# --- tenant show: the automatic actions in force, with their evidence ------------------


def test_tenant_show_gives_each_automatic_action_its_event(
    cli: Cli, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    from aupmilter.policy.ladder import Evidence, LadderPlan, Rung, offence_for
    from aupmilter.store.ladder import LadderStore

    now = time.time()
    evidence = Evidence(fingerprint="f" * 16, repeats=4, recipients=9, cap=10, plan=LadderPlan())
    offence = offence_for(
        tenant="acme",
        sender="bob",
        domain="acme.example",
        envelope_sender="bob@acme.example",
        previous=0,
        evidence=evidence,
        shadow=False,
        queue_id="Q1",
        conn="c1",
        now=now,
    )
    assert offence.rung is Rung.SENDER
    LadderStore(redis_client).record(offence, "aup:{acme}:nearcap:x")
    redis_client.hset("aup:{acme}:suspended", "domain:old.example", "0 set by hand")
    stamp = str(int(now))
    redis_client.hset(
        "aup:tenant:acme",
        mapping={
            "status": "suspended",
            "reason": "automatic suspension: complaint rate 0.50 %",
            "updated_at": stamp,
            "auto_suspended_at": stamp,
        },
    )
    redis_client.xadd(
        keys.AUDIT_STREAM,
        {
            "event": "auto-suspend",
            "tenant": "acme",
            "measure": "complaints",
            "events": "5",
            "delivered": "1000",
            "ts": stamp,
            "detail": "complaint rate 0.50 %",
        },
    )
    assert cli("tenant", "show", "acme") == EX_OK
    out = capsys.readouterr().out
    assert "suspended sender bob since " in out
    assert "  evidence: " in out and "The sender bob was suspended automatically" in out
    assert "suspended domain old.example since -\n" in out
    assert "  evidence: no domain-suspended event found in the audit trail: set by hand" in out
    assert "suspended tenant acme since " in out and "(automatic)" in out
    assert "Tenant acme was suspended automatically for its complaint rate" in out
    assert "near-cap-repeat offences of bob: 1" in out

    assert cli("tenant", "show", "acme", "--json") == EX_OK
    shown = json.loads(capsys.readouterr().out)
    actions = {(a["kind"], a["subject"]): a for a in shown["automatic_actions"]}
    sender = actions[("sender", "bob")]
    assert sender["evidence"]["event"] == "sender-suspended"
    assert sender["evidence"]["evidence"]["recipients"] == 9  # decoded JSON
    assert actions[("domain", "old.example")]["evidence"] is None
    tenant = actions[("tenant", None)]
    assert (tenant["state"], tenant["since"]) == ("suspended", int(now))
    assert tenant["evidence"]["measure"] == "complaints"
    assert shown["offences"] == {"bob": 1} and shown["status"] == "suspended"


def test_a_manual_status_change_after_the_automatic_one_is_not_automatic(
    cli: Cli, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    redis_client.hset(
        "aup:tenant:acme",
        mapping={"status": "suspended", "updated_at": "200", "auto_suspended_at": "100"},
    )
    assert cli("tenant", "show", "acme", "--json") == EX_OK
    assert json.loads(capsys.readouterr().out)["automatic_actions"] == []


def test_a_lifted_suspension_leaves_tenant_show_audited(
    cli: Cli, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    redis_client.hset("aup:{acme}:suspended", "sender:bob@acme.example", f"{int(time.time())} x")
    assert cli("tenant", "show", "acme", "--json") == EX_OK
    (action,) = json.loads(capsys.readouterr().out)["automatic_actions"]
    assert (action["kind"], action["subject"]) == ("sender", "bob@acme.example")
    assert cli("tenant", "lift", "acme", "--sender", "bob@acme.example") == EX_OK
    capsys.readouterr()
    (event,) = audit(redis_client, "lifted")
    assert (event["subject"], event["by"]) == ("bob@acme.example", "cli")
    assert cli("tenant", "show", "acme", "--json") == EX_OK
    assert json.loads(capsys.readouterr().out)["automatic_actions"] == []
    assert cli("tenant", "lift", "acme", "--sender", "bob@acme.example") == EX_FAILURE

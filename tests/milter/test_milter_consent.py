"""The consent ledger over the milter protocol: delrcpt of a lapsed recipient, warn mode.

Still two Redis round trips per transaction: the lapse check and the
last-bulk record ride in the end-of-message script call.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import redis

from aupmilter.store import keys
from tests.milter.harness import PLANS_DIR, Daemon, StartDaemon, Tenants
from tests.milter.mta import Kind
from tests.support import RedisServer, client_commands, round_trips

PLANS = """
[plan.ledger]
description = "consent enforced"
bulk_recipients = 2
[plan.ledger.consent]
mode = "enforce"
lapse = "30d"

[plan.ledger-warn]
description = "consent warned"
bulk_recipients = 2
[plan.ledger-warn.consent]
mode = "warn"
lapse = "30d"
"""
RCPTS = ["fresh@d.example", "old@d.example"]
DAY = 86_400


@pytest.fixture
def daemon(start_daemon: StartDaemon, tmp_path: Path) -> Daemon:
    plans = tmp_path / "policies"
    plans.mkdir()
    shutil.copy(PLANS_DIR / "plans.toml", plans / "plans.toml")
    (plans / "ledger.toml").write_text(PLANS)
    return start_daemon(policy={"plans_dir": str(plans)})


def seed(redis_db: redis.Redis) -> None:
    now = int(time.time())
    redis_db.hset(
        keys.consent("acme"),
        mapping={"fresh@d.example": now - DAY, "old@d.example": now - 90 * DAY},
    )


def test_a_lapsed_recipient_is_deleted_in_the_same_two_round_trips(
    daemon: Daemon, tenants: Tenants, redis_db: redis.Redis, shared_redis: RedisServer
) -> None:
    tenants.add("acme", plan="ledger", logins=["acme"], domains=["acme.example"])
    seed(redis_db)
    with daemon.client() as client:
        client.send_message("a@acme.example", ["warm@d.example"], auth_login="acme")
    results = []

    def send() -> None:
        with daemon.client() as client:
            results.append(
                client.send_message("a@acme.example", RCPTS, auth_login="acme", queue_id="CL1")
            )

    sent = client_commands(shared_redis, send)
    assert round_trips(sent) == ["EVALSHA", "EVALSHA"]
    eom = results[0].eom
    assert eom is not None and eom.response.kind is Kind.CONTINUE
    assert eom.deleted_rcpts == ("<old@d.example>",)
    lapsed = daemon.log.wait_for(event="recipient-lapsed", recipient="old@d.example")
    assert lapsed["verdict"] == "removed" and lapsed["rule"] == "consent-lapsed"
    assert daemon.log.verdict("CL1")["lapsed"] == 1
    assert redis_db.hexists(keys.last_bulk("acme"), "fresh@d.example")
    assert not redis_db.hexists(keys.last_bulk("acme"), "old@d.example")


def test_warn_mode_delivers_and_says_what_enforce_would_do(
    daemon: Daemon, tenants: Tenants, redis_db: redis.Redis
) -> None:
    tenants.add("acme", plan="ledger-warn", logins=["acme"], domains=["acme.example"])
    seed(redis_db)
    with daemon.client() as client:
        result = client.send_message("a@acme.example", RCPTS, auth_login="acme", queue_id="CW1")
    assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE
    assert result.eom.deleted_rcpts == ()
    verdict = daemon.log.verdict("CW1")
    assert verdict["verdict"] == "accept"
    assert any(w.startswith("consent: 1 recipient(s) lapsed") for w in verdict["warnings"])
    warned = daemon.log.wait_for(event="recipient-lapsed", recipient="old@d.example")
    assert warned["verdict"] == "warned"
    assert not redis_db.hexists(keys.last_bulk("acme"), "old@d.example"), "warn does not heal"

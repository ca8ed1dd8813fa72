"""Unsubscribe and suppression over the milter protocol, RCPT stage.

suppression_check = "rcpt" refuses a suppressed recipient at RCPT with one
Redis call per RCPT; bulk_one_recipient_per_message answers 452 4.5.3 to the
second RCPT of a bulk-stream transaction.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from aupmilter.store import keys
from tests.milter.harness import (
    Daemon,
    StartDaemon,
    Tenants,
    unsubscribe_folder,
    unsubscribe_settings,
)
from tests.milter.mta import Kind
from tests.support import RedisServer, client_commands, round_trips

SECRET = "milter-tests-secret-0123456789abcdef01234567"


@pytest.fixture
def unsub_dir(tmp_path: Path) -> Path:
    return unsubscribe_folder(
        tmp_path / "unsub",
        "[plan.lists]\n"
        'description = "one recipient per bulk message"\n'
        "bulk_one_recipient_per_message = true\n",
        SECRET,
    )


def start(start_daemon: StartDaemon, unsub_dir: Path, check: str) -> Daemon:
    return start_daemon(
        policy={"plans_dir": str(unsub_dir / "policies"), "suppression_check": check},
        unsubscribe=unsubscribe_settings(unsub_dir),
    )


def test_rcpt_mode_refuses_suppressed_recipients_at_rcpt(
    start_daemon: StartDaemon, unsub_dir: Path, acme: str, redis_db: redis.Redis
) -> None:
    daemon = start(start_daemon, unsub_dir, "rcpt")
    redis_db.hset(keys.suppressed("acme"), "gone@d.example", "one-click 1")
    with daemon.client() as client:
        result = client.send_message(
            "a@acme.example", ["keep@d.example", "gone@D.EXAMPLE"], auth_login="acme"
        )
        (_, kept), (_, gone) = result.rcpts
        assert kept.kind is Kind.CONTINUE
        assert gone.reply == "550 5.7.1"
        assert "unsubscribed from acme's mail" in (gone.text or "")
        assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE
        assert result.eom.deleted_rcpts == (), "nothing left to delete at end of message"
    assert daemon.log.matching("recipient-suppressed gone@D.EXAMPLE")


def test_rcpt_mode_costs_one_redis_call_per_rcpt(
    start_daemon: StartDaemon, unsub_dir: Path, acme: str, shared_redis: RedisServer
) -> None:
    daemon = start(start_daemon, unsub_dir, "rcpt")

    def transaction(count: int) -> None:
        with daemon.client() as client:
            result = client.send_message(
                "a@acme.example", [f"r{n}@d.example" for n in range(count)], auth_login="acme"
            )
            assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE

    transaction(1)
    sent = client_commands(shared_redis, lambda: transaction(3))
    assert round_trips(sent) == ["EVALSHA", "HEXISTS", "HEXISTS", "HEXISTS", "EVALSHA"]


def test_eom_mode_makes_no_rcpt_call(
    start_daemon: StartDaemon, unsub_dir: Path, acme: str, shared_redis: RedisServer
) -> None:
    daemon = start(start_daemon, unsub_dir, "eom")

    def transaction() -> None:
        with daemon.client() as client:
            result = client.send_message(
                "a@acme.example", ["a@d.example", "b@d.example"], auth_login="acme"
            )
            assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE

    transaction()
    sent = client_commands(shared_redis, transaction)
    assert round_trips(sent) == ["EVALSHA", "EVALSHA"]


def test_rcpt_mode_with_redis_down_tempfails_the_rcpt(
    start_daemon: StartDaemon, unsub_dir: Path, private_redis: RedisServer, tenants: Tenants
) -> None:
    Tenants(private_redis).add("acme", logins=["acme"], domains=["acme.example"])
    daemon = start_daemon(
        redis_url=private_redis.url,
        policy={"plans_dir": str(unsub_dir / "policies"), "suppression_check": "rcpt"},
    )
    with daemon.client() as client:
        assert client.mail("a@acme.example", macros={"{auth_authen}": "acme"}).kind is Kind.CONTINUE
        private_redis.stop()
        assert client.rcpt("<x@d.example>").reply == "451 4.3.0"
        client.abort()


def test_one_recipient_per_bulk_message(
    start_daemon: StartDaemon, unsub_dir: Path, tenants: Tenants, redis_db: redis.Redis
) -> None:
    daemon = start(start_daemon, unsub_dir, "eom")
    tenants.add("lists", plan="lists", logins=["news", "billing"], domains=["beta.example"])
    redis_db.hset(
        keys.tenant_streams("lists"), mapping={"news": "bulk", "billing": "transactional"}
    )
    with daemon.client() as client:
        bulk = client.send_message(
            "n@beta.example", ["a@d.example", "a@D.example", "b@d.example"], auth_login="news"
        )
        replies = [response.reply for _, response in bulk.rcpts]
        assert replies == [None, None, "452 4.5.3"], "a repeated recipient is no second one"
        assert "one recipient per message" in (bulk.rcpts[2][1].text or "")
        assert bulk.eom is not None and bulk.eom.response.kind is Kind.CONTINUE
        billing = client.send_message(
            "b@beta.example", ["a@d.example", "b@d.example"], auth_login="billing"
        )
        assert [response.reply for _, response in billing.rcpts] == [None, None]

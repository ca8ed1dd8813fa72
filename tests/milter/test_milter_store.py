"""Redis outages: on_store_error decides, the log says so once, recovery needs no restart."""

from __future__ import annotations

from tests.milter.harness import StartDaemon, Tenants
from tests.milter.mta import Kind
from tests.support import RedisServer, free_port

RCPTS = ["r@dest.example"]
DOWN = "redis unavailable"
BACK = "redis available again"


def test_redis_down_tempfails_then_recovers_without_restart(
    start_daemon: StartDaemon, private_redis: RedisServer
) -> None:
    tenants = Tenants(private_redis)
    tenants.add("acme", logins=["acme"], domains=["acme.example"])
    daemon = start_daemon(redis_url=private_redis.url, policy={"on_store_error": "tempfail"})

    with daemon.client() as client:
        before = client.send_message("a@acme.example", RCPTS, auth_login="acme", queue_id="R0")
        assert before.eom is not None and before.eom.response.kind is Kind.CONTINUE

        private_redis.stop()
        failed = [
            client.send_message("a@acme.example", RCPTS, auth_login="acme", queue_id="R1"),
            client.send_message("a@acme.example", RCPTS, queue_id="R2"),
            # An unknown sender cannot be told from a known one without Redis: tempfail too.
            client.send_message("a@stranger.example", RCPTS, queue_id="R3"),
        ]
    with daemon.client() as other:
        failed.append(other.send_message("b@acme.example", RCPTS, queue_id="R4"))

    for result in failed:
        assert result.refused_at == "mail", result
        assert result.mail.kind is Kind.TEMPFAIL
        assert result.mail.reply == "451 4.3.0"
    for qid in ("R1", "R2", "R3", "R4"):
        verdict = daemon.log.verdict(qid)
        assert verdict["verdict"] == "tempfail" and "policy store unavailable" in verdict["reason"]
    down = daemon.log.matching(DOWN, level="error")
    assert len(down) == 1, f"one line per outage, not per message: {down}"

    # Back on the same port, empty (no persistence): the daemon reconnects by itself.
    private_redis.start()
    tenants.add("acme", logins=["acme"], domains=["acme.example"])
    with daemon.client() as client:
        after = client.send_message("a@acme.example", RCPTS, auth_login="acme", queue_id="R5")
        again = client.send_message("a@acme.example", RCPTS, auth_login="acme", queue_id="R6")
    for result in (after, again):
        assert result.refused_at is None, result
        assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE
    assert daemon.log.verdict("R5")["tenant"] == "acme"
    back = daemon.log.matching(BACK)
    assert len(back) == 1, back
    assert "4 lookups failed" in back[0]["msg"]
    assert len(daemon.log.matching(DOWN)) == 1
    assert daemon.proc is not None and daemon.proc.poll() is None, "no restart happened"


def test_redis_down_with_on_store_error_accept(
    start_daemon: StartDaemon, private_redis: RedisServer
) -> None:
    tenants = Tenants(private_redis)
    tenants.add("acme", logins=["acme"], domains=["acme.example"], status="terminated")
    daemon = start_daemon(redis_url=private_redis.url, policy={"on_store_error": "accept"})
    private_redis.stop()
    with daemon.client() as client:
        results = [
            client.send_message("a@acme.example", RCPTS, auth_login="acme", queue_id=f"A{n}")
            for n in range(3)
        ]
    for result in results:
        assert result.refused_at is None, result
        assert result.mail.kind is Kind.CONTINUE
        assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE
        assert result.quarantine_reason is None
    verdict = daemon.log.verdict("A0")
    assert verdict["verdict"] == "accept"
    assert "policy store unavailable" in verdict["reason"] and "on_store_error" in verdict["reason"]
    assert len(daemon.log.matching(DOWN, level="error")) == 1


def test_null_sender_needs_no_redis(start_daemon: StartDaemon, private_redis: RedisServer) -> None:
    """With nothing to look up, an outage does not turn a certain 550 into a 451."""
    daemon = start_daemon(redis_url=private_redis.url)
    private_redis.stop()
    with daemon.client() as client:
        result = client.send_message("", RCPTS, queue_id="N1")
    assert result.mail.reply == "550 5.7.1"
    assert not daemon.log.matching(DOWN)


def test_starts_while_redis_is_down(start_daemon: StartDaemon) -> None:
    """Redis down at start is an outage like any other, not a reason to refuse to start."""
    daemon = start_daemon(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with daemon.client() as client:
        result = client.send_message("a@acme.example", RCPTS, auth_login="acme", queue_id="S1")
    assert result.mail.reply == "451 4.3.0"
    assert len(daemon.log.matching(DOWN, level="error")) == 1

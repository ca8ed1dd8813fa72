"""The daemon's Prometheus endpoint, scraped over HTTP after real milter-protocol transactions.

Counts are compared exactly with what was sent: verdicts by rule, refused and
suppressed recipients, callback observations, Redis round trips, the open
connections gauge and the shared counts hash. Parsed with prometheus_client's
own parser, as Prometheus would read it.
"""

from __future__ import annotations

import socket
import time
import urllib.request

import redis
from prometheus_client.parser import text_string_to_metric_families

from aupmilter.store import keys
from testbed.proc import free_port, wait_until
from tests.milter.harness import Daemon, StartDaemon, Tenants
from tests.support import RedisServer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def metrics_daemon(start_daemon: StartDaemon) -> tuple[Daemon, int]:
    port = free_port()
    return start_daemon(metrics={"listen": f"127.0.0.1:{port}"}), port


def test_scrape_counts_exactly_the_verdicts_and_refusals_sent(
    start_daemon: StartDaemon, acme: str, tenants: Tenants, redis_db: redis.Redis
) -> None:
    daemon, port = metrics_daemon(start_daemon)
    before = scrape(port)
    assert value(before, "aup_build_info", version=value_version(before)) == 1
    assert value(before, "aup_transactions_total", verdict="accept", rule="") == 0
    tenants.add("beta", logins=["beta"], domains=["beta.example"])
    tenants.set_status("beta", "suspended", "unpaid")
    tenants.hset("acme", max_recipients_per_message="2")
    redis_db.hset(keys.suppressed("acme"), "gone@d.example", "manual 1")
    three = ["r1@d.example", "r2@d.example", "r3@d.example"]
    with daemon.client() as client:
        for n in range(3):
            result = client.send_message(
                "a@acme.example", three, auth_login="acme", queue_id=f"QA{n}"
            )
            assert [r.refuses for _, r in result.rcpts] == [False, False, True]
        held = client.send_message("b@beta.example", ["r@d.example"], queue_id="QH1")
        assert held.eom is not None and held.eom.quarantine_reason
        for n in range(2):
            refused = client.send_message("x@stranger.example", ["r@d.example"], queue_id=f"QR{n}")
            assert refused.refused_at == "mail"
        pruned = client.send_message(
            "a@acme.example", ["gone@d.example", "r1@d.example"], auth_login="acme", queue_id="QP"
        )
        assert pruned.eom is not None and pruned.eom.response.kind.name == "CONTINUE"
        during = scrape(port)
        assert value(during, "aup_open_connections") == 1

    # The daemon sees the close after the client returns: scrape once it has (under load
    # the first scrape could still count the connection).
    def closed() -> Samples | None:
        samples = scrape(port)
        return samples if value(samples, "aup_open_connections") == 0 else None

    after = wait_until(closed, timeout=10.0, what="the daemon to count the closed connection")

    # The fourth near-cap message with one content is the sender's first offence (the ladder).
    assert value(after, "aup_transactions_total", verdict="accept", rule="") == 3
    assert value(after, "aup_transactions_total", verdict="quarantine", rule="near-cap-repeat") == 1
    assert value(after, "aup_automatic_actions_total", action="sender-suspended") == 1
    assert value(after, "aup_redis_round_trips_total", call="offence") == 1
    assert (
        value(after, "aup_transactions_total", verdict="quarantine", rule="tenant-suspended") == 1
    )
    assert value(after, "aup_transactions_total", verdict="reject", rule="unknown-sender") == 2
    assert (
        value(after, "aup_recipients_refused_total", rule="recipient-cap", verdict="tempfail") == 3
    )
    assert value(after, "aup_recipients_suppressed_total") == 1
    assert value(after, "aup_tenant_transactions_total", tenant="acme", verdict="accept") == 3
    assert value(after, "aup_tenant_transactions_total", tenant="beta", verdict="quarantine") == 1
    # Every transaction: MAIL once; RCPT once per recipient the client sent.
    assert value(after, "aup_callback_seconds_count", callback="envfrom") == 7
    assert value(after, "aup_callback_seconds_count", callback="envrcpt") == 3 * 3 + 1 + 2
    assert value(after, "aup_callback_seconds_count", callback="eom") == 5
    assert value(after, "aup_callback_seconds_count", callback="connect") == 1
    # Two round trips per delivered or held transaction, one for a refused MAIL FROM.
    assert value(after, "aup_redis_round_trips_total", call="sender_state") == 7
    assert value(after, "aup_redis_round_trips_total", call="charge") == 5
    assert value(after, "aup_redis_errors_total", call="charge") == 0
    assert value(after, "aup_redis_seconds_count", call="charge") == 5
    assert value(after, "aup_open_connections") == 0
    assert value(after, "aup_open_transactions") == 0


def value_version(samples: Samples) -> str:
    (version,) = [dict(labels)["version"] for name, labels in samples if name == "aup_build_info"]
    return version


def test_shared_counts_are_exported_and_a_redis_outage_only_drops_them(
    start_daemon: StartDaemon, private_redis: RedisServer
) -> None:
    port = free_port()
    daemon = start_daemon(metrics={"listen": f"127.0.0.1:{port}"}, redis_url=private_redis.url)
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    client.hset(
        keys.SHARED_COUNTS,
        mapping={
            "report:complaint": "3",
            "action:sender-suspended": "1",
            "suppression:mailto": "2",
        },
    )
    samples = scrape(port)
    assert value(samples, "aup_intake_reports_total", kind="complaint") == 3
    assert value(samples, "aup_automatic_actions_total", action="sender-suspended") == 1
    assert value(samples, "aup_suppressions_total", source="mailto") == 2
    private_redis.stop()
    started = time.monotonic()
    samples = scrape(port)
    assert time.monotonic() - started < 5
    assert value(samples, "aup_intake_reports_total", kind="complaint") == 0
    assert ("aup_build_info", (("version", value_version(samples)),)) in samples
    assert daemon.running


def test_an_address_in_use_leaves_the_daemon_serving_mail(
    start_daemon: StartDaemon, acme: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = start_daemon(metrics={"listen": f"127.0.0.1:{port}"})
        with daemon.client() as client:
            result = client.send_message("a@acme.example", ["r@d.example"], auth_login="acme")
        assert result.eom is not None and result.eom.response.kind.name == "CONTINUE"
        assert daemon.log.wait_for("running without metrics")

"""Two relays on one Sentinel-managed or clustered Redis share one policy state.

Windows stay exact across the relays (transactions spread over both, in
threads), a suspension set through one relay's tools is enforced by the
other on its next transaction, a store that lost its registry tempfails on
both, and the steady state costs two round trips per transaction.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from aupmilter.config.plans import load_plans
from aupmilter.policy.limits import Scope, Unit, Window
from aupmilter.policy.tokens import Reference, TokenKind
from aupmilter.store import keys
from aupmilter.store.client import Charged, ReferenceWrite, Store
from aupmilter.store.tenants import TenantAdmin
from testbed.proc import free_port
from tests.distributed.conftest import Deployment, StartRelay
from tests.milter.harness import PLANS_DIR, Daemon, child_env
from tests.milter.mta import Kind

LIMIT = 20
"""The tenant's sender-recipients-minute window, overridden small."""


def add_acme(shared: Deployment, **fields: str) -> None:
    with shared.client() as client:
        TenantAdmin(client).add("acme", "standard", ["acme"], ["acme.example"])
        if fields:
            client.hset(keys.tenant("acme"), mapping=fields)


def deliver(relay: Daemon, queue_id: str) -> str:
    """One one-recipient message as acme: "accept", "quarantine", or the refusal's reply."""
    with relay.client() as client:
        result = client.send_message(
            "a@acme.example", ["r@dest.example"], auth_login="acme", queue_id=queue_id
        )
    if result.refused_at is not None or result.final.kind is not Kind.CONTINUE:
        return str(result.final.reply)
    return "quarantine" if result.quarantine_reason is not None else "accept"


def test_windows_stay_exact_across_two_relays(
    shared: Deployment, relays: tuple[Daemon, Daemon]
) -> None:
    """40 messages in 8 threads over both relays against a window of 20: exactly 20 pass."""
    add_acme(shared, **{"window.sender-recipients-minute": str(LIMIT)})
    outcomes: list[str] = []
    lock = threading.Lock()

    def sender(worker: int) -> None:
        for n in range(5):
            outcome = deliver(relays[(worker + n) % 2], f"W{worker}N{n}")
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(outcomes) == 40
    assert outcomes.count("accept") == LIMIT, sorted(set(outcomes))
    assert set(outcomes) <= {"accept", "450 4.7.1", "451 4.7.1"}
    window = next(w for w in standard_windows() if w.name == "sender-recipients-minute")
    with shared.client() as client:
        fill = sum(int(v) for v in client.hvals(keys.window_key("acme", window, "acme")))
    assert fill == LIMIT, "the window holds exactly what both relays delivered"
    accepted = [[v for v in relay.log.verdicts() if v["verdict"] == "accept"] for relay in relays]
    assert sum(map(len, accepted)) == LIMIT and all(accepted), "both relays delivered"


def standard_windows() -> tuple[Window, ...]:
    problems: list[str] = []
    plans = load_plans(PLANS_DIR, problems)
    assert not problems
    return plans["standard"].limits.windows


def test_a_suspension_through_one_relay_holds_on_the_other_at_its_next_transaction(
    shared: Deployment, relays: tuple[Daemon, Daemon]
) -> None:
    first, second = relays
    add_acme(shared)
    assert deliver(first, "S1") == "accept"
    assert deliver(second, "S2") == "accept"  # the second relay has read (and cached) acme
    done = subprocess.run(
        [sys.executable, "-m", "aupmilter", "tenant", "-c", str(first.config_path),
         "set-status", "acme", "suspended", "--reason", "spam reports"],
        capture_output=True, text=True, timeout=30, check=False, env=child_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert deliver(second, "S3") == "quarantine"
    assert deliver(first, "S4") == "quarantine"
    with shared.client() as client:
        TenantAdmin(client).set_status("acme", "active")
    assert deliver(second, "S5") == "accept"


def test_a_store_without_its_registry_tempfails_on_both_relays_until_it_is_back(
    shared: Deployment, relays: tuple[Daemon, Daemon]
) -> None:
    first, second = relays
    add_acme(shared)
    assert deliver(first, "R1") == "accept"
    assert deliver(second, "R2") == "accept"
    shared.flush()  # what a restart without persistence leaves
    assert deliver(first, "R3") == "451 4.3.0"
    assert deliver(second, "R4") == "451 4.3.0"
    for relay in relays:
        verdict = relay.log.verdicts()[-1]
        assert verdict["rule"] == "registry-missing", verdict
        assert relay.log.matching("tenant registry missing")
    add_acme(shared)  # the tenants added again, as `make demo` does
    assert deliver(first, "R5") == "accept"
    assert deliver(second, "R6") == "accept"
    assert first.log.matching("tenant registry back")


def test_two_round_trips_per_transaction_in_the_steady_state(
    shared: Deployment, start_relay: StartRelay
) -> None:
    port = free_port()
    relay = start_relay(metrics={"listen": f"127.0.0.1:{port}"})
    add_acme(shared)
    assert deliver(relay, "T0") == "accept"  # scripts loaded, the mapping read (cluster)
    before = scrape(port)
    for n in range(5):
        assert deliver(relay, f"T{n + 1}") == "accept"
    after = scrape(port)
    trips = {
        call: after.get(call, 0.0) - before.get(call, 0.0)
        for call in ("sender_state", "charge", "mapping_read")
    }
    assert trips == {"sender_state": 5, "charge": 5, "mapping_read": 0}, trips


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        sample.labels["call"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "aup_redis_round_trips_total"
    }


def test_unsubscribe_references_are_stored_after_a_bulk_charge(shared: Deployment) -> None:
    """On a cluster they live on slots of their own: written after the charge, same result."""
    add_acme(shared)
    store = Store(shared.settings)
    try:
        window = Window("w", Scope.TENANT, Unit.MESSAGES, 100, 60_000)
        bulk = Reference(TokenKind.RECIPIENT, "acme", "r@dest.example")
        not_bulk = Reference(TokenKind.RECIPIENT, "acme", "other@dest.example")
        for reference, known_bulk in ((bulk, True), (not_bulk, False)):
            written = ReferenceWrite((reference,), ttl_seconds=600, known_bulk=known_bulk)
            charged = store.charge(
                "acme", [window], "acme", ["r@dest.example"], 1, references=written
            )
            assert isinstance(charged, Charged)
        with shared.client() as client:
            assert client.get(keys.unsubscribe_ref(bulk.ref_text)) == bulk.store_value
            assert 0 < int(client.ttl(keys.unsubscribe_ref(bulk.ref_text))) <= 600
            assert client.get(keys.unsubscribe_ref(not_bulk.ref_text)) is None
    finally:
        store.close()


def test_status_checks_the_deployment_and_its_registry(
    shared: Deployment, relays: tuple[Daemon, Daemon]
) -> None:
    def status() -> dict[str, dict[str, object]]:
        done = subprocess.run(
            [sys.executable, "-m", "aupmilter", "status", "-c", str(relays[0].config_path),
             "--json"],
            capture_output=True, text=True, timeout=30, check=False, env=child_env(),
        )  # fmt: skip
        checks: dict[str, dict[str, object]] = json.loads(done.stdout)["checks"]
        return checks

    checks = status()
    assert checks["redis"]["status"] == "ok", checks["redis"]
    assert str(shared.kind) in str(checks["redis"]["detail"])
    assert checks["registry"]["status"] == "ok"
    shared.flush()
    assert status()["registry"]["status"] == "critical"

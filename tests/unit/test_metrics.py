"""aupmilter.metrics: the names, the bounded tenant label, the scrape-time readers, the endpoint.

Every metric is read back through prometheus_client's own text parser, as a
Prometheus server would read it.
"""

from __future__ import annotations

import re
import threading
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aupmilter.metrics import (
    OTHER_TENANT,
    SHARED_FAMILIES,
    TENANT_LABELS,
    WEB_SAMPLES,
    BoundedLabel,
    Metrics,
    MetricsServer,
)

REPO = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: bytes) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def family_names(metrics: Metrics) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        if not family.name.endswith("_created"):  # counters' creation times, not metrics
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


EXPECTED = {
    "aup_transactions_total",
    "aup_recipients_refused_total",
    "aup_recipients_suppressed_total",
    "aup_callback_seconds",
    "aup_redis_round_trips_total",
    "aup_redis_errors_total",
    "aup_redis_seconds",
    "aup_dns_lookups_total",
    "aup_dns_cache_hits_total",
    "aup_automatic_actions_total",
    "aup_suppressions_total",
    "aup_config_reloads_total",
    "aup_open_connections",
    "aup_open_transactions",
    "aup_audit_events_pending",
    "aup_audit_events_dropped_total",
    "aup_tenant_transactions_total",
    "aup_build_info",
    "aup_web_requests_total",
    "aup_intake_reports_total",
    "aup_intake_unsubscribes_total",
}


def watched() -> Metrics:
    metrics = Metrics()
    metrics.watch(lambda: 2, lambda: 1, lambda: 7, lambda: 3)
    metrics.share(lambda: {})
    return metrics


def test_every_metric_has_its_name_and_the_aup_prefix() -> None:
    names = family_names(watched())
    assert names == EXPECTED
    assert all(name.startswith("aup_") for name in names)


@pytest.mark.parametrize("document", ["doc/aup-milter.8", "README.md"])
def test_every_metric_is_documented(document: str) -> None:
    text = (REPO / document).read_text().replace("\\_", "_").replace("\\-", "-")
    missing = [name for name in sorted(EXPECTED) if name not in text]
    assert not missing, f"{document} does not name {missing}"


def test_a_transaction_counts_its_verdict_rule_and_tenant() -> None:
    metrics = Metrics()
    metrics.transaction("accept", "some-rule", "acme")
    metrics.transaction("reject", "unknown-sender", None)
    metrics.transaction("would-reject", "header_counts", "newco")
    found = samples(metrics.exposition())
    assert value(found, "aup_transactions_total", verdict="accept", rule="") == 1
    assert value(found, "aup_transactions_total", verdict="reject", rule="unknown-sender") == 1
    assert value(found, "aup_transactions_total", verdict="would-reject", rule="header_counts") == 1
    assert value(found, "aup_tenant_transactions_total", tenant="acme", verdict="accept") == 1
    assert value(found, "aup_tenant_transactions_total", tenant="", verdict="reject") == 1


def test_tenant_label_is_bounded_to_the_first_n_tenants() -> None:
    metrics = Metrics()
    for n in range(TENANT_LABELS + 25):
        metrics.transaction("accept", "", f"t{n}")
    metrics.transaction("accept", "", "t0")
    tenants = {
        dict(labels)["tenant"]: v
        for (name, labels), v in samples(metrics.exposition()).items()
        if name == "aup_tenant_transactions_total"
    }
    assert len(tenants) == TENANT_LABELS + 1
    assert tenants[OTHER_TENANT] == 25
    assert tenants["t0"] == 2
    assert f"t{TENANT_LABELS}" not in tenants


def test_bounded_label_holds_under_threads() -> None:
    label = BoundedLabel(limit=10)
    seen: list[str] = []

    def run(start: int) -> None:
        seen.extend(label(f"v{start + i}") for i in range(100))

    threads = [threading.Thread(target=run, args=(k * 100,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen) - {"other"}) == 10


def test_callback_timer_observes_even_when_the_callback_raises() -> None:
    metrics = Metrics()

    @metrics.callback("eom")
    def fails() -> int:
        raise RuntimeError("boom")

    @metrics.callback("envrcpt")
    def works(x: int) -> int:
        return x + 1

    with pytest.raises(RuntimeError):
        fails()
    assert works(1) == 2
    assert works(2) == 3
    found = samples(metrics.exposition())
    assert value(found, "aup_callback_seconds_count", callback="eom") == 1
    assert value(found, "aup_callback_seconds_count", callback="envrcpt") == 2


def test_redis_call_counts_round_trips_errors_and_time() -> None:
    metrics = Metrics()

    def down() -> None:
        raise ConnectionError("down")

    assert metrics.redis_call("charge", lambda: 42) == 42
    with pytest.raises(ConnectionError):
        metrics.redis_call("charge", down)
    found = samples(metrics.exposition())
    assert value(found, "aup_redis_round_trips_total", call="charge") == 2
    assert value(found, "aup_redis_errors_total", call="charge") == 1
    assert value(found, "aup_redis_seconds_count", call="charge") == 2


def test_gauges_read_their_sources_at_scrape_time() -> None:
    open_connections = [0]
    metrics = Metrics()
    metrics.watch(lambda: open_connections[0], lambda: 0, lambda: 5, lambda: 9)
    assert value(samples(metrics.exposition()), "aup_open_connections") == 0
    open_connections[0] = 4
    found = samples(metrics.exposition())
    assert value(found, "aup_open_connections") == 4
    assert value(found, "aup_audit_events_pending") == 5
    assert value(found, "aup_audit_events_dropped_total") == 9


def test_shared_counts_become_counter_families_and_junk_is_skipped() -> None:
    metrics = Metrics()
    flat: Mapping[str, str] = {
        "report:complaint": "3",
        "report:hard-bounce": "2",
        "unsubscribe:refused": "1",
        "suppression:one-click": "4",
        "action:would-sender-suspended": "1",
        "nonsense": "5",
        "report:delayed": "not a number",
        "unknown:x": "1",
    }
    metrics.share(lambda: flat)
    found = samples(metrics.exposition())
    assert value(found, "aup_intake_reports_total", kind="complaint") == 3
    assert value(found, "aup_intake_reports_total", kind="hard-bounce") == 2
    assert value(found, "aup_intake_reports_total", kind="delayed") is None
    assert value(found, "aup_intake_unsubscribes_total", outcome="refused") == 1
    assert value(found, "aup_suppressions_total", source="one-click") == 4
    assert value(found, "aup_automatic_actions_total", action="would-sender-suspended") == 1
    assert len(SHARED_FAMILIES) == 4


def test_a_failing_shared_read_drops_only_those_samples() -> None:
    metrics = Metrics()

    def down() -> Mapping[str, str]:
        raise ConnectionError("redis down")

    metrics.share(down)
    metrics.transaction("accept", "", "acme")
    found = samples(metrics.exposition())
    assert value(found, "aup_transactions_total", verdict="accept", rule="") == 1
    assert not [name for name, _ in found if name.startswith("aup_intake_")]


def test_web_exposition_shows_only_the_web_samples() -> None:
    metrics = watched()
    metrics.web_requests.labels("page").inc()
    names = {name for name, _ in samples(metrics.exposition(WEB_SAMPLES))}
    assert names == {"aup_web_requests_total", "aup_build_info"}


def test_server_serves_the_registry_over_http_and_stops() -> None:
    metrics = watched()
    metrics.transaction("reject", "unknown-sender", None)
    server = MetricsServer(metrics.registry, "127.0.0.1", 0)
    server.start()
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", server.url)
        with urllib.request.urlopen(server.url, timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            found = samples(response.read())
        assert value(found, "aup_transactions_total", verdict="reject", rule="unknown-sender") == 1
        assert value(found, "aup_open_connections") == 2
    finally:
        server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)


def test_a_taken_address_raises_at_start() -> None:
    first = MetricsServer(Metrics().registry, "127.0.0.1", 0)
    first.start()
    try:
        with pytest.raises(OSError):
            MetricsServer(Metrics().registry, "127.0.0.1", first.port).start()
    finally:
        first.stop()

"""The lock-free callback and Redis metrics (FoldedHistogram, FoldedCounter).

They stand in for prometheus_client's Histogram and Counter on the hot path, so
the scrape must read exactly as those would: compared line by line with
prometheus_client's own families fed the same values, counted exactly under
many threads (also past the per-thread cell bound), and accepted by promtool.
"""

from __future__ import annotations

import re
import subprocess
import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aupmilter import metrics as metrics_module
from aupmilter.metrics import (
    CALLBACK_BUCKETS,
    FoldedCounter,
    FoldedHistogram,
    Metrics,
)
from tests.support import promtool_path

# Bucket edges themselves (le is inclusive), values between them, past the last bound.
VALUES = (0.0001, 0.0005, 0.0007, 0.001, 0.003, 0.025, 0.3, 0.5, 1.0, 5.0, 7.5, 120.0)


def without_created_times(text: str) -> str:
    """The exposition with the `_created` values (creation instants) blanked."""
    return re.sub(r"^(\S+_created(?:\{[^}]*\})?) \S+$", r"\1 T", text, flags=re.M)


def test_the_histogram_scrapes_as_prometheus_clients_own() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    folded = FoldedHistogram("h_seconds", "Doc.", ["callback"], CALLBACK_BUCKETS, ours)
    reference = Histogram("h_seconds", "Doc.", ["callback"], buckets=CALLBACK_BUCKETS,
                          registry=theirs)  # fmt: skip
    for name in ("connect", "eom", "never-observed"):
        folded.labels(name)
        reference.labels(name)
    for i, seconds in enumerate(VALUES * 3):
        name = ("connect", "eom")[i % 2]
        folded.labels(name).observe(seconds)
        reference.labels(name).observe(seconds)
    text = without_created_times(generate_latest(ours).decode())
    assert text == without_created_times(generate_latest(theirs).decode())
    assert 'h_seconds_bucket{callback="eom",le="0.0005"}' in text


def test_the_counter_scrapes_as_prometheus_clients_own() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    folded = FoldedCounter("trips", "Doc.", ["call"], ours)
    reference = Counter("trips", "Doc.", ["call"], registry=theirs)
    for call, times in (("charge", 3), ("sender_state", 0), ("offence", 1)):
        folded.labels(call)
        reference.labels(call)
        for _ in range(times):
            folded.labels(call).inc()
            reference.labels(call).inc()
    folded.labels("charge").inc(2.5)
    reference.labels("charge").inc(2.5)
    text = without_created_times(generate_latest(ours).decode())
    assert text == without_created_times(generate_latest(theirs).decode())
    assert 'trips_total{call="charge"} 5.5' in text
    with pytest.raises(ValueError):
        folded.labels("charge").inc(-1)


def counts(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }


def hammer(folded: FoldedHistogram, counter: FoldedCounter, threads: int, each: int) -> None:
    """`threads` threads at once (all alive together), `each` observations apiece."""
    start = threading.Barrier(threads)

    def work() -> None:
        start.wait()
        child, trips = folded.labels("eom"), counter.labels("charge")
        for i in range(each):
            child.observe(VALUES[i % len(VALUES)])
            trips.inc()

    running = [threading.Thread(target=work) for _ in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()


def test_threads_lose_no_observation_and_ended_threads_still_count() -> None:
    registry = CollectorRegistry()
    folded = FoldedHistogram("h_seconds", "Doc.", ["callback"], CALLBACK_BUCKETS, registry)
    counter = FoldedCounter("trips", "Doc.", ["call"], registry)
    hammer(folded, counter, threads=16, each=6_000)
    hammer(folded, counter, threads=4, each=1_200)  # later threads may reuse ended ids
    found = counts(registry)
    total = 16 * 6_000 + 4 * 1_200
    assert found[("h_seconds_count", (("callback", "eom"),))] == total
    assert found[("trips_total", (("call", "charge"),))] == total
    per_value = total // len(VALUES)
    assert found[("h_seconds_bucket", (("callback", "eom"), ("le", "0.0005")))] == 2 * per_value
    assert found[("h_seconds_bucket", (("callback", "eom"), ("le", "5.0")))] == 10 * per_value
    assert found[("h_seconds_sum", (("callback", "eom"),))] == pytest.approx(
        per_value * sum(VALUES)
    )


def test_past_the_cell_bound_threads_share_one_locked_cell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_module, "MAX_THREAD_CELLS", 3)
    registry = CollectorRegistry()
    folded = FoldedHistogram("h_seconds", "Doc.", ["callback"], CALLBACK_BUCKETS, registry)
    counter = FoldedCounter("trips", "Doc.", ["call"], registry)
    hammer(folded, counter, threads=12, each=2_000)
    assert len(folded.labels("eom")._cells) == 3
    assert len(counter.labels("charge")._cells) == 3
    found = counts(registry)
    assert found[("h_seconds_count", (("callback", "eom"),))] == 12 * 2_000
    assert found[("trips_total", (("call", "charge"),))] == 12 * 2_000


def test_promtool_accepts_the_daemons_exposition() -> None:
    promtool = promtool_path()
    metrics = Metrics()
    metrics.callback("eom")(lambda: None)()
    metrics.redis_call("charge", lambda: None)
    metrics.transaction("accept", "", "acme")
    done = subprocess.run(
        [promtool, "check", "metrics"],
        input=metrics.exposition(),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_cached_transaction_counts_as_labels_would() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.transaction("accept", "ignored-for-accept", "acme")
        metrics.transaction("reject", "unknown-sender", None)
    found = counts(metrics.registry)
    assert found[("aup_transactions_total", (("rule", ""), ("verdict", "accept")))] == 3
    assert (
        found[("aup_transactions_total", (("rule", "unknown-sender"), ("verdict", "reject")))] == 3
    )
    assert found[("aup_tenant_transactions_total", (("tenant", ""), ("verdict", "reject")))] == 3

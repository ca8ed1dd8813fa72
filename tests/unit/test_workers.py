"""The supervisor's pure parts: the worker's seat in its environment, metrics summed."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.core import CollectorRegistry, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from aupmilter.metrics import Metrics
from aupmilter.workers import WORKER_ENV, WorkerSeat, merge_expositions


def test_the_seat_travels_in_the_environment_and_is_taken_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(WORKER_ENV, WorkerSeat(3, 7, 9).encode())
    assert WorkerSeat.from_environment() == WorkerSeat(3, 7, 9)
    assert WorkerSeat.from_environment() is None, "a worker's own children are no workers"


def test_a_garbled_seat_says_what_it_expected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKER_ENV, "3:x")
    with pytest.raises(ValueError, match="INDEX:LISTEN_FD:CONTROL_FD"):
        WorkerSeat.from_environment()


def worker_text(accepts: int, rejects: int, open_connections: int) -> str:
    metrics = Metrics()
    for _ in range(accepts):
        metrics.transaction("accept", "", "acme")
        metrics.callback_seconds.labels("eom").observe(0.002)
    for _ in range(rejects):
        metrics.transaction("reject", "unknown-sender", None)
    metrics.open_connections.set(open_connections)
    return metrics.exposition().decode()


class Merged(Collector):
    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def collect(self) -> list[Metric]:
        return merge_expositions(self.texts, frozenset({"aup_build_info"}))


def merged_samples(texts: list[str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(Merged(texts))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_histograms_and_gauges_add_up_over_the_workers() -> None:
    found = merged_samples([worker_text(3, 1, 2), worker_text(4, 0, 5)])
    assert found[("aup_transactions_total", (("rule", ""), ("verdict", "accept")))] == 7
    assert (
        found[("aup_transactions_total", (("rule", "unknown-sender"), ("verdict", "reject")))] == 1
    )
    assert found[("aup_callback_seconds_count", (("callback", "eom"),))] == 7
    assert found[("aup_callback_seconds_bucket", (("callback", "eom"), ("le", "0.0025")))] == 7
    assert found[("aup_open_connections", ())] == 7


def test_created_stamps_and_skipped_families_are_left_out() -> None:
    found = merged_samples([worker_text(1, 0, 0), worker_text(1, 0, 0)])
    assert not [name for name, _ in found if name.endswith("_created")]
    assert not [name for name, _ in found if name.startswith("aup_build_info")]


def test_no_worker_answering_gives_no_samples() -> None:
    assert merged_samples([]) == {}

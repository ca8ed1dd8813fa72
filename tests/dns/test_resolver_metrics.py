"""The resolver's metrics over real DNS: lookups by record type and result, and cache hits."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from aupmilter.mailauth.resolver import Resolver
from aupmilter.metrics import METRICS


def sample(name: str, **labels: str) -> float:
    """The process's metrics as a scrape shows them."""
    for family in text_string_to_metric_families(METRICS.exposition().decode()):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return 0.0


def lookups(rdtype: str, result: str) -> float:
    return sample("aup_dns_lookups_total", rdtype=rdtype, result=result)


def hits() -> float:
    return sample("aup_dns_cache_hits_total")


def test_each_result_is_counted_once_and_cache_hits_apart(resolver: Resolver) -> None:
    cases = [
        ("acme.example", "MX", "answer"),
        ("nomail.example", "MX", "nodata"),
        ("nosuch.example", "MX", "nxdomain"),
        ("servfail.example", "MX", "servfail"),
        ("timeout.example", "A", "timeout"),
    ]
    before = {(rdtype, result): lookups(rdtype, result) for _, rdtype, result in cases}
    hits_before = hits()
    for name, rdtype, _ in cases:
        resolver.query(name, rdtype)
    for name, rdtype, _ in cases[:3]:
        resolver.query(name, rdtype)  # answered from the cache: no lookup
    resolver.query("bad..name", "MX")  # not a DNS name: nothing sent, nothing counted
    for _, rdtype, result in cases:
        assert lookups(rdtype, result) - before[(rdtype, result)] == 1, (rdtype, result)
    assert hits() - hits_before == 3

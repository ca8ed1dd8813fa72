"""The Cluster's mapping cache: reused for its TTL, never for unknown senders, bounded."""

from __future__ import annotations

from aupmilter.policy.tenancy import tenant_lookup
from aupmilter.store.client import MappingCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_for_its_ttl_then_is_read_again() -> None:
    clock = Clock()
    cache = MappingCache(30.0, clock)
    lookup = tenant_lookup(None, "a@mail.acme.example")
    assert cache.get(lookup) is None
    cache.put(lookup, 1, "acme")
    assert cache.get(lookup) == (1, "acme")
    clock.now += 30.5
    assert cache.get(lookup) is None


def test_forget_and_a_zero_ttl_cache_nothing() -> None:
    lookup = tenant_lookup("acme", "")
    cache = MappingCache(30.0, Clock())
    cache.put(lookup, 0, "acme")
    cache.forget(lookup)
    assert cache.get(lookup) is None
    never = MappingCache(0.0, Clock())
    never.put(lookup, 0, "acme")
    assert never.get(lookup) is None


def test_the_cache_is_bounded() -> None:
    cache = MappingCache(30.0, Clock())
    cache.MAX_ENTRIES = 10
    for n in range(25):
        cache.put(tenant_lookup(f"login{n}", ""), 0, "acme")
    assert len(cache._entries) <= 10
    assert cache.get(tenant_lookup("login24", "")) == (0, "acme")

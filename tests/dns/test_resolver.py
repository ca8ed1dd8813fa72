"""aupmilter.mailauth.resolver against the test zones over real DNS (UDP; TCP after truncation)."""

from __future__ import annotations

import time

import pytest

from aupmilter.mailauth.resolver import DnsSettings, Nameserver, Resolver, parse_nameserver
from aupmilter.policy.evidence import Status
from testbed.dnsserver import DnsServer
from tests.dns.conftest import LIFETIME, settings_for


@pytest.mark.parametrize(
    ("name", "rdtype", "status"),
    [
        ("acme.example", "MX", Status.FOUND),
        ("a.b.mail.acme.example", "MX", Status.FOUND),  # wildcard
        ("nomail.example", "MX", Status.NODATA),
        ("_domainkey.acme.example", "TXT", Status.NODATA),  # empty non-terminal
        ("nosuch.example", "MX", Status.NXDOMAIN),
        ("servfail.example", "MX", Status.TEMPFAIL),
        ("sub.servfail.example", "A", Status.TEMPFAIL),
        ("outside.test", "MX", Status.TEMPFAIL),  # REFUSED
        ("bad..name", "MX", Status.NXDOMAIN),  # not expressible: cannot exist
    ],
)
def test_statuses(resolver: Resolver, name: str, rdtype: str, status: Status) -> None:
    assert resolver.query(name, rdtype).status is status


def test_timeout_is_bounded_and_temporary(resolver: Resolver) -> None:
    started = time.monotonic()
    answer = resolver.query("timeout.example", "MX")
    elapsed = time.monotonic() - started
    assert answer.status is Status.TEMPFAIL and "timed out" in answer.detail
    assert elapsed < LIFETIME + 1.0


def test_large_answers_come_over_tcp(resolver: Resolver) -> None:
    answer, texts = resolver.txt("test4096._domainkey.acme.example")
    assert answer.found
    assert len(texts[0]) > 512, "more than a UDP answer without EDNS can carry"
    assert texts[0].startswith(b"v=DKIM1; k=rsa; p=MIIC")


def test_answers_and_negative_answers_are_cached(resolver: Resolver) -> None:
    for _ in range(3):
        assert resolver.query("acme.example", "MX").found
        assert resolver.query("nosuch.example", "MX").status is Status.NXDOMAIN
        assert resolver.query("nomail.example", "MX").status is Status.NODATA
    assert resolver.lookups == 3


def test_failures_are_not_cached(resolver: Resolver) -> None:
    resolver.query("servfail.example", "MX")
    resolver.query("servfail.example", "MX")
    assert resolver.lookups == 2


def test_cache_expires_with_the_ttl(dns_server: DnsServer) -> None:
    now = [1000.0]
    resolver = Resolver(settings_for(dns_server), clock=lambda: now[0])
    resolver.query("acme.example", "MX")  # TTL 300
    resolver.query("nosuch.example", "MX")  # negative TTL: SOA minimum 60
    now[0] += 59
    resolver.query("acme.example", "MX")
    resolver.query("nosuch.example", "MX")
    assert resolver.lookups == 2
    now[0] += 2
    resolver.query("nosuch.example", "MX")
    assert resolver.lookups == 3, "the negative answer expired after the SOA minimum"
    now[0] += 300
    resolver.query("acme.example", "MX")
    assert resolver.lookups == 4


def test_ttl_clamps_and_cache_size(dns_server: DnsServer) -> None:
    no_cache = Resolver(settings_for(dns_server, cache_entries=0))
    no_cache.query("acme.example", "MX")
    no_cache.query("acme.example", "MX")
    assert no_cache.lookups == 2
    small = Resolver(settings_for(dns_server, cache_entries=2))
    for name in ("acme.example", "globex.example", "beta.example", "acme.example"):
        small.query(name, "MX")
    assert small.lookups == 4, "the oldest entry was evicted"


def test_unreachable_server_is_temporary() -> None:
    # Nothing listens for DNS on the discard port: refused or timed out, never "no such domain".
    settings = DnsSettings(nameservers=(Nameserver("127.0.0.1", 9),), timeout=0.2, lifetime=0.4)
    assert Resolver(settings).query("acme.example", "MX").status is Status.TEMPFAIL


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1", Nameserver("127.0.0.1", 53)),
        ("127.0.0.1:5353", Nameserver("127.0.0.1", 5353)),
        ("::1", Nameserver("::1", 53)),
        ("[::1]:5353", Nameserver("::1", 5353)),
        ("[::1]", Nameserver("::1", 53)),
        ("dns.example", None),
        ("127.0.0.1:0", None),
        ("127.0.0.1:x", None),
        ("[::1", None),
        ("[::1]x", None),
    ],
)
def test_parse_nameserver(text: str, parsed: Nameserver | None) -> None:
    assert parse_nameserver(text) == parsed

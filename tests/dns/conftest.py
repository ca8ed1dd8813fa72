"""Fixtures for the DNS-backed checks: a resolver pointed at the test zones (real DNS)."""

from __future__ import annotations

import pytest

from aupmilter.mailauth.resolver import DnsSettings, Resolver, parse_nameserver
from testbed.dnsserver import DnsServer

TIMEOUT = 0.3
LIFETIME = 0.6


def settings_for(server: DnsServer, **overrides: object) -> DnsSettings:
    nameserver = parse_nameserver(server.address)
    assert nameserver is not None
    values: dict[str, object] = {
        "nameservers": (nameserver,),
        "timeout": TIMEOUT,
        "lifetime": LIFETIME,
        **overrides,
    }
    return DnsSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def resolver(dns_server: DnsServer) -> Resolver:
    """A fresh resolver (empty cache) on the session's DNS server."""
    return Resolver(settings_for(dns_server))

"""DNS for the message checks: dnspython with bounded time and a TTL cache.

One `Resolver` per configuration (`[dns]`), shared by every connection
thread: the bounce-route lookups, DKIM key lookups (dkimpy) and SPF (pyspf)
all go through it, so they see the same servers, timeouts and cache.

Answers, including negative ones (NXDOMAIN, no data), are cached for their
TTL (the SOA minimum for negative answers), clamped to `[dns] min_ttl` and
`max_ttl`; temporary failures (timeouts, SERVFAIL, refused) are never cached.
Each lookup is bounded by `[dns] lifetime` seconds, retries included.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dns.exception
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from aupmilter.policy.evidence import Answer, Status

if TYPE_CHECKING:
    from aupmilter.metrics import Metrics

log = logging.getLogger("aupmilter.mailauth.resolver")


def _metrics() -> Metrics:
    """The process's metrics, imported at first use: the intake and the command line,
    which import this module but never count, skip prometheus_client's import."""
    from aupmilter.metrics import METRICS

    return METRICS


@dataclass(frozen=True, slots=True)
class Nameserver:
    address: str
    port: int = 53

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def parse_nameserver(text: str) -> Nameserver | None:
    """`127.0.0.1`, `127.0.0.1:5353`, `::1`, `[::1]:5353` -> Nameserver; None if malformed."""
    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text.isdigit():
            return None
        port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    if not 0 < port < 65536:
        return None
    return Nameserver(host, port)


@dataclass(frozen=True, slots=True)
class DnsSettings:
    nameservers: tuple[Nameserver, ...] = ()
    """Empty: the system's (/etc/resolv.conf)."""
    timeout: float = 2.0
    """Seconds to wait for one server's answer."""
    lifetime: float = 4.0
    """Seconds for one lookup, every retry and server included."""
    cache_entries: int = 10000
    min_ttl: int = 0
    max_ttl: int = 3600
    negative_ttl: int = 300
    """For negative answers that carry no SOA."""


class Resolver:
    """Thread-safe; one per configuration."""

    def __init__(self, settings: DnsSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, int], tuple[float, Answer]] = OrderedDict()
        self._local = threading.local()
        self.lookups = 0
        """Queries sent to a server (cache misses): for tests and metrics."""

    def _resolver(self) -> dns.resolver.Resolver:
        # dnspython's Resolver is not documented as thread-safe: one per thread.
        resolver: dns.resolver.Resolver | None = getattr(self._local, "resolver", None)
        if resolver is None:
            settings = self.settings
            resolver = dns.resolver.Resolver(configure=not settings.nameservers)
            if settings.nameservers:
                resolver.nameservers = [ns.address for ns in settings.nameservers]
                resolver.nameserver_ports = {ns.address: ns.port for ns in settings.nameservers}
            resolver.timeout = settings.timeout
            resolver.lifetime = settings.lifetime
            resolver.retry_servfail = False
            resolver.cache = None
            self._local.resolver = resolver
        return resolver

    def query(self, name: str, rdtype: str) -> Answer:
        """Records of `rdtype` ("MX", "A", "AAAA", "TXT") at `name` (A-label form)."""
        key = (name.lower().rstrip("."), dns.rdatatype.from_text(rdtype))
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                if cached[0] > now:
                    self._cache.move_to_end(key)
                    _metrics().dns_cache_hits.inc()
                    return cached[1]
                del self._cache[key]
        answer, ttl = self._lookup(key[0], key[1])
        if answer.status is not Status.TEMPFAIL and self.settings.cache_entries:
            ttl = max(self.settings.min_ttl, min(ttl, self.settings.max_ttl))
            if ttl > 0:
                with self._lock:
                    self._cache[key] = (self._clock() + ttl, answer)
                    while len(self._cache) > self.settings.cache_entries:
                        self._cache.popitem(last=False)
        return answer

    def _lookup(self, name: str, rdtype: dns.rdatatype.RdataType) -> tuple[Answer, int]:
        label = f"{name}/{dns.rdatatype.to_text(rdtype)}"
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
            # Not expressible as a DNS name: it cannot exist (and no query is sent).
            return Answer(Status.NXDOMAIN, detail=f"{label}: not a DNS name ({exc})"), 0
        self.lookups += 1
        answer, ttl, result = self._query(qname, rdtype, label)
        _metrics().dns_lookup(dns.rdatatype.to_text(rdtype), result)
        return answer, ttl

    def _query(
        self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, label: str
    ) -> tuple[Answer, int, str]:
        """The query sent: its answer, TTL, and the result's name (aup_dns_lookups_total)."""
        try:
            result = self._resolver().resolve(qname, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN as exc:
            ttl = _negative_ttl(exc, self.settings.negative_ttl)
            return Answer(Status.NXDOMAIN, detail=f"{label}: no such domain"), ttl, "nxdomain"
        except dns.exception.Timeout:  # LifetimeTimeout too (dnspython >= 2.3 has both)
            return Answer(Status.TEMPFAIL, detail=f"{label}: timed out"), 0, "timeout"
        except dns.resolver.NoNameservers:
            # Every server answered SERVFAIL or REFUSED (its text names our servers: not for
            # the sender's eyes).
            return Answer(Status.TEMPFAIL, detail=f"{label}: server failure"), 0, "servfail"
        except dns.exception.DNSException as exc:
            detail = f"{label}: {type(exc).__name__}: {exc}"
            return Answer(Status.TEMPFAIL, detail=detail), 0, "error"
        except OSError as exc:
            return Answer(Status.TEMPFAIL, detail=f"{label}: {exc}"), 0, "error"
        if result.rrset is None:
            negative = _soa_minimum(result.response, self.settings.negative_ttl)
            return Answer(Status.NODATA, detail=f"{label}: no records"), negative, "nodata"
        return Answer(Status.FOUND, tuple(result.rrset)), int(result.rrset.ttl), "answer"

    def txt(self, name: str) -> tuple[Answer, tuple[bytes, ...]]:
        """TXT records, each with its character-strings joined (as DKIM and SPF read them)."""
        answer = self.query(name, "TXT")
        texts = tuple(b"".join(getattr(r, "strings", ())) for r in answer.records)
        return answer, texts


def _soa_minimum(response: dns.message.Message | None, default: int) -> int:
    """RFC 2308: the negative TTL is min(SOA TTL, SOA MINIMUM) of the authority section."""
    if response is None:
        return default
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            soa = next(iter(rrset))
            return int(min(rrset.ttl, getattr(soa, "minimum", rrset.ttl)))
    return default


def _negative_ttl(exc: dns.resolver.NXDOMAIN, default: int) -> int:
    try:
        responses = exc.responses()  # type: ignore[no-untyped-call]
    except (AttributeError, KeyError):
        return default
    for response in responses.values():
        return _soa_minimum(response, default)
    return default

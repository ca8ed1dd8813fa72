"""SPF with pyspf: does the sender domain's SPF record authorize this relay's addresses?

The relay sends its tenants' mail from its own outbound addresses (config
`[messages] relay_ips`); receivers check the MAIL FROM domain's SPF record
against them. A tenant whose record leaves the relay out gets its mail
rejected or junked downstream, so a plan can check it here (`spf = "warn"` or
`"enforce"`). pyspf evaluates the record (includes, redirects, macros, the
10-lookup limit); its DNS queries go through `aupmilter.mailauth.resolver` (same servers,
timeouts and cache as everything else).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import spf as pyspf

from aupmilter.mailauth.resolver import Resolver
from aupmilter.policy.evidence import TEMPERROR, SpfResult, Status


class _Query(pyspf.query):  # type: ignore[misc]
    """pyspf's query with its DNS lookups answered by our resolver."""

    def __init__(self, resolver: Resolver, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._resolver = resolver

    def dns(
        self, name: Any, qtype: str, cnames: Any = None, ignore_void: bool = False
    ) -> list[Any]:
        name = str(name).rstrip(".").lower()
        if not name or any(not 0 < len(label) < 64 for label in name.split(".")):
            return []  # not a DNS name: pyspf treats it as no data
        cached: list[Any] | None = self.cache.get((name, qtype))
        if cached:
            return cached
        answer = self._resolver.query(name, "TXT" if qtype == "SPF" else qtype)
        if answer.status is Status.TEMPFAIL:
            raise pyspf.TempError(f"DNS {answer.detail}")
        result = [_value(qtype, record) for record in answer.records]
        if result:
            self.cache[(name, qtype)] = result
        elif not ignore_void:
            # RFC 7208 section 4.6.4: at most two lookups that find nothing.
            self.void_lookups += 1
            if self.void_lookups > pyspf.MAX_VOID_LOOKUPS:
                raise pyspf.PermError(f"Void lookup limit of {pyspf.MAX_VOID_LOOKUPS} exceeded")
        return result


def _value(qtype: str, record: Any) -> Any:
    """One record in the form pyspf's own DNS layer returns it."""
    if qtype in ("A", "AAAA"):
        return record.address
    if qtype == "MX":
        return (record.preference, record.exchange.to_text(omit_final_dot=True))
    if qtype == "PTR":
        return record.target.to_text(omit_final_dot=True)
    return list(record.strings)  # TXT, SPF: the character-strings, joined by pyspf


def check_relay_ips(
    sender: str, relay_ips: Sequence[str], helo: str, resolver: Resolver
) -> list[SpfResult]:
    """SPF of `sender`'s domain for each of the relay's outbound addresses."""
    results = []
    for ip in relay_ips:
        query = _Query(resolver, i=ip, s=sender, h=helo, timeout=resolver.settings.lifetime * 5)
        try:
            result, _code, explanation = query.check()
        except pyspf.TempError as exc:
            result, explanation = TEMPERROR, str(exc)
        results.append(SpfResult(ip, str(result), str(explanation)))
    return results

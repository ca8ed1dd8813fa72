"""What DNS says about the sender: bounce route, DKIM and SPF results, as findings.

The lookups themselves happen in `aupmilter.stages.message_checks` (through
`aupmilter.mailauth.resolver`); this module only judges their results, so every rule is
testable without a network. A DNS failure always gives a temporary reply
(`451 4.4.3`), never a permanent one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aupmilter import replies
from aupmilter.policy.evidence import (
    PASS,
    TEMPERROR,
    Answer,
    DkimResult,
    DkimStatus,
    SpfResult,
    Status,
)
from aupmilter.policy.findings import Check, Finding, quoted


@dataclass(frozen=True, slots=True)
class BounceRoute:
    """The lookups behind "can this domain receive bounces" (RFC 5321 section 5.1)."""

    domain: str
    mx: Answer
    addresses: tuple[Answer, ...] = ()
    """A and AAAA, looked up only when there is no MX."""


def is_null_mx(mx: Answer) -> bool:
    """RFC 7505: a single MX of preference 0 with the root as exchange."""
    if len(mx.records) != 1:
        return False
    record = mx.records[0]
    exchange = getattr(record, "exchange", None)
    preference = getattr(record, "preference", None)
    # dns.name.Name compares by its labels: the root is the one empty label.
    return exchange is not None and preference == 0 and tuple(exchange) == (b"",)


def needs_address_lookup(mx: Answer) -> bool:
    return mx.status is Status.NODATA


def check_bounce_route(route: BounceRoute) -> Finding | None:
    domain = quoted(route.domain)
    if route.mx.status is Status.TEMPFAIL:
        return _dns_failure(Check.BOUNCE_DOMAIN, route.mx)
    if route.mx.status is Status.NXDOMAIN:
        return Finding(
            Check.BOUNCE_DOMAIN,
            replies.SENDER_DOMAIN_UNROUTABLE,
            f"envelope sender domain {domain} does not exist",
        )
    if route.mx.found:
        if is_null_mx(route.mx):
            return Finding(
                Check.BOUNCE_DOMAIN,
                replies.SENDER_DOMAIN_NULL_MX,
                f"envelope sender domain {domain} has a null MX",
            )
        return None
    if any(answer.found for answer in route.addresses):
        return None  # the implicit MX: the domain's own address (RFC 5321 section 5.1)
    failed = next((a for a in route.addresses if a.status is Status.TEMPFAIL), None)
    if failed is not None:
        return _dns_failure(Check.BOUNCE_DOMAIN, failed)
    return Finding(
        Check.BOUNCE_DOMAIN,
        replies.SENDER_DOMAIN_UNROUTABLE,
        f"envelope sender domain {domain} has no MX, A or AAAA record",
    )


def _dns_failure(check: Check, answer: Answer) -> Finding:
    return Finding(check, replies.DNS_TEMPORARY_FAILURE, f"DNS lookup failed: {answer.detail}")


def check_dkim(results: Iterable[DkimResult]) -> list[Finding]:
    """Every signature of the tenant's domains that was checked must verify."""
    findings = []
    for result in results:
        sig = result.signature
        name = f"d={sig.domain} s={sig.selector}"
        if result.status is DkimStatus.TEMPERROR:
            findings.append(
                Finding(
                    Check.DKIM,
                    replies.DNS_TEMPORARY_FAILURE,
                    f"DKIM key lookup for {name} failed: {result.detail}",
                )
            )
        elif result.status is DkimStatus.FAIL:
            findings.append(
                Finding(
                    Check.DKIM,
                    replies.DKIM_FAILED,
                    f"DKIM signature {name} does not verify: {result.detail}",
                )
            )
    return findings


def passing_dkim_domains(results: Iterable[DkimResult]) -> frozenset[str]:
    return frozenset(r.signature.domain for r in results if r.status is DkimStatus.PASS)


def check_spf(domain: str, results: Sequence[SpfResult]) -> list[Finding]:
    """The first relay address that SPF does not authorize is the finding."""
    for result in results:
        if result.result == PASS:
            continue
        if result.result == TEMPERROR:
            return [
                Finding(
                    Check.SPF,
                    replies.DNS_TEMPORARY_FAILURE,
                    f"SPF check of {quoted(domain)} failed temporarily: {result.explanation}",
                )
            ]
        return [
            Finding(
                Check.SPF,
                replies.SPF_NOT_AUTHORIZED,
                f"SPF of {quoted(domain)} gives {result.result} for relay address "
                f"{result.relay_ip}",
            )
        ]
    return []

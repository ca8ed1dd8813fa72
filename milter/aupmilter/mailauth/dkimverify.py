"""DKIM verification with dkimpy, its key lookups going through `aupmilter.mailauth.resolver`.

`verify_signatures` checks the DKIM-Signature fields the caller picks (the
ones whose d= is the tenant's) against the message rebuilt from the header
fields the MTA passed and the spooled body. A key lookup that fails
temporarily makes the result `temperror`, never `fail`: a DNS hiccup must not
turn into a permanent refusal. Signing (after header insertion) lives in its
own module.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import dkim as dkimpy

from aupmilter.mailauth.resolver import Resolver

# Re-exported: the stages still name the signature type through this module.
from aupmilter.policy.evidence import DkimResult, DkimStatus, Signature, Status

MAX_SIGNATURES = 8
"""Signatures verified per message at most; each costs a key lookup and a hash of the body."""
MIN_KEY_BITS = 1024
"""RFC 8301: verifiers must not accept RSA keys shorter than 1024 bits."""

log = logging.getLogger("aupmilter.mailauth.dkimverify")


def parse_signature_tags(value: str) -> dict[str, str]:
    """`v=1; a=rsa-sha256; d=example.com; ...` -> tags (white space removed, names lower-case)."""
    tags: dict[str, str] = {}
    for part in value.split(";"):
        name, sep, tag_value = part.partition("=")
        if sep:
            tags[name.strip().lower()] = "".join(tag_value.split())
    return tags


def signatures(values: Sequence[str]) -> list[Signature]:
    """Signatures from the DKIM-Signature field values, in message order."""
    found = []
    for index, value in enumerate(values):
        tags = parse_signature_tags(value)
        domain = tags.get("d", "").lower().rstrip(".")
        found.append(Signature(index, domain, tags.get("s", "")))
    return found


class _ErrorCollector:
    """dkimpy reports some failures only to its logger: keep the last error as the detail."""

    def __init__(self) -> None:
        self.last_error = ""

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.ERROR

    def debug(self, *args: Any) -> None:
        pass

    info = warning = debug

    def error(self, message: object, *args: Any) -> None:
        self.last_error = str(message) % args if args else str(message)


def verify_signatures(
    message: bytes, chosen: Sequence[Signature], resolver: Resolver
) -> list[DkimResult]:
    """Verify each chosen signature of `message` (header section + CRLF + body, CRLF lines)."""
    results = []
    for signature in chosen[:MAX_SIGNATURES]:
        results.append(_verify_one(message, signature, resolver))
    return results


def _verify_one(message: bytes, signature: Signature, resolver: Resolver) -> DkimResult:
    temporary: list[str] = []

    def key_lookup(name: bytes | str, timeout: float = 5.0) -> bytes | None:
        text = name.decode("ascii", errors="replace") if isinstance(name, bytes) else name
        answer, records = resolver.txt(text.rstrip("."))
        if answer.status is Status.TEMPFAIL:
            temporary.append(answer.detail)
            raise dkimpy.DnsTimeoutError(answer.detail)
        keys = [r for r in records if b"p=" in r]
        return keys[0] if keys else None

    collector = _ErrorCollector()
    try:
        verifier = dkimpy.DKIM(message, logger=collector, minkey=MIN_KEY_BITS)
        passed = bool(verifier.verify(idx=signature.index, dnsfunc=key_lookup))
    except dkimpy.DKIMException as exc:
        return DkimResult(signature, DkimStatus.FAIL, str(exc) or type(exc).__name__)
    except Exception as exc:
        # dkimpy raises assorted errors (IndexError, binascii.Error, ...) on hostile input.
        log.debug("dkim verification raised %s", exc, exc_info=True)
        detail = f"unverifiable signature ({type(exc).__name__})"
        return DkimResult(signature, DkimStatus.FAIL, detail)
    if temporary:
        return DkimResult(signature, DkimStatus.TEMPERROR, temporary[0])
    if passed:
        return DkimResult(signature, DkimStatus.PASS)
    detail = collector.last_error or "signature does not match"
    return DkimResult(signature, DkimStatus.FAIL, detail)

"""What a report says, as plain values: its kind, the addresses it is about, who sent the original.

The classification (`reports.classify`) returns a `Report`; the intake and
`aup-milter report classify` act on it or print it. Nothing here reads a file,
Redis or the clock: who sent the original is asked of a `TenantLookup` passed
in, so the whole classification runs in tests without a store.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from aupmilter.policy.limits import recipient_key

MAX_ADDRESS_LENGTH = 254
"""RFC 5321 4.5.3.1.3 path limit less the brackets; longer strings are not addresses."""
MAX_LOCAL_PART_LENGTH = 64
MAX_ADDRESSES = 100
"""Addresses kept per report: a DSN for a 100-recipient message; more is not a report of ours."""


class Kind(StrEnum):
    COMPLAINT = "complaint"
    """A user's complaint (ARF): the complainer is suppressed, the tenant's complaints counted."""
    HARD_BOUNCE = "hard-bounce"
    """At least one recipient failed permanently (5.x.x): those are suppressed."""
    SOFT_BOUNCE = "soft-bounce"
    """Failed with a temporary status (4.x.x, given up after retries): counted, not suppressed."""
    DELAYED = "delayed"
    """Still being retried: counted apart, not suppressed."""
    NOT_A_REPORT = "not-a-report"
    """Nothing to act on: auto-replies, challenge-response, positive DSNs, auth-failure reports."""
    UNPARSEABLE = "unparseable"
    """Too big, too deep, or too broken to read with bounded memory; the reason says which."""


SEVERITY = (Kind.HARD_BOUNCE, Kind.SOFT_BOUNCE, Kind.DELAYED)
"""A DSN about several recipients takes the kind of its most severe one, in this order."""


@dataclass(frozen=True, slots=True)
class Clues:
    """What the attached original says about who sent it; raw text, nothing verified yet.

    Gathered only from the headers of the embedded original (message/rfc822 or
    text/rfc822-headers, or the inline copy of a plain-text bounce), and from the
    report's own fields that name the original's sender (Original-Mail-From,
    X-Postfix-Sender).
    """

    tokens: tuple[str, ...] = ()
    """Candidate unsubscribe tokens from List-Unsubscribe (`/u/TOKEN`, `LOCAL+TOKEN@`)."""
    feedback_ids: tuple[str, ...] = ()
    dkim_domains: tuple[str, ...] = ()
    """d= and the domain of i= of every DKIM-Signature, lower case, in order."""
    senders: tuple[str, ...] = ()
    """Envelope and header senders of the original (Return-Path, Original-Mail-From, From)."""

    @property
    def empty(self) -> bool:
        return not (self.tokens or self.feedback_ids or self.dkim_domains or self.senders)


@dataclass(frozen=True, slots=True)
class Attribution:
    """The tenant behind the original, and the evidence that named it."""

    tenant: str
    evidence: str
    """For the reason line: `unsubscribe token`, `Feedback-ID`, `DKIM d=acme.example`, ..."""
    recipient: str | None = None
    """The address a verified recipient token names: the complainer, whatever the report hides."""


TenantLookup = Callable[[Clues], Attribution | None]
"""Clues -> the tenant, or None; the store-backed one lives with its caller (cli/report.py)."""


def no_lookup(clues: Clues) -> Attribution | None:
    return None


@dataclass(frozen=True, slots=True)
class Report:
    kind: Kind
    reason: str
    """One line: why this kind, with the evidence (status codes, the detector, the marker)."""
    recipients: tuple[str, ...] = ()
    """Every address the report is about (failed, delayed, delivered, complaining)."""
    suppress: tuple[str, ...] = ()
    """Exactly what the intake adds to the tenant's suppression list; a subset of recipients."""
    tenant: str | None = None
    feedback_type: str | None = None
    soft: tuple[str, ...] = ()
    """Recipients that failed with a temporary status: the intake counts them, N make one hard."""
    delayed: tuple[str, ...] = ()
    """Recipients still being retried: the intake counts them apart and suppresses none."""

    def as_json(self, file: str) -> dict[str, object]:
        return {
            "file": file,
            "kind": str(self.kind),
            "recipients": list(self.recipients),
            "suppress": list(self.suppress),
            "tenant": self.tenant,
            "feedback_type": self.feedback_type,
            "reason": self.reason,
        }


_ADDRESS_FORBIDDEN = re.compile(r"[\s<>(),;:\[\]\\\"\x00-\x1f\x7f]")
_REDACTED_LOCAL = re.compile(r"^(redacted|x+|\*+|_+|-+|#+|\[redacted\]|removed|hidden)$", re.I)


def mailbox(raw: str) -> str | None:
    """A plain `local@domain` normalised as the suppression list stores it, or None.

    Quoted local parts and address literals are refused: a report that names one
    is better left to a person than suppressed under a guessed spelling.
    """
    address = raw.strip().strip("<>").strip()
    if address.lower().startswith(("mailto:", "rfc822;")):
        address = address.split(":", 1)[1] if ":" in address else address.split(";", 1)[1]
        address = address.strip().strip("<>").strip()
    if not 3 <= len(address) <= MAX_ADDRESS_LENGTH or _ADDRESS_FORBIDDEN.search(address):
        return None
    local, at, domain = address.rpartition("@")
    if not at or not local or len(local.encode("utf-8")) > MAX_LOCAL_PART_LENGTH:
        return None
    labels = domain.rstrip(".").split(".")
    if len(labels) < 2 or any(not label or label.startswith("-") for label in labels):
        return None
    return recipient_key(f"{local}@{domain.rstrip('.')}")


def redacted(address: str) -> bool:
    """A feedback loop's placeholder for the complainer (AOL: `redacted@`, Yahoo: `xxxx@`)."""
    return bool(_REDACTED_LOCAL.match(address.rpartition("@")[0]))


def unique(addresses: Iterable[str], excluded: Iterable[str] = ()) -> tuple[str, ...]:
    """In order of first mention, without the excluded ones, at most MAX_ADDRESSES."""
    skip = {a.lower() for a in excluded}
    seen: dict[str, str] = {}
    for address in addresses:
        key = address.lower()
        if key not in skip and key not in seen and len(seen) < MAX_ADDRESSES:
            seen[key] = address
    return tuple(seen.values())

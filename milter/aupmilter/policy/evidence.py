"""What the network checks found, as plain values the policy rules judge.

The resolver (`aupmilter.mailauth.resolver`), DKIM verification
(`aupmilter.mailauth.dkimverify`) and SPF (`aupmilter.mailauth.spfcheck`) build
these; `aupmilter.policy.envelope` turns them into findings. They live here, not
beside the code that builds them, so that a policy rule can name its input
without importing dnspython, dkimpy or pyspf, and a test can hand a rule any
answer without a network.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# --- DNS ------------------------------------------------------------------------------


class Status(StrEnum):
    FOUND = "found"
    NXDOMAIN = "nxdomain"
    """The name does not exist."""
    NODATA = "nodata"
    """The name exists but has no record of this type."""
    TEMPFAIL = "tempfail"
    """Timeout, SERVFAIL, REFUSED, no server reachable: try again later."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: Status
    records: tuple[object, ...] = ()
    """The resolver's records (dnspython rdata); typed loosely so this module needs no
    dnspython: a reader knows the record type it asked for and reads its attributes."""
    detail: str = ""
    """Why a lookup failed (for logs and the audit reason)."""

    @property
    def found(self) -> bool:
        return self.status is Status.FOUND


# --- DKIM -----------------------------------------------------------------------------


class DkimStatus(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    TEMPERROR = "temperror"


@dataclass(frozen=True, slots=True)
class Signature:
    """The tags of one DKIM-Signature that matter for choosing and reporting it."""

    index: int
    """Position among the message's DKIM-Signature fields, topmost first (dkimpy's idx)."""
    domain: str
    selector: str


@dataclass(frozen=True, slots=True)
class DkimResult:
    signature: Signature
    status: DkimStatus
    detail: str = ""


# --- SPF ------------------------------------------------------------------------------

PASS = "pass"
TEMPERROR = "temperror"


@dataclass(frozen=True, slots=True)
class SpfResult:
    relay_ip: str
    result: str
    """pyspf's result: pass, fail, softfail, neutral, none, permerror or temperror."""
    explanation: str

"""Who is sending, and may that tenant send now?

Tenant resolution: the SASL login (`{auth_authen}`) when the client
authenticated, otherwise the MAIL FROM domain, exact first and then each parent
domain. An authenticated login that is not mapped never falls back to the
sender domain: otherwise any account could claim any mapped domain.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from aupmilter import replies
from aupmilter.policy.footer import TenantIdentity
from aupmilter.policy.limits import LimitOverrides
from aupmilter.policy.onboarding import DomainVerification
from aupmilter.policy.verdict import Verdict

if TYPE_CHECKING:  # policy.warmup imports policy.reputation, which imports this module
    from aupmilter.policy.warmup import WarmupState
from aupmilter.replies import safe_text

MAX_DOMAIN_LABELS = 16
"""Parent-domain lookups are bounded: no legitimate domain needs more."""


class TenantStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    TERMINATED = "terminated"


class LookupKind(StrEnum):
    LOGIN = "login"
    DOMAIN = "domain"


@dataclass(frozen=True, slots=True)
class Lookup:
    """Mapping names to try in order; the first one that exists decides."""

    kind: LookupKind | None
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TenantRecord:
    """What the policy knows of a tenant: its hash and domains, parsed by the store.

    The store (`store.tenants.tenant_record`) is the only reader of the raw
    hash, so the field names live with the key names (`store.keys`) alone.
    """

    tenant_id: str
    exists: bool = True
    """False when a mapping names a tenant whose hash is missing (or empty)."""
    status: str = ""
    """As stored: a `TenantStatus` value when well kept; anything else tempfails."""
    plan: str = ""
    reason: str = ""
    """The operators' free text for the status, as stored (cleaned where it is used)."""
    domains: frozenset[str] = frozenset()
    """The tenant's domains, for the message checks."""
    allowed_domains: frozenset[str] = frozenset()
    """Extra Reply-To/Sender domains the tenant may use, normalized."""
    overrides: LimitOverrides = field(default_factory=LimitOverrides)
    """The tenant's own recipient cap and window limits."""
    mode: str = ""
    """As stored: `enforce` or `shadow` set for this tenant; empty: the plan's mode."""
    identity: TenantIdentity | None = None
    """Name, postal address and contact for the footer of bulk mail; None: none registered."""
    warmup: WarmupState | None = None
    """The warm-up ramp's state (policy.warmup); None: no ramp, fully warmed."""
    verifications: Mapping[str, DomainVerification] = field(default_factory=dict)
    """Each domain's last `tenant verify-domain` (policy.onboarding), by domain."""

    def shadow(self, plan_mode: str) -> bool:
        """Shadow mode: the tenant's own `mode` field, else its plan's. A value that is
        neither `enforce` nor `shadow` enforces: a typo must not switch enforcement off."""
        mode = self.mode if self.mode else plan_mode
        return mode == "shadow"


@dataclass(frozen=True, slots=True)
class SenderPolicy:
    unknown_sender: Literal["reject", "accept"]
    on_store_error: Literal["tempfail", "accept"]
    known_plans: frozenset[str]


DOMAIN_CACHE_SIZE = 8192


def sender_domain(address: str) -> str | None:
    """Domain of an envelope address, normalized for lookup; None for `<>` or no domain."""
    if "@" not in address:
        return None
    domain = address.rsplit("@", 1)[1]
    return normalize_domain(domain)


@functools.lru_cache(maxsize=DOMAIN_CACHE_SIZE)
def normalize_domain(domain: str) -> str | None:
    """Lower-case A-label form without a trailing dot; None when it is not a domain.

    Cached: the same few domains come on every message, and the IDNA codec is
    the costly part (asked about six times per transaction).
    """
    domain = domain.strip().rstrip(".")
    if not domain or domain.startswith("[") or any(c.isspace() for c in domain):
        return None  # empty, or an address literal: no domain to map
    try:
        ascii_form = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    labels = ascii_form.lower().split(".")
    if any(not label for label in labels):
        return None
    return ".".join(labels)


def parent_domains(domain: str) -> tuple[str, ...]:
    """`a.b.example` -> (`a.b.example`, `b.example`, `example`), bounded in length."""
    labels = domain.split(".")[-MAX_DOMAIN_LABELS:]
    return tuple(".".join(labels[i:]) for i in range(len(labels)))


def unbracket(mail_from: str) -> str:
    """`<a@b>` (as the MTA passes MAIL FROM / RCPT TO) -> `a@b`; `<>` -> ``."""
    address = mail_from.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address.strip()


def tenant_lookup(auth_login: str | None, sender: str) -> Lookup:
    if auth_login:
        return Lookup(LookupKind.LOGIN, (auth_login,))
    domain = sender_domain(sender)
    if domain is None:
        return Lookup(None, ())
    return Lookup(LookupKind.DOMAIN, parent_domains(domain))


def decide_sender(
    record: TenantRecord | None,
    lookup: Lookup,
    policy: SenderPolicy,
) -> Verdict:
    """Verdict at MAIL FROM from the tenant the lookup found (None: not mapped)."""
    if record is None:
        who = _describe(lookup)
        if policy.unknown_sender == "accept":
            return Verdict.accept(f"unknown sender {who} accepted by unknown_sender=accept")
        return Verdict.refuse(
            replies.UNKNOWN_SENDER, f"no tenant mapped for {who}", rule="unknown-sender"
        )

    tid = record.tenant_id
    if not record.exists:
        return Verdict.refuse(
            replies.ACCOUNT_MISCONFIGURED,
            f"mapping points to tenant {tid!r} with no hash",
            tid,
            rule="tenant-misconfigured",
        )
    status, reason = record.status, record.reason
    if status == TenantStatus.TERMINATED:
        return Verdict.refuse(
            replies.ACCOUNT_TERMINATED,
            _with_reason(f"tenant {tid} is terminated", reason),
            tid,
            rule="tenant-terminated",
        )
    if status == TenantStatus.SUSPENDED:
        return Verdict.quarantine(
            _with_reason(f"tenant {tid} is suspended", reason), tid, rule="tenant-suspended"
        )
    if status != TenantStatus.ACTIVE:
        return Verdict.refuse(
            replies.ACCOUNT_MISCONFIGURED,
            f"tenant {tid} has unknown status {status!r}",
            tid,
            rule="tenant-misconfigured",
        )
    if record.plan not in policy.known_plans:
        return Verdict.refuse(
            replies.ACCOUNT_MISCONFIGURED,
            f"tenant {tid} has unknown plan {record.plan!r}",
            tid,
            rule="tenant-misconfigured",
        )
    return Verdict.accept(f"tenant {tid} is active", tid)


def decide_store_error(
    error: str, policy: SenderPolicy, rule: str = "store-unavailable"
) -> Verdict:
    """`on_store_error` decides; `rule` names the failure.

    "registry-missing": Redis answers but lost its state (store.client.RegistryMissing).
    """
    if policy.on_store_error == "accept":
        return Verdict.accept(f"policy store unavailable ({error}); accepted by on_store_error")
    return Verdict.refuse(
        replies.STORE_UNAVAILABLE, f"policy store unavailable ({error})", rule=rule
    )


def _describe(lookup: Lookup) -> str:
    if lookup.kind is LookupKind.LOGIN:
        return f"login {lookup.names[0]!r}"
    if lookup.kind is LookupKind.DOMAIN:
        return f"sender domain {lookup.names[0]!r}"
    return "sender without a domain"


MAX_REASON_LENGTH = 200
"""Operators' free text ends up in MTA logs and the quarantine reason: keep it one short line."""


def _with_reason(text: str, reason: str) -> str:
    # Line breaks become spaces: the words of a reason typed over two lines stay apart.
    reason = safe_text(reason, MAX_REASON_LENGTH, control=" ")
    return f"{text}: {reason}" if reason else text

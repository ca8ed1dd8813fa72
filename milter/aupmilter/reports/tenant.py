"""Who sent the reported original: clues from its headers, and the lookup that weighs them.

The evidence, strongest first:

1. our unsubscribe token in List-Unsubscribe: its HMAC proves the relay issued
   it, and the reference it commits to names tenant (and, for a recipient
   token, the recipient) exactly; reading the reference needs the store;
2. our Feedback-ID (`CAMPAIGN:TENANT:STREAM:RELAY_ID`, policy/feedback.py):
   the relay replaces the tenant's own, so with the relay id checked it names
   the tenant; without the relay id any four-field value is taken;
3. the DKIM d= (or i=) domain, then the original's sender domains, mapped to
   a tenant the way MAIL FROM is: never for a domain the relay shares among
   tenants (its default signing domain), which says nothing about which one.

`store_lookup` builds the lookup from functions passed in (token reference
and domain resolution), so this module stays free of Redis and the clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from email.message import Message

from aupmilter.policy.tokens import InvalidToken, Reference, TokenKind, TokenSigner
from aupmilter.reports.mime import iter_headers
from aupmilter.reports.model import Attribution, Clues, TenantLookup, mailbox, unique

MAX_CLUES = 16
"""Of each kind: an original signed or stamped more often than this is not ours."""
TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
"""The form of a tenant id (store.keys.TENANT_ID; the store is not imported here)."""
_TOKEN = re.compile(r"(?:/u/|\+)([A-Za-z2-7]{40}|[A-Za-z2-7]{48})(?=[@>/?#\s]|$)")
_URI = re.compile(r"<\s*([^<>\s]+)\s*>")
_DKIM_TAG = re.compile(r"(?:^|;)\s*([di])\s*=\s*([^;]+)")

ResolveToken = Callable[[str], Reference | None]
"""Token text -> the verified, resolved reference behind it, or None (forged, unknown)."""
DomainTenant = Callable[[str], str | None]
"""A domain (lower case) -> the tenant it is mapped to, or None."""


def clues_of(originals: Iterable[Message], senders: Iterable[str] = ()) -> Clues:
    """The clues in the header sections of the originals, plus senders the report names."""
    tokens: list[str] = []
    feedback_ids: list[str] = []
    dkim_domains: list[str] = []
    found_senders: list[str] = [s for s in (mailbox(raw) for raw in senders) if s]
    for headers in originals:
        for value in iter_headers(headers, "List-Unsubscribe"):
            for uri in _URI.findall(value) or [value]:
                tokens.extend(m.group(1).lower() for m in _TOKEN.finditer(uri))
        feedback_ids.extend(v.strip() for v in iter_headers(headers, "Feedback-ID"))
        for value in iter_headers(headers, "DKIM-Signature"):
            dkim_domains.extend(_dkim_domains(value))
        for name in ("Return-Path", "Sender", "From"):
            for value in iter_headers(headers, name):
                address = mailbox(_angle(value))
                if address:
                    found_senders.append(address)
    return Clues(
        tokens=unique(tokens)[:MAX_CLUES],
        feedback_ids=unique(feedback_ids)[:MAX_CLUES],
        dkim_domains=unique(dkim_domains)[:MAX_CLUES],
        senders=unique(found_senders)[:MAX_CLUES],
    )


def _angle(value: str) -> str:
    found = re.search(r"<([^<>]*)>", value)
    return found.group(1) if found else value


def _dkim_domains(signature: str) -> list[str]:
    domains = []
    for tag, raw in _DKIM_TAG.findall(" ".join(signature.split())):
        value = "".join(raw.split()).lower()
        domain = value.rpartition("@")[2] if tag == "i" else value
        if domain and "." in domain:
            domains.append(domain.rstrip("."))
    return domains


def feedback_id_tenant(value: str, relay_id: str | None = None) -> str | None:
    """The TENANT field of our Feedback-ID, or None for any other value."""
    fields = [f.strip() for f in value.split(":")]
    if len(fields) != 4 or not TENANT_ID.match(fields[1]):
        return None
    if relay_id is not None and fields[3] != relay_id:
        return None
    return fields[1]


def token_resolver(
    signer: TokenSigner, resolve_reference: Callable[[str], str | None], now: float
) -> ResolveToken:
    """Verify a token (secrets and the date only), then read its reference through the store.

    An expired token is still ours, but its reference has left the store with it
    (same lifetime), so it resolves to nothing either way.
    """

    def resolve(token: str) -> Reference | None:
        try:
            claims = signer.verify(token, now)
            return claims.resolve(resolve_reference(claims.ref_text))
        except InvalidToken:
            return None

    return resolve


def store_lookup(
    *,
    resolve_token: ResolveToken | None = None,
    domain_tenant: DomainTenant | None = None,
    shared_domains: frozenset[str] = frozenset(),
    relay_id: str | None = None,
) -> TenantLookup:
    """The lookup over the evidence in the module's order; each source optional."""

    def lookup(clues: Clues) -> Attribution | None:
        if resolve_token is not None:
            for token in clues.tokens:
                reference = resolve_token(token)
                if reference is not None:
                    recipient = reference.address if reference.kind is TokenKind.RECIPIENT else None
                    return Attribution(reference.tenant, "unsubscribe token", recipient)
        for value in clues.feedback_ids:
            tenant = feedback_id_tenant(value, relay_id)
            if tenant is not None:
                return Attribution(tenant, "Feedback-ID")
        if domain_tenant is None:
            return None
        for domain in clues.dkim_domains:
            if domain not in shared_domains and (tenant := domain_tenant(domain)) is not None:
                return Attribution(tenant, f"DKIM d={domain}")
        for sender in clues.senders:
            domain = sender.rpartition("@")[2]
            if domain not in shared_domains and (tenant := domain_tenant(domain)) is not None:
                return Attribution(tenant, f"sender domain {domain}")
        return None

    return lookup

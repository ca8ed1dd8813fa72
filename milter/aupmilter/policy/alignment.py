"""Envelope and header domains: they must be the tenant's, and From must align with MAIL FROM.

- the MAIL FROM domain and every From domain belong to the tenant (one of its
  domains or a subdomain of one);
- From aligns with MAIL FROM, DMARC style: `relaxed` = the same
  organizational domain by the Public Suffix List, `strict` = the same domain;
  a passing DKIM signature whose d= aligns with From may stand in (per plan);
- Reply-To and Sender use the tenant's domains or domains its plan (or the
  tenant hash) allows;
- the null sender `<>` is only for reports (`multipart/report`: DSNs, MDNs,
  feedback reports).

Domains are compared in lower-case A-label form. The organizational domain
is an argument (`OrganizationalDomain`): the Public Suffix List is a data
file read by `mailauth.psl`, which the stage passes in, so these rules stay
pure and are tested with the same lookup the daemon uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from aupmilter import replies
from aupmilter.policy.findings import AlignmentMode, Check, Finding, PlanChecks, quoted
from aupmilter.policy.headers import HeaderBlock, parse_addresses
from aupmilter.policy.tenancy import normalize_domain, sender_domain

OrganizationalDomain = Callable[[str], str]
"""Domain -> its registrable domain by the Public Suffix List (itself if it has none)."""


def aligned(
    author_domain: str,
    other_domain: str,
    mode: AlignmentMode,
    organizational_domain: OrganizationalDomain,
) -> bool:
    if mode is AlignmentMode.STRICT:
        return author_domain == other_domain
    return organizational_domain(author_domain) == organizational_domain(other_domain)


def within(domain: str, parents: Iterable[str]) -> bool:
    """`domain` is one of `parents` or a subdomain of one."""
    return any(domain == p or domain.endswith("." + p) for p in parents)


@dataclass(frozen=True, slots=True)
class DomainFacts:
    sender: str
    """MAIL FROM without brackets; empty for `<>`."""
    tenant_domains: frozenset[str] | None
    """The tenant's domains (A-labels); None when no tenant is known (nothing to own)."""
    tenant_allowed_domains: frozenset[str] = frozenset()
    """Extra Reply-To/Sender domains from the tenant hash (`allowed_domains`)."""
    dkim_domains: frozenset[str] = frozenset()
    """d= of every DKIM signature that verified."""


def is_report(block: HeaderBlock) -> bool:
    content_type = (block.text("content-type") or "").lower()
    return content_type.split(";", 1)[0].strip() == "multipart/report"


def address_domains(block: HeaderBlock, name: str) -> list[str] | None:
    """Normalized domains of the mailboxes in every `name` field; None if one does not parse."""
    domains: list[str] = []
    for field in block.all(name):
        parsed = parse_addresses(field)
        if parsed is None:
            return None
        for address in parsed.addresses:
            domain = normalize_domain(address.domain)
            if domain is None:
                return None
            domains.append(domain)
    return domains


def check_domains(
    block: HeaderBlock,
    facts: DomainFacts,
    plan: PlanChecks,
    organizational_domain: OrganizationalDomain,
) -> list[Finding]:
    """Ownership of the envelope and header domains, and From's alignment with MAIL FROM."""
    findings = list(_null_sender(block, facts))
    envelope = sender_domain(facts.sender) if facts.sender else None
    authors = address_domains(block, "from") or []  # unparsable From: headers.py reports it
    owned = facts.tenant_domains
    if owned is not None:
        if envelope is not None and (foreign := foreign_envelope_domain(envelope, owned)):
            findings.append(foreign)
        for domain in dict.fromkeys(authors):
            if not within(domain, owned):
                findings.append(
                    Finding(
                        Check.FROM_DOMAIN,
                        replies.FOREIGN_DOMAIN,
                        f"From domain {quoted(domain)} is not one of your account's",
                    )
                )
    if envelope is not None:
        findings += _alignment(authors, envelope, facts, plan, organizational_domain)
    findings += _other_senders(block, "reply-to", Check.REPLY_TO, facts, plan)
    findings += _other_senders(block, "sender", Check.SENDER_HEADER, facts, plan)
    return findings


def foreign_envelope_domain(envelope: str, owned: frozenset[str]) -> Finding | None:
    """The MAIL FROM domain is not the tenant's (nor a subdomain of one)."""
    if within(envelope, owned):
        return None
    return Finding(
        Check.ENVELOPE_DOMAIN,
        replies.FOREIGN_DOMAIN,
        f"envelope sender domain {quoted(envelope)} is not one of your account's",
    )


def _null_sender(block: HeaderBlock, facts: DomainFacts) -> Iterator[Finding]:
    if facts.sender == "" and not is_report(block):
        yield Finding(
            Check.NULL_SENDER,
            replies.NULL_SENDER_NOT_REPORT,
            "null envelope sender on a message that is not a report",
        )


def _alignment(
    authors: list[str],
    envelope: str,
    facts: DomainFacts,
    plan: PlanChecks,
    organizational_domain: OrganizationalDomain,
) -> Iterator[Finding]:
    mode = plan.alignment
    for domain in dict.fromkeys(authors):
        if aligned(domain, envelope, mode, organizational_domain):
            continue
        if plan.dkim_satisfies_alignment and any(
            aligned(domain, signer, mode, organizational_domain) for signer in facts.dkim_domains
        ):
            continue
        how = "the same domain" if plan.alignment is AlignmentMode.STRICT else "one domain"
        yield Finding(
            Check.ALIGNMENT,
            replies.MISALIGNED_SENDER,
            f"From domain {quoted(domain)} and envelope sender domain {quoted(envelope)} "
            f"are not {how} ({plan.alignment.value} alignment)",
        )


def _other_senders(
    block: HeaderBlock, name: str, check: Check, facts: DomainFacts, plan: PlanChecks
) -> Iterator[Finding]:
    if facts.tenant_domains is None:
        return
    domains = address_domains(block, name)
    if not domains:
        return
    allowed = plan.allowed_reply_to_domains if name == "reply-to" else plan.allowed_sender_domains
    acceptable = facts.tenant_domains | allowed | facts.tenant_allowed_domains
    label = "Reply-To" if name == "reply-to" else "Sender"
    for domain in dict.fromkeys(domains):
        if not within(domain, acceptable):
            yield Finding(
                check,
                replies.FOREIGN_REPLY_DOMAIN,
                f"{label} domain {quoted(domain)} is neither yours nor allowed for your account",
            )

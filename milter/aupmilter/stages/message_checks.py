"""The message checks of one transaction: what to collect, and the verdicts at MAIL FROM and EOM.

The glue makes one `MessageChecks` per transaction (at MAIL FROM, from the
tenant record the one Redis read returned), feeds it header fields and body
chunks, and asks for one verdict at MAIL FROM (`at_mail_from`: the bounce
route of the sender domain) and one at end of message (`at_end_of_message`:
header structure, domains and alignment, subject, DKIM, SPF, Message-ID).
No Redis here: the tenant's domains and allowed domains come with the MAIL
FROM read. DNS goes through the runtime's `Resolver` (cached by TTL).

Why the bounce route is checked at MAIL FROM: the answer comes before the
client sends the message (a refusal costs it nothing), the lookup touches no
Redis (the two-round-trip budget is kept), and it depends only on the
envelope. It runs after the tenant lookup so the plan's mode applies;
`warn` findings are carried to the end-of-message verdict line.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass
from datetime import datetime

from aupmilter.config import Config
from aupmilter.mailauth.dkimverify import signatures, verify_signatures
from aupmilter.mailauth.psl import organizational_domain
from aupmilter.mailauth.resolver import Resolver
from aupmilter.mailauth.spfcheck import check_relay_ips
from aupmilter.message.collect import Collected
from aupmilter.policy.actions import AddHeader
from aupmilter.policy.alignment import (
    DomainFacts,
    check_domains,
    foreign_envelope_domain,
    within,
)
from aupmilter.policy.envelope import (
    BounceRoute,
    check_bounce_route,
    check_dkim,
    check_spf,
    needs_address_lookup,
    passing_dkim_domains,
)
from aupmilter.policy.evidence import Signature
from aupmilter.policy.findings import (
    DEFAULT_PLAN_CHECKS,
    Check,
    Finding,
    PlanChecks,
    decide,
    reply_safe,
    sort_findings,
)
from aupmilter.policy.headers import (
    HeaderBlock,
    check_headers,
    missing_message_id,
)
from aupmilter.policy.subjects import bulk_by_headers, check_subject
from aupmilter.policy.tenancy import TenantRecord, normalize_domain, sender_domain
from aupmilter.policy.verdict import Verdict


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sends, as far as the message checks care; known at MAIL FROM."""

    address: str
    tenant: str | None
    domains: frozenset[str] | None
    """The tenant's domains; None when no tenant is known (nothing to own)."""
    allowed_domains: frozenset[str]
    plan: PlanChecks
    smtputf8: bool = False


def sender_for(
    address: str, record: TenantRecord | None, checks: PlanChecks | None, smtputf8: bool
) -> Sender:
    """Who sends, for the message checks; `checks` are those of the plan MAIL FROM resolved.

    The plan is looked up once, by the caller, so a plan missing from the
    configuration is answered in one place. No tenant (an unknown sender let
    through): no domains to own and the default checks; None: the default checks.
    """
    if record is None or not record.exists:
        return Sender(address, None, None, frozenset(), DEFAULT_PLAN_CHECKS, smtputf8)
    return Sender(
        address,
        record.tenant_id,
        record.domains,
        record.allowed_domains,
        checks if checks is not None else DEFAULT_PLAN_CHECKS,
        smtputf8,
    )


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    verdict: Verdict
    add_headers: tuple[AddHeader, ...] = ()
    """Fields to add when the message is accepted."""


class MessageChecks:
    """The checks of one transaction."""

    def __init__(self, sender: Sender, config: Config, resolver: Resolver) -> None:
        self.sender = sender
        self.config = config
        self.resolver = resolver
        self.collected = Collected(config.messages)
        self.early: list[Finding] = []
        """Findings at MAIL FROM that did not refuse (warn mode), for the EOM verdict."""

    def at_mail_from(self, passed: Verdict) -> Verdict:
        """The MAIL FROM domain: the tenant's, and able to receive bounces.

        `passed` when both hold or only warn. A domain the tenant does not own
        is refused here when enforced (its warning comes at end of message with
        the other domain checks), so a forged domain is answered as forged
        rather than by what its DNS says.
        """
        plan = self.sender.plan
        domain = sender_domain(self.sender.address) if self.sender.address else None
        owned = self.sender.domains
        if domain is not None and owned is not None and plan.runs(Check.ENVELOPE_DOMAIN):
            foreign = foreign_envelope_domain(domain, owned)
            if foreign is not None:
                verdict = decide([foreign], plan, passed)
                if verdict.refuses:
                    return verdict
        if domain is None or not plan.runs(Check.BOUNCE_DOMAIN):
            return passed
        finding = check_bounce_route(self._bounce_route(domain))
        if finding is None:
            return passed
        verdict = decide([finding], plan, passed)
        if not verdict.refuses:
            self.early.append(finding)
        return verdict

    def _bounce_route(self, domain: str) -> BounceRoute:
        mx = self.resolver.query(domain, "MX")
        if not needs_address_lookup(mx):
            return BounceRoute(domain, mx)
        a = self.resolver.query(domain, "A")
        if a.found:
            return BounceRoute(domain, mx, (a,))
        return BounceRoute(domain, mx, (a, self.resolver.query(domain, "AAAA")))

    def at_end_of_message(
        self, passed: Verdict, now: datetime, mta_host: str | None, *, bulk_stream: bool = False
    ) -> EndOfMessage:
        """`bulk_stream`: the sender's stream is `bulk` (Redis); list headers also make bulk."""
        collected = self.collected
        if collected.body_fault is not None:
            fault = collected.body_fault
            size = f"message body of {collected.body_size} bytes"
            refusal = Verdict.refuse(
                fault,
                f"{size}: {fault.text}",
                passed.tenant,
                rule="body-size",
                evidence={"body_bytes": collected.body_size},
            )
            return EndOfMessage(refusal)
        block = collected.block()
        sender, plan, settings = self.sender, self.sender.plan, self.config.messages
        findings = [*self.early, *check_headers(
            block, smtputf8=sender.smtputf8, now=now, rules=settings.header_rules
        )]  # fmt: skip
        add_message_id = settings.add_message_id and not block.has("message-id")
        if not settings.add_message_id:
            missing = missing_message_id(block)
            if missing is not None:
                findings.append(missing)
        bulk = bulk_stream or bulk_by_headers(block)
        findings += check_subject(block, bulk=bulk, plan=plan)
        dkim_domains: frozenset[str] = frozenset()
        if not _refused_for_good(findings, plan):
            dkim_findings, dkim_domains = self._dkim(block)
            findings += dkim_findings
        facts = DomainFacts(sender.address, sender.domains, sender.allowed_domains, dkim_domains)
        findings += check_domains(block, facts, plan, organizational_domain)
        if not _refused_for_good(findings, plan):
            findings += self._spf()
        verdict = decide(findings, plan, passed)
        if verdict.refuses or not add_message_id:
            return EndOfMessage(verdict)
        message_id = f"<{uuid.uuid4().hex}@{self._id_domain(mta_host)}>"
        return EndOfMessage(verdict, (AddHeader("Message-ID", message_id),))

    def _dkim(self, block: HeaderBlock) -> tuple[list[Finding], frozenset[str]]:
        plan, owned = self.sender.plan, self.sender.domains
        wanted = plan.runs(Check.DKIM) or (
            plan.dkim_satisfies_alignment and plan.runs(Check.ALIGNMENT)
        )
        if not wanted or not owned:
            return [], frozenset()
        found = signatures([f.text for f in block.all("dkim-signature")])
        chosen: list[Signature] = [s for s in found if s.domain and within(s.domain, owned)]
        message = self.collected.message_bytes() if chosen else None
        if message is None:
            return [], frozenset()
        results = verify_signatures(message, chosen, self.resolver)
        return check_dkim(results), passing_dkim_domains(results)

    def _spf(self) -> list[Finding]:
        address = self.sender.address
        relay_ips = self.config.messages.relay_ips
        if not address or not relay_ips or not self.sender.plan.runs(Check.SPF):
            return []
        domain = sender_domain(address)
        if domain is None:
            return []
        helo = self.config.messages.message_id_domain or socket.getfqdn()
        return check_spf(domain, check_relay_ips(address, relay_ips, helo, self.resolver))

    def _id_domain(self, mta_host: str | None) -> str:
        configured = self.config.messages.message_id_domain
        candidate = configured or normalize_domain(mta_host or "") or socket.getfqdn()
        # Only characters a Message-ID's right side may hold (dot-atom-text).
        return reply_safe(candidate, 200).replace("?", "-") or "localhost"

    def close(self) -> None:
        self.collected.close()


def _refused_for_good(findings: list[Finding], plan: PlanChecks) -> bool:
    """An enforced permanent finding decides already: skip the checks that cost DNS lookups."""
    refusal = sort_findings(findings, plan).refusal
    return refusal is not None and not refusal.reply.is_temporary

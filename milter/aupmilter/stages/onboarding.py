"""End of message, before the charge: bulk mail needs a verified sender domain (plan onboarding).

On a plan whose `[plan.NAME.onboarding] mode` is `warn` or `enforce`, mail
that is bulk before the charge (its stream, Precedence/List-Id, or the
plan's `bulk_recipients`: policy.classify; bulk by content count is only
known after the charge and is not judged here) is judged by
policy.onboarding.decide_onboarding against the tenant's `verified:<domain>`
fields, which the MAIL FROM read brought with the tenant: no Redis call.

Which domains: the From header's (what receivers' DMARC judges, and what
the AUPs name); with `check_envelope = true` the MAIL FROM domain too. The
MAIL FROM domain is already bound to From by the alignment check (relaxed:
the same organizational domain), and verifying `acme.example` covers its
subdomains, so a bounce subdomain needs no verification of its own. A From
that does not parse (refused by the header checks unless they only warn)
falls back to the MAIL FROM domain.

A refusal here comes before the charge, so the refused message costs no
window; shadow mode keeps it for the record (`would-reject`) like any step's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aupmilter.policy.alignment import address_domains
from aupmilter.policy.headers import HeaderBlock
from aupmilter.policy.onboarding import decide_onboarding
from aupmilter.policy.tenancy import sender_domain
from aupmilter.policy.verdict import Action

if TYPE_CHECKING:
    from aupmilter.stages.end_of_message import Draft
    from aupmilter.stages.transaction import Transaction


def onboarding(txn: Transaction, draft: Draft) -> None:
    """The step of end_of_message.STEPS; a no-op on plans with onboarding off."""
    plan, tenant, gate, listmail = txn.plan, txn.tenant, txn.gate, txn.listmail
    if plan is None or tenant is None or gate is None or listmail is None:
        return
    if not plan.onboarding.enabled:
        return
    if draft.verdict.action is Action.QUARANTINE:
        return  # held for the operators, who see it before anyone else does
    if not draft.known_bulk(listmail, len(gate.accepted)):
        return
    domains = list(address_domains(HeaderBlock(draft.headers), "from") or [])
    envelope = sender_domain(txn.sender)
    if envelope is not None and (plan.onboarding.check_envelope or not domains):
        domains.append(envelope)
    if not domains:
        return
    before = draft.verdict
    verdict = decide_onboarding(
        plan.onboarding, tenant.verifications, domains, tenant.tenant_id, draft.now, before
    )
    for warning in verdict.warnings[len(before.warnings) :]:
        txn.log.warning("%s (plan %s: onboarding warn)", warning, plan.name)
    draft.verdict = verdict

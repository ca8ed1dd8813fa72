"""End of message: the checks in order, one Redis call, and the actions for the MTA.

`STEPS` is the order, as data. Each step reads and refines one `Draft`; the
first step whose verdict refuses ends the stage (nothing after it runs, and
the actions saved so far are not applied: a refused message changes nothing).

1. message checks: header structure, domains and alignment, subject, DKIM,
   SPF (pure rules, DNS through the cached resolver); a refusal here is never
   charged to the windows;
2. unsubscribe compliance: bulk mail with broken unsubscribe headers on a
   plan that rejects them is refused before any charge; on a plan with a
   footer (policy.footer), mail already known to be bulk (stream, headers,
   recipient count) is scanned for the tenant's postal address, and a
   `check` that fails is refused before the charge too; then onboarding
   (stages/onboarding.py): bulk mail from a domain the plan wants verified
   and that is not is refused (550, or 451 when only lookups failed) or
   warned, before the charge;
3. charge: the one end-of-message script (suppression of the recipients, the
   windows' atomic re-check and charge, the delivered-recipients counter of
   the complaint and bounce rates, the content fingerprint's counter, the
   references behind the message's unsubscribe links, the ladder's count of
   this sender's near-cap transactions with this content, and on a consent
   plan the ledger's rules over a bulk message's recipients: lapsed ones
   removed like suppressed ones, too many never-mailed ones refused, the
   last-bulk time of the recipients delivered to recorded);
4. ladder: a near-cap repeat (policy.ladder) is quarantined, and the one that
   makes an offence suspends the sender, then its domain, then terminates the
   tenant (one more round trip, only then);
5. header edits: the unsubscribe decision over the recipients left, and the
   fields the milter adds (Message-ID, List-Unsubscribe pair, Feedback-ID);
   the deletions first, so their indexes count the message's own fields;
6. footer: bulk mail on a footer plan, if not scanned yet (bulk by its
   content's count), is scanned now; on `insert` the parts without the
   address get the footer (message.footer splices it into the original
   bytes) and the body is replaced, the link the footer shows being the
   final List-Unsubscribe's;
7. signature: DKIM over the header list as the MTA will deliver it, and
   over the body as replaced;
8. quarantine: the mail of a suspended tenant, sender or domain, and a
   near-cap repeat, go to the hold queue.

With the MAIL FROM read that makes two Redis round trips per transaction,
whatever the number of recipients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from aupmilter import replies
from aupmilter.mailauth.dkimsign import SigningError
from aupmilter.message import footer as mime_footer
from aupmilter.message.wire import message_id_of
from aupmilter.policy.actions import (
    AddHeader,
    ChangeHeader,
    DeleteRecipient,
    InsertHeader,
    MilterAction,
    Quarantine,
    ReplaceBody,
)
from aupmilter.policy.classify import header_values
from aupmilter.policy.consent import too_many_new
from aupmilter.policy.footer import (
    FooterJudgement,
    FooterMode,
    footer_text,
    judge,
    judge_identity,
    unsubscribe_target,
)
from aupmilter.policy.headers import HeaderField
from aupmilter.policy.ladder import Evidence, Repeat, offence_for, repeat_of, repeat_verdict
from aupmilter.policy.limits import Window
from aupmilter.policy.tenancy import decide_store_error, sender_domain
from aupmilter.policy.unsubscribe import UnsubscribeLinks, edited_headers
from aupmilter.policy.verdict import Action, Verdict
from aupmilter.stages.listmail import ListMail, ListMailOutcome, message_fingerprint
from aupmilter.stages.message_checks import MessageChecks
from aupmilter.stages.onboarding import onboarding
from aupmilter.stages.transaction import Transaction
from aupmilter.store import keys
from aupmilter.store.client import (
    AllSuppressed,
    ConsentCheck,
    ConsentFinding,
    NoRoom,
    ReferenceWrite,
    StoreUnavailable,
    TooManyNew,
)
from aupmilter.store.ladder import LadderStore


@dataclass(slots=True)
class Draft:
    """The end-of-message work in progress: what the steps decided so far."""

    verdict: Verdict
    checks: MessageChecks
    headers: tuple[HeaderField, ...]
    body: bytes | None
    now: float
    added: tuple[AddHeader, ...] = ()
    """Fields the message checks add (a Message-ID)."""
    links: UnsubscribeLinks | None = None
    remaining: list[str] | None = None
    """Recipient keys left after suppression; None until the charge ran."""
    fingerprint: str | None = None
    """The content fingerprint, when the charge counted it (the Feedback-ID may reuse it)."""
    outcome: ListMailOutcome | None = None
    suppressed: list[str] = field(default_factory=list)
    """Recipients removed because they are on the tenant's suppression list, as written."""
    lapsed: list[str] = field(default_factory=list)
    """Bulk recipients whose consent lapsed (policy.consent), as written: removed when enforced."""
    actions: list[MilterAction] = field(default_factory=list)
    near_cap: NearCap | None = None
    """This transaction's near-cap counter (policy.ladder), when it is near-cap and charged."""
    footer: FooterJudgement | None = None
    """The footer rule's judgement, once the message was scanned."""
    footer_walk: mime_footer.Walk | None = None
    footer_log: dict[str, object] = field(default_factory=dict)
    bulk_before_charge: bool | None = None
    """`known_bulk`'s answer, once asked: the footer, onboarding and consent steps share it."""

    def known_bulk(self, listmail: ListMail, recipient_count: int) -> bool:
        """Bulk before the charge (stream, headers, recipient count), classified once: the
        headers and the accepted recipients do not change before the charge."""
        if self.bulk_before_charge is None:
            self.bulk_before_charge = listmail.known_bulk(self.headers, recipient_count)
        return self.bulk_before_charge

    def log_fields(self) -> dict[str, object] | None:
        fields = self.outcome.log_fields() if self.outcome is not None else None
        if self.footer_log:
            fields = {**(fields or {}), **self.footer_log}
        return fields


@dataclass(slots=True)
class NearCap:
    """The ladder's counter in the charge call, and its fill once charged."""

    key: str
    window: Window
    index: int
    """Where its fill is in the charge's fills."""
    evidence: Evidence
    """With `repeats` 0 until the charge answered."""


@dataclass(frozen=True, slots=True)
class EndOfMessageResult:
    verdict: Verdict
    actions: tuple[MilterAction, ...]
    """To apply in this order when the verdict does not refuse."""
    suppressed: tuple[str, ...]
    log_fields: dict[str, object] | None
    lapsed: tuple[str, ...] = ()
    """Bulk recipients whose consent lapsed: removed (`lapse_enforced`) or only warned about."""
    lapse_enforced: bool = False


Step = Callable[[Transaction, Draft], None]


def decide(txn: Transaction, checks: MessageChecks, now: float) -> EndOfMessageResult:
    """Run the end-of-message steps over the collected message."""
    assert txn.verdict is not None
    listmail = txn.listmail
    collected = checks.collected
    needs_body = listmail is not None and listmail.needs_body
    draft = Draft(
        verdict=txn.verdict,
        checks=checks,
        headers=tuple(collected.fields),
        body=collected.body_bytes() if needs_body else None,
        now=now,
    )
    for _name, step in STEPS:
        passed = draft.verdict
        step(txn, draft)
        if txn.overrules(draft.verdict):
            draft.verdict = passed  # shadow mode: the next steps run on what passed so far
        elif draft.verdict.refuses:
            break
    if txn.shadow:
        return _shadowed(txn, draft)
    return EndOfMessageResult(
        draft.verdict,
        tuple(draft.actions),
        tuple(draft.suppressed),
        draft.log_fields(),
        lapsed=tuple(draft.lapsed),
        lapse_enforced=txn.plan is not None and txn.plan.consent.enforced,
    )


def _shadowed(txn: Transaction, draft: Draft) -> EndOfMessageResult:
    """Shadow mode: the mail passes unchanged; what would have been done is only reported."""
    verdict = draft.verdict
    if verdict.action is Action.QUARANTINE:
        txn.shadowed.append(verdict)
    fields = dict(draft.log_fields() or {})
    would_add = [a.name for a in draft.actions if isinstance(a, AddHeader | InsertHeader)]
    if would_add:
        fields["would_add_headers"] = would_add
    if draft.suppressed or draft.lapsed:
        fields["would_remove"] = [*draft.suppressed, *draft.lapsed]
    if any(isinstance(a, ReplaceBody) for a in draft.actions):
        fields["footer_outcome"] = "would-insert"  # the body goes unchanged in shadow mode
    passed = Verdict.accept(f"shadow mode: {verdict.reason}", verdict.tenant, rule=verdict.rule)
    return EndOfMessageResult(replace(passed, warnings=verdict.warnings), (), (), fields)


def _message_checks(txn: Transaction, draft: Draft) -> None:
    result = draft.checks.at_end_of_message(
        draft.verdict,
        datetime.fromtimestamp(draft.now, UTC),
        txn.mta_host,
        bulk_stream=txn.stream == "bulk",
    )
    draft.verdict, draft.added = result.verdict, result.add_headers


def _unsubscribe_compliance(txn: Transaction, draft: Draft) -> None:
    if txn.listmail is not None and txn.gate is not None:
        refusal = txn.listmail.before_charge(draft.headers, len(txn.gate.accepted))
        draft.verdict = refusal or draft.verdict


def _footer_check(txn: Transaction, draft: Draft) -> None:
    """Mail known to be bulk before the charge is scanned now: a refusal costs no window."""
    listmail, gate = txn.listmail, txn.gate
    if listmail is None or gate is None or not listmail.checks_footer or draft.body is None:
        return
    if draft.known_bulk(listmail, len(gate.accepted)):
        _footer_judge(txn, draft)


def _footer_judge(txn: Transaction, draft: Draft) -> None:
    """The tenant's identity, the MIME walk and the footer rule's judgement, once per message."""
    assert txn.listmail is not None and draft.body is not None
    plan, tenant = txn.listmail.footer, txn.listmail.tenant
    identity = txn.tenant.identity if txn.tenant is not None else None
    draft.footer_log["footer"] = str(plan.mode)
    refusal = judge_identity(identity, tenant)
    if refusal is not None or identity is None:
        draft.footer = FooterJudgement(verdict=refusal, outcome="no-identity")
    else:
        walk = mime_footer.scan(draft.headers, draft.body, identity, plan)
        draft.footer_walk = walk
        draft.footer = judge(plan, identity, walk.scan, tenant)
    draft.footer_log.update(footer_outcome=draft.footer.outcome, **draft.footer.log)
    if draft.footer.verdict is not None:
        draft.verdict = draft.footer.verdict


def _charge(txn: Transaction, draft: Draft) -> None:
    """The end-of-message script; with list mail, the fingerprint and link references in it."""
    gate, listmail, runtime = txn.gate, txn.listmail, txn.runtime
    if gate is None:
        return
    references: ReferenceWrite | None = None
    counters = []
    if txn.plan is not None and draft.verdict.action is not Action.QUARANTINE:
        # The complaint and bounce rates' denominator, in the same script call;
        # held mail is not delivered (yet), so it does not dilute the rates.
        delivered = txn.plan.reputation.counter(keys.RATE_DELIVERED)
        delivered_key = keys.rate_counter(gate.tenant, keys.RATE_DELIVERED, delivered.period_ms)
        counters.append((delivered_key, delivered))
    near_cap = _near_cap_counter(txn, draft)
    if near_cap is not None:
        # Before the content counter, which charge.lua reads as the last one.
        near_cap.index = len(gate.limits.windows) + len(counters)
        counters.append((near_cap.key, near_cap.window))
    fingerprinted = False
    if listmail is not None:
        added = (HeaderField.added(a.name, a.value) for a in draft.added)
        message_id = message_id_of([*draft.headers, *added]) or txn.queue_id or txn.conn_id
        draft.links, references = listmail.links_for_charge(
            draft.headers, list(gate.accepted), message_id, draft.now
        )
        if listmail.counts_fingerprints and draft.body is not None:
            window = listmail.fingerprint_window()
            fingerprint = draft.fingerprint or message_fingerprint(draft.headers, draft.body)
            draft.fingerprint = fingerprint
            key = keys.fingerprint_counter(gate.tenant, fingerprint, window.period_ms)
            counters.append((key, window))
            fingerprinted = True
    consent = _consent_check(txn, draft, fingerprinted)
    now_ms = int(draft.now * 1000)
    try:
        result = runtime.store.charge(
            gate.tenant,
            gate.limits.windows,
            gate.sender,
            list(gate.accepted),
            now_ms,
            counters=counters,
            references=references,
            consent=consent,
        )
    except StoreUnavailable as exc:
        fallback = decide_store_error(str(exc), runtime.sender_policy)
        draft.verdict = fallback if fallback.refuses else draft.verdict
        return
    tenant = gate.tenant
    if isinstance(result, NoRoom):
        reply = gate.no_room_reply(result.window_index, result.fill, now_ms)
        window = gate.limits.windows[result.window_index]
        reason = f"window {window.name} filled by concurrent mail"
        evidence = {"window": window.name, "used": result.fill.used, "limit": window.limit}
        draft.verdict = Verdict.refuse(reply, reason, tenant, rule="window", evidence=evidence)
        return
    if isinstance(result, TooManyNew):
        draft.verdict = _too_many_new(txn, result.consent, tenant)
        return
    for key in result.suppressed:
        draft.suppressed.append(gate.accepted[key])
        draft.actions.append(DeleteRecipient(gate.accepted[key]))
    lapsed = _lapsed(txn, draft, result.consent)
    if isinstance(result, AllSuppressed):
        if lapsed:
            days = txn.plan.consent.lapse_days if txn.plan is not None else 0
            reply = replies.recipients_lapsed(tenant, days)
            reason = "every recipient has unsubscribed or its consent has lapsed"
            rule = CONSENT_LAPSED
        else:
            reply = replies.recipients_unsubscribed(tenant)
            reason, rule = "every recipient has unsubscribed", "unsubscribed"
        draft.verdict = Verdict.refuse(reply, reason, tenant, rule=rule)
        return
    if fingerprinted:
        txn.fingerprint_recipients = result.fills[-1]
    if near_cap is not None:
        near_cap.evidence = replace(near_cap.evidence, repeats=result.fills[near_cap.index])
        draft.near_cap = near_cap
    gone = {*result.suppressed, *lapsed}
    draft.remaining = [key for key in gate.accepted if key not in gone]


CONSENT_LAPSED = "consent-lapsed"
"""The rule of a bulk recipient removed (or a message refused) because its consent lapsed."""
CONSENT_NEW = "consent-new-recipients"
"""The rule of a bulk message refused for its share of never-mailed recipients."""


def _consent_check(txn: Transaction, draft: Draft, fingerprinted: bool) -> ConsentCheck | None:
    """The consent rules for the charge call, on a consent plan (policy.consent).

    Bulk is known before the charge (stream, headers, recipient count) or by the
    content counter in the call, when it is counted. Held mail is not judged (nor
    recorded as delivered): it is not delivered yet.
    """
    plan, listmail, gate = txn.plan, txn.listmail, txn.gate
    if plan is None or listmail is None or gate is None or not plan.consent.enabled:
        return None
    if draft.verdict.action is Action.QUARANTINE:
        return None
    return ConsentCheck(
        plan=plan.consent,
        known_bulk=draft.known_bulk(listmail, len(gate.accepted)),
        bulk_from_counter=listmail.plan.bulk_fingerprint_recipients if fingerprinted else None,
    )


def _lapsed(txn: Transaction, draft: Draft, finding: ConsentFinding) -> list[str]:
    """The lapsed recipients' keys when enforced (each removed like a suppressed one);
    in warn mode none, and the verdict's warnings say what enforce would do."""
    plan, gate = txn.plan, txn.gate
    if not finding.judged or plan is None or gate is None:
        return []
    consent = plan.consent
    draft.footer_log.update(
        consent=str(consent.mode), consent_lapsed=len(finding.lapsed), consent_new=finding.new
    )
    for key in finding.lapsed:
        draft.lapsed.append(gate.accepted[key])
        if consent.enforced:
            draft.actions.append(DeleteRecipient(gate.accepted[key]))
    if consent.enforced:
        return list(finding.lapsed)
    warnings = list(draft.verdict.warnings)
    if finding.lapsed:
        warnings.append(
            f"consent: {len(finding.lapsed)} recipient(s) lapsed (no consent or bulk mail"
            f" within {consent.lapse_days} days); warn mode delivers them"
        )
    if too_many_new(finding.new, finding.considered, consent):
        warnings.append(
            f"consent: {finding.new} of {finding.considered} bulk recipients never got"
            " this tenant's mail; warn mode delivers them"
        )
    draft.verdict = replace(draft.verdict, warnings=tuple(warnings))
    return []


def _too_many_new(txn: Transaction, finding: ConsentFinding, tenant: str) -> Verdict:
    assert txn.plan is not None
    consent = txn.plan.consent
    share = consent.new_recipient_share_ppm or 0
    evidence = {
        "new": finding.new,
        "recipients": finding.considered,
        "share_limit": share / 1_000_000,
        "min_recipients": consent.new_recipient_min,
    }
    return Verdict.refuse(
        replies.new_recipients(finding.new, finding.considered),
        f"{finding.new} of {finding.considered} bulk recipients never got this tenant's mail",
        tenant,
        rule=CONSENT_NEW,
        evidence=evidence,
    )


def _near_cap_counter(txn: Transaction, draft: Draft) -> NearCap | None:
    """The ladder's counter when this transaction is near the cap; the body's fingerprint.

    Held mail is not counted: a suspended sender climbs no rung while its mail waits.
    """
    gate, plan = txn.gate, txn.plan
    if gate is None or plan is None or draft.verdict.action is Action.QUARANTINE:
        return None
    cap = gate.limits.max_recipients
    recipients = len(gate.accepted)
    if not plan.ladder.near_cap(recipients, cap):
        return None
    body = draft.body if draft.body is not None else draft.checks.collected.body_bytes()
    if body is None:
        return None  # not kept (a body fault): no fingerprint to count
    fingerprint = draft.fingerprint or message_fingerprint(draft.headers, body)
    draft.fingerprint = fingerprint
    window = plan.ladder.counter()
    key = keys.near_cap_counter(gate.tenant, fingerprint, gate.sender, window.period_ms)
    return NearCap(key, window, -1, Evidence(fingerprint, 0, recipients, cap, plan.ladder))


def _ladder(txn: Transaction, draft: Draft) -> None:
    """A near-cap repeat is quarantined; the one that makes the offence climbs the ladder.

    The offence call (store.ladder) is one more round trip, only when an offence
    fires. In shadow mode it records what it would do and changes no state, and
    the quarantine is only reported (the stage's shadow pass lets the mail go).
    """
    near_cap, gate = draft.near_cap, txn.gate
    if near_cap is None or gate is None or txn.plan is None:
        return
    repeat = repeat_of(near_cap.evidence.repeats, txn.plan.ladder)
    if repeat is Repeat.NONE:
        return
    shadow = txn.shadow
    if repeat is Repeat.OFFENCE:
        offence = offence_for(
            tenant=gate.tenant,
            sender=gate.sender,
            domain=sender_domain(txn.sender),
            envelope_sender=txn.sender,
            previous=txn.offences,
            evidence=near_cap.evidence,
            shadow=shadow,
            queue_id=txn.queue_id,
            conn=txn.conn_id,
            now=draft.now,
        )
        try:
            LadderStore(txn.runtime.store.client).record(offence, near_cap.key)
        except StoreUnavailable as exc:
            txn.log.error("near-cap repeat: the offence could not be recorded: %s", exc)
    draft.verdict = repeat_verdict(draft.verdict, near_cap.evidence, gate.tenant)


def _header_edits(txn: Transaction, draft: Draft) -> None:
    listmail = txn.listmail
    if listmail is not None and draft.remaining is not None:
        draft.outcome = listmail.after_charge(
            draft.headers,
            draft.remaining,
            txn.fingerprint_recipients,
            draft.links,
            body=draft.body,
            fingerprint=draft.fingerprint,
        )
    outcome = draft.outcome
    if outcome is not None:
        draft.actions += [ChangeHeader(d.name, d.index) for d in outcome.deletions]
    draft.actions += draft.added
    if outcome is not None:
        draft.actions += outcome.additions


def _footer(txn: Transaction, draft: Draft) -> None:
    """The footer of bulk mail: judged if not yet (bulk by content), inserted where missing."""
    listmail, outcome = txn.listmail, draft.outcome
    if listmail is None or outcome is None or draft.body is None or not listmail.checks_footer:
        return
    if not outcome.classification.bulk:
        return
    if draft.footer is None:
        _footer_judge(txn, draft)
    judgement, walk = draft.footer, draft.footer_walk
    if judgement is None or judgement.verdict is not None or walk is None:
        return
    identity = txn.tenant.identity if txn.tenant is not None else None
    if listmail.footer.mode is not FooterMode.INSERT or not judgement.rewrite or identity is None:
        return
    final = edited_headers(draft.headers, outcome.deletions, [*draft.added, *outcome.additions])
    link = unsubscribe_target(next(iter(header_values(final, "List-Unsubscribe")), None))
    rewritten = mime_footer.rewrite(
        draft.body, walk, judgement.rewrite, footer_text(identity, link)
    )
    if link is None:
        draft.footer_log["footer_unsubscribe"] = "none: the message has no List-Unsubscribe"
    if rewritten.fallback is not None:
        draft.footer_log["footer_fallback"] = rewritten.fallback
    draft.body = rewritten.body
    draft.actions.append(ReplaceBody(rewritten.body, f"footer in {len(judgement.rewrite)} part(s)"))


def _signature(txn: Transaction, draft: Draft) -> None:
    """DKIM-sign bulk mail as the MTA will deliver it; a failure is logged, not fatal."""
    listmail, outcome = txn.listmail, draft.outcome
    if listmail is None or outcome is None:
        return
    if not draft.checks.collected.complete:
        txn.log.warning("header fields past the collection limits: the message is not signed")
        return
    try:
        signature = listmail.signature(draft.headers, draft.added, outcome, draft.body)
    except SigningError as exc:
        txn.log.error("DKIM signing failed, the message goes unsigned: %s", exc)
        return
    if signature is not None:
        draft.actions.append(signature)


def _quarantine(_txn: Transaction, draft: Draft) -> None:
    if draft.verdict.action is Action.QUARANTINE:
        draft.actions.append(Quarantine(f"aup-milter: {draft.verdict.reason}"))


STEPS: tuple[tuple[str, Step], ...] = (
    ("message checks", _message_checks),
    ("unsubscribe compliance", _unsubscribe_compliance),
    ("footer check", _footer_check),
    ("onboarding", onboarding),
    ("charge", _charge),
    ("ladder", _ladder),
    ("header edits", _header_edits),
    ("footer", _footer),
    ("signature", _signature),
    ("quarantine", _quarantine),
)

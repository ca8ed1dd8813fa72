"""The spammer profile and its ladder: the same mail again and again, near the recipient cap.

A transaction is NEAR-CAP when it has at least `near_cap_ratio` (default
90 %) of the per-message recipient cap, and never fewer than
MIN_NEAR_CAP_RECIPIENTS (a one-recipient message is no list blast, even on a
tenant whose cap is 1). The end-of-message script counts a sender's near-cap
transactions per content fingerprint over `near_cap_window` (a count-only
window, store.keys.near_cap_counter). Its fill after the charge is the number
of near-cap transactions with this content by this sender in the window,
this one included.

A NEAR-CAP REPEAT is a near-cap transaction whose content the same sender
already sent in at least `near_cap_repeats` (K) near-cap transactions within
the window: the fill is K + 1 or more. The one transaction that brings the
fill to exactly K + 1 is the OFFENCE; the counter is reset (deleted) in the
same call that records it, so the same evidence never makes a second
offence, and a lifted suspension does not fire again on it. A transaction
that saw a fill above K + 1 raced past the offence of a concurrent one
(before its reset): it is a repeat, quarantined, but no second offence.

The ladder counts each sender's offences over the tenant's history and acts
on that count:

1st offence  the sender (the SASL login, else the envelope mailbox) suspended
2nd offence  the envelope sender's domain suspended (a sender with no domain,
             the null sender, has no domain rung: its 2nd offence is the 3rd's)
3rd offence  the tenant terminated

A suspended sender's or domain's mail is quarantined from MAIL FROM on, like
a suspended tenant's; the offending transaction itself is quarantined too.
Held mail is not counted (it is not delivered), so a suspended sender climbs
no further rung until ops lift it and it offends again.

Pure: counts, plan and the clock in; rungs, reasons, evidence and audit
fields out. The store (store.ladder) writes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import StrEnum

from aupmilter.policy.limits import Scope, Unit, Window, format_period
from aupmilter.policy.verdict import Verdict
from aupmilter.replies import safe_text

RULE = "near-cap-repeat"
"""The rule name of the offence and of the repeats' quarantine (audit and verdict)."""
COUNTER_NAME = "near-cap-repeats"
MIN_NEAR_CAP_RECIPIENTS = 2
FINGERPRINT_PREFIX = 12
"""Hex characters of the content fingerprint shown in reasons and evidence."""
PPM = 1_000_000
MAX_REASON_LENGTH = 200


@dataclass(frozen=True, slots=True)
class LadderPlan:
    """A plan's `[plan.NAME.ladder]` table."""

    enabled: bool = True
    ratio_ppm: int = 900_000
    """The near-cap ratio of the recipient cap, in parts per million (900000: 90 %)."""
    repeats: int = 3
    """K: a near-cap transaction is a repeat when K earlier ones carried the same content."""
    window: int = 86_400
    """Seconds the near-cap transactions are counted over."""

    @property
    def ratio(self) -> float:
        return self.ratio_ppm / PPM

    def counter(self) -> Window:
        """The count-only window of one sender's near-cap transactions with one content."""
        return Window(
            name=COUNTER_NAME,
            scope=Scope.SENDER,
            unit=Unit.MESSAGES,
            limit=-1,
            period_ms=self.window * 1000,
        )

    def threshold(self, cap: int) -> int:
        """The fewest recipients that make a transaction near-cap (the ratio rounded up)."""
        return max(MIN_NEAR_CAP_RECIPIENTS, (cap * self.ratio_ppm + PPM - 1) // PPM)

    def near_cap(self, recipients: int, cap: int) -> bool:
        return self.enabled and recipients >= self.threshold(cap)

    def describe(self, cap: int) -> str:
        """``4th near-cap send (90+ of 100 recipients) of one content in 1 day offends``."""
        if not self.enabled:
            return "off"
        span = format_period(self.window * 1000)
        span = span if span[0].isdigit() else f"1 {span}"
        nth = self.repeats + 1
        suffix = "th" if 10 <= nth % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(nth % 10, "th")
        return (
            f"the {nth}{suffix} near-cap send ({self.threshold(cap)}+ of {cap} recipients)"
            f" of one content by one sender in {span} is an offence"
        )


class Repeat(StrEnum):
    NONE = "none"
    """Fewer than K earlier near-cap transactions with this content."""
    OFFENCE = "offence"
    """This transaction made the fill K + 1: the ladder acts."""
    REPEAT = "repeat"
    """A fill above K + 1: a concurrent transaction's offence took this evidence."""


def repeat_of(fill: int, plan: LadderPlan) -> Repeat:
    """What the near-cap counter's fill after the charge (this transaction included) makes it."""
    if fill <= plan.repeats:
        return Repeat.NONE
    return Repeat.OFFENCE if fill == plan.repeats + 1 else Repeat.REPEAT


class Rung(StrEnum):
    SENDER = "sender"
    DOMAIN = "domain"
    TENANT = "tenant"

    @property
    def event(self) -> str:
        """The audit event's name: sender-suspended, domain-suspended, tenant-terminated."""
        return "tenant-terminated" if self is Rung.TENANT else f"{self.value}-suspended"

    def verdict_word(self, shadow: bool) -> str:
        word = "terminate" if self is Rung.TENANT else "suspend"
        return f"would-{word}" if shadow else word


def rung_for(offence: int, has_domain: bool) -> Rung:
    """The ladder: 1st offence the sender, 2nd its domain, 3rd and later the tenant."""
    if offence <= 1:
        return Rung.SENDER
    if offence == 2 and has_domain:
        return Rung.DOMAIN
    return Rung.TENANT


@dataclass(frozen=True, slots=True)
class Evidence:
    """What made the offence: the content, how often, how wide, against which cap."""

    fingerprint: str
    repeats: int
    """The near-cap counter's fill: near-cap transactions with this content, this one included."""
    recipients: int
    cap: int
    plan: LadderPlan

    def as_dict(self) -> dict[str, object]:
        return {
            "fingerprint": self.fingerprint[:FINGERPRINT_PREFIX],
            "repeats": self.repeats,
            "window": self.plan.window,
            "recipients": self.recipients,
            "cap": self.cap,
            "ratio": self.plan.ratio,
        }

    @property
    def words(self) -> str:
        """``content 3f2a9c1b0d4e sent 4 times in 1 day near the recipient cap (95 ...)``."""
        span = format_period(self.plan.window * 1000)
        span = span if span[0].isdigit() else f"1 {span}"
        return (
            f"content {self.fingerprint[:FINGERPRINT_PREFIX]} sent {self.repeats} times in"
            f" {span} near the recipient cap"
            f" ({self.recipients} recipients; cap {self.cap}, near-cap from"
            f" {self.plan.threshold(self.cap)})"
        )


@dataclass(frozen=True, slots=True)
class Offence:
    """One offence, decided: the rung it reaches and everything the store and the audit need."""

    tenant: str
    sender: str
    """The sender identity (policy.limits.sender_identity): the offences' and rung 1's subject."""
    domain: str | None
    """The envelope sender's domain, normalized; None for the null sender."""
    envelope_sender: str
    offence: int
    """This sender's offence count with this one (the MAIL FROM read's count plus one)."""
    rung: Rung
    evidence: Evidence
    shadow: bool
    queue_id: str | None
    conn: str
    now: float

    @property
    def subject(self) -> str:
        if self.rung is Rung.SENDER:
            return self.sender
        if self.rung is Rung.DOMAIN:
            return self.domain or ""
        return self.tenant

    @property
    def reason(self) -> str:
        """One line for the suspended entry, the tenant's reason, the log and the quarantine."""
        what = {
            Rung.SENDER: f"sender {self.sender} suspended",
            Rung.DOMAIN: f"domain {self.domain} suspended",
            Rung.TENANT: f"tenant {self.tenant} terminated",
        }[self.rung]
        prefix = "would be " if self.shadow else ""
        text = (
            f"{RULE} offence {self.offence} of sender {self.sender}: {self.evidence.words};"
            f" {prefix}{what} (queue {self.queue_id or '-'})"
        )
        return safe_text(text, 2 * MAX_REASON_LENGTH, control=" ")

    @property
    def stored_value(self) -> str:
        """The suspended hash's value: ``<unix time> <reason text>``."""
        return f"{int(self.now)} {self.reason}"

    def audit_fields(self) -> dict[str, str]:
        """The audit stream's event: flat strings, the evidence as a JSON text."""
        return {
            "event": self.rung.event,
            "tenant": self.tenant,
            "subject": self.subject,
            "offence": str(self.offence),
            "queue_id": self.queue_id or "",
            "conn": self.conn,
            "sender": self.envelope_sender,
            "ts": str(int(self.now)),
            "rule": RULE,
            "verdict": self.rung.verdict_word(self.shadow),
            "detail": self.reason,
            "evidence": json.dumps(self.evidence.as_dict(), sort_keys=True),
        }


def offence_for(
    *,
    tenant: str,
    sender: str,
    domain: str | None,
    envelope_sender: str,
    previous: int,
    evidence: Evidence,
    shadow: bool,
    queue_id: str | None,
    conn: str,
    now: float,
) -> Offence:
    """The offence a near-cap repeat makes, given the sender's ``previous`` offences."""
    offence = max(0, previous) + 1
    return Offence(
        tenant=tenant,
        sender=sender,
        domain=domain,
        envelope_sender=envelope_sender,
        offence=offence,
        rung=rung_for(offence, domain is not None),
        evidence=evidence,
        shadow=shadow,
        queue_id=queue_id,
        conn=conn,
        now=now,
    )


def repeat_verdict(passed: Verdict, evidence: Evidence, tenant: str) -> Verdict:
    """The offending (or racing) transaction itself goes to the hold queue."""
    reason = f"{RULE}: {evidence.words}"
    verdict = Verdict.quarantine(reason, tenant, rule=RULE, evidence=evidence.as_dict())
    return replace(verdict, warnings=passed.warnings)


def decide_suspended(
    passed: Verdict,
    tenant: str,
    sender: str,
    domain: str | None,
    sender_entry: str | None,
    domain_entry: str | None,
) -> Verdict:
    """MAIL FROM: a suspended sender's or domain's mail is quarantined like a suspended tenant's.

    The entries are the suspended hash's values (``<unix time> <reason>``), None when absent.
    """
    if sender_entry is not None:
        kind, subject, entry = "sender", sender, sender_entry
    elif domain_entry is not None and domain is not None:
        kind, subject, entry = "domain", domain, domain_entry
    else:
        return passed
    since, _, why = entry.partition(" ")
    if not since.isdigit():
        since, why = "", entry
    why = safe_text(why, MAX_REASON_LENGTH, control=" ")
    reason = f"{kind} {subject} of tenant {tenant} is suspended" + (f": {why}" if why else "")
    evidence: dict[str, object] = {"subject": subject, "since": int(since) if since else None}
    verdict = Verdict.quarantine(reason, tenant, rule=f"{kind}-suspended", evidence=evidence)
    return replace(verdict, warnings=passed.warnings)

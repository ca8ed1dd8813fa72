"""What the message checks report, how a plan weighs each check, and the verdict they make.

Each rule family (`headers`, `alignment`, `subjects`, and the DNS-backed
checks) returns `Finding`s: one check name, the reply that check gives, and
the exact fault in words a sender can act on. A plan sets every check to
`enforce` (the finding refuses the message), `warn` (the message goes on and
the finding is written to the verdict's audit line) or `off` (not evaluated).
`decide` turns findings and modes into one `Verdict`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from aupmilter.policy.verdict import Verdict
from aupmilter.replies import Reply, safe_text


class Mode(StrEnum):
    ENFORCE = "enforce"
    WARN = "warn"
    OFF = "off"


class Check(StrEnum):
    """Every check a plan can set to enforce, warn or off (`[plan.NAME.checks]`)."""

    HEADER_LIMITS = "header_limits"
    """Count and total size of the header section (config `[messages]`)."""
    HEADER_BYTES = "header_bytes"
    """NUL, bare CR or LF, 8-bit bytes without SMTPUTF8, lines over 998 octets."""
    HEADER_COUNTS = "header_counts"
    """Exactly one From and Date, at most one of the singular fields, Sender when needed."""
    ADDRESS_SYNTAX = "address_syntax"
    MESSAGE_ID = "message_id"
    DATE = "date"
    ENVELOPE_DOMAIN = "envelope_domain"
    """The MAIL FROM domain belongs to the tenant."""
    FROM_DOMAIN = "from_domain"
    """The From header domain belongs to the tenant."""
    ALIGNMENT = "alignment"
    """From and MAIL FROM share the organizational domain (relaxed) or the domain (strict)."""
    REPLY_TO = "reply_to"
    SENDER_HEADER = "sender_header"
    NULL_SENDER = "null_sender"
    BOUNCE_DOMAIN = "bounce_domain"
    """The MAIL FROM domain can receive bounces: MX or A/AAAA, and no null MX."""
    DKIM = "dkim"
    SPF = "spf"
    REPLY_PREFIX = "reply_prefix"
    """`Re:`/`Fwd:` on bulk mail that answers nothing."""
    FORBIDDEN_SUBJECT = "forbidden_subject"


class AlignmentMode(StrEnum):
    RELAXED = "relaxed"
    STRICT = "strict"


DEFAULT_MODES: Mapping[Check, Mode] = {
    **{check: Mode.ENFORCE for check in Check},
    # Needs the relay's outbound addresses (`messages.relay_ips`) to mean anything.
    Check.SPF: Mode.OFF,
}


@dataclass(frozen=True, slots=True)
class PlanChecks:
    """A plan's settings for the message checks (`[plan.NAME.checks]` in the plan files)."""

    modes: Mapping[Check, Mode] = field(default_factory=lambda: dict(DEFAULT_MODES))
    alignment: AlignmentMode = AlignmentMode.RELAXED
    dkim_satisfies_alignment: bool = True
    """A passing DKIM signature whose d= aligns with From stands in for MAIL FROM alignment."""
    allowed_reply_to_domains: frozenset[str] = frozenset()
    allowed_sender_domains: frozenset[str] = frozenset()
    forbidden_subjects: tuple[re.Pattern[str], ...] = ()

    def mode(self, check: Check) -> Mode:
        return self.modes.get(check, DEFAULT_MODES[check])

    def runs(self, check: Check) -> bool:
        return self.mode(check) is not Mode.OFF


DEFAULT_PLAN_CHECKS = PlanChecks()
"""For senders with no plan (an unknown sender let through by `unknown_sender = accept`)."""


MAX_FAULT_LENGTH = 180
"""A fault is put in front of a reply's own text: together they fit one reply line."""


def reply_safe(text: str, limit: int = MAX_FAULT_LENGTH) -> str:
    """`replies.safe_text`, bounded for a fault by default."""
    return safe_text(text, limit)


def quoted(value: str, limit: int = 60) -> str:
    """A piece of the sender's own header, safe and short enough to quote in a reply."""
    return "'" + reply_safe(value, limit) + "'"


@dataclass(frozen=True, slots=True)
class Finding:
    check: Check
    reply: Reply
    fault: str
    """What exactly is wrong, for the sender (reply text) and the audit line."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "fault", reply_safe(self.fault))

    def specific_reply(self) -> Reply:
        """The reply with this fault in front of the generic advice."""
        return self.reply.with_text(f"{self.fault}; {self.reply.text}")

    def describe(self) -> str:
        return f"{self.check.value}: {self.fault}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """Findings sorted by what the plan makes of them."""

    enforced: tuple[Finding, ...] = ()
    warned: tuple[Finding, ...] = ()

    @property
    def refusal(self) -> Finding | None:
        """The finding that answers the sender: a permanent fault beats a temporary one,
        since retrying cannot fix it; otherwise the first in check order."""
        permanent = [f for f in self.enforced if not f.reply.is_temporary]
        chosen = permanent or list(self.enforced)
        return chosen[0] if chosen else None


def sort_findings(findings: Iterable[Finding], plan: PlanChecks) -> Outcome:
    enforced: list[Finding] = []
    warned: list[Finding] = []
    for finding in findings:
        mode = plan.mode(finding.check)
        if mode is Mode.ENFORCE:
            enforced.append(finding)
        elif mode is Mode.WARN:
            warned.append(finding)
    return Outcome(tuple(enforced), tuple(warned))


def decide(findings: Iterable[Finding], plan: PlanChecks, passed: Verdict) -> Verdict:
    """The verdict of the checks: refuse on the first enforced finding, else `passed`
    (accept or quarantine, as decided earlier) carrying every warning."""
    outcome = sort_findings(findings, plan)
    warnings = tuple(f.describe() for f in outcome.warned)
    refusal = outcome.refusal
    if refusal is not None:
        others = [f.describe() for f in outcome.enforced if f is not refusal]
        reason = f"message refused by {refusal.describe()}"
        if others:
            reason += "; also " + "; ".join(others)
        verdict = Verdict.refuse(
            refusal.specific_reply(),
            reason,
            passed.tenant,
            rule=refusal.check.value,
            evidence={"findings": [f.describe() for f in outcome.enforced]},
        )
        return replace(verdict, warnings=warnings)
    return replace(passed, warnings=(*passed.warnings, *warnings))

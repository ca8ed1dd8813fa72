"""Findings, per-plan modes and the verdict they make (policy/findings.py)."""

from __future__ import annotations

import pytest

from aupmilter import replies
from aupmilter.policy.findings import (
    DEFAULT_MODES,
    Check,
    Finding,
    Mode,
    PlanChecks,
    decide,
    reply_safe,
)
from aupmilter.policy.verdict import Action, Verdict

PASSED = Verdict.accept("tenant acme is active", "acme")
HEADER = Finding(Check.DATE, replies.MALFORMED_HEADER, "Date 'x' is not an RFC 5322 date")
DNS = Finding(Check.BOUNCE_DOMAIN, replies.DNS_TEMPORARY_FAILURE, "DNS lookup failed: timeout")
SPF = Finding(Check.SPF, replies.SPF_NOT_AUTHORIZED, "SPF gives fail")


def plan(**modes: Mode) -> PlanChecks:
    return PlanChecks(modes={**DEFAULT_MODES, **{Check(k): v for k, v in modes.items()}})


def test_no_findings_keeps_the_earlier_verdict() -> None:
    assert decide([], PlanChecks(), PASSED) == PASSED
    held = Verdict.quarantine("tenant acme is suspended", "acme", rule="tenant-suspended")
    assert decide([], PlanChecks(), held) == held


def test_enforced_finding_refuses_with_the_fault_in_the_reply() -> None:
    verdict = decide([HEADER], PlanChecks(), PASSED)
    assert verdict.action is Action.REJECT and verdict.tenant == "acme"
    assert verdict.reply is not None
    assert verdict.reply.text.startswith("Date 'x' is not an RFC 5322 date; Message header")
    assert verdict.reason == "message refused by date: Date 'x' is not an RFC 5322 date"


def test_permanent_fault_wins_over_a_temporary_one() -> None:
    verdict = decide([DNS, HEADER], PlanChecks(), PASSED)
    assert verdict.reply is not None and verdict.reply.code == "550"
    assert "also bounce_domain" in verdict.reason
    temporary = decide([DNS], PlanChecks(), PASSED)
    assert temporary.action is Action.TEMPFAIL


def test_warn_mode_passes_and_records_the_finding() -> None:
    verdict = decide([HEADER, SPF], plan(date=Mode.WARN, spf=Mode.WARN), PASSED)
    assert verdict.action is Action.ACCEPT
    assert verdict.warnings == (
        "date: Date 'x' is not an RFC 5322 date",
        "spf: SPF gives fail",
    )


def test_off_mode_ignores_the_finding() -> None:
    assert decide([HEADER], plan(date=Mode.OFF), PASSED) == PASSED


def test_warnings_ride_along_a_refusal() -> None:
    verdict = decide([HEADER, SPF], plan(spf=Mode.WARN), PASSED)
    assert verdict.refuses and verdict.warnings == ("spf: SPF gives fail",)


def test_spf_is_off_by_default_everything_else_enforced() -> None:
    checks = PlanChecks()
    assert checks.mode(Check.SPF) is Mode.OFF
    assert all(checks.mode(c) is Mode.ENFORCE for c in Check if c is not Check.SPF)


@pytest.mark.parametrize(
    ("text", "safe"),
    [
        ("100% sure", "100? sure"),
        ("tab\there", "tab?here"),
        ("naïve", "na?ve"),
        ("x" * 300, "x" * 177 + "..."),
    ],
)
def test_reply_safe(text: str, safe: str) -> None:
    assert reply_safe(text) == safe


def test_findings_are_made_safe_for_setreply() -> None:
    finding = Finding(Check.DATE, replies.MALFORMED_HEADER, "50%\r\n off")
    assert "%" not in finding.specific_reply().text
    assert "\r" not in finding.specific_reply().text

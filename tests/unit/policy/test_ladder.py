"""policy/ladder.py: the near-cap predicate, the offence, the rungs, reasons and audit fields."""

from __future__ import annotations

import json

import pytest

from aupmilter.policy.ladder import (
    RULE,
    Evidence,
    LadderPlan,
    Repeat,
    Rung,
    decide_suspended,
    offence_for,
    repeat_of,
    repeat_verdict,
    rung_for,
)
from aupmilter.policy.limits import Scope, Unit
from aupmilter.policy.verdict import Action, Verdict

FINGERPRINT = "3f2a9c1b0d4e5f6a7b8c9d0e1f2a3b4c"
NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("recipients", "cap", "ratio_ppm", "enabled", "near"),
    [
        (90, 100, 900_000, True, True),
        (89, 100, 900_000, True, False),
        (100, 100, 900_000, True, True),
        (91, 101, 900_000, True, True),  # 90.9 rounds up to 91
        (90, 101, 900_000, True, False),
        (180, 200, 900_000, True, True),
        (179, 200, 900_000, True, False),
        (50, 100, 500_000, True, True),
        (100, 100, 1_000_000, True, True),
        (99, 100, 1_000_000, True, False),
        (1, 1, 900_000, True, False),  # never below two recipients
        (2, 2, 900_000, True, True),
        (1, 2, 500_000, True, False),
        (0, 100, 900_000, True, False),
        (100, 100, 900_000, False, False),  # the ladder switched off
    ],
)
def test_near_cap(recipients: int, cap: int, ratio_ppm: int, enabled: bool, near: bool) -> None:
    plan = LadderPlan(enabled=enabled, ratio_ppm=ratio_ppm)
    assert plan.near_cap(recipients, cap) is near


@pytest.mark.parametrize(
    ("fill", "repeats", "expected"),
    [
        (0, 3, Repeat.NONE),
        (1, 3, Repeat.NONE),
        (3, 3, Repeat.NONE),  # K near-cap sends: not yet "already sent K times"
        (4, 3, Repeat.OFFENCE),  # K earlier ones and this one
        (5, 3, Repeat.REPEAT),  # raced past a concurrent offence's reset
        (9, 3, Repeat.REPEAT),
        (1, 1, Repeat.NONE),
        (2, 1, Repeat.OFFENCE),
        (3, 1, Repeat.REPEAT),
    ],
)
def test_repeat_of_the_counter_fill(fill: int, repeats: int, expected: Repeat) -> None:
    assert repeat_of(fill, LadderPlan(repeats=repeats)) is expected


@pytest.mark.parametrize(
    ("offence", "has_domain", "rung"),
    [
        (1, True, Rung.SENDER),
        (2, True, Rung.DOMAIN),
        (3, True, Rung.TENANT),
        (7, True, Rung.TENANT),
        (1, False, Rung.SENDER),
        (2, False, Rung.TENANT),  # the null sender has no domain rung
        (0, True, Rung.SENDER),
    ],
)
def test_rung_for(offence: int, has_domain: bool, rung: Rung) -> None:
    assert rung_for(offence, has_domain) is rung


@pytest.mark.parametrize(
    ("rung", "event", "enforced", "shadowed"),
    [
        (Rung.SENDER, "sender-suspended", "suspend", "would-suspend"),
        (Rung.DOMAIN, "domain-suspended", "suspend", "would-suspend"),
        (Rung.TENANT, "tenant-terminated", "terminate", "would-terminate"),
    ],
)
def test_rung_names(rung: Rung, event: str, enforced: str, shadowed: str) -> None:
    assert rung.event == event
    assert (rung.verdict_word(False), rung.verdict_word(True)) == (enforced, shadowed)


def test_the_counter_counts_messages_per_sender_over_the_window() -> None:
    window = LadderPlan(window=3600).counter()
    assert (window.scope, window.unit, window.limit, window.period_ms) == (
        Scope.SENDER,
        Unit.MESSAGES,
        -1,
        3_600_000,
    )


def evidence(repeats: int = 4) -> Evidence:
    return Evidence(FINGERPRINT, repeats, 95, 100, LadderPlan())


@pytest.mark.parametrize(
    ("previous", "domain", "shadow", "rung", "subject", "word"),
    [
        (0, "acme.example", False, Rung.SENDER, "bob@acme.example", "suspend"),
        (1, "acme.example", False, Rung.DOMAIN, "acme.example", "suspend"),
        (2, "acme.example", False, Rung.TENANT, "acme", "terminate"),
        (0, "acme.example", True, Rung.SENDER, "bob@acme.example", "would-suspend"),
        (2, "acme.example", True, Rung.TENANT, "acme", "would-terminate"),
        (1, None, False, Rung.TENANT, "acme", "terminate"),
    ],
)
def test_offence_audit_fields(
    previous: int, domain: str | None, shadow: bool, rung: Rung, subject: str, word: str
) -> None:
    offence = offence_for(
        tenant="acme",
        sender="bob@acme.example",
        domain=domain,
        envelope_sender="bob@acme.example",
        previous=previous,
        evidence=evidence(),
        shadow=shadow,
        queue_id="Q1",
        conn="c7",
        now=NOW,
    )
    assert offence.offence == previous + 1 and offence.rung is rung
    fields = offence.audit_fields()
    assert {k: v for k, v in fields.items() if k not in ("detail", "evidence")} == {
        "event": rung.event,
        "tenant": "acme",
        "subject": subject,
        "offence": str(previous + 1),
        "queue_id": "Q1",
        "conn": "c7",
        "sender": "bob@acme.example",
        "ts": str(int(NOW)),
        "rule": RULE,
        "verdict": word,
    }
    assert all(isinstance(v, str) for v in fields.values())
    assert json.loads(fields["evidence"]) == {
        "fingerprint": FINGERPRINT[:12],
        "repeats": 4,
        "window": 86_400,
        "recipients": 95,
        "cap": 100,
        "ratio": 0.9,
    }
    detail = fields["detail"]
    assert FINGERPRINT[:12] in detail and "4 times in 1 day" in detail and "Q1" in detail
    assert ("would be" in detail) is shadow
    assert offence.stored_value == f"{int(NOW)} {detail}"


def test_the_reason_is_one_clean_line() -> None:
    offence = offence_for(
        tenant="acme",
        sender="bob%\r\n@acme.example",
        domain="acme.example",
        envelope_sender="bob%\r\n@acme.example",
        previous=0,
        evidence=evidence(),
        shadow=False,
        queue_id=None,
        conn="c1",
        now=NOW,
    )
    assert "%" not in offence.reason and "\n" not in offence.reason
    assert "queue -" in offence.reason


def test_repeat_verdict_quarantines_and_keeps_warnings() -> None:
    passed = Verdict(Action.ACCEPT, "ok", "acme", warnings=("spf: softfail",))
    verdict = repeat_verdict(passed, evidence(5), "acme")
    assert verdict.action is Action.QUARANTINE and verdict.rule == RULE
    assert verdict.warnings == ("spf: softfail",)
    assert verdict.evidence is not None and verdict.evidence["repeats"] == 5


PASSED = Verdict.accept("tenant acme is active", "acme")


@pytest.mark.parametrize(
    ("sender_entry", "domain_entry", "domain", "rule", "reason_part", "since"),
    [
        (None, None, "acme.example", None, None, None),
        (
            "1700000000 offence 1",
            None,
            "acme.example",
            "sender-suspended",
            "offence 1",
            1_700_000_000,
        ),
        (
            None,
            "1700000001 offence 2",
            "acme.example",
            "domain-suspended",
            "offence 2",
            1_700_000_001,
        ),
        ("1 a", "2 b", "acme.example", "sender-suspended", ": a", 1),
        ("by hand", None, "acme.example", "sender-suspended", "by hand", None),
        ("", None, "acme.example", "sender-suspended", "is suspended", None),
        (None, "3 x", None, None, None, None),  # no domain: no domain entry applies
    ],
)
def test_decide_suspended(
    sender_entry: str | None,
    domain_entry: str | None,
    domain: str | None,
    rule: str | None,
    reason_part: str | None,
    since: int | None,
) -> None:
    verdict = decide_suspended(
        PASSED, "acme", "bob@acme.example", domain, sender_entry, domain_entry
    )
    if rule is None:
        assert verdict is PASSED
        return
    assert verdict.action is Action.QUARANTINE and verdict.rule == rule
    assert verdict.tenant == "acme"
    assert reason_part is not None and reason_part in verdict.reason
    subject = "bob@acme.example" if rule == "sender-suspended" else "acme.example"
    assert subject in verdict.reason
    assert verdict.evidence == {"subject": subject, "since": since}


@pytest.mark.parametrize(
    ("plan", "cap", "text"),
    [
        (
            LadderPlan(),
            100,
            "the 4th near-cap send (90+ of 100 recipients) of one content by one sender"
            " in 1 day is an offence",
        ),
        (LadderPlan(repeats=1, window=7200), 10, "the 2nd near-cap send (9+ of 10"),
        (LadderPlan(repeats=10), 10, "the 11th"),
        (LadderPlan(repeats=20), 10, "the 21st"),
        (LadderPlan(enabled=False), 100, "off"),
    ],
)
def test_describe(plan: LadderPlan, cap: int, text: str) -> None:
    assert plan.describe(cap).startswith(text)

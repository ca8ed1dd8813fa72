"""Bulk or transactional: each rule, and their order."""

from __future__ import annotations

import pytest

from aupmilter.policy.classify import MailClass, classify
from aupmilter.policy.headers import HeaderField as H
from aupmilter.policy.plans import UnsubscribePlan

PLAN = UnsubscribePlan(bulk_recipients=20, bulk_fingerprint_recipients=500)
PLAIN = [H("From", b"a@acme.example"), H("Subject", b"hello")]


@pytest.mark.parametrize(
    ("stream", "headers", "recipients", "fingerprint", "expected", "reason"),
    [
        ("bulk", PLAIN, 1, 0, MailClass.BULK, "stream is bulk"),
        ("transactional", [*PLAIN, H("Precedence", b"bulk")], 90, 9000,
         MailClass.TRANSACTIONAL, "stream is transactional"),
        (None, [*PLAIN, H("Precedence", b"bulk")], 1, 0, MailClass.BULK, "Precedence: bulk"),
        (None, [*PLAIN, H("precedence", b" List ")], 1, 0, MailClass.BULK, "Precedence: list"),
        (None, [*PLAIN, H("Precedence", b"junk; x")], 1, 0, MailClass.BULK, "Precedence: junk"),
        (None, [*PLAIN, H("Precedence", b"first-class")], 1, 0, MailClass.TRANSACTIONAL, "no sign"),
        (None, [*PLAIN, H("Precedence", b"")], 1, 0, MailClass.TRANSACTIONAL, "no sign"),
        (None, [*PLAIN, H("List-Id", b"<news.acme.example>")], 1, 0, MailClass.BULK, "List-Id"),
        (None, PLAIN, 19, 0, MailClass.TRANSACTIONAL, "no sign"),
        (None, PLAIN, 20, 0, MailClass.BULK, "20 recipients"),
        (None, PLAIN, 1, 499, MailClass.TRANSACTIONAL, "no sign"),
        (None, PLAIN, 1, 500, MailClass.BULK, "same content went to 500"),
        (None, PLAIN, 1, None, MailClass.TRANSACTIONAL, "no sign"),
        ("unknown-stream", PLAIN, 1, 0, MailClass.TRANSACTIONAL, "no sign"),
    ],
)  # fmt: skip
def test_rules(
    stream: str | None,
    headers: list[H],
    recipients: int,
    fingerprint: int | None,
    expected: MailClass,
    reason: str,
) -> None:
    result = classify(stream, headers, recipients, fingerprint, PLAN)
    assert result.mail_class is expected
    assert reason in result.reason
    assert result.bulk is (expected is MailClass.BULK)


def test_plan_without_thresholds_never_counts() -> None:
    plan = UnsubscribePlan()
    assert not classify(None, PLAIN, 100_000, 10**9, plan).bulk

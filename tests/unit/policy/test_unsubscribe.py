"""List-Unsubscribe decisions: keep, insert, replace, reject; tokens per recipient count."""

from __future__ import annotations

from pathlib import Path

import pytest

from aupmilter.policy.actions import AddHeader
from aupmilter.policy.classify import Classification, MailClass
from aupmilter.policy.headers import HeaderField as H
from aupmilter.policy.plans import UnsubscribePlan, UnsubscribeSettings
from aupmilter.policy.tokens import TokenKind, TokenSigner
from aupmilter.policy.unsubscribe import (
    HeaderDeletion,
    UnsubscribeAction,
    UnsubscribeLinks,
    compliance_problem,
    decide_unsubscribe,
    edited_headers,
    issue_links,
)
from aupmilter.policy.verdict import Action

NOW = 1_700_000_000.0
SETTINGS = UnsubscribeSettings(
    url_base="https://unsub.relay.example",
    mailto_local="unsubscribe",
    mailto_domain="unsub.relay.example",
    secrets_file=Path("/dev/null"),
    token_lifetime_days=60,
    secrets=(b"s" * 32,),
)
SIGNER = TokenSigner(SETTINGS.secrets, 60)
BULK = Classification(MailClass.BULK, "test")
TRANSACTIONAL = Classification(MailClass.TRANSACTIONAL, "test")
REPLACE = UnsubscribePlan()
REJECT = UnsubscribePlan(on_noncompliant_unsubscribe="reject")
BASE = [H("From", b"a@acme.example"), H("To", b"x@example.net"), H("Subject", b"news")]
GOOD = [
    H("List-Unsubscribe", b"<mailto:u@acme.example>, <https://acme.example/u/1>"),
    H("List-Unsubscribe-Post", b" List-Unsubscribe=One-Click"),
]


def links(recipients: list[str] | None = None) -> UnsubscribeLinks:
    return issue_links(SIGNER, SETTINGS, "acme", recipients or ["x@example.net"], "<m@a>", NOW)


def test_links_for_one_recipient_carry_a_recipient_token() -> None:
    made = links(["x@example.net"])
    token = made.issued.token
    assert made.issued.reference.kind is TokenKind.RECIPIENT
    assert made.issued.reference.address == "x@example.net"
    assert made.list_unsubscribe == (
        f"<https://unsub.relay.example/u/{token}>, <mailto:unsubscribe+{token}@unsub.relay.example>"
    )
    assert made.list_unsubscribe_post == "List-Unsubscribe=One-Click"


def test_links_for_several_recipients_carry_a_message_token() -> None:
    made = links(["x@example.net", "y@example.net"])
    assert made.issued.reference.kind is TokenKind.MESSAGE
    assert made.issued.reference.tenant == "acme" and made.issued.reference.address == ""


def test_transactional_mail_is_left_alone() -> None:
    decision = decide_unsubscribe(TRANSACTIONAL, BASE, REPLACE, links(), "acme")
    assert decision.action is UnsubscribeAction.NONE and not decision.add


def test_compliant_headers_are_kept() -> None:
    decision = decide_unsubscribe(BULK, [*BASE, *GOOD], REJECT, links(), "acme")
    assert decision.action is UnsubscribeAction.KEEP
    assert not decision.add and not decision.delete


def test_missing_headers_are_inserted_even_when_the_plan_rejects_broken_ones() -> None:
    made = links()
    decision = decide_unsubscribe(BULK, BASE, REJECT, made, "acme")
    assert decision.action is UnsubscribeAction.INSERT
    assert decision.add == (
        AddHeader("List-Unsubscribe", made.list_unsubscribe),
        AddHeader("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    )
    assert decision.delete == ()


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ([H("List-Unsubscribe", b"<https://a.example/u>")], "0 List-Unsubscribe-Post"),
        ([H("List-Unsubscribe", b"<mailto:u@a.example>"), GOOD[1]], "0 https URIs"),
        ([H("List-Unsubscribe", b"<http://a.example/u>"), GOOD[1]], "0 https URIs"),
        ([H("List-Unsubscribe", b"<https://a.example/u>, <http://a.example/v>"), GOOD[1]],
         "plain http"),
        ([H("List-Unsubscribe", b"<https://a/1>, <https://a/2>"), GOOD[1]], "2 https URIs"),
        ([H("List-Unsubscribe", b"https://a.example/u"), GOOD[1]], "0 https URIs"),
        ([GOOD[0], GOOD[0], GOOD[1]], "2 List-Unsubscribe headers"),
        ([GOOD[0], H("List-Unsubscribe-Post", b"List-Unsubscribe=Yes")], "not exactly"),
        ([GOOD[0], GOOD[1], GOOD[1]], "2 List-Unsubscribe-Post"),
        ([GOOD[1]], "no List-Unsubscribe header"),
    ],
)  # fmt: skip
def test_broken_headers_are_replaced(headers: list[H], problem: str) -> None:
    assert problem in (compliance_problem([*BASE, *headers]) or "")
    made = links()
    decision = decide_unsubscribe(BULK, [*BASE, *headers], REPLACE, made, "acme")
    assert decision.action is UnsubscribeAction.REPLACE
    assert problem in decision.reason
    final = edited_headers([*BASE, *headers], decision.delete, decision.add)
    assert final == [
        *BASE,
        H.added("List-Unsubscribe", made.list_unsubscribe),
        H.added("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]


def test_broken_headers_are_refused_on_a_reject_plan() -> None:
    headers = [*BASE, H("List-Unsubscribe", b"<mailto:u@a.example>")]
    decision = decide_unsubscribe(BULK, headers, REJECT, links(), "acme")
    assert decision.action is UnsubscribeAction.REJECT
    assert decision.verdict is not None and decision.verdict.action is Action.REJECT
    assert decision.verdict.reply is not None
    assert (decision.verdict.reply.code, decision.verdict.reply.status) == ("550", "5.7.1")
    assert decision.verdict.tenant == "acme"


def test_deletions_count_per_name_and_run_highest_first() -> None:
    headers = [
        H("list-unsubscribe", b"<mailto:1@a.example>"),
        H("Subject", b"x"),
        H("List-Unsubscribe", b"<mailto:2@a.example>"),
        H("List-Unsubscribe-Post", b"List-Unsubscribe=One-Click"),
        H("List-Unsubscribe-Extra", b"?"),
    ]
    decision = decide_unsubscribe(BULK, headers, REPLACE, links(), "acme")
    assert decision.delete == (
        HeaderDeletion("List-Unsubscribe", 2),
        HeaderDeletion("list-unsubscribe", 1),
        HeaderDeletion("List-Unsubscribe-Extra", 1),
        HeaderDeletion("List-Unsubscribe-Post", 1),
    )
    assert [field.name for field in edited_headers(headers, decision.delete, decision.add)] == [
        "Subject",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    ]


def test_without_an_unsubscribe_service_broken_headers_are_left() -> None:
    headers = [*BASE, H("List-Unsubscribe", b"<mailto:u@a.example>")]
    decision = decide_unsubscribe(BULK, headers, REPLACE, None, "acme")
    assert decision.action is UnsubscribeAction.LEAVE and not decision.add

"""Tenant resolution and the MAIL FROM verdict, table-driven."""

from __future__ import annotations

import pytest

from aupmilter import replies
from aupmilter.policy.tenancy import (
    Lookup,
    LookupKind,
    SenderPolicy,
    TenantRecord,
    decide_sender,
    decide_store_error,
    normalize_domain,
    parent_domains,
    sender_domain,
    tenant_lookup,
    unbracket,
)
from aupmilter.policy.verdict import Action

STRICT = SenderPolicy("reject", "tempfail", frozenset({"standard", "business"}))
LENIENT = SenderPolicy("accept", "accept", frozenset({"standard"}))
BY_LOGIN = Lookup(LookupKind.LOGIN, ("acme",))
BY_DOMAIN = Lookup(LookupKind.DOMAIN, ("acme.example", "example"))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("<a@b.example>", "a@b.example"),
        ("<>", ""),
        ("a@b.example", "a@b.example"),
        (" <a@b.example> ", "a@b.example"),
    ],
)
def test_unbracket(raw: str, expected: str) -> None:
    assert unbracket(raw) == expected


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("a@Acme.Example", "acme.example"),
        ("a@acme.example.", "acme.example"),
        ('"odd@local"@acme.example', "acme.example"),
        ("a@bücher.example", "xn--bcher-kva.example"),
        ("", None),
        ("postmaster", None),
        ("a@[192.0.2.1]", None),
        ("a@", None),
        ("a@bad..example", None),
    ],
)
def test_sender_domain(address: str, expected: str | None) -> None:
    assert sender_domain(address) == expected


def test_normalize_domain_rejects_spaces() -> None:
    assert normalize_domain("acme example") is None


def test_parent_domains_most_specific_first() -> None:
    assert parent_domains("a.b.acme.example") == (
        "a.b.acme.example",
        "b.acme.example",
        "acme.example",
        "example",
    )


def test_parent_domains_are_bounded() -> None:
    deep = ".".join(["x"] * 40)
    assert len(parent_domains(deep)) == 16


@pytest.mark.parametrize(
    ("login", "sender", "expected"),
    [
        ("acme", "a@other.example", Lookup(LookupKind.LOGIN, ("acme",))),
        ("acme@realm", "", Lookup(LookupKind.LOGIN, ("acme@realm",))),
        (
            None,
            "a@Mail.Acme.Example",
            Lookup(LookupKind.DOMAIN, ("mail.acme.example", "acme.example", "example")),
        ),
        (None, "", Lookup(None, ())),
        ("", "a@acme.example", Lookup(LookupKind.DOMAIN, ("acme.example", "example"))),
    ],
)
def test_tenant_lookup(login: str | None, sender: str, expected: Lookup) -> None:
    assert tenant_lookup(login, sender) == expected


def record(status: str = "", plan: str = "", reason: str = "") -> TenantRecord:
    """A tenant whose hash holds these fields (none: the hash is missing)."""
    exists = bool(status or plan or reason)
    return TenantRecord("acme", exists=exists, status=status, plan=plan, reason=reason)


ACTIVE = {"status": "active", "plan": "standard"}


@pytest.mark.parametrize(
    ("rec", "lookup", "policy", "action", "reply"),
    [
        (record(**ACTIVE), BY_LOGIN, STRICT, Action.ACCEPT, None),
        (record(status="suspended", plan="standard"), BY_LOGIN, STRICT, Action.QUARANTINE, None),
        # a suspended tenant is held even when its plan is gone: nothing is lost
        (record(status="suspended", plan="gone"), BY_LOGIN, STRICT, Action.QUARANTINE, None),
        (
            record(status="terminated", plan="standard"),
            BY_LOGIN,
            STRICT,
            Action.REJECT,
            replies.ACCOUNT_TERMINATED,
        ),
        (
            record(status="paused", plan="standard"),
            BY_LOGIN,
            STRICT,
            Action.TEMPFAIL,
            replies.ACCOUNT_MISCONFIGURED,
        ),
        (record(plan="standard"), BY_LOGIN, STRICT, Action.TEMPFAIL, replies.ACCOUNT_MISCONFIGURED),
        (
            record(status="active", plan="platinum"),
            BY_LOGIN,
            STRICT,
            Action.TEMPFAIL,
            replies.ACCOUNT_MISCONFIGURED,
        ),
        (record(), BY_DOMAIN, STRICT, Action.TEMPFAIL, replies.ACCOUNT_MISCONFIGURED),
        (None, BY_LOGIN, STRICT, Action.REJECT, replies.UNKNOWN_SENDER),
        (None, BY_DOMAIN, STRICT, Action.REJECT, replies.UNKNOWN_SENDER),
        (None, Lookup(None, ()), STRICT, Action.REJECT, replies.UNKNOWN_SENDER),
        (None, BY_DOMAIN, LENIENT, Action.ACCEPT, None),
    ],
)
def test_decide_sender(
    rec: TenantRecord | None,
    lookup: Lookup,
    policy: SenderPolicy,
    action: Action,
    reply: replies.Reply | None,
) -> None:
    verdict = decide_sender(rec, lookup, policy)
    assert verdict.action is action
    assert verdict.reply == reply


def test_verdict_reasons_name_the_tenant_and_its_reason() -> None:
    held = decide_sender(
        record(status="suspended", plan="standard", reason="spam reports"), BY_LOGIN, STRICT
    )
    assert held.tenant == "acme"
    assert held.reason == "tenant acme is suspended: spam reports"
    ended = decide_sender(
        record(status="terminated", plan="standard", reason="AUP breach"), BY_LOGIN, STRICT
    )
    assert ended.reason == "tenant acme is terminated: AUP breach"


def test_unknown_sender_reason_names_the_login_or_domain() -> None:
    assert (
        "login 'stranger'"
        in decide_sender(None, Lookup(LookupKind.LOGIN, ("stranger",)), STRICT).reason
    )
    assert "sender domain 'acme.example'" in decide_sender(None, BY_DOMAIN, STRICT).reason


@pytest.mark.parametrize(
    ("policy", "action"),
    [(STRICT, Action.TEMPFAIL), (LENIENT, Action.ACCEPT)],
)
def test_store_error_follows_on_store_error(policy: SenderPolicy, action: Action) -> None:
    verdict = decide_store_error("ConnectionError: refused", policy)
    assert verdict.action is action
    assert "ConnectionError: refused" in verdict.reason
    if action is Action.TEMPFAIL:
        assert verdict.reply == replies.STORE_UNAVAILABLE


def test_operator_reason_becomes_one_bounded_line() -> None:
    verdict = decide_sender(
        record(status="suspended", plan="standard", reason="spam\r\nX-Injected: 1\x00" + "x" * 500),
        BY_LOGIN,
        STRICT,
    )
    assert (
        "\n" not in verdict.reason and "\r" not in verdict.reason and "\x00" not in verdict.reason
    )
    assert verdict.reason.startswith("tenant acme is suspended: spam  X-Injected: 1")
    assert len(verdict.reason) <= len("tenant acme is suspended: ") + 200

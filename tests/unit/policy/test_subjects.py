"""Misleading subjects (policy/subjects.py), table-driven."""

from __future__ import annotations

import re

import pytest

from aupmilter.policy.findings import Check, PlanChecks
from aupmilter.policy.headers import HeaderBlock, HeaderField
from aupmilter.policy.subjects import bulk_by_headers, check_subject, reply_prefix

PLAN = PlanChecks()


def block(**fields: str) -> HeaderBlock:
    return HeaderBlock(
        tuple(HeaderField(n.replace("_", "-"), v.encode()) for n, v in fields.items())
    )


@pytest.mark.parametrize(
    ("subject", "marker"),
    [
        ("Re: your order", "Re"),
        ("RE: RE: your order", "RE"),
        ("re:no space", "re"),
        ("Fwd: deal", "Fwd"),
        ("FW: deal", "FW"),
        ("Re[2]: thread", "Re"),
        ("Re^3: thread", "Re"),
        ("[newsletter] Re: spring sale", "Re"),
        ("AW: Angebot", "AW"),
        ("WG: Angebot", "WG"),
        ("SV: tilbud", "SV"),
        ("VS: tilbud", "VS"),
        ("TR: offre", "TR"),
        ("RIF: offerta", "RIF"),
        ("Antw: aanbieding", "Antw"),
        ("RV: oferta", "RV"),
        ("ENC: oferta", "ENC"),
        ("Odp: oferta", "Odp"),
        ("回复\uff1a优惠", "回复"),  # full-width colon
        ("转发: 优惠", "转发"),
        ("Ответ: скидка", "Ответ"),
        ("Отв: скидка", "Отв"),
    ],
)
def test_reply_markers(subject: str, marker: str) -> None:
    assert reply_prefix(subject) == marker


@pytest.mark.parametrize(
    "subject",
    ["Regarding: your order", "Reminder: your order", "Fwdx: no", "Spring sale: Re-stock", "Re"],
)
def test_not_reply_markers(subject: str) -> None:
    assert reply_prefix(subject) is None


def test_bulk_markers() -> None:
    assert bulk_by_headers(block(Precedence="bulk"))
    assert bulk_by_headers(block(Precedence=" List "))
    assert bulk_by_headers(block(Precedence="junk"))
    assert bulk_by_headers(block(List_Id="<news.acme.example>"))
    assert not bulk_by_headers(block(Precedence="first-class"))
    assert not bulk_by_headers(block(Subject="x"))


def test_fake_reply_on_bulk_mail() -> None:
    found = check_subject(block(Subject="Re: your invoice"), bulk=True, plan=PLAN)
    assert [f.check for f in found] == [Check.REPLY_PREFIX]
    assert (found[0].reply.code, found[0].reply.status) == ("550", "5.7.1")
    assert "'Re:'" in found[0].fault and "In-Reply-To" in found[0].fault


def test_real_replies_and_non_bulk_mail_pass() -> None:
    assert check_subject(block(Subject="Re: x", In_Reply_To="<a@b>"), bulk=True, plan=PLAN) == []
    assert check_subject(block(Subject="Re: x", References="<a@b>"), bulk=True, plan=PLAN) == []
    assert check_subject(block(Subject="Re: x"), bulk=False, plan=PLAN) == []
    assert check_subject(block(From="a@b.example"), bulk=True, plan=PLAN) == []


def test_encoded_subjects_are_decoded_first() -> None:
    encoded = "=?utf-8?b?" + "QVc6IElociBBbmdlYm90" + "?="  # "AW: Ihr Angebot"
    found = check_subject(block(Subject=encoded), bulk=True, plan=PLAN)
    assert [f.check for f in found] == [Check.REPLY_PREFIX]
    broken = "=?unknown-charset?q?Re=3A_x?="
    assert check_subject(block(Subject=broken), bulk=True, plan=PLAN) == []


def test_forbidden_patterns_per_plan() -> None:
    plan = PlanChecks(forbidden_subjects=(re.compile(r"you (have )?won", re.IGNORECASE),))
    found = check_subject(block(Subject="YOU HAVE WON a prize"), bulk=False, plan=plan)
    assert [f.check for f in found] == [Check.FORBIDDEN_SUBJECT]
    assert "forbidden pattern" in found[0].fault
    assert check_subject(block(Subject="Invoice 42"), bulk=False, plan=plan) == []


def test_an_encoded_word_that_is_not_base64_is_judged_raw() -> None:
    """Found by make fuzz: email.header raises HeaderParseError (not a ValueError) here."""
    subject = "Re: =?utf-8?b?0=?utf-8?b?w6k=?="
    findings = check_subject(block(subject=subject), bulk=True, plan=PlanChecks())
    assert [f.check for f in findings] == [Check.REPLY_PREFIX]

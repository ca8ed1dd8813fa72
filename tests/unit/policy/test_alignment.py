"""Envelope and header domains (policy/alignment.py), table-driven, with the real PSL lookup."""

from __future__ import annotations

import pytest

from aupmilter.mailauth.psl import organizational_domain
from aupmilter.policy.alignment import DomainFacts, aligned, check_domains, within
from aupmilter.policy.findings import AlignmentMode, Check, PlanChecks
from aupmilter.policy.headers import HeaderBlock, HeaderField

ACME = frozenset({"acme.example", "acme-mail.example"})
RELAXED = PlanChecks()
STRICT = PlanChecks(alignment=AlignmentMode.STRICT)


def block(**fields: str) -> HeaderBlock:
    return HeaderBlock(
        tuple(HeaderField(n.replace("_", "-"), v.encode()) for n, v in fields.items())
    )


def checks(
    sender: str,
    plan: PlanChecks = RELAXED,
    domains: frozenset[str] | None = ACME,
    tenant_allowed: frozenset[str] = frozenset(),
    dkim: frozenset[str] = frozenset(),
    **fields: str,
) -> list[Check]:
    fields.setdefault("From", "Alice <alice@acme.example>")
    facts = DomainFacts(sender, domains, tenant_allowed, dkim)
    return [f.check for f in check_domains(block(**fields), facts, plan, organizational_domain)]


def test_relaxed_and_strict_alignment() -> None:
    org = organizational_domain
    assert aligned("acme.example", "bounces.acme.example", AlignmentMode.RELAXED, org)
    assert not aligned("acme.example", "bounces.acme.example", AlignmentMode.STRICT, org)
    assert not aligned("a.github.io", "b.github.io", AlignmentMode.RELAXED, org)
    assert not aligned("acme.example", "acme-mail.example", AlignmentMode.RELAXED, org)


def test_within_matches_subdomains_not_suffixes() -> None:
    assert within("mail.acme.example", ACME)
    assert within("acme.example", ACME)
    assert not within("notacme.example", ACME)
    assert not within("example", ACME)


def test_compliant() -> None:
    assert checks("alice@acme.example") == []
    assert checks("bounce-123@bounces.acme.example") == []  # relaxed: same organization


@pytest.mark.parametrize(
    ("sender", "kwargs", "expected"),
    [
        ("alice@evil.example", {}, [Check.ENVELOPE_DOMAIN, Check.ALIGNMENT]),
        ("alice@acme.example", {"From": "ceo@bank.example"}, [Check.FROM_DOMAIN, Check.ALIGNMENT]),
        ("alice@acme-mail.example", {}, [Check.ALIGNMENT]),  # both the tenant's, not aligned
        ("b@bounces.acme.example", {"plan": STRICT}, [Check.ALIGNMENT]),
        ("alice@acme.example", {"Reply_To": "x@gmail.example"}, [Check.REPLY_TO]),
        ("alice@acme.example", {"Sender": "ops@outsourcer.example"}, [Check.SENDER_HEADER]),
        ("", {}, [Check.NULL_SENDER]),
    ],
)
def test_faults(sender: str, kwargs: dict[str, object], expected: list[Check]) -> None:
    assert checks(sender, **kwargs) == expected  # type: ignore[arg-type]


def test_replies_for_domain_faults() -> None:
    facts = DomainFacts("alice@evil.example", ACME)
    found = check_domains(block(From="alice@acme.example"), facts, RELAXED, organizational_domain)
    assert {(f.reply.code, f.reply.status) for f in found} == {("553", "5.7.1")}
    assert "'evil.example' is not one of your account's" in found[0].fault


def test_allowed_domains_from_plan_and_tenant() -> None:
    plan = PlanChecks(
        allowed_reply_to_domains=frozenset({"helpdesk.example"}),
        allowed_sender_domains=frozenset({"outsourcer.example"}),
    )
    assert checks("alice@acme.example", plan, Reply_To="a@helpdesk.example") == []
    assert checks("alice@acme.example", plan, Reply_To="a@sub.helpdesk.example") == []
    assert checks("alice@acme.example", plan, Sender="ops@outsourcer.example") == []
    # Plan lists are per header: the Sender list does not open Reply-To.
    assert checks("alice@acme.example", plan, Reply_To="a@outsourcer.example") == [Check.REPLY_TO]
    tenant = frozenset({"crm.example"})
    assert checks("alice@acme.example", tenant_allowed=tenant, Reply_To="a@crm.example") == []
    assert checks("alice@acme.example", tenant_allowed=tenant, Sender="a@crm.example") == []


def test_null_sender_is_for_reports() -> None:
    report = 'multipart/report; report-type=delivery-status; boundary="x"'
    assert checks("", Content_Type=report) == []
    assert checks("", Content_Type="MULTIPART/REPORT ; report-type=feedback-report") == []
    assert checks("", Content_Type="text/plain") == [Check.NULL_SENDER]


def test_passing_aligned_dkim_stands_in_for_envelope_alignment() -> None:
    esp = "bounce@esp-bounces.example"
    with_dkim = frozenset({"mail.acme.example"})
    domains = ACME | {"esp-bounces.example"}
    assert checks(esp, domains=domains, dkim=with_dkim) == []
    no_dkim_credit = PlanChecks(dkim_satisfies_alignment=False)
    assert checks(esp, no_dkim_credit, domains=domains, dkim=with_dkim) == [Check.ALIGNMENT]
    assert checks(esp, STRICT, domains=domains, dkim=with_dkim) == [Check.ALIGNMENT]


def test_unknown_tenant_checks_alignment_only() -> None:
    assert checks("x@other.example", domains=None, From="x@other.example") == []
    found = checks("x@other.example", domains=None, From="x@third.example")
    assert found == [Check.ALIGNMENT]


def test_idn_domains_compare_in_a_label_form() -> None:
    books = frozenset({"xn--bcher-kva.example"})
    assert checks("a@bücher.example", domains=books, From="a@xn--bcher-kva.example") == []
    assert checks("a@xn--bcher-kva.example", domains=books, From="a@bücher.example") == []


def test_several_authors_each_checked() -> None:
    found = checks(
        "alice@acme.example",
        From="alice@acme.example, mallory@evil.example",
        Sender="alice@acme.example",
    )
    assert found == [Check.FROM_DOMAIN, Check.ALIGNMENT]

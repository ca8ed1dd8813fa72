"""Domain onboarding's pure judgement: each check's answer, the stored value, the EOM verdict."""

from __future__ import annotations

import pytest

from aupmilter.policy.evidence import Status as Dns
from aupmilter.policy.onboarding import (
    CheckName,
    DkimFacts,
    DomainVerification,
    Finding,
    OnboardingMode,
    OnboardingPlan,
    Standing,
    Status,
    decide_onboarding,
    judge_dkim,
    judge_dmarc,
    judge_ownership,
    judge_spf,
    newly_verified,
    overall,
    parse_verification,
    standing_of,
    verification_of,
)
from aupmilter.policy.verdict import Action, Verdict

TOKEN = "0123456789abcdef0123456789abcdef"
WANTED = f"aup-milter-verification={TOKEN}"
DAY = 86_400
NOW = 1_800_000_000


@pytest.mark.parametrize(
    ("status", "texts", "expected", "in_reason"),
    [
        (Dns.FOUND, ["v=spf1 -all", WANTED], Status.PASS, "holds the token"),
        (Dns.FOUND, [f"  {WANTED} "], Status.PASS, "holds the token"),
        (Dns.FOUND, ["v=spf1 -all"], Status.FAIL, "no TXT record at acme.example holds"),
        (Dns.FOUND, ["aup-milter-verification=someoneelse0000"], Status.FAIL, "another token"),
        (Dns.FOUND, [WANTED + "x"], Status.FAIL, "no TXT record"),
        (Dns.NODATA, [], Status.FAIL, "no TXT record"),
        (Dns.NXDOMAIN, [], Status.FAIL, "no TXT record"),
        (Dns.TEMPFAIL, [], Status.UNKNOWN, "lookup failed"),
    ],
)
def test_ownership(status: Dns, texts: list[str], expected: Status, in_reason: str) -> None:
    finding = judge_ownership("acme.example", TOKEN, status, texts)
    assert finding.status is expected and in_reason in finding.reason
    if expected is not Status.PASS:
        assert finding.fix


@pytest.mark.parametrize(
    ("results", "expected", "in_text"),
    [
        ([("192.0.2.25", "pass", "")], Status.PASS, "authorizes 192.0.2.25"),
        ([("192.0.2.25", "pass", ""), ("2001:db8::25", "pass", "")], Status.PASS, "2001:db8::25"),
        ([("192.0.2.25", "fail", "")], Status.FAIL, "add ip4:192.0.2.25"),
        ([("192.0.2.25", "softfail", "")], Status.FAIL, "gives softfail"),
        ([("192.0.2.25", "none", "")], Status.FAIL, "gives none"),
        ([("192.0.2.25", "permerror", "too many lookups")], Status.FAIL, "permerror"),
        ([("192.0.2.25", "pass", ""), ("2001:db8::25", "neutral", "")], Status.FAIL, "ip6:"),
        ([("192.0.2.25", "temperror", "DNS timed out")], Status.UNKNOWN, "DNS timed out"),
        # A permanent fault beside a temporary one: the fault is known, fail.
        ([("192.0.2.25", "temperror", ""), ("192.0.2.26", "fail", "")], Status.FAIL, "fail"),
        ([], Status.UNKNOWN, "relay_ips"),
    ],
)
def test_spf(results: list[tuple[str, str, str]], expected: Status, in_text: str) -> None:
    finding = judge_spf("acme.example", results)
    assert finding.status is expected
    assert in_text in finding.reason + " " + finding.fix


MATCH = ("v=DKIM1; k=rsa; p=MIIB", True)
OTHER = ("v=DKIM1; k=rsa; p=MIIC", False)


@pytest.mark.parametrize(
    ("facts", "expected", "in_reason"),
    [
        (DkimFacts(None), Status.PASS, "does not sign"),
        (DkimFacts("relay.example", "s1", aligned=False), Status.PASS, "not aligned"),
        (DkimFacts("acme.example", "s1", True, Dns.FOUND, (MATCH,)), Status.PASS, "relay's key"),
        (DkimFacts("acme.example", "s1", True, Dns.FOUND, (OTHER, MATCH)), Status.PASS, "key"),
        (DkimFacts("acme.example", "s1", True, Dns.FOUND, (OTHER,)), Status.FAIL, "not the"),
        (DkimFacts("acme.example", "s1", True, Dns.NXDOMAIN), Status.FAIL, "no DKIM key record"),
        (DkimFacts("acme.example", "s1", True, Dns.FOUND, (("hello", False),)), Status.FAIL,
         "no DKIM key record"),
        (DkimFacts("acme.example", "s1", True, Dns.TEMPFAIL), Status.UNKNOWN, "lookup failed"),
    ],
)  # fmt: skip
def test_dkim(facts: DkimFacts, expected: Status, in_reason: str) -> None:
    finding = judge_dkim("acme.example", facts)
    assert finding.status is expected and in_reason in finding.reason
    if expected is Status.FAIL:
        assert "s1._domainkey.acme.example" in finding.fix


OWN = "_dmarc.news.acme.example"
ORG = "_dmarc.acme.example"


@pytest.mark.parametrize(
    ("lookups", "expected", "policy"),
    [
        ([(OWN, Dns.FOUND, ["v=DMARC1; p=reject"])], Status.PASS, "reject"),
        ([(OWN, Dns.FOUND, ["v=DMARC1;p=none; rua=mailto:d@acme.example"])], Status.PASS, "none"),
        ([(OWN, Dns.FOUND, ["v=spf1 -all", "V=DMARC1; P=Quarantine"])], Status.PASS, "quarantine"),
        ([(OWN, Dns.NXDOMAIN, []), (ORG, Dns.FOUND, ["v=DMARC1; p=reject; sp=none"])],
         Status.PASS, "none"),
        ([(OWN, Dns.NXDOMAIN, []), (ORG, Dns.FOUND, ["v=DMARC1; p=reject"])], Status.PASS,
         "reject"),
        ([(OWN, Dns.FOUND, ["v=DMARC1; p=maybe"])], Status.FAIL, "maybe"),
        ([(OWN, Dns.FOUND, ["v=DMARC1; rua=mailto:x@acme.example"])], Status.FAIL, ""),
        ([(OWN, Dns.FOUND, ["v=DMARC1; p=none", "v=DMARC1; p=reject"])], Status.FAIL, None),
        ([(OWN, Dns.NXDOMAIN, []), (ORG, Dns.NODATA, [])], Status.FAIL, None),
        ([(OWN, Dns.FOUND, ["v=DMARC2; p=reject"])], Status.FAIL, None),
        ([(OWN, Dns.TEMPFAIL, [])], Status.UNKNOWN, None),
        ([(OWN, Dns.NXDOMAIN, []), (ORG, Dns.TEMPFAIL, [])], Status.UNKNOWN, None),
    ],
)  # fmt: skip
def test_dmarc(
    lookups: list[tuple[str, Dns, list[str]]], expected: Status, policy: str | None
) -> None:
    finding = judge_dmarc("news.acme.example", lookups)
    assert finding.status is expected, finding
    if policy is not None:
        assert finding.evidence["policy"] == policy
    if expected is Status.FAIL:
        assert finding.fix


def findings(**statuses: Status) -> list[Finding]:
    return [Finding(CheckName(name), status, "r") for name, status in statuses.items()]


@pytest.mark.parametrize(
    ("statuses", "encoded"),
    [
        ({"ownership": Status.PASS, "spf": Status.PASS}, f"{NOW} pass -"),
        ({"ownership": Status.PASS, "spf": Status.FAIL}, f"{NOW} fail spf=fail"),
        (
            {"spf": Status.FAIL, "rdap": Status.UNKNOWN, "dkim": Status.PASS},
            f"{NOW} fail rdap=unknown,spf=fail",
        ),
        ({"rdap": Status.UNKNOWN}, f"{NOW} unknown rdap=unknown"),
    ],
)
def test_stored_value_round_trip(statuses: dict[str, Status], encoded: str) -> None:
    verification = verification_of(findings(**statuses), NOW + 0.7)
    assert verification.encode() == encoded
    assert parse_verification(encoded) == verification


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "17 pass",
        "-5 pass -",
        "1800000000 maybe -",
        "1800000000 pass spf=fail",  # pass with failing checks
        "1800000000 fail -",  # fail without any
        "1800000000 fail spf=pass",
        "1800000000 fail smtp=fail",
        "1800000000 fail spf",
        "1" * 13 + " pass -",
        f"{NOW} pass - " + "x" * 300,
    ],
)
def test_unreadable_values_are_none(value: str) -> None:
    assert parse_verification(value) is None


def test_overall_and_newly_verified() -> None:
    assert overall([]) is Status.PASS
    assert overall(findings(spf=Status.UNKNOWN, rdap=Status.FAIL)) is Status.FAIL
    passing = DomainVerification(NOW, Status.PASS)
    failing = DomainVerification(NOW - 10, Status.FAIL, {CheckName.SPF: Status.FAIL})
    assert newly_verified(None, passing)
    assert newly_verified(failing, passing)
    assert not newly_verified(passing, passing)
    assert not newly_verified(None, failing)


ENFORCE = OnboardingPlan(OnboardingMode.ENFORCE, max_age=30 * DAY)
PASSED = DomainVerification(NOW - DAY, Status.PASS)
RDAP_UNKNOWN = DomainVerification(NOW - DAY, Status.UNKNOWN, {CheckName.RDAP: Status.UNKNOWN})
SPF_FAIL = DomainVerification(
    NOW - DAY, Status.FAIL, {CheckName.SPF: Status.FAIL, CheckName.RDAP: Status.UNKNOWN}
)
OLD = DomainVerification(NOW - 31 * DAY, Status.PASS)
NO_RDAP = OnboardingPlan(OnboardingMode.ENFORCE, required=frozenset(CheckName) - {CheckName.RDAP})


@pytest.mark.parametrize(
    ("records", "domain", "plan", "standing", "record"),
    [
        ({}, "acme.example", ENFORCE, Standing.NEVER, None),
        ({"acme.example": PASSED}, "acme.example", ENFORCE, Standing.VERIFIED, "acme.example"),
        ({"acme.example": PASSED}, "news.acme.example", ENFORCE, Standing.VERIFIED,
         "acme.example"),
        ({"news.acme.example": PASSED}, "acme.example", ENFORCE, Standing.NEVER, None),
        # The subdomain's own record decides, not its parent's.
        ({"acme.example": PASSED, "news.acme.example": SPF_FAIL}, "news.acme.example",
         ENFORCE, Standing.FAILED, "news.acme.example"),
        ({"acme.example": SPF_FAIL}, "acme.example", ENFORCE, Standing.FAILED, "acme.example"),
        ({"acme.example": RDAP_UNKNOWN}, "acme.example", ENFORCE, Standing.UNKNOWN,
         "acme.example"),
        ({"acme.example": OLD}, "acme.example", ENFORCE, Standing.EXPIRED, "acme.example"),
        # Checks the plan does not require never count.
        ({"acme.example": RDAP_UNKNOWN}, "acme.example", NO_RDAP, Standing.VERIFIED,
         "acme.example"),
        ({"acme.example": SPF_FAIL}, "acme.example", NO_RDAP, Standing.FAILED, "acme.example"),
    ],
)  # fmt: skip
def test_standing(
    records: dict[str, DomainVerification],
    domain: str,
    plan: OnboardingPlan,
    standing: Standing,
    record: str | None,
) -> None:
    found = standing_of(domain, records, plan, NOW)
    assert (found.standing, found.record_domain) == (standing, record)


ACCEPTED = Verdict.accept("tenant acme is active", "acme")


@pytest.mark.parametrize(
    ("records", "domains", "plan", "reply", "rule", "in_text"),
    [
        ({}, ["acme.example"], ENFORCE, "550 5.7.1", "domain-unverified", "never verified"),
        ({"acme.example": SPF_FAIL}, ["acme.example"], ENFORCE, "550 5.7.1",
         "domain-unverified", "spf fail"),
        ({"acme.example": OLD}, ["acme.example"], ENFORCE, "550 5.7.1",
         "domain-verification-expired", "older than 30 days"),
        ({"acme.example": RDAP_UNKNOWN}, ["acme.example"], ENFORCE, "451 4.7.0",
         "domain-verification-unknown", "rdap unknown"),
        ({"acme.example": PASSED}, ["acme.example"], ENFORCE, None, "", ""),
        # A 5xx beats a 4xx when two domains are judged (From and MAIL FROM).
        ({"acme.example": RDAP_UNKNOWN}, ["acme.example", "acme-mail.example"], ENFORCE,
         "550 5.7.1", "domain-unverified", "acme-mail.example"),
        ({"acme.example": PASSED, "acme-mail.example": RDAP_UNKNOWN},
         ["acme.example", "acme-mail.example"], ENFORCE, "451 4.7.0",
         "domain-verification-unknown", "acme-mail.example"),
        ({}, ["acme.example"], OnboardingPlan(OnboardingMode.OFF), None, "", ""),
    ],
)  # fmt: skip
def test_decide(
    records: dict[str, DomainVerification],
    domains: list[str],
    plan: OnboardingPlan,
    reply: str | None,
    rule: str,
    in_text: str,
) -> None:
    verdict = decide_onboarding(plan, records, domains, "acme", NOW, ACCEPTED)
    if reply is None:
        assert verdict == ACCEPTED
        return
    assert verdict.reply is not None
    assert f"{verdict.reply.code} {verdict.reply.status}" == reply
    assert verdict.rule == rule
    assert in_text in verdict.reply.text
    assert "aup-milter tenant verify-domain acme" in verdict.reply.text
    assert verdict.evidence is not None and verdict.evidence["domain"] in domains


def test_warn_mode_passes_with_the_finding_as_a_warning() -> None:
    plan = OnboardingPlan(OnboardingMode.WARN)
    earlier = Verdict.quarantine("tenant acme is suspended", "acme", rule="tenant-suspended")
    verdict = decide_onboarding(plan, {}, ["acme.example"], "acme", NOW, earlier)
    assert verdict.action is Action.QUARANTINE and verdict.rule == "tenant-suspended"
    assert verdict.warnings == ("onboarding: bulk mail from acme.example: it was never verified",)


def test_the_reply_stays_within_a_reply_line() -> None:
    long_domain = ".".join(["a" * 60] * 4) + ".example"
    verdict = decide_onboarding(ENFORCE, {long_domain: SPF_FAIL}, [long_domain], "t" * 64,
                                NOW, ACCEPTED)  # fmt: skip
    assert verdict.reply is not None and len(verdict.reply.text) <= 400
    assert verdict.reply.text.endswith("...")

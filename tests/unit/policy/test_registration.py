"""RDAP domain objects parsed, and the registrant judged: named, privacy service, or redacted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aupmilter.policy.onboarding import Status
from aupmilter.policy.registration import NotRdap, judge_registration, parse_domain

CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "rdap"


def recorded(name: str) -> object:
    return json.loads((CORPUS / f"{name}.json").read_text())


def domain(*entities: object, **extra: object) -> dict[str, object]:
    return {"objectClassName": "domain", "ldhName": "x.example", "entities": list(entities),
            **extra}  # fmt: skip


def registrant(*props: tuple[str, object], roles: tuple[str, ...] = ("registrant",)) -> object:
    card = [["version", {}, "text", "4.0"], *([name, {}, "text", value] for name, value in props)]
    return {"objectClassName": "entity", "roles": list(roles), "vcardArray": ["vcard", card]}


@pytest.mark.parametrize(
    ("name", "status", "in_reason"),
    [
        ("acme.example", Status.PASS, "registrant organization Acme Corporation"),
        ("privacy.example", Status.FAIL, "privacy/proxy service: Domains By Proxy, LLC"),
        ("redacted.example", Status.UNKNOWN, "redacts the registrant"),
    ],
)
def test_recorded_answers(name: str, status: Status, in_reason: str) -> None:
    registration = parse_domain(recorded(name))
    assert registration.domain == name
    finding = judge_registration(registration, f"http://rdap.test/domain/{name}")
    assert finding.status is status and in_reason in finding.reason, finding
    assert finding.evidence["source"] == f"http://rdap.test/domain/{name}"


def test_recorded_answers_parsed() -> None:
    acme = parse_domain(recorded("acme.example"))
    assert acme.registrant_names == ("Wile E. Coyote",)
    assert acme.registrant_orgs == ("Acme Corporation",)
    assert acme.registrar == "Example Registrar, Inc." and acme.redacted == ()
    privacy = parse_domain(recorded("privacy.example"))
    assert privacy.redacted == ("fn", "Registry Registrant ID", "Registrant Name",
                                "Registrant Street")  # fmt: skip
    redacted = parse_domain(recorded("redacted.example"))
    assert redacted.registrant_names == () and redacted.registrant_orgs == ()
    assert redacted.redacted == ("fn", "Registrant Name", "Registrant Organization")


@pytest.mark.parametrize(
    ("document", "status", "in_reason"),
    [
        (domain(registrant(("fn", "Jane Doe"))), Status.PASS, "registrant Jane Doe"),
        (domain(registrant(("fn", "REDACTED FOR PRIVACY"), ("org", "Initech GmbH"))),
         Status.PASS, "Initech GmbH"),
        (domain(registrant(("org", ["Globex", "Sales"]))), Status.PASS, "Globex"),
        (domain(registrant(("fn", "Withheld for Privacy ehf"))), Status.FAIL, "Withheld"),
        (domain(registrant(("fn", "Privacy service provided by Withheld for Privacy ehf"))),
         Status.FAIL, "privacy/proxy"),
        (domain(registrant(("org", "Contact Privacy Inc. Customer 0123"))), Status.FAIL,
         "Contact Privacy"),
        (domain(registrant(("fn", "WhoisGuard Protected"), ("org", "WhoisGuard, Inc."))),
         Status.FAIL, "WhoisGuard"),
        (domain(registrant(("org", "PrivacyGuardian.org llc"))), Status.FAIL, "PrivacyGuardian"),
        (domain(registrant(("fn", "Jane Doe"), ("org", "Domains By Proxy, LLC"))), Status.FAIL,
         "Domains By Proxy"),
        # The privacy service is nested under the registrar: still the registrant's.
        (domain({"objectClassName": "entity", "roles": ["registrar"],
                 "entities": [registrant(("org", "Domains by Proxy"))]}), Status.FAIL, "Proxy"),
        (domain(registrant(("fn", "Redacted"), ("org", "REDACTED FOR PRIVACY"))), Status.UNKNOWN,
         "redacts the registrant (fn, org)"),
        (domain(registrant(("fn", ""))), Status.UNKNOWN, "redacts"),
        (domain(registrant(("fn", "Jane Doe"), roles=("technical",))), Status.UNKNOWN,
         "names no registrant"),
        (domain(), Status.UNKNOWN, "names no registrant"),
        (domain(redacted=[{"name": {"type": "Registrant Name"}, "method": "removal"}]),
         Status.UNKNOWN, "Registrant Name"),
        (domain(redacted=[{"name": {"description": "Registrant Email"}}, {"name": 3}, "x"]),
         Status.UNKNOWN, "Registrant Email"),
        (domain(registrant(("fn", 42), ("org", None)), {"roles": "registrant"}, "junk"),
         Status.UNKNOWN, "names no registrant"),
    ],
)  # fmt: skip
def test_judgement(document: object, status: Status, in_reason: str) -> None:
    finding = judge_registration(parse_domain(document), "src")
    assert finding.status is status and in_reason in finding.reason, finding
    if status is not Status.PASS:
        assert finding.fix


def test_related_links_are_kept_for_thin_registries() -> None:
    links = [
        {"rel": "self", "href": "https://rdap.registry.example/domain/x.example",
         "type": "application/rdap+json"},
        {"rel": "related", "href": "https://rdap.registrar.example/domain/x.example",
         "type": "application/rdap+json"},
        {"rel": "related", "href": "https://whois.registrar.example/", "type": "text/html"},
    ]  # fmt: skip
    parsed = parse_domain(domain(links=links))
    assert parsed.related == ("https://rdap.registrar.example/domain/x.example",)


@pytest.mark.parametrize(
    "document",
    [[], "domain", {"objectClassName": "entity"}, {"ldhName": "x.example"}, None],
)
def test_not_a_domain_object(document: object) -> None:
    with pytest.raises(NotRdap):
        parse_domain(document)


def test_deep_nesting_is_bounded() -> None:
    entity: object = registrant(("org", "Domains By Proxy"))
    for _ in range(50):
        entity = {"objectClassName": "entity", "roles": ["registrar"], "entities": [entity]}
    finding = judge_registration(parse_domain(domain(entity)), "src")
    assert finding.status is Status.UNKNOWN  # past MAX_ENTITY_DEPTH: not read

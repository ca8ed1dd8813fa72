"""RDAP registration data: who registered the domain, and is it a privacy/proxy service?

"Domain names must not be WHOIS anonymous" (the mySMTP AUP). RDAP (RFC 9083)
answers a domain object with `entities`, each with `roles` and a jCard
(`vcardArray`, RFC 7095); `parse_domain` reads the registrant's names from
it (fn and org, nested entities too) and the RFC 9537 `redacted` members and
the "REDACTED FOR PRIVACY" placeholders that say what the server withheld.
`judge_registration` decides the `rdap` finding:

- fail: the registrant's name or organization is a named privacy/proxy
  service (`PRIVACY_SERVICES`: Domains By Proxy, Withheld for Privacy,
  Contact Privacy, WhoisGuard, PrivacyGuardian, ...): the domain is WHOIS
  anonymous by the registrant's choice;
- unknown: the registrant's name and organization are both redacted (RFC 9537
  or the GDPR placeholder) or absent (a thin registry, a registrar that
  publishes no registrant): the relay cannot tell who it is; the fix is a
  visible organization (a legal person's name is not personal data) or the
  operator's own review;
- pass: a registrant organization or name is visible and is no privacy
  service (a redacted natural person's name beside a visible organization
  passes: GDPR redaction of a person is not anonymity of the sender).

Pure: the fetch (with its timeout and the IANA bootstrap) is mailauth/rdap.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from aupmilter.policy.onboarding import CheckName, Finding, Status

PRIVACY_SERVICES = re.compile(
    r"domains\s*by\s*proxy|withheld\s*for\s*privacy|contact\s*privacy|whois\s*guard"
    r"|privacy\s*guardian|perfect\s*privacy|privacy\s*protect|domain\s*privacy"
    r"|whois\s*privacy|private\s*by\s*design|identity\s*protection|super\s*privacy"
    r"|privacy\s*service|proxy\s*service|redacted\s*for\s*privacy\s*purposes"
    r"|data\s*protected,?\s*not\s*disclosed|anonymize|protected\s*domain\s*services",
    re.IGNORECASE,
)
"""Names of privacy/proxy services as registrars publish them (fn or org of the registrant)."""
REDACTION_PLACEHOLDERS = re.compile(
    r"^\s*(redacted(\s*for\s*privacy)?|not\s*disclosed|data\s*redacted|withheld|"
    r"statutory\s*masking\s*enabled|gdpr\s*masked|redacted\s*for\s*gdpr)\s*\.?\s*$",
    re.IGNORECASE,
)
"""The whole value is a redaction placeholder (ICANN's Temporary Specification wording and
its kin), not a name."""
MAX_ENTITY_DEPTH = 4
MAX_NAMES = 20
MAX_NAME_LENGTH = 200


@dataclass(frozen=True, slots=True)
class Registration:
    """What an RDAP domain object says of the registrant."""

    domain: str
    registrant_names: tuple[str, ...] = ()
    """fn values of registrant entities (placeholders left out)."""
    registrant_orgs: tuple[str, ...] = ()
    redacted: tuple[str, ...] = ()
    """What the server says it withheld of the registrant: RFC 9537 names ("Registrant Name")
    and the fields that held a placeholder ("fn", "org")."""
    has_registrant: bool = False
    registrar: str = ""
    related: tuple[str, ...] = ()
    """`links` with rel "related" to another RDAP server (the registrar's, RFC 9224 thin
    registries): where the registrant may be."""

    def as_json(self) -> dict[str, object]:
        return {
            "domain": self.domain,
            "registrant_names": list(self.registrant_names),
            "registrant_orgs": list(self.registrant_orgs),
            "redacted": list(self.redacted),
            "has_registrant": self.has_registrant,
            "registrar": self.registrar,
        }


class NotRdap(ValueError):
    """The document is no RDAP domain object; the text says what is missing."""


def parse_domain(document: object) -> Registration:
    """The registrant's names and the redactions of an RDAP domain object (RFC 9083 5.3)."""
    if not isinstance(document, dict):
        raise NotRdap("not a JSON object")
    if document.get("objectClassName") != "domain":
        raise NotRdap("objectClassName is not 'domain'")
    domain = _text(document.get("ldhName")) or _text(document.get("unicodeName"))
    names: list[str] = []
    orgs: list[str] = []
    redacted: list[str] = []
    has_registrant = False
    registrar = ""
    for entity, roles in _entities(document.get("entities"), 0):
        fn, org = _vcard(entity.get("vcardArray"))
        if "registrar" in roles and not registrar:
            registrar = fn or org or ""
        if "registrant" not in roles:
            continue
        has_registrant = True
        for field_name, value, target in (("fn", fn, names), ("org", org, orgs)):
            if value is None:
                continue
            if REDACTION_PLACEHOLDERS.match(value) or not value.strip():
                redacted.append(field_name)
            else:
                target.append(value[:MAX_NAME_LENGTH])
    for item in _list(document.get("redacted")):
        if isinstance(item, dict):
            name = item.get("name")
            label: str | None = None
            if isinstance(name, dict):
                label = _text(name.get("type")) or _text(name.get("description"))
            if label and "registrant" in label.lower():
                redacted.append(label)
    related = tuple(
        href
        for link in _list(document.get("links"))
        if isinstance(link, dict)
        and link.get("rel") == "related"
        and "rdap" in str(link.get("type", "")).lower()
        and (href := _text(link.get("href")))
    )
    return Registration(
        domain=(domain or "").lower(),
        registrant_names=tuple(names[:MAX_NAMES]),
        registrant_orgs=tuple(orgs[:MAX_NAMES]),
        redacted=tuple(dict.fromkeys(redacted))[:MAX_NAMES],
        has_registrant=has_registrant,
        registrar=registrar[:MAX_NAME_LENGTH],
        related=related[:MAX_NAMES],
    )


def judge_registration(registration: Registration, source: str) -> Finding:
    """The `rdap` finding; `source` names the server that answered (for the reason)."""
    evidence: dict[str, object] = {**registration.as_json(), "source": source}
    visible = (*registration.registrant_orgs, *registration.registrant_names)
    services = [name for name in visible if PRIVACY_SERVICES.search(name)]
    if services:
        return Finding(
            CheckName.RDAP,
            Status.FAIL,
            f"the registrant is a privacy/proxy service: {services[0]}",
            "register the domain in the sender's own name (turn off the registrar's"
            " privacy/proxy service), then verify again",
            evidence,
        )
    if registration.registrant_orgs:
        return Finding(
            CheckName.RDAP,
            Status.PASS,
            f"registrant organization {registration.registrant_orgs[0]}",
            evidence=evidence,
        )
    if registration.registrant_names:
        return Finding(
            CheckName.RDAP,
            Status.PASS,
            f"registrant {registration.registrant_names[0]}",
            evidence=evidence,
        )
    if registration.redacted:
        return Finding(
            CheckName.RDAP,
            Status.UNKNOWN,
            "the registry redacts the registrant (" + ", ".join(registration.redacted) + ")",
            "publish the registrant organization (a company's name is not personal data)"
            " at the registrar, or have the relay's operator review the registration",
            evidence,
        )
    return Finding(
        CheckName.RDAP,
        Status.UNKNOWN,
        "the RDAP answer names no registrant",
        "ask the registrar to publish the registrant in RDAP, or have the relay's operator"
        " review the registration",
        evidence,
    )


def _entities(raw: object, depth: int) -> Iterator[tuple[dict[str, object], frozenset[str]]]:
    if depth > MAX_ENTITY_DEPTH:
        return
    for entity in _list(raw):
        if not isinstance(entity, dict):
            continue
        roles = frozenset(str(r).lower() for r in _list(entity.get("roles")))
        yield entity, roles
        yield from _entities(entity.get("entities"), depth + 1)


def _vcard(raw: object) -> tuple[str | None, str | None]:
    """(fn, org) of a jCard: ["vcard", [[name, params, type, value...], ...]]."""
    fn: str | None = None
    org: str | None = None
    items = _list(raw)
    if len(items) != 2 or items[0] != "vcard":
        return None, None
    for prop in _list(items[1]):
        if not isinstance(prop, list) or len(prop) < 4:
            continue
        name, value = str(prop[0]).lower(), prop[3]
        if isinstance(value, list):  # org may be structured: its first component
            value = next((v for v in value if isinstance(v, str)), "")
        if not isinstance(value, str):
            continue
        if name == "fn" and fn is None:
            fn = value
        elif name == "org" and org is None:
            org = value
    return fn, org


def _list(raw: object) -> list[object]:
    return raw if isinstance(raw, list) else []


def _text(raw: object) -> str | None:
    return raw if isinstance(raw, str) and raw else None

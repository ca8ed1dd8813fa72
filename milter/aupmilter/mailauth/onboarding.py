"""The network side of `tenant verify-domain`: ask DNS and RDAP, hand the answers to the policy.

Every lookup goes through the project's resolver (`[dns]` nameservers,
timeouts, cache) and SPF through pyspf on it (mailauth/spfcheck.py), so the
command sees what the milter sees. The judgement of each answer is
policy/onboarding.py's and policy/registration.py's; a lookup that fails
becomes an `unknown` finding there, never an exception here.

Cost, bounded by the resolver's `lifetime` per query: TXT at DOMAIN, the
SPF evaluation for each relay address (pyspf's 10-lookup limit), TXT at the
DKIM selector, TXT at `_dmarc.DOMAIN` (and at the organizational domain's),
and the RDAP requests (mailauth/rdap.py: at most three, each with its
timeout).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_der_public_key

from aupmilter.mailauth.dkimkeys import SigningKey
from aupmilter.mailauth.psl import organizational_domain
from aupmilter.mailauth.rdap import RdapClient, rdap_finding
from aupmilter.mailauth.resolver import Resolver
from aupmilter.mailauth.spfcheck import check_relay_ips
from aupmilter.policy.evidence import Status as DnsStatus
from aupmilter.policy.onboarding import (
    DkimFacts,
    Finding,
    judge_dkim,
    judge_dmarc,
    judge_ownership,
    judge_spf,
)


@dataclass(frozen=True, slots=True)
class Signing:
    """The relay's DKIM identity for the tenant (config `[dkim]`)."""

    domain: str
    selector: str
    key: SigningKey


@dataclass(frozen=True, slots=True)
class Probe:
    """What one verification needs besides the domain (built by cli/verify_domain.py)."""

    token: str
    relay_ips: tuple[str, ...]
    """`[messages] relay_ips`: the addresses SPF must authorize."""
    helo: str
    signing: Signing | None
    resolver: Resolver
    rdap: RdapClient


def verify(domain: str, probe: Probe) -> list[Finding]:
    """The five findings for `domain`, in the order the command prints them."""
    return [
        ownership(domain, probe),
        spf(domain, probe),
        dkim(domain, probe),
        dmarc(domain, probe),
        rdap_finding(probe.rdap.lookup(organizational_domain(domain))),
    ]


def ownership(domain: str, probe: Probe) -> Finding:
    answer, texts = probe.resolver.txt(domain)
    decoded = [t.decode("utf-8", "replace") for t in texts]
    return judge_ownership(domain, probe.token, answer.status, decoded)


def spf(domain: str, probe: Probe) -> Finding:
    results = check_relay_ips(f"postmaster@{domain}", probe.relay_ips, probe.helo, probe.resolver)
    return judge_spf(domain, [(r.relay_ip, r.result, r.explanation) for r in results])


def dkim(domain: str, probe: Probe) -> Finding:
    identity = probe.signing
    if identity is None:
        return judge_dkim(domain, DkimFacts(signing_domain=None))
    aligned = organizational_domain(identity.domain) == organizational_domain(domain)
    if not aligned:
        return judge_dkim(domain, DkimFacts(identity.domain, identity.selector, aligned=False))
    name = f"{identity.selector}._domainkey.{identity.domain}"
    answer, texts = probe.resolver.txt(name)
    records = tuple(
        (text, publishes(text, identity.key))
        for text in (t.decode("ascii", "replace") for t in texts)
    )
    facts = DkimFacts(identity.domain, identity.selector, True, answer.status, records)
    return judge_dkim(domain, facts)


def dmarc(domain: str, probe: Probe) -> Finding:
    names = [f"_dmarc.{domain}"]
    org = organizational_domain(domain)
    if org != domain:
        names.append(f"_dmarc.{org}")
    lookups = []
    for name in names:
        answer, texts = probe.resolver.txt(name)
        decoded = [t.decode("utf-8", "replace") for t in texts]
        lookups.append((name, answer.status, decoded))
        if answer.status is DnsStatus.TEMPFAIL or any(
            t.lower().lstrip().startswith("v=dmarc1") for t in decoded
        ):
            break
    return judge_dmarc(domain, lookups)


def publishes(record: str, key: SigningKey) -> bool:
    """The DKIM key record's p= is the public half of `key` (RSA: the same modulus)."""
    tags = {}
    for part in record.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags[name.strip().lower()] = "".join(value.split())
    try:
        published = base64.b64decode(tags.get("p", ""), validate=True)
    except (binascii.Error, ValueError):
        return False
    if not published:
        return False  # an empty p= revokes the key
    if key.algorithm == "ed25519-sha256":
        seed = base64.b64decode(key.material)
        own = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
        return published == own
    if key.openssl is None:
        return False
    try:
        loaded = load_der_public_key(published)
    except (ValueError, TypeError):
        return False
    own_numbers = key.openssl.public_key().public_numbers()
    return isinstance(loaded, RSAPublicKey) and loaded.public_numbers() == own_numbers

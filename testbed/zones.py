"""The DNS data of the demo and the tests, in one place (served by ``testbed.dnsserver``).

The server is authoritative for ``example.`` (RFC 2606 names: nothing here
can collide with a real domain): every name under it that is not listed below
does not exist (NXDOMAIN). Names outside ``example.`` are refused, which a
resolver reports as a temporary failure.

Add records by appending zone-file lines to ``RECORDS`` (``name TTL IN TYPE
data``, names fully qualified), or pass extra lines to the server (``Stack(...,
dns_records=[...])``, ``ZoneData(extra)``). ``dkim_key_record`` makes a DKIM
public-key TXT line from a base64 key; ``FAILURES`` makes a name misbehave.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

ORIGIN = "example."
SOA = f"{ORIGIN} 300 IN SOA ns.{ORIGIN} hostmaster.{ORIGIN} 1 3600 600 86400 60"
"""The SOA minimum (60 s) is the negative-caching TTL of NXDOMAIN and no-data answers."""

KEY_DIR = Path(__file__).resolve().parent / "dkim"
RELAY_IP = "192.0.2.25"
"""The relay's outbound address in the test SPF records (``[messages] relay_ips``)."""
OTHER_IP = "198.51.100.7"


def public_key(name: str) -> str:
    """The base64 public key ``testbed/dkim/NAME.pub`` (the ``p=`` tag of a DKIM record)."""
    return (KEY_DIR / f"{name}.pub").read_text().strip()


def private_key_path(name: str) -> Path:
    return KEY_DIR / f"{name}.key"


def txt_strings(text: str) -> str:
    """A TXT value as zone-file character-strings of at most 255 octets each."""
    chunks = [text[i : i + 255] for i in range(0, len(text), 255)] or [""]
    return " ".join(f'"{chunk}"' for chunk in chunks)


def dkim_key_record(selector: str, domain: str, key_b64: str, key_type: str = "rsa") -> str:
    """``SELECTOR._domainkey.DOMAIN. TXT "v=DKIM1; k=rsa; p=..."`` as a zone-file line."""
    value = f"v=DKIM1; k={key_type}; p={key_b64}"
    return f"{selector}._domainkey.{domain}. 300 IN TXT {txt_strings(value)}"


def mail_domain(domain: str, *, spf: str | None = None) -> list[str]:
    """A domain that receives mail (MX and address) and publishes SPF for the relay."""
    spf = spf or f"v=spf1 ip4:{RELAY_IP} -all"
    return [
        f"{domain}. 300 IN MX 10 mx.{domain}.",
        f"{domain}. 300 IN A 192.0.2.10",
        f"{domain}. 300 IN TXT {txt_strings(spf)}",
        f"mx.{domain}. 300 IN A 192.0.2.11",
    ]


ONBOARDING_TOKEN = "0nb0ard1ngt0ken0000000000000000a"
"""The ownership token the tests give their tenants (``verification_token`` in the tenant
hash; in production ``tenant verify-domain`` makes a random one per tenant)."""
DMARC_RECORD = "v=DMARC1; p=quarantine; rua=mailto:dmarc@acme.example"


def onboarded(
    domain: str, *, token: str = ONBOARDING_TOKEN, dmarc: str = DMARC_RECORD
) -> list[str]:
    """What ``tenant verify-domain`` wants besides SPF: the ownership TXT and a DMARC record."""
    return [
        f"{domain}. 300 IN TXT {txt_strings('aup-milter-verification=' + token)}",
        f"_dmarc.{domain}. 300 IN TXT {txt_strings(dmarc)}",
    ]


RECORDS: list[str] = [
    SOA,
    f"ns.{ORIGIN} 300 IN A 192.0.2.53",
    # --- the demo tenants: everything passes --------------------------------------
    *mail_domain("acme.example"),
    # Subdomains of acme.example send too (mail.acme.example, a.b.mail.acme.example).
    "mail.acme.example. 300 IN MX 10 mx.acme.example.",
    "*.mail.acme.example. 300 IN MX 10 mx.acme.example.",
    dkim_key_record("test2048", "acme.example", public_key("test-rsa2048")),
    dkim_key_record("test4096", "acme.example", public_key("test-rsa4096")),  # > 512 octets: TCP
    dkim_key_record("test1024", "acme.example", public_key("test-rsa1024")),
    dkim_key_record("revoked", "acme.example", ""),  # an empty p= revokes the key
    *mail_domain("globex.example", spf="v=spf1 include:_spf.globex.example ~all"),
    f"_spf.globex.example. 300 IN TXT {txt_strings(f'v=spf1 ip4:{RELAY_IP} ip4:{OTHER_IP} -all')}",
    dkim_key_record("test2048", "globex.example", public_key("test-rsa2048")),
    *mail_domain("initech.example"),  # the demo's newsletter sender (plan newsletter: footer)
    dkim_key_record("test2048", "initech.example", public_key("test-rsa2048")),
    # --- bounce routes: one domain per case ---------------------------------------
    "nullmx.example. 300 IN MX 0 .",  # RFC 7505: accepts no mail
    "nullmx.example. 300 IN A 192.0.2.20",
    "addressonly.example. 300 IN A 192.0.2.21",  # no MX: the address is the implicit MX
    "v6only.example. 300 IN AAAA 2001:db8::21",
    'nomail.example. 300 IN TXT "v=spf1 -all"',  # exists, but no MX, A or AAAA
    # --- SPF cases ------------------------------------------------------------------
    *mail_domain("nospf.example", spf="not an spf record"),
    *mail_domain("spffail.example", spf=f"v=spf1 ip4:{OTHER_IP} -all"),
    # --- other senders the tests use ------------------------------------------------
    *mail_domain("xn--bcher-kva.example"),  # bücher.example
    # Domains of no tenant that receive mail (senders let through by unknown_sender = accept).
    *mail_domain("stranger.example"),
    *mail_domain("unknown.example"),
    *mail_domain("partner.example"),
    *mail_domain("beta.example"),
    *mail_domain("acme-mail.example"),  # a second domain of tenant acme in the corpus
    # --- domain onboarding (tenant verify-domain; RDAP answers: testbed/rdapserver.py) ----
    *onboarded("acme.example"),  # everything passes (RDAP: a named registrant)
    *mail_domain("privacy.example"),  # RDAP: a privacy/proxy registrant
    *onboarded("privacy.example"),
    *mail_domain("redacted.example"),  # RDAP: the registrant GDPR-redacted
    *onboarded("redacted.example"),
    *mail_domain("rdap-error.example"),  # RDAP: HTTP 500
    *onboarded("rdap-error.example"),
    *mail_domain("nodmarc.example"),  # the token, SPF, but no DMARC record
    *onboarded("nodmarc.example")[:1],
    *onboarded("spffail.example"),  # the token and DMARC, SPF without the relay
    *mail_domain("badpolicy.example"),  # a DMARC record without a valid policy
    *onboarded("badpolicy.example", dmarc="v=DMARC1; p=maybe"),
]
"""Zone-file lines, names fully qualified."""

FAILURES: dict[str, str] = {
    "servfail.example": "servfail",
    "timeout.example": "timeout",  # never answers: the resolver times out
    "slow._domainkey.acme.example": "timeout",
    "broken._domainkey.acme.example": "servfail",
    "_dmarc.dmarcfail.example": "servfail",
}
"""Names (and everything under them) that answer SERVFAIL or nothing at all."""


class ZoneData:
    """The records to serve: ``RECORDS`` plus any extra zone-file lines."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.lines = [*RECORDS, *extra]
        self.failures = dict(FAILURES)

"""The report corpus: ``reports/manifest.toml`` entries, the bytes of each, and the test store.

Samples of our own outbound mail carry unsubscribe tokens, which expire, so
files hold placeholders filled at run time with tokens issued now:
``{{token:recipient:TENANT:ADDRESS}}`` and ``{{token:message:TENANT}}``.
Filling them records each token's reference, as the relay does when it
sends, in ``CorpusStore.references``; the store also maps the tenants'
domains (acme.example, globex.example) and names the relay's shared signing
domain, so the lookup the tests use is the one the command builds from a
configuration and Redis.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aupmilter.policy.tokens import Reference, TokenSigner
from aupmilter.reports.model import TenantLookup
from aupmilter.reports.tenant import store_lookup, token_resolver

REPORTS_DIR = Path(__file__).resolve().parent / "reports"
MANIFEST = REPORTS_DIR / "manifest.toml"
SECRET = "web-tests-secret-0123456789abcdef0123456789"
"""The secret tests/web/harness.py writes into its configuration: one config serves both."""
TOKEN_LIFETIME_DAYS = 60
DOMAINS = {"acme.example": "acme", "globex.example": "globex"}
SHARED_DOMAIN = "relay.example.net"
RELAY_ID = "relay01"
KINDS = ("complaint", "hard-bounce", "soft-bounce", "delayed", "not-a-report", "unparseable")
_PLACEHOLDER = re.compile(rb"\{\{token:(recipient|message):([a-z0-9._-]+)(?::([^}]+))?\}\}")


@dataclass(frozen=True)
class ReportEntry:
    file: str
    source: str
    licence: str
    kind: str
    recipients: tuple[str, ...] = ()
    suppress: tuple[str, ...] = ()
    feedback_type: str | None = None
    tenant: str | None = None
    store: bool = False
    """The tenant or the complainer comes from the store (a token, a domain)."""

    @property
    def path(self) -> Path:
        return REPORTS_DIR / self.file


@dataclass
class CorpusStore:
    """What Redis holds for the corpus: token references and the tenants' domains."""

    now: float
    signer: TokenSigner = field(
        default_factory=lambda: TokenSigner([SECRET.encode()], TOKEN_LIFETIME_DAYS)
    )
    references: dict[str, Reference] = field(default_factory=dict)

    def fill(self, raw: bytes) -> bytes:
        """The sample with each placeholder replaced by a token issued now (one per value)."""
        issued: dict[bytes, str] = {}

        def token(match: re.Match[bytes]) -> bytes:
            if match.group(0) not in issued:
                kind, tenant, address = (g.decode() if g else "" for g in match.groups())
                if kind == "recipient":
                    made = self.signer.recipient_token(tenant, address, self.now)
                else:
                    made = self.signer.message_token(
                        tenant, "<corpus@example>", self.now, ["corpus@example.net"]
                    )
                self.references[made.reference.ref_text] = made.reference
                issued[match.group(0)] = made.token
            return issued[match.group(0)].encode()

        return _PLACEHOLDER.sub(token, raw)

    def lookup(self) -> TenantLookup:
        def reference(ref_text: str) -> str | None:
            found = self.references.get(ref_text)
            return None if found is None else found.store_value

        return store_lookup(
            resolve_token=token_resolver(self.signer, reference, self.now),
            domain_tenant=DOMAINS.get,
            shared_domains=frozenset({SHARED_DOMAIN}),
            relay_id=RELAY_ID,
        )

    def stored(self) -> Iterator[Reference]:
        yield from self.references.values()


def load_manifest() -> list[ReportEntry]:
    with MANIFEST.open("rb") as handle:
        table = tomllib.load(handle)
    entries = []
    for item in table["report"]:
        item = dict(item)
        for key in ("recipients", "suppress"):
            item[key] = tuple(item.get(key, ()))
        entries.append(ReportEntry(**item))
    return entries

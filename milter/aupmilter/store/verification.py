"""Where `tenant verify-domain` keeps its results: the tenant hash and the report beside it.

- the tenant's ownership token: the hash field `verification_token`, made
  once (HSETNX of 32 random hex digits), so every run prints the same one;
- each domain's compact verification: the hash field `verified:<domain>`
  (policy.onboarding's encoding), which the MAIL FROM read brings with the
  tenant: end of message judges bulk mail with no Redis call of its own;
- the full report (every finding, its reason and answers, JSON): the hash
  `keys.tenant_verifications` (domain -> JSON), for `tenant show` and
  the operators; the milter never reads it.

`record` writes both and an audit event (`domain-verification`) in one
MULTI, and returns whether the domain became verified now (it passes, and
its previous record did not): the one place a newly verified domain is
known, where the warm-up ramp of that domain would start.

Bound: `policy.onboarding.MAX_VERIFIED_DOMAINS` domains per tenant (a
51st is refused), each field at most ~260 bytes.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from aupmilter.policy.onboarding import (
    MAX_VERIFIED_DOMAINS,
    TOKEN_FORM,
    DomainVerification,
    Finding,
    newly_verified,
    parse_verification,
    verification_of,
)
from aupmilter.store import keys
from aupmilter.store.suppression import queue_audit
from aupmilter.store.tenants import TenantError, validate_tenant_id

MAX_REPORT_BYTES = 64 * 1024
"""A report is a few KB (five findings with their records); longer evidence is cut."""


@dataclass(frozen=True, slots=True)
class Recorded:
    verification: DomainVerification
    previous: DomainVerification | None
    newly_verified: bool
    """The domain passes now and did not before: the warm-up ramp's restart point."""


class VerificationStore:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        from aupmilter.store.client import is_cluster

        self.cluster = is_cluster(client)

    def token(self, tenant_id: str) -> str:
        """The tenant's ownership token, made on first use; TenantError for no tenant."""
        tenant_key = keys.tenant(validate_tenant_id(tenant_id))
        if not self.client.exists(tenant_key):
            raise TenantError(f"no tenant {tenant_id!r}")
        fresh = secrets.token_hex(16)
        self.client.hsetnx(tenant_key, keys.FIELD_VERIFICATION_TOKEN, fresh)
        token = cast(str | None, self.client.hget(tenant_key, keys.FIELD_VERIFICATION_TOKEN))
        if token is None or not TOKEN_FORM.match(token):
            raise TenantError(
                f"tenant {tenant_id!r} has an unusable {keys.FIELD_VERIFICATION_TOKEN!r}"
                f" ({token!r}): expected 16-64 lower-case letters and digits; HDEL it to"
                " get a new one"
            )
        return token

    def previous(self, tenant_id: str, domain: str) -> DomainVerification | None:
        value = self.client.hget(keys.tenant(tenant_id), keys.verified_field(domain))
        return parse_verification(str(value)) if value is not None else None

    def record(
        self,
        tenant_id: str,
        domain: str,
        findings: Sequence[Finding],
        now: float,
        by: str = "cli",
    ) -> Recorded:
        """Keep the result (both forms) and audit it; see the module for what it returns."""
        tenant_key = keys.tenant(validate_tenant_id(tenant_id))
        field_name = keys.verified_field(domain)
        fields = cast(dict[str, str], self.client.hgetall(tenant_key))
        if not fields:
            raise TenantError(f"no tenant {tenant_id!r}")
        recorded = [f for f in fields if f.startswith(keys.FIELD_VERIFIED_PREFIX)]
        if field_name not in recorded and len(recorded) >= MAX_VERIFIED_DOMAINS:
            raise TenantError(
                f"tenant {tenant_id!r} has {len(recorded)} verified domains, the most kept;"
                f" HDEL {tenant_key} one of its verified:<domain> fields first"
            )
        before = fields.get(field_name)
        previous = parse_verification(before) if before is not None else None
        verification = verification_of(findings, now)
        report = {
            "domain": domain,
            "checked_at": verification.checked_at,
            "status": verification.status.value,
            "findings": [f.as_json() for f in findings],
        }
        text = json.dumps(report, sort_keys=True)[:MAX_REPORT_BYTES]
        failing = ", ".join(f"{c.value} {s.value}" for c, s in sorted(verification.failing.items()))
        event: dict[str, Any] = {
            "event": "domain-verification",
            "tenant": tenant_id,
            "subject": domain,
            "kind": "domain",
            "by": by,
            "verdict": verification.status.value,
            "detail": f"domain {domain}: {verification.status.value}"
            + (f" ({failing})" if failing else ""),
            "ts": str(verification.checked_at),
        }
        # On a cluster the event's stream is another slot: no MULTI (as store.tenants does).
        with self.client.pipeline(transaction=not self.cluster) as pipe:
            pipe.hset(tenant_key, field_name, verification.encode())
            pipe.hset(keys.tenant_verifications(tenant_id), domain, text)
            queue_audit(pipe, event, now)
            pipe.execute()
        return Recorded(verification, previous, newly_verified(previous, verification))

    def report(self, tenant_id: str, domain: str) -> dict[str, Any] | None:
        raw = self.client.hget(keys.tenant_verifications(validate_tenant_id(tenant_id)), domain)
        if raw is None:
            return None
        try:
            loaded = json.loads(str(raw))
        except ValueError:
            return None
        return loaded if isinstance(loaded, dict) else None

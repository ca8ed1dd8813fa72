"""Tenant lookups for reports: our tokens' references and the domain map, read-only.

Shared by `aup-milter report classify -c` and the report intake, so both
find a report's tenant the same way (reports/tenant.py decides the order).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aupmilter.reports.model import TenantLookup

if TYPE_CHECKING:
    from aupmilter.config import Config


def lookup_for(config: Config, reader: StoreReader) -> TenantLookup:
    """Tokens (with the configuration's secrets), our Feedback-ID, then domains, through reader."""
    from aupmilter.policy.tokens import TokenSigner
    from aupmilter.reports.tenant import store_lookup, token_resolver

    resolve_token = None
    if config.unsubscribe is not None and config.unsubscribe.secrets:
        signer = TokenSigner(config.unsubscribe.secrets, config.unsubscribe.token_lifetime_days)
        resolve_token = token_resolver(signer, reader.reference, time.time())
    shared = frozenset({config.dkim.default.domain} if config.dkim.default is not None else ())
    relay_id = config.feedback_id.relay_id if config.feedback_id is not None else None
    return store_lookup(
        resolve_token=resolve_token,
        domain_tenant=reader.domain_tenant,
        shared_domains=shared,
        relay_id=relay_id,
    )


class StoreReader:
    """Read-only Redis look-ups that give up at the first failure.

    The failure is kept in `failure` (the intake defers the report rather than
    judge it without its tenant) and, with `warn`, said once (the command's
    standard error).
    """

    def __init__(self, client: Any, url: str, warn: Callable[[str], None] | None = None) -> None:
        self._client = client
        self._url = url
        self._down = False
        self._warn = warn
        self.failure: Exception | None = None

    def reference(self, ref_text: str) -> str | None:
        from aupmilter.store import keys

        return self._get(keys.unsubscribe_ref(ref_text))

    def domain_tenant(self, domain: str) -> str | None:
        """The tenant of the domain or of its closest parent, as MAIL FROM looks it up."""
        from aupmilter.policy.tenancy import normalize_domain, parent_domains
        from aupmilter.store import keys

        normal = normalize_domain(domain)
        if normal is None:
            return None
        for candidate in parent_domains(normal)[:-1]:  # never a bare top-level domain
            found = self._get(keys.domain(candidate))
            if found:
                return found
        return None

    def _get(self, key: str) -> str | None:
        import redis

        if self._down:
            return None
        try:
            value = self._client.get(key)
        except (redis.RedisError, OSError) as exc:
            self._down = True
            self.failure = exc
            if self._warn is not None:
                self._warn(
                    f"Redis at {self._url} unavailable ({exc});"
                    " tenants from tokens and domains are not looked up"
                )
            return None
        return None if value is None else str(value)

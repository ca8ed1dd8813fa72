"""The Redis key names, in one place (documented in README, "Redis keys").

aup:tenant:<id>           hash: status, plan, reason, updated_at, created_at
aup:tenant:<id>:logins    set: SASL logins mapped to the tenant (reverse index)
aup:tenant:<id>:domains   set: sender domains mapped to the tenant (reverse index)
aup:login:<login>         string: tenant id for an exact {auth_authen} value
aup:domain:<domain>       string: tenant id for a sender domain (and its subdomains)
aup:tenants               set: all tenant ids
aup:tenant:<id>:streams   hash: SASL login or envelope sender -> "bulk" | "transactional"

Keys written per transaction carry the tenant id as a Redis Cluster hash tag,
so one script's keys always live on one slot:

aup:{<id>}:w:<unit>:<period_ms>              hash: per-tenant window buckets
aup:{<id>}:w:<unit>:<period_ms>:s:<sender>   hash: per-sender window buckets
                                             (bucket index -> count; expires by itself)
aup:{<id>}:suppressed                        hash: address -> "<source> <unix time>"
aup:{<id>}:fp:<period_ms>:<fingerprint>      hash: recipients a content fingerprint
                                             reached (bucket index -> count; as windows)

Not per tenant (the unsubscribe service learns the tenant from it):

aup:unsubref:<ref>        string: "<tenant>\n<address>" behind an unsubscribe token;
                          expires with the tokens (aupmilter.policy.tokens, store.suppression)
aup:audit                 stream: audit events (suppressions), trimmed to about 8 days
"""

from __future__ import annotations

import re
from collections.abc import Callable

from aupmilter.policy.limits import Scope, Window
from aupmilter.policy.tenancy import LookupKind

PREFIX = "aup:"
TENANT_PREFIX = f"{PREFIX}tenant:"
TENANTS = f"{PREFIX}tenants"
TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def tenant(tenant_id: str) -> str:
    return f"{TENANT_PREFIX}{tenant_id}"


def tenant_logins(tenant_id: str) -> str:
    return f"{TENANT_PREFIX}{tenant_id}:logins"


DOMAINS_SUFFIX = ":domains"


def tenant_domains(tenant_id: str) -> str:
    return f"{TENANT_PREFIX}{tenant_id}{DOMAINS_SUFFIX}"


def login(name: str) -> str:
    return f"{PREFIX}login:{name}"


def domain(name: str) -> str:
    return f"{PREFIX}domain:{name}"


def mapping(kind: LookupKind, name: str) -> str:
    return login(name) if kind is LookupKind.LOGIN else domain(name)


def tenant_streams(tenant_id: str) -> str:
    return f"{TENANT_PREFIX}{tenant_id}:streams"


def tagged(tenant_id: str) -> str:
    """The per-tenant prefix with the Cluster hash tag: ``aup:{<id>}:``."""
    return f"{PREFIX}{{{tenant_id}}}:"


def window_suffix(window: Window, sender: str) -> str:
    """The window key after the tagged tenant prefix (counts are shared by equal counters)."""
    scope, unit, period_ms = window.counter
    suffix = f"w:{unit[0]}:{period_ms}"
    return f"{suffix}:s:{sender}" if scope is Scope.SENDER else suffix


def window_key(tenant_id: str, window: Window, sender: str) -> str:
    return tagged(tenant_id) + window_suffix(window, sender)


def split_at_tenant(key_for: Callable[[str], str]) -> tuple[str, str]:
    """(head, tail) around the tenant id, for scripts that learn the id themselves."""
    head, tail = key_for("\0").split("\0")
    return head, tail


def suppressed(tenant_id: str) -> str:
    return tagged(tenant_id) + "suppressed"


def fingerprint_counter(tenant_id: str, fingerprint: str, period_ms: int) -> str:
    return tagged(tenant_id) + f"fp:{period_ms}:{fingerprint}"

"""The Redis key names, in one place (documented in README, "Redis keys").

aup:tenant:<id>           hash: status, plan, reason, updated_at, created_at
aup:tenant:<id>:logins    set: SASL logins mapped to the tenant (reverse index)
aup:tenant:<id>:domains   set: sender domains mapped to the tenant (reverse index)
aup:login:<login>         string: tenant id for an exact {auth_authen} value
aup:domain:<domain>       string: tenant id for a sender domain (and its subdomains)
aup:tenants               set: all tenant ids
"""

from __future__ import annotations

import re

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

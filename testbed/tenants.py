"""Demo tenants and the Redis commands that register a tenant.

The key schema mirrors the daemon's store (``aupmilter.store``):

- hash ``aup:tenant:<id>``: status, plan, reason, created_at, updated_at (unix seconds)
- string ``aup:login:<sasl login>`` -> id, string ``aup:domain:<domain>`` -> id
- sets ``aup:tenant:<id>:logins``, ``aup:tenant:<id>:domains``, and ``aup:tenants``
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

STATUSES = ("active", "suspended", "terminated")


@dataclass(frozen=True)
class Tenant:
    id: str
    plan: str
    # SASL logins as the client types them; the realm (if any) is added by the Stack.
    logins: tuple[str, ...]
    domains: tuple[str, ...]
    status: str = "active"

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"tenant {self.id}: status {self.status!r} not one of {STATUSES}")


@dataclass(frozen=True)
class DemoAccount:
    tenant: Tenant
    password: str


DEMO_ACCOUNTS: tuple[DemoAccount, ...] = (
    DemoAccount(Tenant("acme", "standard", ("acme",), ("acme.example",)), "acme-demo"),
    DemoAccount(Tenant("globex", "business", ("globex",), ("globex.example",)), "globex-demo"),
)

# SASL users of the demo: the tenants' logins with their passwords.
DEMO_SASL_USERS: dict[str, str] = {
    login: account.password for account in DEMO_ACCOUNTS for login in account.tenant.logins
}


def tenant_commands(
    tenant: Tenant, login_names: Sequence[str], now: int | None = None
) -> list[list[str]]:
    """Redis commands that create (or overwrite) ``tenant``.

    ``login_names`` are the logins in the form the milter sees in
    {auth_authen}, which depends on the Postfix SASL realm setup.
    """
    stamp = str(int(time.time()) if now is None else now)
    key = f"aup:tenant:{tenant.id}"
    commands: list[list[str]] = [
        ["HSET", key, "status", tenant.status, "plan", tenant.plan, "reason", ""],
        ["HSET", key, "updated_at", stamp],
        ["HSETNX", key, "created_at", stamp],
        ["SADD", "aup:tenants", tenant.id],
    ]
    for login in login_names:
        commands += [
            ["SET", f"aup:login:{login}", tenant.id],
            ["SADD", f"{key}:logins", login],
        ]
    for domain in tenant.domains:
        commands += [
            ["SET", f"aup:domain:{domain.lower()}", tenant.id],
            ["SADD", f"{key}:domains", domain.lower()],
        ]
    return commands


def status_commands(
    tenant_id: str, status: str, reason: str = "", now: int | None = None
) -> list[list[str]]:
    if status not in STATUSES:
        raise ValueError(f"status {status!r} not one of {STATUSES}")
    stamp = str(int(time.time()) if now is None else now)
    key = f"aup:tenant:{tenant_id}"
    return [["HSET", key, "status", status, "reason", reason, "updated_at", stamp]]

"""Tenants of the stack, made as ops make them: ``aup-milter tenant ...`` against its Redis."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Protocol

from testbed.parts.redisserver import RedisServer
from testbed.parts.service import python_env
from testbed.proc import TestbedError, run
from testbed.tenants import (
    DEMO_ACCOUNTS,
    DEMO_ONBOARDING,
    VERIFICATION_TOKEN_FIELD,
    Tenant,
    tenant_key,
)


class SaslRelay(Protocol):
    """The MTA whose SMTP AUTH users the tenants log in as (Postfix or Sendmail instance)."""

    sasl_users: dict[str, str]

    def auth_authen(self, login: str) -> str: ...

    def add_sasl_user(self, login: str, password: str) -> None: ...


class TenantAdmin:
    """The tenant CLI on ``redis``; logins in the form ``postfix``'s SASL setup hands the milter.

    ``postfix`` is the relay the tenants authenticate to: the Postfix instance
    of a ``Stack``, or any other ``SaslRelay`` (the Sendmail instance).
    """

    def __init__(
        self, redis: RedisServer, postfix: SaslRelay, *, python: str = sys.executable
    ) -> None:
        self.redis = redis
        self.postfix = postfix
        self.python = python

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``aup-milter tenant ARGS`` against the stack's Redis."""
        argv = [self.python, "-m", "aupmilter", "tenant", "--redis", self.redis.url, *args]
        return run(argv, what=f"aup-milter tenant {args[0]}", env=python_env(), check=check)

    def add(self, tenant: Tenant) -> None:
        """Register ``tenant`` afresh (replacing any tenant of that id).

        Logins are registered in the form {auth_authen} takes in this stack's
        SASL setup (``login@realm`` when a realm is set).
        """
        self.remove(tenant.id)
        logins = [self.postfix.auth_authen(login) for login in tenant.logins]
        self.cli(*tenant.add_args(logins))
        if tenant.identity is not None:
            self.cli(*tenant.identity.set_args(tenant.id))

    def remove(self, tenant_id: str) -> None:
        """Remove a tenant and its mappings; a missing tenant is fine."""
        done = self.cli("remove", tenant_id, check=False)
        if done.returncode != 0 and "no tenant" not in done.stderr:
            raise TestbedError(f"aup-milter tenant remove {tenant_id}: {done.stderr.strip()}")

    def set_status(self, tenant_id: str, status: str, reason: str = "") -> None:
        self.cli("set-status", tenant_id, status, "--reason", reason)

    def info(self, tenant_id: str) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(self.cli("show", tenant_id, "--json").stdout)
        return info

    def clear_rate_windows(self) -> None:
        """Forget every tenant's window counts and the ladder's state (near-cap counts,
        suspended senders and domains, offences): the tests start from empty windows."""
        for pattern in (
            "aup:{*}:w:*",
            "aup:{*}:nearcap:*",
            "aup:{*}:suspended",
            "aup:{*}:offences",
        ):
            found = self.redis.cli("--scan", "--pattern", pattern)
            for key in found.splitlines():
                self.redis.cli("DEL", key)

    def add_demo_tenants(self) -> None:
        """The demo's tenants (acme, globex, initech), active, with their SASL users."""
        for account in DEMO_ACCOUNTS:
            for login in account.tenant.logins:
                if self.postfix.sasl_users.get(login) != account.password:
                    self.postfix.sasl_users[login] = account.password
                    self.postfix.add_sasl_user(login, account.password)
            self.add(account.tenant)

    def set_verification_token(self, tenant_id: str, token: str) -> None:
        """Give ``tenant_id`` the ownership token ``token`` (no command sets one)."""
        self.redis.cli("HSET", tenant_key(tenant_id), VERIFICATION_TOKEN_FIELD, token)

    def prepare_demo_onboarding(self) -> None:
        """acme's token as the test zones publish it: the demo's verify-domain passes.

        Not part of ``add_demo_tenants``: the end-to-end tests reset to tenants
        without a token (a verification without one must fail ownership).
        """
        tenant_id, _, token = DEMO_ONBOARDING
        self.set_verification_token(tenant_id, token)

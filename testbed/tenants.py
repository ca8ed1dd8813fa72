"""Demo tenants, and the ``aup-milter tenant`` arguments that register one.

The testbed manages tenants through the project's own CLI rather than by
writing Redis keys itself: the key schema then has one owner
(``aupmilter.store.keys``), and the end-to-end tests exercise the CLI too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from testbed.zones import ONBOARDING_TOKEN

STATUSES = ("active", "suspended", "terminated")


@dataclass(frozen=True)
class Identity:
    """The sender identity the footer of bulk mail shows (``tenant set-identity``)."""

    name: str
    address: tuple[str, ...]
    contact: str

    def set_args(self, tenant_id: str) -> list[str]:
        args = ["set-identity", tenant_id, "--name", self.name, "--contact", self.contact]
        for line in self.address:
            args += ["--address", line]
        return args


@dataclass(frozen=True)
class Tenant:
    id: str
    plan: str
    # SASL logins as the client types them; the Stack adds the realm if it has one.
    logins: tuple[str, ...]
    domains: tuple[str, ...]
    status: str = "active"
    identity: Identity | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"tenant {self.id}: status {self.status!r} not one of {STATUSES}")

    def add_args(self, login_names: Sequence[str]) -> list[str]:
        """``aup-milter tenant add`` arguments, with logins as {auth_authen} shows them."""
        args = ["add", self.id, "--plan", self.plan, "--status", self.status]
        for login in login_names:
            args += ["--login", login]
        for domain in self.domains:
            args += ["--domain", domain]
        return args


@dataclass(frozen=True)
class DemoAccount:
    tenant: Tenant
    password: str


DEMO_ACCOUNTS: tuple[DemoAccount, ...] = (
    DemoAccount(Tenant("acme", "standard", ("acme",), ("acme.example",)), "acme-demo"),
    DemoAccount(Tenant("globex", "business", ("globex",), ("globex.example",)), "globex-demo"),
    DemoAccount(
        Tenant(
            "initech",
            "newsletter",
            ("initech",),
            ("initech.example",),
            identity=Identity(
                "Initech, Inc.",
                ("4120 Freidrich Lane", "Austin, TX 78744", "USA"),
                "https://initech.example/contact",
            ),
        ),
        "initech-demo",
    ),
)

# SASL users of the demo: the tenants' logins with their passwords.
DEMO_SASL_USERS: dict[str, str] = {
    login: account.password for account in DEMO_ACCOUNTS for login in account.tenant.logins
}

# The demo's domain onboarding: ``tenant verify-domain acme acme.example`` passes every check
# when acme's ownership token is the one the test zones publish at acme.example. No command
# sets a token (the first run of verify-domain makes a random one), so the demo writes the
# field itself; the two names below are aupmilter.store.keys' (tests/unit/test_testbed_keys.py).
DEMO_ONBOARDING = ("acme", "acme.example", ONBOARDING_TOKEN)
"""Tenant, domain, and the token testbed.zones publishes at that domain."""
VERIFICATION_TOKEN_FIELD = "verification_token"
"""keys.FIELD_VERIFICATION_TOKEN: the tenant hash's ownership token."""


def tenant_key(tenant_id: str) -> str:
    """keys.tenant(ID) on one Redis server (the stack's): the tenant hash."""
    return f"aup:tenant:{tenant_id}"

"""The other SASL setup: ``smtpd_sasl_local_domain`` set, so {auth_authen} is ``login@realm``.

The milter maps the exact {auth_authen} value, so tenants of such a relay
must be registered with the realm form of their logins. A second, small
stack (its own run folder and ports) runs Postfix with a realm.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed import DEMO_SASL_USERS, Stack, Tenant
from testbed.client import SmtpClient, make_message
from testbed.stack import default_run_dir, port_offset

pytestmark = pytest.mark.e2e

REALM = "e2e.realm"
RCPT = "someone@example.net"
SENDER = "alice@acme.example"


@pytest.fixture(scope="module")
def realm_stack() -> Iterator[Stack]:
    stack = Stack(
        default_run_dir("e2e-realm"),
        redis_port=6396 + port_offset(),
        smtp_port=2545 + port_offset(),
        sink_port=2546 + port_offset(),
        sasl_realm=REALM,
        sasl_users=DEMO_SASL_USERS,
    )
    stack.start(clean=True)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def stack(realm_stack: Stack) -> Stack:
    realm_stack.add_demo_tenants()
    return realm_stack


def send_as(stack: Stack, user: str, password: str) -> tuple[int, int | None, str]:
    """(MAIL FROM code, end-of-data code, token) of one message sent after AUTH."""
    message, token = make_message(SENDER, [RCPT])
    with SmtpClient(stack.host, stack.smtp_port) as client:
        assert client.login(user, password).code == 235
        outcome = client.send(SENDER, [RCPT], message)
    return outcome.mail.code, outcome.data.code if outcome.data else None, token


def test_auth_authen_carries_the_realm(stack: Stack) -> None:
    assert stack.auth_authen("acme") == f"acme@{REALM}"
    assert stack.tenant_info("acme")["logins"] == [f"acme@{REALM}"]


@pytest.mark.parametrize("typed_login", ["acme", f"acme@{REALM}"])
def test_realm_login_maps_to_its_tenant(stack: Stack, typed_login: str) -> None:
    # Postfix appends the realm to a bare login; a client may also type it.
    mail_code, data_code, token = send_as(stack, typed_login, "acme-demo")

    assert (mail_code, data_code) == (250, 250)
    assert stack.wait_for_sink(token).mail_from == SENDER


def test_bare_login_mapping_does_not_match_a_realm_login(stack: Stack) -> None:
    stack.remove_tenant("acme")
    stack.tenant_cli(*Tenant("acme", "standard", ("acme",), ("acme.example",)).add_args(["acme"]))

    mail_code, data_code, _ = send_as(stack, "acme", "acme-demo")

    assert (mail_code, data_code) == (550, None)

"""The operations contract, end to end: SMTP client -> Postfix -> aup-milter -> sink.

Each test asserts what a sender sees (reply codes at the step where the
decision falls) and what the relay did with the mail (delivered to the sink,
or held in Postfix's hold queue).
"""

from __future__ import annotations

import pytest

from testbed import Stack
from testbed.client import ClientFactory, Outcome, Reply, SmtpClient, make_message
from testbed.proc import wait_until

pytestmark = pytest.mark.e2e

RCPT = "someone@example.net"


def send(client: SmtpClient, sender: str, subject: str = "e2e") -> tuple[Outcome, str]:
    message, token = make_message(sender, [RCPT], subject=subject)
    return client.send(sender, [RCPT], message), token


def assert_refused_at_mail(outcome: Outcome, code: int, enhanced: str) -> Reply:
    reply = outcome.mail
    assert (reply.code, reply.enhanced) == (code, enhanced), f"MAIL FROM got {reply}"
    assert outcome.data is None
    return reply


def assert_delivered(stack: Stack, outcome: Outcome, token: str, sender: str) -> None:
    assert outcome.accepted, f"transaction not accepted: {outcome}"
    delivered = stack.wait_for_sink(token)
    assert delivered.mail_from == sender
    assert delivered.rcpt_to == (RCPT,)


def assert_held(stack: Stack, outcome: Outcome, token: str) -> None:
    # Quarantine is silent for the sender: 250, and the mail waits on hold.
    assert outcome.accepted, f"transaction not accepted: {outcome}"
    assert outcome.queue_id, f"no queue id in {outcome.data}"
    entry = stack.wait_for_queue(outcome.queue_id, "hold")
    assert entry["recipients"][0]["address"] == RCPT
    assert stack.find_sink_message(token) is None


def test_active_tenant_is_delivered(stack: Stack, connect: ClientFactory) -> None:
    sender = "alice@acme.example"
    outcome, token = send(connect("acme"), sender, subject="active tenant")

    assert_delivered(stack, outcome, token, sender)
    delivered = stack.wait_for_sink(token)
    assert delivered.message["Subject"].startswith("active tenant")
    body = delivered.message.get_body()
    assert body is not None
    assert "Hello from the testbed." in body.get_content()


def test_login_mechanism_login_works_too(stack: Stack, connect: ClientFactory) -> None:
    sender = "alice@acme.example"
    outcome, token = send(connect("acme", mechanism="LOGIN"), sender)

    assert_delivered(stack, outcome, token, sender)


def test_unknown_sender_domain_is_rejected_at_mail_from(connect: ClientFactory) -> None:
    outcome, _ = send(connect(), "nobody@unknown.example")

    assert_refused_at_mail(outcome, 550, "5.7.1")


def test_authenticated_login_without_tenant_is_rejected(
    connect: ClientFactory, stranger: tuple[str, str]
) -> None:
    # The sender domain is a tenant's; an unmapped login must not borrow it.
    outcome, _ = send(connect(*stranger), "alice@acme.example")

    assert_refused_at_mail(outcome, 550, "5.7.1")


def test_terminated_tenant_is_rejected_at_mail_from(stack: Stack, connect: ClientFactory) -> None:
    stack.set_tenant_status("acme", "terminated", reason="AUP violation")

    outcome, _ = send(connect("acme"), "alice@acme.example")

    reply = assert_refused_at_mail(outcome, 550, "5.7.1")
    assert "terminated" in reply.text.lower()


def test_suspended_tenant_mail_is_held(stack: Stack, connect: ClientFactory) -> None:
    stack.set_tenant_status("acme", "suspended", reason="spam report")

    outcome, token = send(connect("acme"), "alice@acme.example")

    assert_held(stack, outcome, token)


def test_suspension_applies_from_the_next_transaction_on_the_same_connection(
    stack: Stack, connect: ClientFactory
) -> None:
    client = connect("acme")
    sender = "alice@acme.example"
    first, first_token = send(client, sender, subject="before suspension")
    assert_delivered(stack, first, first_token, sender)

    # The operations contract: one redis-cli command, no restart.
    stack.redis_cli("HSET", "aup:tenant:acme", "status", "suspended")
    second, second_token = send(client, sender, subject="after suspension")

    assert_held(stack, second, second_token)


def test_released_hold_is_delivered(stack: Stack, connect: ClientFactory) -> None:
    stack.set_tenant_status("acme", "suspended")
    outcome, token = send(connect("acme"), "alice@acme.example")
    assert_held(stack, outcome, token)

    stack.release_hold()

    stack.wait_for_sink(token)


def test_redis_outage_tempfails_then_recovers_without_milter_restart(
    stack: Stack, connect: ClientFactory
) -> None:
    milter_pid = stack.status()["milter"]
    stack.stop_redis()
    try:
        outcome, _ = send(connect("acme"), "alice@acme.example")
        assert_refused_at_mail(outcome, 451, "4.3.0")
    finally:
        stack.start_redis()
    # Redis runs without persistence: the restart lost every tenant.
    stack.add_demo_tenants()

    sender = "alice@acme.example"
    outcome, token = send(connect("acme"), sender, subject="after outage")

    assert_delivered(stack, outcome, token, sender)
    assert stack.status()["milter"] == milter_pid


def test_unauthenticated_subdomain_sender_resolves_to_parent_domain_tenant(
    stack: Stack, connect: ClientFactory
) -> None:
    sender = "a@mail.acme.example"
    outcome, token = send(connect(), sender)

    assert_delivered(stack, outcome, token, sender)


def test_config_change_is_applied_without_restart(stack: Stack, connect: ClientFactory) -> None:
    client = connect()

    def mail_from_code() -> int:
        code = client.mail("nobody@unknown.example").code
        client.rset()
        return code

    def wait_for_code(expected: int) -> None:
        # The daemon polls its config file about once a second.
        wait_until(
            lambda: mail_from_code() == expected,
            timeout=15.0,
            interval=0.25,
            what=f"MAIL FROM of an unknown sender to get {expected} after a config change",
        )

    assert mail_from_code() == 550
    milter_pid = stack.status()["milter"]
    stack.milter_config_extra = '[policy]\nunknown_sender = "accept"\n'
    try:
        stack.write_milter_config()
        wait_for_code(250)
    finally:
        stack.milter_config_extra = ""
        stack.write_milter_config()
    wait_for_code(550)
    assert stack.status()["milter"] == milter_pid

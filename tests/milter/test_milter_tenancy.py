"""Who is sending, and may they: tenant resolution and account state at MAIL FROM.

All over the real milter protocol against the real daemon and Redis.
"""

from __future__ import annotations

import pytest

from tests.milter.harness import Daemon, StartDaemon, Tenants
from tests.milter.mta import (
    ACT_QUARANTINE,
    CMD_EOM,
    CMD_MAIL,
    Kind,
    Response,
    TransactionResult,
    compliant_headers,
)

RCPTS = ["r1@dest.example", "r2@dest.example"]


def assert_delivered(result: TransactionResult) -> None:
    """Accepted into the queue for delivery: no refusal, no quarantine, no change."""
    assert result.refused_at is None, f"refused at {result.refused_at}: {result.final}"
    assert result.mail.kind is Kind.CONTINUE and result.mail.replied
    assert result.eom is not None
    assert result.eom.response.kind in (Kind.CONTINUE, Kind.ACCEPT), result.eom.response
    assert result.eom.quarantine_reason is None
    assert not result.eom.modified, result.eom


def assert_refused_at_mail(result: TransactionResult, reply: str) -> Response:
    assert result.refused_at == "mail", result
    assert result.mail.reply == reply, result.mail
    assert result.mail.wire == "y", "the refusal must carry the milter's own reply text"
    return result.mail


def test_negotiates_version_6_and_keeps_the_steps_it_decides_on(daemon: Daemon) -> None:
    with daemon.client(negotiate=False) as client:
        negotiated = client.negotiate()
    assert negotiated.version == 6
    assert negotiated.actions & ACT_QUARANTINE, "quarantine must stay allowed for suspensions"
    # MAIL and end of message are where verdicts are given: never skipped, always answered.
    for command in (CMD_MAIL, CMD_EOM):
        assert not negotiated.skips(command)
        assert not negotiated.no_reply(command)


def test_active_tenant_by_login(daemon: Daemon, acme: str) -> None:
    with daemon.client() as client:
        result = client.send_message(
            "alice@acme.example",
            RCPTS,
            auth_login="acme",
            queue_id="4Xq1AbCdEf",
            mail_args=("SIZE=1234", "BODY=8BITMIME"),
            rcpt_args=("NOTIFY=NEVER",),
        )
    assert_delivered(result)
    assert [rcpt for rcpt, _ in result.rcpts] == RCPTS
    assert not any(response.refuses for _, response in result.rcpts)

    verdict = daemon.log.verdict("4Xq1AbCdEf")
    assert verdict["level"] == "info"
    assert verdict["stage"] == "eom"
    assert verdict["tenant"] == "acme"
    assert verdict["sender"] == "alice@acme.example"
    assert verdict["auth"] == "acme"
    assert verdict["recipients"] == 2
    assert verdict["verdict"] == "accept"
    assert verdict["reply"] is None
    assert "acme" in verdict["reason"] and "active" in verdict["reason"]
    # The connection id ties the verdict to the connection's other lines.
    conn = verdict["conn"]
    assert isinstance(conn, str) and conn
    assert daemon.log.matching("connect from client.example [192.0.2.10]", conn=conn)


def test_queue_id_known_only_at_end_of_message(daemon: Daemon, acme: str) -> None:
    """Postfix often knows the queue id only from DATA on: the verdict carries the EOM value."""
    with daemon.client() as client:
        assert client.mail("alice@acme.example", macros={"{auth_authen}": "acme"}).kind is (
            Kind.CONTINUE
        )
        client.rcpt("r1@dest.example")
        client.content("alice@acme.example", ["r1@dest.example"])
        eom = client.eom(macros={"i": "5LateQid"})
    assert eom.response.kind is Kind.CONTINUE and eom.quarantine_reason is None
    verdict = daemon.log.verdict("5LateQid")
    assert verdict["tenant"] == "acme" and verdict["recipients"] == 1


@pytest.mark.parametrize(
    "sender",
    [
        "bob@acme.example",
        "bob@mail.acme.example",
        "bob@a.b.mail.acme.example",
        "bob@ACME.EXAMPLE",
        "Bob@Mail.Acme.Example",
        "bob@acme.example.",
    ],
)
def test_tenant_by_sender_domain_without_auth(daemon: Daemon, acme: str, sender: str) -> None:
    with daemon.client() as client:
        result = client.send_message(sender, RCPTS, queue_id="DOM1")
    assert_delivered(result)
    verdict = daemon.log.verdict("DOM1")
    assert verdict["tenant"] == "acme"
    assert verdict["auth"] is None
    assert verdict["sender"] == sender


@pytest.mark.parametrize("sender", ["bob@bücher.example", "bob@xn--bcher-kva.example"])
def test_internationalized_sender_domain(daemon: Daemon, tenants: Tenants, sender: str) -> None:
    """A tenant's U-label domain matches the sender in either form (SMTPUTF8 or A-label)."""
    tenants.add("books", domains=["bücher.example"])
    with daemon.client() as client:
        result = client.send_message(sender, RCPTS, queue_id="IDN1")
    assert_delivered(result)
    assert daemon.log.verdict("IDN1")["tenant"] == "books"


@pytest.mark.parametrize(
    "sender",
    [
        "bob@notacme.example",  # a suffix that is not a parent domain
        "bob@acme.example.org",  # the mapped name as a label, not as the parent
        "bob@example",  # a parent of the mapped domain, not a child
        "bob@[192.0.2.1]",  # an address literal maps to nothing
        "bob",  # no domain at all
    ],
)
def test_unmapped_sender_domain_is_rejected(daemon: Daemon, acme: str, sender: str) -> None:
    with daemon.client() as client:
        result = client.send_message(sender, RCPTS, queue_id="UNK1")
    response = assert_refused_at_mail(result, "550 5.7.1")
    assert response.text and "not authorized" in response.text
    verdict = daemon.log.verdict("UNK1")
    assert verdict["verdict"] == "reject" and verdict["tenant"] is None
    assert verdict["stage"] == "mail" and verdict["reply"].startswith("550 5.7.1 ")


def test_unmapped_login_does_not_fall_back_to_the_sender_domain(daemon: Daemon, acme: str) -> None:
    with daemon.client() as client:
        result = client.send_message(
            "bob@acme.example", RCPTS, auth_login="mallory", queue_id="NOFB1"
        )
    assert_refused_at_mail(result, "550 5.7.1")
    verdict = daemon.log.verdict("NOFB1")
    assert verdict["tenant"] is None
    assert verdict["auth"] == "mallory"
    assert "mallory" in verdict["reason"]


def test_login_lookup_is_exact(daemon: Daemon, acme: str) -> None:
    """{auth_authen} is matched exactly: another case or a realm is another login."""
    with daemon.client() as client:
        for n, login in enumerate(["ACME", "acme@realm.example", "acme "]):
            result = client.send_message(
                "bob@acme.example", RCPTS, auth_login=login, queue_id=f"EX{n}"
            )
            assert_refused_at_mail(result, "550 5.7.1")


def test_null_sender_without_auth_is_rejected(daemon: Daemon, acme: str) -> None:
    with daemon.client() as client:
        result = client.send_message("", RCPTS, queue_id="NULL1")
    assert_refused_at_mail(result, "550 5.7.1")
    verdict = daemon.log.verdict("NULL1")
    assert verdict["sender"] == "" and verdict["verdict"] == "reject"


def test_null_sender_of_an_authenticated_tenant_is_accepted(daemon: Daemon, acme: str) -> None:
    """Bounces and DSNs a tenant's own server relays: the login decides, not the (empty) domain."""
    with daemon.client() as client:
        report = compliant_headers("", RCPTS, author="MAILER-DAEMON@acme.example")
        result = client.send_message("", RCPTS, auth_login="acme", queue_id="NULL2", headers=report)
    assert_delivered(result)
    assert daemon.log.verdict("NULL2")["tenant"] == "acme"


@pytest.mark.parametrize("auth_login", ["acme", None], ids=["by-login", "by-domain"])
def test_terminated_tenant_is_rejected_at_mail(
    daemon: Daemon, tenants: Tenants, auth_login: str | None
) -> None:
    tenants.add(
        "acme",
        logins=["acme"],
        domains=["acme.example"],
        status="terminated",
        reason="AUP violation, ticket 1234",
    )
    with daemon.client() as client:
        result = client.send_message(
            "alice@acme.example", RCPTS, auth_login=auth_login, queue_id="TERM1"
        )
    response = assert_refused_at_mail(result, "550 5.7.1")
    assert response.text and "terminated" in response.text, "the text names the account state"
    verdict = daemon.log.verdict("TERM1")
    assert verdict["tenant"] == "acme"
    assert verdict["verdict"] == "reject"
    assert "terminated" in verdict["reason"] and "AUP violation, ticket 1234" in verdict["reason"]


def test_suspended_tenant_is_quarantined(daemon: Daemon, acme: str, tenants: Tenants) -> None:
    tenants.set_status("acme", "suspended", reason="spam complaints, ticket 42")
    with daemon.client() as client:
        result = client.send_message(
            "alice@acme.example", RCPTS, auth_login="acme", queue_id="SUSP1"
        )
    assert result.refused_at is None
    assert result.mail.kind is Kind.CONTINUE, "suspended mail is taken, not refused"
    assert result.eom is not None
    assert result.eom.response.kind is Kind.CONTINUE
    reason = result.eom.quarantine_reason
    assert reason is not None, "suspended mail must go to the hold queue"
    assert "acme" in reason and "spam complaints, ticket 42" in reason
    assert "suspended" in reason
    verdict = daemon.log.verdict("SUSP1")
    assert verdict["verdict"] == "quarantine" and verdict["tenant"] == "acme"
    assert verdict["recipients"] == 2


def test_suspension_by_redis_cli_hset(daemon: Daemon, acme: str, tenants: Tenants) -> None:
    """The ops one-liner: HSET aup:tenant:acme status suspended (no reason given)."""
    tenants.hset("acme", status="suspended")
    with daemon.client() as client:
        result = client.send_message("alice@acme.example", RCPTS, queue_id="SUSP2")
    assert result.quarantine_reason is not None
    assert "acme" in result.quarantine_reason


@pytest.mark.parametrize(
    ("fields", "reason_part"),
    [
        ({"status": "paused"}, "unknown status 'paused'"),
        ({"status": ""}, "unknown status ''"),
        ({"plan": "gold"}, "unknown plan 'gold'"),
    ],
    ids=["status-paused", "status-empty", "plan-unknown"],
)
def test_misconfigured_tenant_is_tempfailed(
    daemon: Daemon, acme: str, tenants: Tenants, fields: dict[str, str], reason_part: str
) -> None:
    tenants.hset("acme", **fields)
    with daemon.client() as client:
        result = client.send_message("alice@acme.example", RCPTS, queue_id="MIS1")
    assert_refused_at_mail(result, "451 4.7.0")
    assert result.mail.kind is Kind.TEMPFAIL
    verdict = daemon.log.verdict("MIS1")
    assert verdict["verdict"] == "tempfail" and verdict["tenant"] == "acme"
    assert reason_part in verdict["reason"]


@pytest.mark.parametrize("kind", ["login", "domain"])
def test_mapping_to_a_missing_tenant_hash_is_tempfailed(
    daemon: Daemon, tenants: Tenants, kind: str
) -> None:
    tenants.map_raw(kind, "ghost" if kind == "login" else "ghost.example", "ghost")
    with daemon.client() as client:
        result = client.send_message(
            "alice@ghost.example",
            RCPTS,
            auth_login="ghost" if kind == "login" else None,
            queue_id="GHOST1",
        )
    assert_refused_at_mail(result, "451 4.7.0")
    verdict = daemon.log.verdict("GHOST1")
    assert verdict["tenant"] == "ghost" and "no hash" in verdict["reason"]


def test_unknown_sender_accept(start_daemon: StartDaemon, tenants: Tenants) -> None:
    daemon = start_daemon(policy={"unknown_sender": "accept"})
    tenants.add("gone", logins=["gone"], domains=["gone.example"], status="terminated")
    with daemon.client() as client:
        unknown = client.send_message("bob@stranger.example", RCPTS, queue_id="UA1")
        null = client.send_message("", RCPTS, queue_id="UA2")
        terminated = client.send_message("bob@gone.example", RCPTS, queue_id="UA3")
    assert_delivered(unknown)
    assert_delivered(null)
    verdict = daemon.log.verdict("UA1")
    assert verdict["verdict"] == "accept" and verdict["tenant"] is None
    assert "unknown_sender" in verdict["reason"]
    # Accepting unknown senders does not soften a known tenant's state.
    assert_refused_at_mail(terminated, "550 5.7.1")

"""The message checks in the running daemon: where each answer comes, and what the MTA is told."""

from __future__ import annotations

import dkim
import redis

from testbed.zones import RELAY_IP, private_key_path
from tests.messages import split_message
from tests.milter.harness import Daemon, StartDaemon, Tenants
from tests.milter.mta import Kind, compliant_headers

RCPTS = ["bob@dest.example"]


def test_sender_domain_without_bounce_route_is_refused_at_mail_from(
    daemon: Daemon, tenants: Tenants
) -> None:
    tenants.add("odd", domains=["nullmx.example", "nosuch.example", "timeout.example"])
    with daemon.client() as client:
        nullmx = client.send_message("a@nullmx.example", RCPTS, queue_id="BR1")
        missing = client.send_message("a@nosuch.example", RCPTS, queue_id="BR2")
        slow = client.send_message("a@timeout.example", RCPTS, queue_id="BR3")
    assert (nullmx.refused_at, nullmx.mail.reply) == ("mail", "550 5.7.27")
    assert nullmx.mail.text is not None and "null MX" in nullmx.mail.text
    assert (missing.refused_at, missing.mail.reply) == ("mail", "550 5.1.8")
    assert (slow.refused_at, slow.mail.reply) == ("mail", "451 4.4.3"), "DNS trouble: retry"
    verdict = daemon.log.verdict("BR3")
    assert verdict["stage"] == "mail" and verdict["verdict"] == "tempfail"
    assert "timed out" in verdict["reason"]


def test_missing_message_id_is_added_with_its_leading_space(daemon: Daemon, acme: str) -> None:
    headers = [h for h in compliant_headers("a@acme.example", RCPTS) if h[0] != "Message-ID"]
    with daemon.client() as client:
        result = client.send_message("a@acme.example", RCPTS, headers=headers, queue_id="MID1")
    assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE
    ((name, value),) = result.eom.added_headers
    assert name == "Message-ID"
    # The milter asked for leading spaces (P_HDR_LEADSPC), so it must send its own.
    assert value.startswith(" <") and value.endswith("@relay.test>"), value


def test_refusal_names_the_fault(daemon: Daemon, acme: str) -> None:
    headers = [*compliant_headers("a@acme.example", RCPTS), ("From", "b@acme.example")]
    with daemon.client() as client:
        result = client.send_message("a@acme.example", RCPTS, headers=headers, queue_id="DUP1")
    assert result.eom is not None
    response = result.eom.response
    assert (response.kind, response.reply) == (Kind.REJECT, "550 5.6.0")
    assert response.text is not None and response.text.startswith("2 From headers")
    verdict = daemon.log.verdict("DUP1")
    assert verdict["reason"].startswith("message refused by header_counts: 2 From headers")


def test_warn_mode_findings_are_in_the_verdict_line(
    start_daemon: StartDaemon, tenants: Tenants
) -> None:
    daemon = start_daemon(messages={"relay_ips": [RELAY_IP]})
    tenants.add("lists", plan="bulk", domains=["spffail.example"])
    with daemon.client() as client:
        result = client.send_message("news@spffail.example", RCPTS, queue_id="WARN1")
    assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE
    verdict = daemon.log.verdict("WARN1")
    assert verdict["verdict"] == "accept"
    assert len(verdict["warnings"]) == 1 and verdict["warnings"][0].startswith("spf: SPF of")


def test_tenant_allowed_domains_come_from_the_tenant_hash(
    daemon: Daemon, acme: str, tenants: Tenants
) -> None:
    headers = [*compliant_headers("a@acme.example", RCPTS), ("Reply-To", "sales@crm.example")]
    with daemon.client() as client:
        before = client.send_message("a@acme.example", RCPTS, headers=headers, queue_id="AD1")
        tenants.hset("acme", allowed_domains="crm.example, other.example")
        after = client.send_message("a@acme.example", RCPTS, headers=headers, queue_id="AD2")
    assert before.eom is not None and before.eom.response.reply == "553 5.7.1"
    assert after.eom is not None and after.eom.response.kind is Kind.CONTINUE


def _signed_message(tamper: bool) -> tuple[list[tuple[str, str | bytes]], bytes]:
    headers = compliant_headers("a@acme.example", RCPTS)
    raw = "".join(f"{n}: {v}\r\n" for n, v in headers).encode() + b"\r\nSigned body.\r\n"
    signature = dkim.sign(
        raw, b"test2048", b"acme.example", private_key_path("test-rsa2048").read_bytes()
    )
    signed = bytes(signature) + raw
    fields, body = split_message(signed)
    # The MTA passes the value without the one space the harness adds itself.
    pairs: list[tuple[str, str | bytes]] = [
        (f.name, f.raw[1:] if f.raw.startswith(b" ") else f.raw) for f in fields
    ]
    return pairs, body + (b"tampered\r\n" if tamper else b"")


def test_dkim_is_verified_from_the_collected_headers_and_body(daemon: Daemon, acme: str) -> None:
    good_headers, good_body = _signed_message(tamper=False)
    bad_headers, bad_body = _signed_message(tamper=True)
    with daemon.client() as client:
        good = client.send_message(
            "a@acme.example", RCPTS, headers=good_headers, body=good_body, queue_id="DK1"
        )
        bad = client.send_message(
            "a@acme.example", RCPTS, headers=bad_headers, body=bad_body, queue_id="DK2"
        )
    assert good.eom is not None and good.eom.response.kind is Kind.CONTINUE, good.eom
    assert bad.eom is not None and bad.eom.response.reply == "550 5.7.1"
    assert bad.eom.response.text is not None and "body hash" in bad.eom.response.text


def test_a_bulk_stream_makes_a_fake_reply_subject_misleading(
    daemon: Daemon, acme: str, redis_db: redis.Redis
) -> None:
    headers = compliant_headers("a@acme.example", RCPTS, subject="Re: your account")
    with daemon.client() as client:
        plain = client.send_message("a@acme.example", RCPTS, headers=headers, queue_id="ST1")
        assert plain.eom is not None and plain.eom.response.kind is Kind.CONTINUE
        redis_db.hset("aup:tenant:acme:streams", "a@acme.example", "bulk")
        bulk = client.send_message("a@acme.example", RCPTS, headers=headers, queue_id="ST2")
    assert bulk.eom is not None and bulk.eom.response.reply == "550 5.7.1"
    assert bulk.eom.response.text is not None and "poses as a reply" in bulk.eom.response.text

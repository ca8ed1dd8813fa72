"""The message checks with their DNS lookups: bounce route, DKIM, SPF (real DNS on loopback)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

import dkim
import pytest

from aupmilter.config import Config
from aupmilter.mailauth.dkimverify import verify_signatures
from aupmilter.mailauth.resolver import Resolver
from aupmilter.mailauth.spfcheck import check_relay_ips
from aupmilter.policy.evidence import DkimStatus, Signature
from aupmilter.policy.findings import DEFAULT_MODES, Check, Mode, PlanChecks
from testbed.dnsserver import DnsServer
from testbed.zones import OTHER_IP, RELAY_IP, private_key_path
from tests.messages import CheckRun, run_checks, write_config

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
PLANS = '[plan.standard]\ndescription = "s"\n'


@pytest.fixture
def config(tmp_path: Path, dns_server: DnsServer) -> Config:
    return write_config(
        tmp_path, dns_server.address, PLANS, f'[messages]\nrelay_ips = ["{RELAY_IP}"]\n'
    )


def message(
    sender: str = "alice@acme.example",
    subject: str = "Report",
    body: bytes = b"Hello.\r\n",
    **extra: str,
) -> bytes:
    lines = [
        f"From: Alice <{sender}>",
        "To: bob@dest.example",
        f"Subject: {subject}",
        f"Date: {format_datetime(NOW)}",
        "Message-ID: <20250314.1@acme.example>",
        *(f"{k.replace('_', '-')}: {v}" for k, v in extra.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def signed(
    raw: bytes, selector: str = "test2048", domain: str = "acme.example", key: str = "test-rsa2048"
) -> bytes:
    private = private_key_path(key).read_bytes()
    signature = dkim.sign(
        raw, selector.encode(), domain.encode(), private,
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )  # fmt: skip
    return bytes(signature) + raw


def check(
    raw: bytes, config: Config, resolver: Resolver, sender: str = "alice@acme.example", **kw: object
) -> CheckRun:
    return run_checks(raw, config=config, resolver=resolver, sender=sender, now=NOW, **kw)  # type: ignore[arg-type]


def plan(**modes: Mode) -> PlanChecks:
    return PlanChecks(modes={**DEFAULT_MODES, **{Check(k): v for k, v in modes.items()}})


# --- the bounce route, at MAIL FROM -------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "reply"),
    [
        ("acme.example", "250"),
        ("mail.acme.example", "250"),
        ("addressonly.example", "250"),
        ("v6only.example", "250"),
        ("nullmx.example", "550 5.7.27"),
        ("nomail.example", "550 5.1.8"),
        ("nosuch.example", "550 5.1.8"),
        ("servfail.example", "451 4.4.3"),
        ("timeout.example", "451 4.4.3"),
        ("outside.test", "451 4.4.3"),
    ],
)
def test_bounce_route_of_the_sender_domain(
    config: Config, resolver: Resolver, domain: str, reply: str
) -> None:
    sender = f"bounces@{domain}"
    run = check(
        message(sender), config, resolver, sender=sender,
        domains=frozenset({domain, "acme.example"}),
    )  # fmt: skip
    assert run.reply == reply
    if reply != "250":
        assert run.eom is None, "refused at MAIL FROM, before the message is sent"


def test_dns_failures_are_never_permanent(config: Config, resolver: Resolver) -> None:
    for domain in ("servfail.example", "timeout.example", "outside.test"):
        run = check(message(), config, resolver, sender=f"b@{domain}", domains=None)
        assert run.final.reply is not None and run.final.reply.is_temporary


def test_bounce_route_in_warn_mode_reaches_the_eom_verdict(
    config: Config, resolver: Resolver
) -> None:
    run = check(
        message("b@nullmx.example"), config, resolver, sender="b@nullmx.example",
        domains=frozenset({"acme.example", "nullmx.example"}),
        plan=plan(bounce_domain=Mode.WARN),
    )  # fmt: skip
    assert run.reply == "250"
    assert any("null MX" in w for w in run.final.warnings)


def test_null_sender_has_no_bounce_route_to_check(config: Config, resolver: Resolver) -> None:
    report = message(Content_Type="multipart/report; report-type=delivery-status; boundary=x")
    assert check(report, config, resolver, sender="").reply == "250"


# --- DKIM ---------------------------------------------------------------------------


def test_valid_signatures_pass(config: Config, resolver: Resolver) -> None:
    for selector, key in [("test2048", "test-rsa2048"), ("test4096", "test-rsa4096")]:
        raw = signed(message(), selector, key=key)
        run = check(raw, config, resolver)
        assert run.reply == "250", run.final


def test_body_changed_after_signing_is_refused(config: Config, resolver: Resolver) -> None:
    raw = signed(message()).replace(b"Hello.", b"Hellp.")
    run = check(raw, config, resolver)
    assert run.reply == "550 5.7.1"
    assert run.final.reply is not None
    assert "DKIM signature d=acme.example s=test2048 does not verify" in run.final.reply.text
    assert "body hash" in run.final.reply.text


def test_header_changed_after_signing_is_refused(config: Config, resolver: Resolver) -> None:
    raw = signed(message()).replace(b"Subject: Report", b"Subject: Rep0rt")
    assert check(raw, config, resolver).reply == "550 5.7.1"


@pytest.mark.parametrize(
    ("selector", "reply"),
    [
        ("revoked", "550 5.7.1"),  # empty p=
        ("missing", "550 5.7.1"),  # no key record
        ("test1024", "550 5.7.1"),  # signed with another key than the one in DNS
        ("slow", "451 4.4.3"),  # key lookup times out
        ("broken", "451 4.4.3"),  # SERVFAIL
    ],
)
def test_key_problems(config: Config, resolver: Resolver, selector: str, reply: str) -> None:
    raw = signed(message(), selector)  # always with the 2048-bit key
    assert check(raw, config, resolver).reply == reply


def test_dkim_warn_mode_and_foreign_signatures(config: Config, resolver: Resolver) -> None:
    broken = signed(message()).replace(b"Hello.", b"Hellp.")
    run = check(broken, config, resolver, plan=plan(dkim=Mode.WARN))
    assert run.reply == "250" and any("does not verify" in w for w in run.final.warnings)
    # A signature of a domain that is not the tenant's is not ours to judge.
    foreign = signed(message(), domain="globex.example").replace(b"Hello.", b"Hellp.")
    assert check(foreign, config, resolver).reply == "250"


def test_aligned_dkim_satisfies_alignment(config: Config, resolver: Resolver) -> None:
    raw = signed(message("alice@acme.example"))
    domains = frozenset({"acme.example", "globex.example"})
    run = check(raw, config, resolver, sender="bounce@globex.example", domains=domains)
    assert run.reply == "250"
    strict = PlanChecks(dkim_satisfies_alignment=False)
    run = check(raw, config, resolver, sender="bounce@globex.example", domains=domains, plan=strict)
    assert run.reply == "553 5.7.1"


def test_verify_signatures_directly(resolver: Resolver) -> None:
    raw = signed(message())
    results = verify_signatures(raw, [Signature(0, "acme.example", "test2048")], resolver)
    assert [r.status for r in results] == [DkimStatus.PASS]
    garbage = b"DKIM-Signature: v=1; d=acme.example; s=test2048; b=@@@\r\n" + message()
    results = verify_signatures(garbage, [Signature(0, "acme.example", "test2048")], resolver)
    assert results[0].status is DkimStatus.FAIL


# --- SPF ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "ip", "result"),
    [
        ("acme.example", RELAY_IP, "pass"),
        ("acme.example", OTHER_IP, "fail"),
        ("globex.example", OTHER_IP, "pass"),  # through include:
        ("spffail.example", RELAY_IP, "fail"),
        ("nospf.example", RELAY_IP, "none"),
        ("servfail.example", RELAY_IP, "temperror"),
    ],
)
def test_spf_of_relay_ips(resolver: Resolver, domain: str, ip: str, result: str) -> None:
    (found,) = check_relay_ips(f"b@{domain}", [ip], "relay.test", resolver)
    assert found.result == result


def test_spf_modes(config: Config, resolver: Resolver) -> None:
    domains = frozenset({"spffail.example"})
    raw = message("b@spffail.example")
    sender = "b@spffail.example"

    def reply_with(checks: PlanChecks) -> CheckRun:
        return check(raw, config, resolver, sender=sender, domains=domains, plan=checks)

    assert reply_with(PlanChecks()).reply == "250", "off by default"
    warned = reply_with(plan(spf=Mode.WARN))
    assert warned.reply == "250" and any(w.startswith("spf:") for w in warned.final.warnings)
    assert reply_with(plan(spf=Mode.ENFORCE)).reply == "550 5.7.23"
    ok = message()
    assert check(ok, config, resolver, plan=plan(spf=Mode.ENFORCE)).reply == "250"


# --- Message-ID ---------------------------------------------------------------------


def test_missing_message_id_is_added(config: Config, resolver: Resolver) -> None:
    raw = message().replace(b"Message-ID: <20250314.1@acme.example>\r\n", b"")
    run = check(raw, config, resolver)
    assert run.reply == "250"
    assert run.eom is not None and len(run.eom.add_headers) == 1
    added = run.eom.add_headers[0]
    name, value = added.name, added.value
    assert name == "Message-ID" and value.startswith("<") and value.endswith("@relay.test>")


def test_missing_message_id_refused_when_configured(
    tmp_path: Path, dns_server: DnsServer, resolver: Resolver
) -> None:
    config = write_config(
        tmp_path, dns_server.address, PLANS, "[messages]\nadd_message_id = false\n"
    )
    raw = message().replace(b"Message-ID: <20250314.1@acme.example>\r\n", b"")
    assert check(raw, config, resolver).reply == "550 5.6.0"

"""Config of the message checks: [dns], [messages] and [plan.NAME.checks]."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from aupmilter.config import load_config, load_plans
from aupmilter.mailauth.resolver import Nameserver
from aupmilter.policy.findings import AlignmentMode, Check, Mode
from tests.unit.configfiles import ROOT, problems, write


def load(confdir: Path, text: str, plans: str = "") -> object:
    return load_config(write(confdir, text, plans))


def test_defaults(confdir: Path) -> None:
    config = load_config(write(confdir, ""))
    assert config.dns.nameservers == ()
    assert (config.dns.timeout, config.dns.lifetime) == (2.0, 4.0)
    messages = config.messages
    assert messages.add_message_id is True
    assert messages.relay_ips == ()
    assert messages.header_rules.max_fields == 500
    assert messages.header_rules.date_max_age == timedelta(days=3)
    assert messages.spool.hard_limit == 64 << 20
    checks = config.plans["standard"].checks
    assert checks.mode(Check.DATE) is Mode.ENFORCE
    assert checks.alignment is AlignmentMode.RELAXED


def test_dns_section(confdir: Path) -> None:
    config = load_config(
        write(
            confdir,
            '[dns]\nnameservers = ["127.0.0.1:5353", "::1", "[::1]:53", "192.0.2.1"]\n'
            "timeout = 0.5\nlifetime = 1.5\ncache_entries = 0\n",
        )
    )
    assert config.dns.nameservers == (
        Nameserver("127.0.0.1", 5353),
        Nameserver("::1", 53),
        Nameserver("::1", 53),
        Nameserver("192.0.2.1", 53),
    )
    assert config.dns.cache_entries == 0


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[dns]\nnameservers = ["dns.example"]', "key 'dns.nameservers': expected a list of IP"),
        ('[dns]\nnameservers = "127.0.0.1"', "key 'dns.nameservers'"),
        ('[dns]\nnameservers = ["127.0.0.1:99999"]', "key 'dns.nameservers'"),
        ("[dns]\ntimeout = 3\nlifetime = 1", "key 'dns.lifetime': expected at least dns.timeout"),
        ("[dns]\nretries = 3", "key 'dns.retries': unknown key"),
        ('[messages]\nrelay_ips = ["192.0.2.300"]', "key 'messages.relay_ips'"),
        ("[messages]\nadd_message_id = 1", "key 'messages.add_message_id': expected true or false"),
        ("[messages]\nmax_header_fields = 5", "key 'messages.max_header_fields'"),
        ('[messages]\nspool_dir = "relative/dir"', "key 'messages.spool_dir'"),
        (
            "[messages]\nspool_memory_bytes = 200000\nmax_message_bytes = 100000",
            "key 'messages.spool_memory_bytes': expected at most",
        ),
        ('[messages]\nmessage_id_domain = "bad name"', "key 'messages.message_id_domain'"),
    ],
)
def test_bad_daemon_settings_name_file_key_and_form(
    confdir: Path, text: str, fragment: str
) -> None:
    found = problems(confdir, text)
    assert any(fragment in p for p in found), found
    assert all(str(confdir / "aup-milter.toml") in p for p in found)


def test_plan_checks(confdir: Path) -> None:
    plans = """
[plan.strict]
description = "strict"
[plan.strict.checks]
alignment_mode = "strict"
dkim_satisfies_alignment = false
spf = "enforce"
date = "warn"
reply_prefix = "off"
allowed_reply_to_domains = ["HelpDesk.example", "bücher.example"]
allowed_sender_domains = []
forbidden_subjects = ["(?i)you have won", "^FREE"]
"""
    config = load(confdir, "", plans)
    checks = config.plans["strict"].checks  # type: ignore[attr-defined]
    assert checks.alignment is AlignmentMode.STRICT
    assert checks.dkim_satisfies_alignment is False
    assert checks.mode(Check.SPF) is Mode.ENFORCE
    assert checks.mode(Check.DATE) is Mode.WARN
    assert checks.mode(Check.REPLY_PREFIX) is Mode.OFF
    assert checks.allowed_reply_to_domains == {"helpdesk.example", "xn--bcher-kva.example"}
    assert [p.pattern for p in checks.forbidden_subjects] == ["(?i)you have won", "^FREE"]
    assert checks.forbidden_subjects[1].search("free stuff"), "patterns ignore case"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('date = "strict"', "key 'plan.x.checks.date': expected 'enforce', 'warn' or 'off'"),
        ('alignment_mode = "loose"', "key 'plan.x.checks.alignment_mode'"),
        ('forbidden_subjects = ["(unclosed"]', "key 'plan.x.checks.forbidden_subjects'"),
        ('allowed_reply_to_domains = ["not a domain"]', "allowed_reply_to_domains"),
        ("spf_mode = 'warn'", "key 'plan.x.checks.spf_mode': unknown key"),
    ],
)
def test_bad_plan_checks(confdir: Path, body: str, fragment: str) -> None:
    plans = f'[plan.x]\ndescription = "x"\n[plan.x.checks]\n{body}\n'
    found = problems(confdir, "", plans)
    assert any(fragment in p for p in found), found
    assert any(str(confdir / "policies" / "extra.toml") in p for p in found)


def test_shipped_plans_set_their_checks() -> None:
    problems: list[str] = []
    plans = load_plans(ROOT / "policies", problems)
    assert problems == []
    assert plans["standard"].checks.mode(Check.SPF) is Mode.OFF
    assert plans["bulk"].checks.alignment is AlignmentMode.RELAXED
    assert plans["bulk"].checks.forbidden_subjects[0].search("URGENT: act now")
    assert plans["bulk"].checks.mode(Check.SPF) is Mode.WARN

"""Daemon-wide settings of the end-of-message checks: `[messages]` and `[dns]`.

The per-plan side of the same checks (`[plan.NAME.checks]`) is read with the
plan files, in `aupmilter.config.plans`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from aupmilter.config.loader import Section, boolean, host_name, integer, ip_list, number, string
from aupmilter.mailauth.resolver import DnsSettings, Nameserver, parse_nameserver
from aupmilter.message.spool import SpoolLimits
from aupmilter.policy.headers import HeaderRules


@dataclass(frozen=True, slots=True)
class MessageSettings:
    """`[messages]`: daemon-wide limits and settings of the end-of-message checks."""

    header_rules: HeaderRules = field(default_factory=HeaderRules)
    add_message_id: bool = True
    message_id_domain: str | None = None
    """None: the MTA's host name (macro `j`), else this machine's name."""
    relay_ips: tuple[str, ...] = ()
    spool: SpoolLimits = field(default_factory=SpoolLimits)


def read_dns(section: Section) -> DnsSettings:
    defaults = DnsSettings()
    timeout = section.get("timeout", defaults.timeout, "seconds from 0.05 to 30", number(0.05, 30))
    settings = DnsSettings(
        nameservers=section.get(
            "nameservers",
            defaults.nameservers,
            "a list of IP addresses, each optionally with a port: '127.0.0.1:5353', '[::1]:53'",
            _nameservers,
        ),
        timeout=timeout,
        lifetime=section.get(
            "lifetime", defaults.lifetime, "seconds from 0.05 to 60", number(0.05, 60)
        ),
        cache_entries=section.get(
            "cache_entries", defaults.cache_entries, "a number from 0 to 1000000",
            integer(0, 1_000_000),
        ),
        min_ttl=section.get("min_ttl", defaults.min_ttl, "seconds from 0 to 86400",
                            integer(0, 86400)),
        max_ttl=section.get("max_ttl", defaults.max_ttl, "seconds from 0 to 604800",
                            integer(0, 604800)),
        negative_ttl=section.get(
            "negative_ttl", defaults.negative_ttl, "seconds from 0 to 86400", integer(0, 86400)
        ),
    )  # fmt: skip
    section.reject_unknown()
    if settings.lifetime < settings.timeout:
        section.fail("lifetime", f"at least dns.timeout ({settings.timeout:g})", settings.lifetime)
    if settings.max_ttl < settings.min_ttl:
        section.fail("max_ttl", f"at least dns.min_ttl ({settings.min_ttl})", settings.max_ttl)
    return settings


def read_messages(section: Section) -> MessageSettings:
    rules = HeaderRules()
    spool = SpoolLimits()
    header_rules = HeaderRules(
        max_fields=section.get(
            "max_header_fields", rules.max_fields, "a number from 10 to 100000",
            integer(10, 100_000),
        ),
        max_bytes=section.get(
            "max_header_bytes", rules.max_bytes, "bytes from 1024 to 16777216",
            integer(1024, 16 << 20),
        ),
        date_max_age=timedelta(seconds=section.get(
            "date_max_age", int(rules.date_max_age.total_seconds()),
            "seconds from 60 to 31536000", integer(60, 31_536_000),
        )),
        date_max_ahead=timedelta(seconds=section.get(
            "date_max_ahead", int(rules.date_max_ahead.total_seconds()),
            "seconds from 0 to 604800", integer(0, 604_800),
        )),
    )  # fmt: skip
    memory = section.get(
        "spool_memory_bytes", spool.memory_limit, "bytes from 4096 to 1073741824",
        integer(4096, 1 << 30),
    )  # fmt: skip
    hard = section.get(
        "max_message_bytes", spool.hard_limit, "bytes from 65536 to 4294967296",
        integer(1 << 16, 1 << 32),
    )  # fmt: skip
    spool_dir = section.get("spool_dir", cast(str | None, None), "an absolute directory", string)
    if spool_dir is not None and not Path(spool_dir).is_absolute():
        section.fail("spool_dir", "an absolute directory", spool_dir)
        spool_dir = None
    if memory > hard:
        section.fail("spool_memory_bytes", f"at most messages.max_message_bytes ({hard})", memory)
        memory = hard
    settings = MessageSettings(
        header_rules=header_rules,
        add_message_id=section.get("add_message_id", True, "true or false", boolean),
        message_id_domain=section.get(
            "message_id_domain", cast(str | None, None), "a host name", host_name
        ),
        relay_ips=section.get(
            "relay_ips", cast(tuple[str, ...], ()), "a list of IP addresses", ip_list
        ),
        spool=SpoolLimits(
            memory_limit=memory,
            hard_limit=hard,
            directory=Path(spool_dir) if spool_dir else None,
        ),
    )
    section.reject_unknown()
    return settings


def _nameservers(raw: Any) -> tuple[Nameserver, ...] | None:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        return None
    parsed = [parse_nameserver(x) for x in raw]
    if any(ns is None for ns in parsed):
        return None
    return tuple(ns for ns in parsed if ns is not None)

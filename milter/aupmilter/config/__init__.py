"""Load and validate the daemon configuration (TOML) and the plan files.

Every error names the file, the key and the expected form. Unknown keys are
errors: a typo must not silently fall back to a default. The result is a tree
of frozen objects; a reload builds a new tree and swaps it in whole.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

from aupmilter.mailauth.dkimkeys import SigningKey
from aupmilter.mailauth.resolver import DnsSettings, Nameserver, parse_nameserver
from aupmilter.message.spool import SpoolLimits
from aupmilter.policy.findings import (
    DEFAULT_MODES,
    AlignmentMode,
    Check,
    Mode,
    PlanChecks,
)
from aupmilter.policy.headers import HeaderRules
from aupmilter.policy.limits import Limits, Scope, Unit, Window
from aupmilter.policy.tenancy import normalize_domain

T = TypeVar("T")

DEFAULT_CONFIG_PATH = Path("/etc/aup-milter/aup-milter.toml")
PLAN_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
WINDOW_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
LOG_LEVELS = ("debug", "info", "warning", "error")
PERIOD = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
PERIOD_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_PERIOD_SECONDS = 31 * 86400
DEFAULT_MAX_RECIPIENTS = 100


class ConfigError(Exception):
    """One or more problems, each naming file, key and the expected form."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ListenAddress:
    kind: Literal["unix", "inet", "inet6", "systemd"]
    path: Path | None = None
    host: str | None = None
    port: int | None = None

    @property
    def libmilter_spec(self) -> str:
        """The form libmilter's smfi_setconn understands."""
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind in ("inet", "inet6"):
            host = f"@{self.host}" if self.host else ""
            return f"{self.kind}:{self.port}{host}"
        raise ValueError("a systemd socket has no libmilter address")

    def __str__(self) -> str:
        return "systemd" if self.kind == "systemd" else self.libmilter_spec


@dataclass(frozen=True, slots=True)
class MilterSettings:
    listen: ListenAddress
    socket_mode: int
    socket_group: str | None
    timeout: int
    shutdown_grace: float


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str
    connect_timeout: float
    timeout: float


@dataclass(frozen=True, slots=True)
class PolicySettings:
    on_store_error: Literal["tempfail", "accept"]
    unknown_sender: Literal["reject", "accept"]
    plans_dir: Path
    suppression_check: Literal["eom", "rcpt"] = "eom"
    """Where suppressed recipients are stopped: in the end-of-message script, or at each RCPT."""


@dataclass(frozen=True, slots=True)
class LogSettings:
    format: Literal["json", "text"]
    level: str

    @property
    def level_number(self) -> int:
        return cast(int, logging.getLevelName(self.level.upper()))


@dataclass(frozen=True, slots=True)
class MessageSettings:
    """`[messages]`: daemon-wide limits and settings of the end-of-message checks."""

    header_rules: HeaderRules = field(default_factory=HeaderRules)
    add_message_id: bool = True
    message_id_domain: str | None = None
    """None: the MTA's host name (macro `j`), else this machine's name."""
    relay_ips: tuple[str, ...] = ()
    spool: SpoolLimits = field(default_factory=SpoolLimits)


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    description: str
    source: Path
    limits: Limits
    checks: PlanChecks = field(default_factory=PlanChecks)
    unsubscribe: UnsubscribePlan = field(default_factory=lambda: UnsubscribePlan())


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    milter: MilterSettings
    redis: RedisSettings
    policy: PolicySettings
    log: LogSettings
    plans: Mapping[str, Plan]
    dns: DnsSettings = field(default_factory=DnsSettings)
    messages: MessageSettings = field(default_factory=MessageSettings)
    unsubscribe: UnsubscribeSettings | None = None
    """None without an [unsubscribe] section: bulk mail then gets no List-Unsubscribe."""
    web: WebSettings = field(default_factory=lambda: WebSettings())
    dkim: DkimSettings = field(default_factory=lambda: DkimSettings())

    @property
    def plan_names(self) -> frozenset[str]:
        return frozenset(self.plans)


class _Section:
    """Reads one TOML table, collecting problems instead of stopping at the first."""

    def __init__(self, file: Path, name: str, table: Any, problems: list[str]) -> None:
        self.file = file
        self.name = name
        self.problems = problems
        self.seen: set[str] = set()
        if not isinstance(table, dict):
            self.fail(None, "a table", table)
            table = {}
        self.table: dict[str, Any] = table

    def key_path(self, key: str | None) -> str:
        if key is None:
            return self.name
        return f"{self.name}.{key}" if self.name else key

    def fail(self, key: str | None, expected: str, got: Any) -> None:
        self.problems.append(
            f"{self.file}: key '{self.key_path(key)}': expected {expected}, got {got!r}"
        )

    def get(
        self,
        key: str,
        default: T,
        expected: str,
        convert: Callable[[Any], T | None],
    ) -> T:
        self.seen.add(key)
        if key not in self.table:
            return default
        raw = self.table[key]
        try:
            value = convert(raw)
        except (TypeError, ValueError):
            value = None
        if value is None:
            self.fail(key, expected, raw)
            return default
        return value

    def subtable(self, key: str, expected: str = "a table") -> dict[str, Any]:
        return self.get(key, cast(dict[str, Any], {}), expected, _table)

    def reject_unknown(self) -> None:
        for key in sorted(set(self.table) - self.seen):
            self.problems.append(
                f"{self.file}: key '{self.key_path(key)}': unknown key"
                f" (known: {', '.join(sorted(self.seen))})"
            )


def _choice(*options: str) -> Callable[[Any], str | None]:
    return lambda raw: raw if isinstance(raw, str) and raw in options else None


def _number(low: float, high: float) -> Callable[[Any], float | None]:
    def convert(raw: Any) -> float | None:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return None
        return float(raw) if low <= raw <= high else None

    return convert


def _integer(low: int, high: int) -> Callable[[Any], int | None]:
    def convert(raw: Any) -> int | None:
        if isinstance(raw, bool) or not isinstance(raw, int):
            return None
        return raw if low <= raw <= high else None

    return convert


def _string(raw: Any) -> str | None:
    return raw if isinstance(raw, str) and raw.strip() else None


def parse_listen(raw: Any) -> ListenAddress | None:
    """`unix:/abs/path`, `inet:PORT@HOST`, `inet:PORT`, `inet6:PORT@HOST` or `systemd`."""
    if not isinstance(raw, str):
        return None
    if raw == "systemd":
        return ListenAddress("systemd")
    kind, sep, rest = raw.partition(":")
    if not sep:
        return None
    if kind in ("unix", "local"):
        path = Path(rest)
        return ListenAddress("unix", path=path) if path.is_absolute() else None
    if kind in ("inet", "inet6"):
        port_text, _, host = rest.partition("@")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return None
        if "@" in rest and not host:
            return None
        return ListenAddress(kind, host=host or None, port=int(port_text))  # type: ignore[arg-type]
    return None


def parse_socket_mode(raw: Any) -> int | None:
    if not isinstance(raw, str) or not re.fullmatch(r"0?[0-7]{3}", raw):
        return None
    return int(raw, 8)


def parse_redis_url(raw: Any) -> str | None:
    if not isinstance(raw, str):
        return None
    parts = urlsplit(raw)
    if parts.scheme in ("redis", "rediss"):
        return raw if parts.hostname else None
    if parts.scheme == "unix":
        return raw if parts.path.startswith("/") else None
    return None


def load_config(path: Path) -> Config:
    """Read and validate `path` and the plan files it points at; raise ConfigError."""
    path = path.resolve() if path.exists() else path
    data = _read_toml(path)
    problems: list[str] = []
    root = _Section(path, "", data, problems)

    milter = _Section(path, "milter", root.subtable("milter"), problems)
    listen = milter.get(
        "listen",
        ListenAddress("unix", path=Path("/run/aup-milter/aup-milter.sock")),
        "'unix:/absolute/path', 'inet:PORT@HOST', 'inet6:PORT@HOST' or 'systemd'",
        parse_listen,
    )
    milter_settings = MilterSettings(
        listen=listen,
        socket_mode=milter.get(
            "socket_mode", 0o660, "an octal mode string such as '0660'", parse_socket_mode
        ),
        socket_group=milter.get("socket_group", cast(str | None, None), "a group name", _string),
        timeout=milter.get("timeout", 600, "whole seconds from 1 to 3600", _integer(1, 3600)),
        shutdown_grace=milter.get("shutdown_grace", 20.0, "seconds from 0 to 600", _number(0, 600)),
    )
    milter.reject_unknown()

    redis = _Section(path, "redis", root.subtable("redis"), problems)
    redis_settings = RedisSettings(
        url=redis.get(
            "url",
            "redis://127.0.0.1:6379/0",
            "a URL redis://[user:password@]host[:port][/db], rediss://... or unix:///path",
            parse_redis_url,
        ),
        connect_timeout=redis.get(
            "connect_timeout", 0.5, "seconds from 0.01 to 30", _number(0.01, 30)
        ),
        timeout=redis.get("timeout", 0.5, "seconds from 0.01 to 30", _number(0.01, 30)),
    )
    redis.reject_unknown()

    policy = _Section(path, "policy", root.subtable("policy"), problems)
    on_store_error = policy.get(
        "on_store_error", "tempfail", "'tempfail' or 'accept'", _choice("tempfail", "accept")
    )
    unknown_sender = policy.get(
        "unknown_sender", "reject", "'reject' or 'accept'", _choice("reject", "accept")
    )
    plans_dir_text = policy.get(
        "plans_dir", "policies", "a directory path (relative to this file)", _string
    )
    suppression_check = policy.get(
        "suppression_check", "eom", "'eom' or 'rcpt'", _choice(*SUPPRESSION_CHECKS)
    )
    policy.reject_unknown()
    plans_dir = (path.parent / plans_dir_text).resolve()

    log = _Section(path, "log", root.subtable("log"), problems)
    log_settings = LogSettings(
        format=cast(
            Literal["json", "text"],
            log.get("format", "json", "'json' or 'text'", _choice("json", "text")),
        ),
        level=log.get("level", "info", " or ".join(map(repr, LOG_LEVELS)), _choice(*LOG_LEVELS)),
    )
    log.reject_unknown()
    dns_settings = parse_dns_section(_Section(path, "dns", root.subtable("dns"), problems))
    message_settings = parse_messages_section(
        _Section(path, "messages", root.subtable("messages"), problems)
    )
    unsubscribe_settings, web_settings, dkim_settings = load_unsubscribe_sections(
        path, root, problems
    )
    root.reject_unknown()

    plans: dict[str, Plan] = {}
    if plans_dir.is_dir():
        plans = load_plans(plans_dir, problems)
    else:
        problems.append(
            f"{path}: key 'policy.plans_dir': expected an existing directory,"
            f" got {str(plans_dir)!r}"
        )
    if problems:
        raise ConfigError(problems)
    return Config(
        path=path,
        milter=milter_settings,
        redis=redis_settings,
        policy=PolicySettings(
            on_store_error=cast(Literal["tempfail", "accept"], on_store_error),
            unknown_sender=cast(Literal["reject", "accept"], unknown_sender),
            plans_dir=plans_dir,
            suppression_check=cast(Literal["eom", "rcpt"], suppression_check),
        ),
        log=log_settings,
        plans=plans,
        dns=dns_settings,
        messages=message_settings,
        unsubscribe=unsubscribe_settings,
        web=web_settings,
        dkim=dkim_settings,
    )


def plan_files(plans_dir: Path) -> list[Path]:
    return sorted(p for p in plans_dir.glob("*.toml") if p.is_file())


def load_plans(plans_dir: Path, problems: list[str]) -> dict[str, Plan]:
    """Every `*.toml` in the directory may define `[plan.NAME]` tables."""
    plans: dict[str, Plan] = {}
    files = plan_files(plans_dir)
    if not files:
        problems.append(f"{plans_dir}: expected at least one plan file '*.toml', found none")
    for file in files:
        try:
            data = _read_toml(file)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        root = _Section(file, "", data, problems)
        table = root.subtable("plan", "a table of plans, [plan.NAME]")
        root.reject_unknown()
        for name, body in table.items():
            if not PLAN_NAME.match(name):
                problems.append(
                    f"{file}: key 'plan.{name}': expected a plan name of lower-case letters,"
                    " digits, '-' or '_' (at most 64)"
                )
                continue
            if name in plans:
                problems.append(
                    f"{file}: key 'plan.{name}': plan already defined in {plans[name].source}"
                )
                continue
            section = _Section(file, f"plan.{name}", body, problems)
            description = section.get("description", "", "a text", _string)
            max_recipients = section.get(
                "max_recipients_per_message",
                DEFAULT_MAX_RECIPIENTS,
                "a whole number from 1 to 100000",
                _integer(1, 100_000),
            )
            windows = _windows(file, f"plan.{name}.windows", section.subtable("windows"), problems)
            checks = parse_plan_checks(
                _Section(file, f"plan.{name}.checks", section.subtable("checks"), problems)
            )
            unsubscribe_plan = load_unsubscribe_plan(section)
            section.reject_unknown()
            plans[name] = Plan(
                name=name,
                description=description,
                source=file,
                limits=Limits(max_recipients=max_recipients, windows=windows),
                checks=checks,
                unsubscribe=unsubscribe_plan,
            )
    return plans


def parse_period(raw: Any) -> int | None:
    """Seconds (a whole number) or a text such as '30s', '10m', '1h', '1d'; in milliseconds."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        seconds = raw
    elif isinstance(raw, str) and (match := PERIOD.match(raw.strip())):
        seconds = int(match[1]) * PERIOD_UNITS[match[2]]
    else:
        return None
    return seconds * 1000 if 1 <= seconds <= MAX_PERIOD_SECONDS else None


def _windows(
    file: Path, prefix: str, table: dict[str, Any], problems: list[str]
) -> tuple[Window, ...]:
    """`[plan.NAME.windows.WINDOW]` tables: per, count, limit, period."""
    windows: list[Window] = []
    for name, body in table.items():
        if not WINDOW_NAME.match(name):
            problems.append(
                f"{file}: key '{prefix}.{name}': expected a window name of lower-case letters,"
                " digits, '-' or '_' (at most 64)"
            )
            continue
        section = _Section(file, f"{prefix}.{name}", body, problems)
        per = section.get("per", "", "'sender' or 'tenant'", _choice(*Scope))
        count = section.get("count", "", "'recipients' or 'messages'", _choice(*Unit))
        limit = section.get("limit", -1, "a whole number from 0 to 10^9", _integer(0, 10**9))
        period = section.get(
            "period",
            0,
            "seconds, or a text such as '30s', '10m', '1h', '1d' (at most 31d)",
            parse_period,
        )
        for key in ("per", "count", "limit", "period"):
            if key not in section.table:
                problems.append(f"{file}: key '{prefix}.{name}.{key}': required")
        section.reject_unknown()
        if per and count and limit >= 0 and period:
            windows.append(Window(name, Scope(per), Unit(count), limit, period))
    counters = [window.counter for window in windows]
    for window in windows:
        if counters.count(window.counter) > 1:
            problems.append(
                f"{file}: key '{prefix}.{window.name}': another window of this plan counts the same"
                f" {window.unit} per {window.scope} over the same period; keep one"
            )
    return tuple(windows)


# --- message checks: [dns], [messages], [plan.NAME.checks] -----------------------------


def parse_dns_section(section: _Section) -> DnsSettings:
    defaults = DnsSettings()
    timeout = section.get("timeout", defaults.timeout, "seconds from 0.05 to 30", _number(0.05, 30))
    settings = DnsSettings(
        nameservers=section.get(
            "nameservers",
            defaults.nameservers,
            "a list of IP addresses, each optionally with a port: '127.0.0.1:5353', '[::1]:53'",
            _nameservers,
        ),
        timeout=timeout,
        lifetime=section.get(
            "lifetime", defaults.lifetime, "seconds from 0.05 to 60", _number(0.05, 60)
        ),
        cache_entries=section.get(
            "cache_entries", defaults.cache_entries, "a number from 0 to 1000000",
            _integer(0, 1_000_000),
        ),
        min_ttl=section.get("min_ttl", defaults.min_ttl, "seconds from 0 to 86400",
                            _integer(0, 86400)),
        max_ttl=section.get("max_ttl", defaults.max_ttl, "seconds from 0 to 604800",
                            _integer(0, 604800)),
        negative_ttl=section.get(
            "negative_ttl", defaults.negative_ttl, "seconds from 0 to 86400", _integer(0, 86400)
        ),
    )  # fmt: skip
    section.reject_unknown()
    if settings.lifetime < settings.timeout:
        section.fail("lifetime", f"at least dns.timeout ({settings.timeout:g})", settings.lifetime)
    if settings.max_ttl < settings.min_ttl:
        section.fail("max_ttl", f"at least dns.min_ttl ({settings.min_ttl})", settings.max_ttl)
    return settings


def parse_messages_section(section: _Section) -> MessageSettings:
    rules = HeaderRules()
    spool = SpoolLimits()
    header_rules = HeaderRules(
        max_fields=section.get(
            "max_header_fields", rules.max_fields, "a number from 10 to 100000",
            _integer(10, 100_000),
        ),
        max_bytes=section.get(
            "max_header_bytes", rules.max_bytes, "bytes from 1024 to 16777216",
            _integer(1024, 16 << 20),
        ),
        date_max_age=timedelta(seconds=section.get(
            "date_max_age", int(rules.date_max_age.total_seconds()),
            "seconds from 60 to 31536000", _integer(60, 31_536_000),
        )),
        date_max_ahead=timedelta(seconds=section.get(
            "date_max_ahead", int(rules.date_max_ahead.total_seconds()),
            "seconds from 0 to 604800", _integer(0, 604_800),
        )),
    )  # fmt: skip
    memory = section.get(
        "spool_memory_bytes", spool.memory_limit, "bytes from 4096 to 1073741824",
        _integer(4096, 1 << 30),
    )  # fmt: skip
    hard = section.get(
        "max_message_bytes", spool.hard_limit, "bytes from 65536 to 4294967296",
        _integer(1 << 16, 1 << 32),
    )  # fmt: skip
    spool_dir = section.get("spool_dir", cast(str | None, None), "an absolute directory", _string)
    if spool_dir is not None and not Path(spool_dir).is_absolute():
        section.fail("spool_dir", "an absolute directory", spool_dir)
        spool_dir = None
    if memory > hard:
        section.fail("spool_memory_bytes", f"at most messages.max_message_bytes ({hard})", memory)
        memory = hard
    settings = MessageSettings(
        header_rules=header_rules,
        add_message_id=section.get("add_message_id", True, "true or false", _boolean),
        message_id_domain=section.get(
            "message_id_domain", cast(str | None, None), "a host name", _host_name
        ),
        relay_ips=section.get(
            "relay_ips", cast(tuple[str, ...], ()), "a list of IP addresses", _ip_list
        ),
        spool=SpoolLimits(
            memory_limit=memory,
            hard_limit=hard,
            directory=Path(spool_dir) if spool_dir else None,
        ),
    )
    section.reject_unknown()
    return settings


MODE_FORM = "'enforce', 'warn' or 'off'"


def parse_plan_checks(section: _Section) -> PlanChecks:
    """`[plan.NAME.checks]`: a mode per check, alignment, allowed domains, subject patterns."""
    modes = dict(DEFAULT_MODES)
    for check in Check:
        modes[check] = Mode(
            section.get(check.value, DEFAULT_MODES[check].value, MODE_FORM, _choice(*Mode))
        )
    defaults = PlanChecks()
    checks = PlanChecks(
        modes=modes,
        alignment=AlignmentMode(
            section.get(
                "alignment_mode", defaults.alignment.value, "'relaxed' or 'strict'",
                _choice(*AlignmentMode),
            )
        ),
        dkim_satisfies_alignment=section.get(
            "dkim_satisfies_alignment", defaults.dkim_satisfies_alignment, "true or false",
            _boolean,
        ),
        allowed_reply_to_domains=section.get(
            "allowed_reply_to_domains", frozenset(), "a list of domain names", _domain_set
        ),
        allowed_sender_domains=section.get(
            "allowed_sender_domains", frozenset(), "a list of domain names", _domain_set
        ),
        forbidden_subjects=section.get(
            "forbidden_subjects", (), "a list of regular expressions (Python syntax)",
            _patterns,
        ),
    )  # fmt: skip
    section.reject_unknown()
    return checks


def _boolean(raw: Any) -> bool | None:
    return raw if isinstance(raw, bool) else None


def _nameservers(raw: Any) -> tuple[Nameserver, ...] | None:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        return None
    parsed = [parse_nameserver(x) for x in raw]
    if any(ns is None for ns in parsed):
        return None
    return tuple(ns for ns in parsed if ns is not None)


def _ip_list(raw: Any) -> tuple[str, ...] | None:
    if not isinstance(raw, list):
        return None
    try:
        return (
            tuple(str(ipaddress.ip_address(x)) for x in raw if isinstance(x, str))
            if all(isinstance(x, str) for x in raw)
            else None
        )
    except ValueError:
        return None


def _host_name(raw: Any) -> str | None:
    if not isinstance(raw, str):
        return None
    name = normalize_domain(raw)
    return name if name and "." in name else None


def _domain_set(raw: Any) -> frozenset[str] | None:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        return None
    names = [normalize_domain(x) for x in raw]
    if any(n is None for n in names):
        return None
    return frozenset(n for n in names if n is not None)


MAX_PATTERN_LENGTH = 500


def _patterns(raw: Any) -> tuple[re.Pattern[str], ...] | None:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        return None
    if any(not x or len(x) > MAX_PATTERN_LENGTH for x in raw):
        return None
    try:
        return tuple(re.compile(x, re.IGNORECASE) for x in raw)
    except re.error:
        return None


def _table(raw: Any) -> dict[str, Any] | None:
    return raw if isinstance(raw, dict) else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: permission denied while reading"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not valid UTF-8"]) from None


# --- unsubscribe, the web service, DKIM signing -----------------------------------
# Sections [unsubscribe], [web] and [dkim], and the unsubscribe keys of a plan.

SUPPRESSION_CHECKS = ("eom", "rcpt")
LOCAL_PART_ATOM = re.compile(r"^[A-Za-z0-9!#$&'*/=?^_`{|}~-]+(\.[A-Za-z0-9!#$&'*/=?^_`{|}~-]+)*$")
DNS_LABELS = re.compile(
    r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*$"
)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
MIN_SECRET_LENGTH = 32
SECRET_FILE_FORBIDDEN_BITS = 0o077


@dataclass(frozen=True, slots=True)
class UnsubscribePlan:
    """A plan's unsubscribe and bulk-classification settings."""

    bulk_recipients: int | None = None
    """A message to at least this many recipients is bulk; None: the count alone never is."""
    bulk_fingerprint_recipients: int | None = None
    """Bulk once the same content went to at least this many recipients in the window."""
    bulk_fingerprint_window: int = 86_400
    on_noncompliant_unsubscribe: Literal["replace", "reject"] = "replace"
    bulk_one_recipient_per_message: bool = False


@dataclass(frozen=True, slots=True)
class UnsubscribeSettings:
    url_base: str
    """scheme://host[:port] of the unsubscribe service; links are URL_BASE/u/TOKEN."""
    mailto_local: str
    mailto_domain: str
    secrets_file: Path
    token_lifetime_days: int
    secrets: tuple[bytes, ...] = field(repr=False, default=())
    """From secrets_file: the first signs, all verify."""

    def url(self, token: str) -> str:
        return f"{self.url_base}/u/{token}"

    def mailto(self, token: str) -> str:
        return f"mailto:{self.mailto_local}+{token}@{self.mailto_domain}"


@dataclass(frozen=True, slots=True)
class WebSettings:
    host: str = "127.0.0.1"
    port: int = 8895
    max_body_bytes: int = 2048
    rate_limit_per_minute: int = 30
    rate_limit_burst: int = 10
    trusted_proxies: tuple[str, ...] = ()
    """Peers whose X-Forwarded-For names the client (a reverse proxy in front)."""

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SigningIdentity:
    domain: str
    selector: str
    key: SigningKey


@dataclass(frozen=True, slots=True)
class DkimSettings:
    tenants: Mapping[str, SigningIdentity] = field(default_factory=dict)
    default: SigningIdentity | None = None
    """For tenants without their own entry; None: their mail is not signed."""

    def identity_for(self, tenant: str | None) -> SigningIdentity | None:
        if tenant is not None and tenant in self.tenants:
            return self.tenants[tenant]
        return self.default


def load_unsubscribe_sections(
    path: Path, root: _Section, problems: list[str]
) -> tuple[UnsubscribeSettings | None, WebSettings, DkimSettings]:
    """[unsubscribe] (optional), [web] and [dkim]; problems are appended, never raised."""
    unsubscribe = None
    if "unsubscribe" in root.table:
        unsubscribe = _unsubscribe_section(path, root, problems)
    else:
        root.seen.add("unsubscribe")
    return unsubscribe, _web_section(path, root, problems), _dkim_section(path, root, problems)


def _unsubscribe_section(path: Path, root: _Section, problems: list[str]) -> UnsubscribeSettings:
    from aupmilter.policy.tokens import LONGEST_TOKEN

    section = _Section(path, "unsubscribe", root.subtable("unsubscribe"), problems)
    url_base = section.get(
        "url_base",
        "",
        "'https://HOST[:PORT]' without a path ('http://' only for a loopback host)",
        _url_base,
    )
    longest_local = 64 - 1 - LONGEST_TOKEN
    mailto_local = section.get(
        "mailto_local",
        "unsubscribe",
        f"a dot-atom local part of at most {longest_local} characters without '+'",
        lambda raw: (
            raw
            if isinstance(raw, str)
            and LOCAL_PART_ATOM.match(raw)
            and "+" not in raw
            and len(raw) <= longest_local
            else None
        ),
    )
    mailto_domain = section.get(
        "mailto_domain", "", "a domain name such as unsub.relay.example", _domain_name
    )
    secrets_text = section.get(
        "secrets_file", "", "a path to the secrets file (relative to this file)", _string
    )
    lifetime = section.get(
        "token_lifetime_days", 60, "whole days from 1 to 3650", _integer(1, 3650)
    )
    for key in ("url_base", "mailto_domain", "secrets_file"):
        if key not in section.table:
            section.fail(key, "a value (the key is required)", None)
    section.reject_unknown()
    secrets_file = (path.parent / secrets_text).resolve() if secrets_text else Path()
    secrets: tuple[bytes, ...] = ()
    if secrets_text:
        secrets = _read_secrets(path, secrets_file, problems)
    return UnsubscribeSettings(
        url_base=url_base,
        mailto_local=mailto_local,
        mailto_domain=mailto_domain,
        secrets_file=secrets_file,
        token_lifetime_days=lifetime,
        secrets=secrets,
    )


def _read_secrets(path: Path, secrets_file: Path, problems: list[str]) -> tuple[bytes, ...]:
    """One secret per line (blank lines and # comments ignored); the first one signs."""
    where = f"{path}: key 'unsubscribe.secrets_file'"
    try:
        info = secrets_file.stat()
        if info.st_mode & SECRET_FILE_FORBIDDEN_BITS:
            problems.append(
                f"{where}: expected a file only its owner can access (chmod 600),"
                f" got mode {info.st_mode & 0o777:04o} on {secrets_file}"
            )
            return ()
        text = secrets_file.read_text("utf-8")
    except FileNotFoundError:
        problems.append(f"{where}: expected an existing file, got {str(secrets_file)!r}")
        return ()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{where}: cannot read {secrets_file}: {exc}")
        return ()
    secrets = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) < MIN_SECRET_LENGTH:
            problems.append(
                f"{where}: expected secrets of at least {MIN_SECRET_LENGTH} characters"
                f" (e.g. `openssl rand -hex 32`), got {len(line)} on line {number}"
                f" of {secrets_file}"
            )
            continue
        secrets.append(line.encode("utf-8"))
    if not secrets and not any(where in p for p in problems):
        problems.append(f"{where}: expected at least one secret line in {secrets_file}")
    return tuple(secrets)


def _web_section(path: Path, root: _Section, problems: list[str]) -> WebSettings:
    section = _Section(path, "web", root.subtable("web"), problems)
    defaults = WebSettings()
    host, port = section.get(
        "listen",
        (defaults.host, defaults.port),
        "'HOST:PORT' or '[IPv6]:PORT'",
        _host_port,
    )
    settings = WebSettings(
        host=host,
        port=port,
        max_body_bytes=section.get(
            "max_body_bytes", defaults.max_body_bytes, "bytes from 64 to 65536", _integer(64, 65536)
        ),
        rate_limit_per_minute=section.get(
            "rate_limit_per_minute",
            defaults.rate_limit_per_minute,
            "requests per minute from 1 to 100000",
            _integer(1, 100_000),
        ),
        rate_limit_burst=section.get(
            "rate_limit_burst",
            defaults.rate_limit_burst,
            "requests from 1 to 10000",
            _integer(1, 10_000),
        ),
        trusted_proxies=section.get("trusted_proxies", (), "a list of IP addresses", _ip_list),
    )
    section.reject_unknown()
    return settings


def _dkim_section(path: Path, root: _Section, problems: list[str]) -> DkimSettings:
    from aupmilter.store.keys import TENANT_ID

    section = _Section(path, "dkim", root.subtable("dkim"), problems)
    tenants_table = section.subtable("tenant", "a table of tenants, [dkim.tenant.ID]")
    default_table = section.get("default", cast(dict[str, Any] | None, None), "a table", _table)
    section.reject_unknown()
    tenants: dict[str, SigningIdentity] = {}
    for tenant_id, body in tenants_table.items():
        if not TENANT_ID.match(tenant_id):
            problems.append(
                f"{path}: key 'dkim.tenant.{tenant_id}': expected a tenant id of 1-64"
                " lower-case letters, digits, '.', '-' or '_'"
            )
            continue
        identity = _signing_identity(path, f"dkim.tenant.{tenant_id}", body, problems)
        if identity is not None:
            tenants[tenant_id] = identity
    default = None
    if default_table is not None:
        default = _signing_identity(path, "dkim.default", default_table, problems)
    return DkimSettings(tenants=tenants, default=default)


def _signing_identity(
    path: Path, name: str, body: Any, problems: list[str]
) -> SigningIdentity | None:
    from aupmilter.mailauth.dkimkeys import UnusableKey, load_signing_key

    section = _Section(path, name, body, problems)
    domain = section.get("domain", "", "a domain name (the signature's d=)", _domain_name)
    selector = section.get(
        "selector",
        "",
        "a selector of DNS labels (the signature's s=)",
        lambda raw: raw if isinstance(raw, str) and DNS_LABELS.match(raw) else None,
    )
    key_text = section.get(
        "key_file", "", "a path to the private key (relative to this file)", _string
    )
    for required in ("domain", "selector", "key_file"):
        if required not in section.table:
            section.fail(required, "a value (the key is required)", None)
    section.reject_unknown()
    if not (domain and selector and key_text):
        return None
    key_path = (path.parent / key_text).resolve()
    try:
        key = load_signing_key(key_path)
    except UnusableKey as exc:
        problems.append(
            f"{path}: key '{name}.key_file': expected an RSA (>= 2048 bits) or Ed25519 private"
            f" key readable only by the daemon, got {str(key_path)!r}: {exc}"
        )
        return None
    return SigningIdentity(domain=domain, selector=selector.lower(), key=key)


def load_unsubscribe_plan(section: _Section) -> UnsubscribePlan:
    """The unsubscribe keys of one [plan.NAME] table."""
    defaults = UnsubscribePlan()
    recipients = section.get(
        "bulk_recipients",
        cast(int | None, None),
        "a whole number from 2 to 100000",
        _integer(2, 100_000),
    )
    fingerprint = section.get(
        "bulk_fingerprint_recipients",
        cast(int | None, None),
        "a whole number from 2 to 10000000",
        _integer(2, 10_000_000),
    )
    window = section.get(
        "bulk_fingerprint_window",
        defaults.bulk_fingerprint_window,
        "seconds from 60 to 2592000 (30 days)",
        _integer(60, 2_592_000),
    )
    noncompliant = section.get(
        "on_noncompliant_unsubscribe",
        str(defaults.on_noncompliant_unsubscribe),
        "'replace' or 'reject'",
        _choice("replace", "reject"),
    )
    one_recipient = section.get(
        "bulk_one_recipient_per_message",
        defaults.bulk_one_recipient_per_message,
        "true or false",
        lambda raw: raw if isinstance(raw, bool) else None,
    )
    return UnsubscribePlan(
        bulk_recipients=recipients,
        bulk_fingerprint_recipients=fingerprint,
        bulk_fingerprint_window=window,
        on_noncompliant_unsubscribe=cast(Literal["replace", "reject"], noncompliant),
        bulk_one_recipient_per_message=one_recipient,
    )


def _url_base(raw: Any) -> str | None:
    if not isinstance(raw, str):
        return None
    parts = urlsplit(raw)
    if parts.path not in ("", "/") or parts.query or parts.fragment or not parts.hostname:
        return None
    if parts.username or parts.password:
        return None
    try:
        _ = parts.port
    except ValueError:
        return None
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS):
        return f"{parts.scheme}://{parts.netloc}"
    return None


def _domain_name(raw: Any) -> str | None:
    from aupmilter.policy.tenancy import normalize_domain

    if not isinstance(raw, str) or "." not in raw.strip("."):
        return None
    return normalize_domain(raw)


def _host_port(raw: Any) -> tuple[str, int] | None:
    if not isinstance(raw, str):
        return None
    host, sep, port_text = raw.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536 or not host:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        return None  # an IPv6 address needs brackets
    return host, int(port_text)

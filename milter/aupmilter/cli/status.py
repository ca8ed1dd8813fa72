"""`aup-milter status`: is the milter up, its Redis answering, its scripts loaded, its config valid?

A monitoring check in the Nagios plugin convention (also what Icinga, Sensu
and check_mk's local checks run): one summary line first, `AUP-MILTER OK -
...` with performance data after `|`, then one line per check; the exit
status is the worst check's: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the
milter could not be checked at all: `listen = "systemd"` and no --socket).
Usage errors exit 64 like every command (Nagios reports any code above 3 as
UNKNOWN).

The checks:

- milter: option negotiation over the daemon's socket, as an MTA opens a
  connection (`miltercheck`); CRITICAL when nothing answers in time;
- redis: PING; CRITICAL when it does not answer;
- scripts: SCRIPT EXISTS with the shas redis-py gives the milter's Lua
  scripts; WARNING when some are not loaded (after a restart of Redis or a
  SCRIPT FLUSH): the daemon loads them on first use, at the price of one more
  round trip, so a check right after either is no cause for alarm;
- config: the file loads and validates as the daemon would load it on its
  next start or reload; CRITICAL with each problem listed when it does not.

The socket and the Redis URL come from --socket and --redis, else from the
configuration (read as TOML even when it does not validate), else the
defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aupmilter.config import Config, ConfigError, ListenAddress, RedisSettings, load_config
from aupmilter.config.daemon import DEFAULT_LISTEN, parse_listen, parse_redis_url
from aupmilter.exitcodes import EX_CRITICAL, EX_OK, EX_UNKNOWN, EX_WARNING

DEFAULT_TIMEOUT = 5.0
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

OK = "ok"
WARNING = "warning"
CRITICAL = "critical"
UNKNOWN = "unknown"
SEVERITY = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}
"""Worst first when sorted backwards: a check that could not run hides a warning, not a failure."""
EXIT_CODES = {OK: EX_OK, WARNING: EX_WARNING, CRITICAL: EX_CRITICAL, UNKNOWN: EX_UNKNOWN}


@dataclass(slots=True)
class Check:
    """One check's outcome: a status, a short phrase for the summary line, and details."""

    name: str
    status: str
    summary: str
    detail: str
    latency_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        latency = None if self.latency_ms is None else round(self.latency_ms, 3)
        return {"status": self.status, "detail": self.detail, "latency_ms": latency, **self.extra}


@dataclass(slots=True)
class Report:
    checks: list[Check]

    @property
    def status(self) -> str:
        return max((c.status for c in self.checks), key=SEVERITY.__getitem__, default=OK)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    @property
    def summary(self) -> str:
        line = f"AUP-MILTER {self.status.upper()} - " + "; ".join(c.summary for c in self.checks)
        perf = [
            f"{c.name}={c.latency_ms:.3f}ms;;;0" for c in self.checks if c.latency_ms is not None
        ]
        return f"{line} | {' '.join(perf)}" if perf else line

    def text(self) -> str:
        lines = [self.summary]
        for check in self.checks:
            lines.append(f"{check.name}: {check.status.upper()} - {check.detail}")
            lines.extend(f"  {problem}" for problem in check.extra.get("problems", ()))
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "summary": self.summary,
            "checks": {c.name: c.as_json() for c in self.checks},
        }


# --- the command line ------------------------------------------------------------------------


def _listen_argument(raw: str) -> ListenAddress:
    listen = parse_listen(raw)
    if listen is None or listen.kind == "systemd":
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not a milter socket: 'unix:/path', 'inet:PORT@HOST' or 'inet6:PORT@HOST'"
        )
    return listen


def _redis_argument(raw: str) -> str:
    if parse_redis_url(raw) is None:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a redis://, rediss:// or unix:// URL")
    return raw


def _timeout_argument(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 600:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number of seconds from 0 to 600")
    return value


def add_parser(
    commands: Any, config_option: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    status: argparse.ArgumentParser = commands.add_parser(
        "status",
        help="health check (Nagios convention): milter socket, Redis, scripts, config",
        description=(
            "Check that the milter answers option negotiation on its socket, that Redis "
            "answers, that the milter's Lua scripts are loaded and that the configuration "
            "is valid. Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."
        ),
    )
    config_option(status)
    status.add_argument(
        "--socket",
        metavar="ADDR",
        type=_listen_argument,
        help="the milter's socket, unix:/path or inet:PORT@HOST (default: milter.listen)",
    )
    status.add_argument(
        "--redis", metavar="URL", type=_redis_argument, help="Redis URL (default: redis.url)"
    )
    status.add_argument("--json", action="store_true", help="one JSON object instead of text")
    status.add_argument(
        "--timeout",
        metavar="S",
        type=_timeout_argument,
        default=DEFAULT_TIMEOUT,
        help=f"seconds each check may take (default {DEFAULT_TIMEOUT:g})",
    )
    return status


def run(args: argparse.Namespace) -> int:
    report = collect(args.config, args.socket, args.redis, args.timeout)
    print(json.dumps(report.as_json(), indent=2) if args.json else report.text())
    return report.exit_code


# --- the checks --------------------------------------------------------------------------------


def collect(
    config_path: Path, socket: ListenAddress | None, redis_url: str | None, timeout: float
) -> Report:
    config, problems = _load(config_path)
    raw = _raw_settings(config_path) if config is None else {}
    if socket is None:
        socket = config.milter.listen if config is not None else _raw_listen(raw)
    if redis_url is None:
        redis_url = config.redis.url if config is not None else _raw_redis(raw)
    milter = check_milter(socket, timeout)
    configured = config.redis if config is not None else None
    redis_check, scripts, registry = check_redis(redis_url, timeout, configured)
    checks = [milter, redis_check, scripts, registry]
    return Report([*checks, check_config(config_path, config, problems)])


def check_milter(listen: ListenAddress, timeout: float) -> Check:
    from aupmilter.miltercheck import MilterCheckError, negotiate

    if listen.kind == "systemd":
        return Check(
            "milter",
            UNKNOWN,
            "milter not checked (listen = systemd: give --socket)",
            "milter.listen is 'systemd': name the socket the .socket unit listens on with"
            " --socket (ListenStream, by default unix:/run/aup-milter/aup-milter.sock)",
            extra={"address": str(listen)},
        )
    try:
        answer = negotiate(listen, timeout)
    except MilterCheckError as exc:
        return Check("milter", CRITICAL, f"milter: {exc}", str(exc), extra={"address": str(listen)})
    ms = answer.seconds * 1000
    return Check(
        "milter",
        OK,
        f"milter answers (protocol {answer.version}) in {_ms(ms)}",
        f"{listen} answered option negotiation in {_ms(ms)}: protocol version"
        f" {answer.version}, actions {', '.join(answer.action_names) or 'none'}"
        f" ({answer.actions:#x}), steps {answer.protocol:#x}",
        ms,
        {
            "address": str(listen),
            "version": answer.version,
            "actions": list(answer.action_names),
            "protocol": answer.protocol,
        },
    )


def check_redis(
    url: str, timeout: float, configured: RedisSettings | None = None
) -> tuple[Check, Check, Check]:
    """PING, then SCRIPT EXISTS over the same connection, then the tenant registry's presence;
    the scripts and the registry are UNKNOWN without Redis."""
    import redis

    from aupmilter.store.client import command_settings, connect, load_script

    shown = redact(url)
    names = script_names()
    settings = command_settings(url, configured, timeout, timeout)
    if settings.mode != "standalone":
        nodes = settings.sentinels or settings.cluster_nodes
        shown = f"{settings.mode} {', '.join(f'{host}:{port}' for host, port in nodes)}"
    client = connect(settings)
    try:
        try:
            started = time.monotonic()
            client.ping()
            ms = (time.monotonic() - started) * 1000
        except (redis.RedisError, OSError) as exc:
            why = _redis_error(exc)
            return (
                Check("redis", CRITICAL, f"redis: {why}", f"{shown}: {why}", extra={"url": shown}),
                Check(
                    "scripts",
                    UNKNOWN,
                    "scripts not checked",
                    "not checked: Redis does not answer",
                    extra={"loaded": [], "missing": []},
                ),
                Check("registry", UNKNOWN, "registry not checked", "Redis does not answer"),
            )
        redis_check = Check(
            "redis",
            OK,
            f"redis {_ms(ms)}",
            f"{shown} answered PING in {_ms(ms)}",
            ms,
            {"url": shown},
        )
        registry = check_registry(client)
        shas = {name: client.register_script(load_script(name)).sha for name in names}
        try:
            exists = client.script_exists(*shas.values()) if shas else []
        except (redis.RedisError, OSError) as exc:
            why = _redis_error(exc)
            return (
                redis_check,
                Check("scripts", WARNING, "scripts not checked", f"SCRIPT EXISTS failed: {why}"),
                registry,
            )
    finally:
        client.close()
    loaded = [name for name, present in zip(shas, exists, strict=True) if present]
    missing = [name for name, present in zip(shas, exists, strict=True) if not present]
    extra: dict[str, Any] = {"loaded": loaded, "missing": missing, "shas": shas}
    if missing:
        scripts = Check(
            "scripts",
            WARNING,
            f"scripts not loaded ({', '.join(missing)})",
            f"not loaded in Redis: {', '.join(missing)} (the daemon loads them on first use:"
            " expected after a Redis restart or SCRIPT FLUSH until mail has passed)",
            extra=extra,
        )
    else:
        scripts = Check(
            "scripts", OK, "scripts loaded", f"loaded in Redis: {', '.join(loaded)}", extra=extra
        )
    return redis_check, scripts, registry


def check_registry(client: Any) -> Check:
    """CRITICAL when Redis holds no tenant registry: every sender's mail tempfails meanwhile."""
    import redis

    from aupmilter.store import keys
    from aupmilter.store.tenants import TenantAdmin

    try:
        present = TenantAdmin(client).registry_present()
    except (redis.RedisError, OSError) as exc:
        return Check("registry", WARNING, "registry not checked", _redis_error(exc))
    if present:
        return Check("registry", OK, "tenant registry present", "tenant registry present")
    return Check(
        "registry",
        CRITICAL,
        "tenant registry missing",
        f"Redis holds neither {keys.REGISTRY} nor {keys.TENANTS}: it lost its state (restart"
        " without persistence, failover to an empty replica, a flush); mail tempfails until"
        " the tenants are restored or added again (aup-milter tenant add ... writes the marker)",
    )


def check_config(path: Path, config: Config | None, problems: list[str]) -> Check:
    if config is None:
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        return Check(
            "config",
            CRITICAL,
            f"config invalid ({count})",
            f"{path} does not load ({count}); the daemon would refuse it on start or reload",
            extra={"path": str(path), "problems": problems},
        )
    plans = ", ".join(sorted(config.plans)) or "none"
    return Check(
        "config",
        OK,
        "config valid",
        f"{config.path} is valid (plans: {plans})",
        extra={"path": str(config.path), "problems": []},
    )


def script_names() -> list[str]:
    """The milter's Lua scripts (store/scripts/*.lua) that mail loads, by file name.

    Not those a rare event loads on demand (store.client.ON_DEMAND_SCRIPTS: a
    warm-up change), which may rightly stay unloaded for days.
    """
    from aupmilter.store.client import ON_DEMAND_SCRIPTS

    folder = resources.files("aupmilter.store") / "scripts"
    names = (item.name for item in folder.iterdir() if item.name.endswith(".lua"))
    return sorted(name for name in names if name not in ON_DEMAND_SCRIPTS)


def redact(url: str) -> str:
    """The URL without its password (it goes into monitoring systems' logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port is not None else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


# --- helpers -----------------------------------------------------------------------------------


def _load(path: Path) -> tuple[Config | None, list[str]]:
    try:
        return load_config(path), []
    except ConfigError as exc:
        return None, list(exc.problems)


def _raw_settings(path: Path) -> dict[str, Any]:
    """The file as TOML, for the socket and URL of a config that does not validate."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}


def _table(raw: dict[str, Any], name: str) -> dict[str, Any]:
    table = raw.get(name)
    return table if isinstance(table, dict) else {}


def _raw_listen(raw: dict[str, Any]) -> ListenAddress:
    listen = parse_listen(_table(raw, "milter").get("listen"))
    return listen if listen is not None else ListenAddress("unix", path=DEFAULT_LISTEN)


def _raw_redis(raw: dict[str, Any]) -> str:
    url = parse_redis_url(_table(raw, "redis").get("url"))
    return url if url is not None else os.environ.get("AUP_REDIS_URL", DEFAULT_REDIS_URL)


def _redis_error(exc: BaseException) -> str:
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    return " ".join(text.split())


def _ms(ms: float) -> str:
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"

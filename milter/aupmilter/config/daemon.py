"""The daemon's own sections: `[milter]` (the socket), `[redis]` (the store), `[log]`,
`[audit]` and `[metrics]` (the Prometheus endpoint)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from aupmilter.config.loader import (
    Section,
    boolean,
    choice,
    host_port,
    integer,
    number,
    string,
)

LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LISTEN = Path("/run/aup-milter/aup-milter.sock")
MAX_WORKERS = 256
AUTO_WORKERS = 0
"""`workers = "auto"`: one process per CPU the daemon may run on."""


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
    workers: int = 0
    """Worker processes; AUTO_WORKERS (0): one per CPU the process may run on."""
    engine: Literal["event-loop", "libmilter"] = "libmilter"
    """Who speaks the milter protocol: libmilter, or one event loop per process (`engine.py`)."""

    def worker_count(self) -> int:
        """The processes to run: `workers`, or the CPUs in this process's affinity mask."""
        if self.workers != AUTO_WORKERS:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:  # a seccomp filter may refuse it: the machine's count then
            return max(1, os.cpu_count() or 1)


Node = tuple[str, int]


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Where the store is: one server (the default), a Sentinel-managed master, or a Cluster.

    In the Sentinel and Cluster modes `url` carries what it carries for one
    server except the address: the data nodes' ACL user and password, TLS
    (`rediss://` and its `ssl_*` options) and, for Sentinel, the database.
    """

    url: str
    connect_timeout: float
    timeout: float
    sentinels: tuple[Node, ...] = ()
    service_name: str = ""
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    sentinel_tls: bool = False
    cluster_nodes: tuple[Node, ...] = ()
    mapping_cache_seconds: float = 30.0
    """Cluster mode: how long a login's or domain's tenant is reused without a mapping read."""

    @property
    def mode(self) -> Literal["standalone", "sentinel", "cluster"]:
        if self.cluster_nodes:
            return "cluster"
        return "sentinel" if self.sentinels else "standalone"


@dataclass(frozen=True, slots=True)
class LogSettings:
    format: Literal["json", "text"]
    level: str

    @property
    def level_number(self) -> int:
        return cast(int, logging.getLevelName(self.level.upper()))


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


def parse_workers(raw: Any) -> int | None:
    """`"auto"` (AUTO_WORKERS) or a whole number of processes from 1 to MAX_WORKERS."""
    if raw == "auto":
        return AUTO_WORKERS
    if isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw <= MAX_WORKERS:
        return raw
    return None


def parse_engine(raw: Any) -> Literal["event-loop", "libmilter"] | None:
    return raw if raw in ("event-loop", "libmilter") else None


def parse_redis_url(raw: Any, *, address: bool = True) -> str | None:
    """A URL redis-py reads; without `address` (Sentinel, Cluster) one with no host."""
    if not isinstance(raw, str):
        return None
    parts = urlsplit(raw)
    if not address:
        return raw if parts.scheme in ("redis", "rediss") and not parts.hostname else None
    if parts.scheme in ("redis", "rediss"):
        return raw if parts.hostname else None
    if parts.scheme == "unix":
        return raw if parts.path.startswith("/") else None
    return None


def read_milter(section: Section) -> MilterSettings:
    listen = section.get(
        "listen",
        ListenAddress("unix", path=DEFAULT_LISTEN),
        "'unix:/absolute/path', 'inet:PORT@HOST', 'inet6:PORT@HOST' or 'systemd'",
        parse_listen,
    )
    settings = MilterSettings(
        listen=listen,
        socket_mode=section.get(
            "socket_mode", 0o660, "an octal mode string such as '0660'", parse_socket_mode
        ),
        socket_group=section.get("socket_group", cast(str | None, None), "a group name", string),
        timeout=section.get("timeout", 600, "whole seconds from 1 to 3600", integer(1, 3600)),
        shutdown_grace=section.get("shutdown_grace", 20.0, "seconds from 0 to 600", number(0, 600)),
        workers=section.get(
            "workers",
            AUTO_WORKERS,
            f"'auto' or a whole number of processes from 1 to {MAX_WORKERS}",
            parse_workers,
        ),
        engine=section.get("engine", "libmilter", "'event-loop' or 'libmilter'", parse_engine),
    )
    section.reject_unknown()
    return settings


def parse_nodes(raw: Any) -> tuple[Node, ...] | None:
    """A non-empty list of `HOST:PORT` / `[IPv6]:PORT` strings."""
    if not isinstance(raw, list) or not raw:
        return None
    nodes = tuple(host_port(item) for item in raw)
    return None if any(node is None for node in nodes) else cast(tuple[Node, ...], nodes)


NODES_FORM = (
    "a non-empty list of 'HOST:PORT' strings, such as ['10.0.0.1:{port}', '10.0.0.2:{port}']"
)


def read_redis(section: Section) -> RedisSettings:
    no_nodes: tuple[Node, ...] = ()
    sentinels = section.get("sentinels", no_nodes, NODES_FORM.format(port=26379), parse_nodes)
    cluster_nodes = section.get(
        "cluster_nodes", no_nodes, NODES_FORM.format(port=6379), parse_nodes
    )
    if sentinels and cluster_nodes:
        section.fail(
            "cluster_nodes", "either 'sentinels' or 'cluster_nodes', not both", cluster_nodes
        )
    # Which mode the file asks for, even when its node list is malformed: one
    # mistake is one problem, not a cascade about the keys that depend on it.
    sentinel_mode = "sentinels" in section.table
    distributed = sentinel_mode or "cluster_nodes" in section.table
    service_name = section.get("service_name", "", "the master's name in the sentinels", string)
    if sentinel_mode and "service_name" not in section.table:
        section.fail(
            "service_name", "the master's name the sentinels monitor (with 'sentinels')", None
        )
    if "service_name" in section.table and not sentinel_mode:
        section.fail("service_name", "no 'service_name' without 'sentinels'", service_name)
    sentinel_keys = ("sentinel_username", "sentinel_password", "sentinel_tls")
    for key in sentinel_keys:
        if key in section.table and not sentinel_mode:
            section.fail(key, f"no '{key}' without 'sentinels'", section.table[key])
    url_form = (
        "a URL without an address in this mode, the nodes' user, password, TLS and options:"
        " redis://[user:password@][/db] or rediss://...[?ssl_ca_certs=/path]"
        if distributed
        else "a URL redis://[user:password@]host[:port][/db], rediss://... or unix:///path"
    )
    settings = RedisSettings(
        url=section.get(
            "url",
            "redis://" if distributed else "redis://127.0.0.1:6379/0",
            url_form,
            lambda raw: parse_redis_url(raw, address=not distributed),
        ),
        connect_timeout=section.get(
            "connect_timeout", 0.5, "seconds from 0.01 to 30", number(0.01, 30)
        ),
        timeout=section.get("timeout", 0.5, "seconds from 0.01 to 30", number(0.01, 30)),
        sentinels=sentinels,
        service_name=service_name,
        sentinel_username=section.get(
            "sentinel_username", cast(str | None, None), "the sentinels' ACL user", string
        ),
        sentinel_password=section.get(
            "sentinel_password", cast(str | None, None), "the sentinels' password", string
        ),
        sentinel_tls=section.get("sentinel_tls", False, "true or false", boolean),
        cluster_nodes=cluster_nodes,
        mapping_cache_seconds=section.get(
            "mapping_cache_seconds", 30.0, "seconds from 0 to 3600", number(0, 3600)
        ),
    )
    section.reject_unknown()
    return settings


def read_log(section: Section) -> LogSettings:
    settings = LogSettings(
        format=cast(
            Literal["json", "text"],
            section.get("format", "json", "'json' or 'text'", choice("json", "text")),
        ),
        level=section.get("level", "info", " or ".join(map(repr, LOG_LEVELS)), choice(*LOG_LEVELS)),
    )
    section.reject_unknown()
    return settings


@dataclass(frozen=True, slots=True)
class AuditSettings:
    retention_days: int = 8
    """The audit stream keeps at least this many days (the AUP asks for 7: never fewer)."""
    recipients_listed: int = 10
    """Recipients a verdict event names (every one is counted): memory per event."""

    @property
    def retention_seconds(self) -> int:
        return self.retention_days * 86_400


def read_audit(section: Section) -> AuditSettings:
    settings = AuditSettings(
        retention_days=section.get(
            "retention_days", 8, "whole days from 7 to 400", integer(7, 400)
        ),
        recipients_listed=section.get(
            "recipients_listed", 10, "a whole number from 0 to 50", integer(0, 50)
        ),
    )
    section.reject_unknown()
    return settings


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Where the daemon serves its Prometheus metrics; `host` None: not served."""

    host: str | None = "127.0.0.1"
    port: int = 8896

    @property
    def listen(self) -> str:
        if self.host is None:
            return ""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_metrics_listen(raw: Any) -> tuple[str | None, int] | None:
    """`HOST:PORT`, `[IPv6]:PORT`, or "" (no endpoint)."""
    if raw == "":
        return None, 0
    return host_port(raw)


def read_metrics(section: Section) -> MetricsSettings:
    defaults = MetricsSettings()
    host, port = section.get(
        "listen",
        (defaults.host, defaults.port),
        "'HOST:PORT', '[IPv6]:PORT' or '' (no metrics endpoint)",
        parse_metrics_listen,
    )
    section.reject_unknown()
    return MetricsSettings(host=host, port=port)

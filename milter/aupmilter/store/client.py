"""The Redis client used by the milter: one script call per decision point.

A Redis outage is logged once when it starts and once when it ends, never once
per message; the connection pool reconnects by itself on the next call.
"""

from __future__ import annotations

import logging
import threading
import time
from importlib import resources
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from aupmilter.config import RedisSettings
from aupmilter.policy.tenancy import Lookup, TenantRecord
from aupmilter.store import keys

log = logging.getLogger("aupmilter.store")

STORE_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, OSError)


class StoreUnavailable(Exception):
    """Redis could not answer; the text says why, for logs and verdict reasons."""


def load_script(name: str) -> str:
    return (resources.files("aupmilter.store") / "scripts" / name).read_text("utf-8")


def connect(settings: RedisSettings) -> redis.Redis:
    """A client that fails fast: one immediate retry covers a stale pooled connection."""
    return redis.Redis.from_url(
        settings.url,
        socket_connect_timeout=settings.connect_timeout,
        socket_timeout=settings.timeout,
        retry=Retry(NoBackoff(), 1),
        decode_responses=True,
        health_check_interval=0,
        client_name="aup-milter",
    )


class OutageLog:
    """Turns a stream of failures and successes into two log lines per outage."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._failures = 0

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, error: str) -> None:
        with self._lock:
            self._failures += 1
            if self._since is not None:
                return
            self._since = self._clock()
        log.error("redis unavailable: %s; following on_store_error until it is back", error)

    def succeeded(self) -> None:
        if self._since is None:
            return
        with self._lock:
            if self._since is None:
                return
            duration, failures = self._clock() - self._since, self._failures
            self._since, self._failures = None, 0
        log.warning(
            "redis available again after %.1f s; %d lookups failed meanwhile", duration, failures
        )


class Store:
    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.client = connect(settings)
        self.outage = OutageLog()
        self._sender_state: Script = self.client.register_script(load_script("sender_state.lua"))

    def sender_state(self, lookup: Lookup) -> TenantRecord | None:
        """The tenant the lookup names, with its hash; None when nothing is mapped."""
        if lookup.kind is None or not lookup.names:
            return None
        mapping_keys = [keys.mapping(lookup.kind, name) for name in lookup.names]
        args = [keys.TENANT_PREFIX, keys.DOMAINS_SUFFIX]
        reply = self._call(self._sender_state, mapping_keys, args)
        if not reply:
            return None
        _index, tenant_id, domains, *flat = reply
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        return TenantRecord(
            tenant_id=str(tenant_id), fields=fields, domains=frozenset(map(str, domains))
        )

    def _call(self, script: Script, script_keys: list[str], args: list[str]) -> Any:
        try:
            result = script(keys=script_keys, args=args)
        except STORE_ERRORS as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self.outage.failed(reason)
            raise StoreUnavailable(reason) from exc
        self.outage.succeeded()
        return result

    def close(self) -> None:
        self.client.close()

"""Relay-wide counters for Prometheus in one Redis hash (keys.SHARED_COUNTS).

The processes that cannot be scraped (the intake runs once per message,
`aup-milter suppress` once per command) and the counts every relay should
agree on (suppressions, automatic actions) are kept here; the daemon exports
them at scrape time (metrics.SharedCounts: one HGETALL). Fields are
`<family>:<label value>` (metrics.SHARED_FAMILIES names the families):

  report:<kind>            reports the intake handled (complaint, hard-bounce, ...)
  unsubscribe:<outcome>    mailto unsubscribes: unsubscribed, already, refused, invalid
  suppression:<source>     addresses newly suppressed (one-click, mailto, complaint, ...)
  action:<action>          automatic actions (auto-review, auto-suspend, sender-suspended,
                           domain-suspended, tenant-terminated; would-... in shadow mode)

Where a caller already makes a pipelined call, the HINCRBY rides in it
(`queue_count`); the intake's outcome counts are one call of their own that
never fails the intake (`count_quietly`).
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from aupmilter.store import keys

log = logging.getLogger("aupmilter.store.shared_counts")


def field(family: str, value: str) -> str:
    return f"{family}:{value}"


def queue_count(pipe: Any, family: str, value: str, amount: int = 1) -> None:
    """An HINCRBY queued on a pipeline the caller executes."""
    if amount > 0:
        pipe.hincrby(keys.SHARED_COUNTS, field(family, value), amount)


def count_quietly(client: redis.Redis, family: str, value: str) -> None:
    """One HINCRBY; a failure is logged at debug level and otherwise ignored."""
    try:
        client.hincrby(keys.SHARED_COUNTS, field(family, value), 1)
    except (redis.RedisError, OSError) as exc:
        log.debug("shared count %s not written: %s", field(family, value), exc)


def read(client: redis.Redis) -> dict[str, str]:
    """The whole hash (field -> count as text); raises what redis-py raises."""
    flat: dict[Any, Any] = client.hgetall(keys.SHARED_COUNTS)
    return {_text(k): _text(v) for k, v in flat.items()}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

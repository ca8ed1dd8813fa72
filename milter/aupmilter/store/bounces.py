"""Counters of a tenant's soft bounces and delay notices, per address, for the report intake.

keys.soft_bounces(tenant, address) and keys.delays(tenant, address) are
strings counted with INCR. Each expires `window` seconds after its first
count (EXPIRE NX: later counts do not extend it), so memory is bounded by
the addresses that failed within one window, and a count never outlives the
plan's `soft_bounce_window`. The intake never sees a delivery that worked,
so "in a row" is "within the window": an address that recovered keeps its
count until the window ends. A suppression made from the count removes it,
so a lifted suppression starts again from zero.

One pipelined round trip per report, whatever the number of addresses.
EXPIRE NX needs Redis 7.0 or later.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from aupmilter.store import keys


class BounceCounters:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def count(
        self, tenant: str, soft: Sequence[str], delayed: Sequence[str], window: int
    ) -> tuple[list[int], list[int]]:
        """Add one to each address's counter; the counts after it, soft then delayed."""
        counted = [keys.soft_bounces(tenant, a) for a in soft]
        counted += [keys.delays(tenant, a) for a in delayed]
        if not counted:
            return [], []
        with self.client.pipeline(transaction=False) as pipe:
            for key in counted:
                pipe.incr(key)
                pipe.expire(key, window, nx=True)
            replies = pipe.execute()
        counts = [int(n) for n in replies[0::2]]
        return counts[: len(soft)], counts[len(soft) :]

    def forget(self, tenant: str, addresses: Sequence[str]) -> None:
        """Drop the soft-bounce counts of addresses now suppressed."""
        if addresses:
            self.client.delete(*(keys.soft_bounces(tenant, a) for a in addresses))

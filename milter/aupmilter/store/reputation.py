"""The report intake's side of the complaint and bounce rates: count, read, suspend.

keys.rate_counter(tenant, measure, period_ms) hashes hold bucket index ->
count, bucketed exactly as the rate windows (policy.limits: 60 buckets per
period), so the delivered recipients the end-of-message script charges and
the complaints and bounces counted here cover the same span. A counter
expires once its newest bucket stops counting; stale buckets are dropped at
the next count, so a hash holds at most 61 buckets.

One pipelined round trip per report to count and read (HINCRBY, PEXPIRE,
HGETALL of the measure and of the delivered counter), plus an HDEL of stale
buckets when there are any. A suspension is a WATCHed transaction on the
tenant hash alone (status, reason, updated_at and auto_suspended_at set only
if the tenant is still active), then both event counters are deleted in a
second call: the tenant hash has no hash tag, and on Redis Cluster one
transaction's keys must share a slot. So the evidence that suspended a
tenant is gone when ops lift the suspension.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis

from aupmilter.policy.limits import Window
from aupmilter.policy.reputation import Decision, Measure, ReputationPlan
from aupmilter.policy.tenancy import TenantStatus
from aupmilter.store import keys
from aupmilter.store.shared_counts import queue_count
from aupmilter.store.suppression import queue_audit


@dataclass(frozen=True, slots=True)
class Counts:
    events: int
    delivered: int


def fill(flat: dict[Any, Any], window: Window, now_ms: int) -> tuple[int, list[str]]:
    """The window's fill at now and its stale bucket fields, as charge.lua computes them."""
    oldest = now_ms // window.bucket_ms - window.buckets
    used, stale = 0, []
    for index, count in flat.items():
        try:
            bucket = int(index)
        except ValueError:
            stale.append(str(index))
            continue
        if bucket >= oldest:
            used += int(count)
        else:
            stale.append(str(index))
    return used, stale


class ReputationCounters:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def count(
        self, tenant: str, measure: Measure, events: int, plan: ReputationPlan, now: float
    ) -> Counts:
        """Add ``events`` (0: only read) to the measure's counter; both fills after it."""
        window = plan.counter(measure.value)
        now_ms = int(now * 1000)
        key = keys.rate_counter(tenant, measure.value, window.period_ms)
        delivered_key = keys.rate_counter(tenant, keys.RATE_DELIVERED, window.period_ms)
        with self.client.pipeline(transaction=False) as pipe:
            if events > 0:
                current = now_ms // window.bucket_ms
                pipe.hincrby(key, str(current), events)
                pipe.pexpire(key, (current + window.buckets + 2) * window.bucket_ms - now_ms)
            pipe.hgetall(key)
            pipe.hgetall(delivered_key)
            replies = pipe.execute()
        used, stale = fill(replies[-2], window, now_ms)
        delivered, _ = fill(replies[-1], window, now_ms)
        if stale and events > 0:
            self.client.hdel(key, *stale)
        return Counts(used, delivered)

    def suspend(self, tenant: str, decision: Decision, plan: ReputationPlan, now: float) -> bool:
        """Suspend an active tenant with the figures as its reason; False if it was not active."""
        tenant_key = keys.tenant(tenant)
        period_ms = plan.period * 1000
        counters = [keys.rate_counter(tenant, m.value, period_ms) for m in Measure]
        reason = f"automatic suspension: {decision.figures}"
        from aupmilter.store.client import is_cluster

        # A cluster has no WATCH in redis-py's pipelines (Debian's 4.3): there the
        # status is read, then written, a race only with ops changing it that instant.
        cluster = is_cluster(self.client)
        with self.client.pipeline(transaction=not cluster) as pipe:
            reader: Any = self.client if cluster else pipe
            if not cluster:
                pipe.watch(tenant_key)  # type: ignore[no-untyped-call]
            status = cast(str | None, reader.hget(tenant_key, keys.FIELD_STATUS))
            if status != TenantStatus.ACTIVE.value:
                pipe.reset()
                return False
            if not cluster:
                pipe.multi()
            pipe.hset(
                tenant_key,
                mapping={
                    keys.FIELD_STATUS: TenantStatus.SUSPENDED.value,
                    keys.FIELD_REASON: reason,
                    keys.FIELD_UPDATED_AT: str(int(now)),
                    keys.FIELD_AUTO_SUSPENDED_AT: str(int(now)),
                },
            )
            pipe.execute()
        self.client.delete(*counters)
        return True

    def audit(self, tenant: str, action: str, decision: Decision, now: float) -> dict[str, str]:
        """An automatic action's event in the audit stream, with the figures as its evidence."""
        fields = {
            "event": action,
            "tenant": tenant,
            "measure": decision.measure.value,
            "events": str(decision.events),
            "delivered": str(decision.delivered),
            "ts": str(int(now)),
            "detail": decision.figures,
        }
        with self.client.pipeline(transaction=False) as pipe:
            queue_audit(pipe, fields, now)
            queue_count(pipe, "action", action)
            pipe.execute()
        return fields

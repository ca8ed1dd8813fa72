"""The ladder's Redis side: an offence recorded, a suspension lifted, the suspensions listed.

Keys (store.keys), all under the tenant's hash tag but the tenant hash and
the audit stream:

keys.near_cap_counter(...)     the near-cap counter the charge script counts; deleted here
keys.offences(tenant)          hash: sender identity -> offences, no expiry (the tenant's
                               history; HDEL the field to forget a sender's)
keys.suspended_subjects(tenant) hash: sender:<identity> | domain:<domain> ->
                               "<unix time> <reason>"; HDEL one field lifts it
keys.tenant(tenant)            the third rung: status terminated, reason, updated_at,
                               auto_terminated_at
keys.AUDIT_STREAM              one event per rung taken, and per lift

An offence is ONE pipelined round trip, on top of the transaction's two, and
only when an offence fires (rare: the K + 1-th near-cap transaction of one
sender with one content): HSET of the sender's offence count, DEL of the
counter that fired, the rung's write (HSET of the suspended field, or of the
tenant hash's status), XADD of the audit event. Not MULTI: the tenant hash
and the audit stream have no tenant tag, so on Redis Cluster the commands
go to their own slots. Which rung the offence reaches is decided before the
call (policy.ladder, from the offence count of the MAIL FROM read), so the
call only writes. In shadow mode it changes no state (no suspension, no
status, no count); the counter is still deleted, so one offence is reported
once, and the event says `would-suspend` / `would-terminate`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from aupmilter.policy.ladder import Offence, Rung
from aupmilter.policy.limits import recipient_key
from aupmilter.policy.tenancy import TenantStatus
from aupmilter.store import keys
from aupmilter.store.client import STORE_ERRORS, StoreUnavailable, metrics
from aupmilter.store.shared_counts import queue_count
from aupmilter.store.suppression import queue_audit

log = logging.getLogger("aupmilter.ladder")


class Subject(StrEnum):
    SENDER = "sender"
    DOMAIN = "domain"


@dataclass(frozen=True, slots=True)
class Suspension:
    kind: Subject
    subject: str
    since: int
    """Unix time of the suspension (0 when the value was written by hand without one)."""
    reason: str

    @classmethod
    def parse(cls, field: str, value: str) -> Suspension | None:
        for kind, prefix in (
            (Subject.SENDER, keys.SUSPENDED_SENDER),
            (Subject.DOMAIN, keys.SUSPENDED_DOMAIN),
        ):
            if field.startswith(prefix):
                since, _, reason = value.partition(" ")
                if not since.isdigit():
                    since, reason = "0", value
                return cls(kind, field[len(prefix) :], int(since), reason)
        return None


def suspended_field(kind: Subject, subject: str) -> str:
    if kind is Subject.SENDER:
        return keys.suspended_sender(subject)
    return keys.suspended_domain(subject)


class LadderStore:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def record(self, offence: Offence, counter_key: str) -> int | None:
        """Record the offence, take its rung, reset its counter, audit it: one round trip.

        The sender's count is set to the offence's number, not incremented: the
        count and the rung taken stay equal even when two offences of one sender
        (two contents) raced from the same MAIL FROM count. Returns that count
        (None in shadow mode, which counts nothing); StoreUnavailable when Redis
        cannot answer.
        """
        fields = offence.audit_fields()
        tenant = offence.tenant
        try:
            with self.client.pipeline(transaction=False) as pipe:
                if not offence.shadow:
                    pipe.hset(keys.offences(tenant), offence.sender, str(offence.offence))
                pipe.delete(counter_key)
                if not offence.shadow:
                    self._queue_rung(pipe, offence)
                queue_audit(pipe, fields, offence.now)
                action = f"would-{fields['event']}" if offence.shadow else fields["event"]
                queue_count(pipe, "action", action)
                metrics().redis_call("offence", pipe.execute)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        log.warning(
            "%s%s: %s",
            fields["event"],
            " (shadow mode)" if offence.shadow else "",
            offence.reason,
            extra={"event": dict(fields)},
        )
        return None if offence.shadow else offence.offence

    @staticmethod
    def _queue_rung(pipe: Any, offence: Offence) -> None:
        if offence.rung is Rung.TENANT:
            now = str(int(offence.now))
            pipe.hset(
                keys.tenant(offence.tenant),
                mapping={
                    keys.FIELD_STATUS: TenantStatus.TERMINATED.value,
                    keys.FIELD_REASON: offence.reason,
                    keys.FIELD_UPDATED_AT: now,
                    keys.FIELD_AUTO_TERMINATED_AT: now,
                },
            )
            return
        kind = Subject.SENDER if offence.rung is Rung.SENDER else Subject.DOMAIN
        field = suspended_field(kind, offence.subject)
        pipe.hset(keys.suspended_subjects(offence.tenant), field, offence.stored_value)

    def lift(
        self, tenant: str, kind: Subject, subject: str, now: float, by: str = "cli"
    ) -> Suspension | None:
        """Lift one suspension (HDEL) and audit it as `lifted`; None when it was not suspended.

        A sender is tried as written and normalised (domain lower-cased), a domain
        lower-cased: the milter writes the normalised forms.
        """
        key = keys.suspended_subjects(tenant)
        if kind is Subject.DOMAIN:
            candidates = [subject.strip().rstrip(".").lower()]
        else:
            candidates = list(dict.fromkeys([subject.strip(), recipient_key(subject.strip())]))
        fields = [suspended_field(kind, c) for c in candidates]
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hmget(key, fields)
            pipe.hdel(key, *fields)
            values, removed = pipe.execute()
        if not removed:
            return None
        field, value = next((f, v) for f, v in zip(fields, values, strict=True) if v is not None)
        lifted = Suspension.parse(field, str(value))
        assert lifted is not None
        event = {
            "event": "lifted",
            "tenant": tenant,
            "subject": lifted.subject,
            "kind": kind.value,
            "by": by,
            "ts": str(int(now)),
            "detail": f"{kind.value} {lifted.subject} lifted by {by}; was: {lifted.reason}",
        }
        with self.client.pipeline(transaction=False) as pipe:
            queue_audit(pipe, event, now)
            pipe.execute()
        log.info("lifted %s %s of tenant %s", kind.value, lifted.subject, tenant)
        return lifted

    def suspensions(self, tenant: str) -> list[Suspension]:
        """Every suspended domain and sender of the tenant, sorted."""
        flat = self.client.hgetall(keys.suspended_subjects(tenant))
        found = [Suspension.parse(str(f), str(v)) for f, v in flat.items()]
        return sorted((s for s in found if s is not None), key=lambda s: (s.kind, s.subject))

    def offences(self, tenant: str) -> dict[str, int]:
        flat = self.client.hgetall(keys.offences(tenant))
        return {str(k): int(v) for k, v in flat.items()}

"""Per-tenant suppression lists in Redis, and the unsubscribe token references.

What this module stores under the keys of store.keys (the end-of-message
script reads the first one too):

keys.suppressed(tenant)     hash: field = recipient address, normalised (local part as
                            given, domain lower-cased); value = "<source> <unix-time>"
                            with source one-click | mailto | complaint | bounce | manual
keys.unsubscribe_ref(ref)   string: "<tenant>\\n<address>" for the unsubscribe token
                            reference <ref> (see aupmilter.policy.tokens); expires with the tokens
keys.AUDIT_STREAM           stream: audit events (appended here; the milter trims it to
                            its [audit] retention_days, so one retention holds for all)
keys.SHARED_COUNTS          hash: `suppression:<source>` counts the addresses newly suppressed
                            (store.shared_counts), in the same pipeline as the audit events

The suppression hash carries the tenant's Redis Cluster hash tag, so a script
may touch it with the tenant's windows. The first suppression of an address
is kept (HSETNX): a second unsubscribe is answered the same way but does not
rewrite when and how the address left.

Every change is an audit event: one log line (logger `aupmilter.suppression`)
and one entry in the audit stream. The commands are queued on a pipeline
by functions shared by the synchronous client (milter, CLI, intake) and the
asyncio client (the web service).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

from aupmilter.policy.limits import recipient_key
from aupmilter.policy.tenancy import normalize_domain
from aupmilter.policy.tokens import Reference
from aupmilter.store import keys
from aupmilter.store.shared_counts import queue_count

log = logging.getLogger("aupmilter.suppression")

MAX_ADDRESS_LENGTH = 254
MAX_LOCAL_PART_LENGTH = 64
BATCH_SIZE = 1000


class Source(StrEnum):
    ONE_CLICK = "one-click"
    MAILTO = "mailto"
    COMPLAINT = "complaint"
    BOUNCE = "bounce"
    MANUAL = "manual"


class AddressError(ValueError):
    """An address that cannot be suppressed; the text says what is wrong with it."""


normalize_address = recipient_key
"""Local part as given, domain lower-cased: the form stored, and compared at end of message."""


def validate_address(raw: str) -> str:
    """A recipient address typed by a person or read from a file, normalised; AddressError."""
    address = raw.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    if not address:
        raise AddressError("empty address")
    if len(address) > MAX_ADDRESS_LENGTH:
        raise AddressError(f"longer than {MAX_ADDRESS_LENGTH} characters")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 or c in "<>,;" for c in address):
        raise AddressError("contains spaces, control characters or one of < > , ;")
    local, at, domain = address.rpartition("@")
    if not at or not local:
        raise AddressError("expected local-part@domain")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART_LENGTH:
        raise AddressError(f"local part longer than {MAX_LOCAL_PART_LENGTH} octets")
    if normalize_domain(domain) is None or "." not in domain.strip("."):
        raise AddressError(f"{domain!r} is not a domain name")
    return normalize_address(address)


@dataclass(frozen=True, slots=True)
class Suppression:
    tenant: str
    address: str
    source: Source
    since: int
    """Unix time of the first suppression."""

    @property
    def value(self) -> str:
        return f"{self.source.value} {self.since}"

    @classmethod
    def parse(cls, tenant: str, address: str, value: str) -> Suppression:
        """A stored entry; values written by hand that do not parse read as manual, time 0."""
        source_text, _, since_text = value.partition(" ")
        try:
            source = Source(source_text)
        except ValueError:
            source = Source.MANUAL
        since = int(since_text) if since_text.isdigit() else 0
        return cls(tenant, address, source, since)


@dataclass(frozen=True, slots=True)
class Outcome:
    suppression: Suppression
    added: bool
    """False when the address was already suppressed (the first record is kept)."""


def audit_fields(
    action: str, suppression: Suppression, added: bool, detail: str = ""
) -> dict[str, str]:
    fields = {
        "event": action,
        "tenant": suppression.tenant,
        "address": suppression.address,
        "source": suppression.source.value,
        "ts": str(suppression.since),
        "new": "1" if added else "0",
    }
    if detail:
        fields["detail"] = detail
    return fields


NOT_RECIPIENT_EVENT = "unsubscribe-not-recipient"
"""A message token used for an address that was not a recipient of its message."""


def not_recipient_fields(
    tenant: str, address: str, source: Source, now: float, detail: str = ""
) -> dict[str, str]:
    """The audit event of an unsubscribe refused because ``address`` never got the message.

    The requester is told nothing (their answer is a success's); ops see who tried what.
    """
    return audit_fields(NOT_RECIPIENT_EVENT, Suppression(tenant, address, source, int(now)),
                        False, detail)  # fmt: skip


def queue_not_recipient(pipe: Any, fields: dict[str, str], now: float) -> None:
    """The audit event and the shared count of a refused message-token unsubscribe."""
    queue_audit(pipe, fields, now)
    queue_count(pipe, "unsubscribe", "not-recipient")


def queue_audit(pipe: Any, fields: dict[str, str], now: float) -> None:
    """XADD an event, without trimming: the milter trims by MINID to the configured retention
    as it writes its own events (audit.AuditTrail), so a writer that knows no configuration
    (the CLI, the web service) can never cut the trail shorter than configured."""
    fields.setdefault("ts", f"{now:.3f}")
    pipe.xadd(keys.AUDIT_STREAM, fields)


def log_event(fields: dict[str, str]) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info(
            "%s %s for tenant %s (%s)%s",
            fields["event"],
            fields["address"],
            fields["tenant"],
            fields["source"],
            "" if fields["new"] == "1" else ", already so",
            extra={"event": dict(fields)},
        )


class SuppressionStore:
    """Synchronous access: the milter, `aup-milter suppress` and `aup-milter intake`."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def add(
        self, tenant: str, address: str, source: Source, now: float, detail: str = ""
    ) -> Outcome:
        return self.add_many(tenant, [address], source, now, detail)[0]

    def add_many(
        self,
        tenant: str,
        addresses: Sequence[str],
        source: Source,
        now: float,
        detail: str = "",
        audit_log: bool = True,
    ) -> list[Outcome]:
        """Suppress already-normalised addresses: two pipelined round trips per call."""
        key = keys.suppressed(tenant)
        wanted = [Suppression(tenant, a, source, int(now)) for a in addresses]
        with self.client.pipeline(transaction=False) as pipe:
            for entry in wanted:
                pipe.hsetnx(key, entry.address, entry.value)
            for entry in wanted:
                pipe.hget(key, entry.address)
            replies = pipe.execute()
        added_flags, stored = replies[: len(wanted)], replies[len(wanted) :]
        outcomes = [
            Outcome(
                entry if added else Suppression.parse(tenant, entry.address, value or ""),
                bool(added),
            )
            for entry, added, value in zip(wanted, added_flags, stored, strict=True)
        ]
        with self.client.pipeline(transaction=False) as pipe:
            for outcome in outcomes:
                fields = audit_fields("suppress", outcome.suppression, outcome.added, detail)
                if outcome.added:
                    fields["ts"] = str(int(now))
                queue_audit(pipe, fields, now)
                if audit_log:
                    log_event(fields)
            queue_count(pipe, "suppression", source.value, sum(o.added for o in outcomes))
            pipe.execute()
        return outcomes

    def refuse_not_recipient(
        self, tenant: str, address: str, source: Source, now: float, detail: str = ""
    ) -> None:
        """What `add` costs (two round trips: a read, then the audit event), suppressing
        nothing: so the answer to a non-recipient cannot be told apart by its timing."""
        self.client.hget(keys.suppressed(tenant), address)
        fields = not_recipient_fields(tenant, address, source, now, detail)
        with self.client.pipeline(transaction=False) as pipe:
            queue_not_recipient(pipe, fields, now)
            pipe.execute()
        log_event(fields)

    def remove(self, tenant: str, address: str, now: float, detail: str = "") -> bool:
        key = keys.suppressed(tenant)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hget(key, address)
            pipe.hdel(key, address)
            value, removed = pipe.execute()
        if removed:
            entry = Suppression.parse(tenant, address, value or "")
            fields = audit_fields("unsuppress", entry, True, detail)
            fields["ts"] = str(int(now))
            with self.client.pipeline(transaction=False) as pipe:
                queue_audit(pipe, fields, now)
                pipe.execute()
            log_event(fields)
        return bool(removed)

    def get(self, tenant: str, address: str) -> Suppression | None:
        value = self.client.hget(keys.suppressed(tenant), address)
        return None if value is None else Suppression.parse(tenant, address, str(value))

    def suppressed_among(self, tenant: str, addresses: Iterable[str]) -> list[str]:
        """Which of these (normalised) addresses are suppressed: one HMGET."""
        wanted = list(addresses)
        if not wanted:
            return []
        values = self.client.hmget(keys.suppressed(tenant), wanted)
        return [a for a, v in zip(wanted, values, strict=True) if v is not None]

    def count(self, tenant: str) -> int:
        return int(self.client.hlen(keys.suppressed(tenant)))

    def scan(self, tenant: str) -> Iterator[Suppression]:
        """Every entry, in Redis's order; HSCAN keeps the server responsive on big lists."""
        for address, value in self.client.hscan_iter(keys.suppressed(tenant), count=BATCH_SIZE):
            yield Suppression.parse(tenant, str(address), str(value))

    def resolve_reference(self, ref_text: str) -> str | None:
        value = self.client.get(keys.unsubscribe_ref(ref_text))
        return None if value is None else str(value)

    def store_references(self, references: Iterable[Reference], ttl_seconds: int) -> None:
        """Remember what tokens stand for, as long as the tokens live (refreshed on each send)."""
        with self.client.pipeline(transaction=False) as pipe:
            for reference in references:
                queue_reference(pipe, reference, ttl_seconds)
            pipe.execute()


def queue_reference(pipe: Any, reference: Reference, ttl_seconds: int) -> None:
    pipe.set(keys.unsubscribe_ref(reference.ref_text), reference.store_value, ex=ttl_seconds)

"""A tenant's consent ledger and last-bulk record in Redis (policy.consent's inputs).

keys.consent(tenant)          hash: address -> Unix seconds of the consent
keys.consent_sources(tenant)  hash: address -> the source text of that consent
keys.last_bulk(tenant)        hash: address -> Unix seconds of the last bulk mail the
                              tenant's messages delivered to it (charge.lua writes it)

Addresses are normalised as the suppression hash stores them (local part as
given, domain lower-cased: store.suppression.validate_address). The time and
the source live in two hashes so that the end-of-message script reads only
times (one HMGET per hash, bounded by the recipient cap); the source is only
read by `consent show` and `consent export`.

An import keeps the later consent of an address: a re-confirmation moves it
forward, an old export imported again does not move it back. Each batch is
two pipelined round trips (HMGET of the stored times, then HSET of the newer
ones), BATCH_SIZE lines at a time.

Audit events (the audit stream, keys.AUDIT_STREAM, and the `aupmilter.consent` logger): one
per import (its counts), one per removed address, one per prune. A per-address
event for 100k imported lines would drown the trail the milter's decisions
are read from; the ledger itself says what was imported.

Growth: the ledger grows with what the tenant imports; the last-bulk hash
with the tenant's bulk audience (every address its bulk mail reached, while
its plan has consent on). Redis 7.0 (Debian 12) has no per-field expiry, so
`prune` drops last-bulk entries older than a cutoff (the lapse plus a margin:
those addresses have lapsed or count as never mailed either way) with HSCAN
and HDEL, BATCH_SIZE at a time; the memory per entry is measured by
bench/consent_memory.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from aupmilter.store import keys
from aupmilter.store.suppression import queue_audit

log = logging.getLogger("aupmilter.consent")

BATCH_SIZE = 1000
MAX_SOURCE_LENGTH = 64
FUTURE_SLACK = 86_400
"""A consent may be dated at most a day ahead (clock skew); later ones never lapse, so refused."""
IMPORT_EVENT = "consent-import"
REMOVE_EVENT = "consent-remove"
PRUNE_EVENT = "consent-prune"


class ConsentError(ValueError):
    """A time or source that cannot be stored; the text says what is wrong with it."""


def parse_consent_time(raw: str, now: float) -> int:
    """Unix seconds from epoch seconds ("1714557600", "1714557600.5") or ISO 8601
    ("2024-05-01", "2024-05-01T10:00:00Z", "...+02:00"; no zone means UTC)."""
    text = raw.strip()
    if not text:
        raise ConsentError("no time of consent")
    try:
        if text.replace(".", "", 1).isdigit():
            seconds = int(float(text))
        else:
            when = datetime.fromisoformat(text)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = int(when.timestamp())
    except (ValueError, OverflowError):
        raise ConsentError(
            f"time {text[:40]!r} is neither epoch seconds nor ISO 8601"
            " (2024-05-01 or 2024-05-01T10:00:00Z)"
        ) from None
    if seconds <= 0:
        raise ConsentError(f"time {text[:40]!r} is before 1970")
    if seconds > now + FUTURE_SLACK:
        raise ConsentError(f"time {text[:40]!r} is in the future")
    return seconds


def validate_source(raw: str) -> str:
    """A source text: 1-64 printable ASCII characters."""
    source = raw.strip()
    if not source:
        raise ConsentError("empty source")
    if len(source) > MAX_SOURCE_LENGTH:
        raise ConsentError(f"source longer than {MAX_SOURCE_LENGTH} characters")
    if any(not (" " <= c <= "~") for c in source):
        raise ConsentError("source must be printable ASCII")
    return source


@dataclass(frozen=True, slots=True)
class ConsentEntry:
    """One line to import: a normalised address, when it consented, where."""

    address: str
    consented_at: int
    source: str


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """What the store holds for one address (any part may be absent)."""

    tenant: str
    address: str
    consented_at: int | None
    source: str | None
    last_bulk: int | None


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    added: int
    updated: int
    kept: int
    """Lines whose consent was not newer than the one stored (nothing written)."""


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


class ConsentStore:
    """Synchronous access for `aup-milter consent` (the milter reads through charge.lua)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def import_batch(self, tenant: str, entries: Sequence[ConsentEntry]) -> BatchOutcome:
        """Store each address's consent if newer than the one kept: two round trips."""
        latest: dict[str, ConsentEntry] = {}
        for entry in entries:
            known = latest.get(entry.address)
            if known is None or entry.consented_at > known.consented_at:
                latest[entry.address] = entry
        duplicates = len(entries) - len(latest)
        if not latest:
            return BatchOutcome(0, 0, duplicates)
        addresses = list(latest)
        stored = self.client.hmget(keys.consent(tenant), addresses)
        times: dict[Any, Any] = {}
        sources: dict[Any, Any] = {}
        added = updated = 0
        for address, value in zip(addresses, stored, strict=True):
            entry, before = latest[address], _int(value)
            if before is not None and entry.consented_at <= before:
                continue
            times[address] = entry.consented_at
            sources[address] = entry.source
            if before is None:
                added += 1
            else:
                updated += 1
        if times:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.hset(keys.consent(tenant), mapping=times)
                pipe.hset(keys.consent_sources(tenant), mapping=sources)
                pipe.execute()
        return BatchOutcome(added, updated, len(entries) - added - updated)

    def audit_import(
        self, tenant: str, name: str, added: int, updated: int, kept: int, refused: int
    ) -> None:
        now = time.time()
        fields = {
            "event": IMPORT_EVENT,
            "tenant": tenant,
            "file": name[-200:],
            "added": str(added),
            "updated": str(updated),
            "kept": str(kept),
            "refused": str(refused),
        }
        self._audit(fields, now)
        log.info(
            "consent import for tenant %s from %s: %d added, %d updated, %d kept, %d refused",
            tenant, name, added, updated, kept, refused, extra={"event": fields},
        )  # fmt: skip

    def get(self, tenant: str, address: str) -> ConsentRecord:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hget(keys.consent(tenant), address)
            pipe.hget(keys.consent_sources(tenant), address)
            pipe.hget(keys.last_bulk(tenant), address)
            consented, source, last = pipe.execute()
        return ConsentRecord(
            tenant, address, _int(consented), None if source is None else str(source), _int(last)
        )

    def has_ledger(self, tenant: str) -> bool:
        return bool(self.client.exists(keys.consent(tenant)))

    def counts(self, tenant: str) -> tuple[int, int]:
        """(ledger entries, last-bulk entries)."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hlen(keys.consent(tenant))
            pipe.hlen(keys.last_bulk(tenant))
            ledger, last = pipe.execute()
        return int(ledger), int(last)

    def remove(self, tenant: str, address: str, detail: str = "") -> bool:
        """Forget the address: its consent, source and last bulk (audited); False if unknown.

        Afterwards the address is unrecorded: on a ledger plan new or lapsed as the
        plan's `unrecorded` says, without a ledger never mailed.
        """
        now = time.time()
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hdel(keys.consent(tenant), address)
            pipe.hdel(keys.consent_sources(tenant), address)
            pipe.hdel(keys.last_bulk(tenant), address)
            removed = pipe.execute()
        if not any(removed):
            return False
        fields = {"event": REMOVE_EVENT, "tenant": tenant, "address": address}
        if detail:
            fields["detail"] = detail
        self._audit(fields, now)
        log.info("consent removed for %s of tenant %s", address, tenant, extra={"event": fields})
        return True

    def scan(self, tenant: str) -> Iterator[ConsentRecord]:
        """Every ledger entry with its source and last bulk, BATCH_SIZE per HSCAN page."""
        page: list[tuple[str, int | None]] = []
        for address, value in self.client.hscan_iter(keys.consent(tenant), count=BATCH_SIZE):
            page.append((str(address), _int(value)))
            if len(page) >= BATCH_SIZE:
                yield from self._complete(tenant, page)
                page = []
        yield from self._complete(tenant, page)

    def _complete(self, tenant: str, page: list[tuple[str, int | None]]) -> Iterator[ConsentRecord]:
        if not page:
            return
        addresses = [address for address, _ in page]
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.consent_sources(tenant), addresses)
            pipe.hmget(keys.last_bulk(tenant), addresses)
            sources, lasts = pipe.execute()
        for (address, consented), source, last in zip(page, sources, lasts, strict=True):
            yield ConsentRecord(
                tenant, address, consented, None if source is None else str(source), _int(last)
            )

    def prune(self, tenant: str, before: int) -> int:
        """Drop the last-bulk entries older than `before` (Unix seconds); how many (audited)."""
        now = time.time()
        key = keys.last_bulk(tenant)
        doomed: list[str] = []
        dropped = 0
        for address, value in self.client.hscan_iter(key, count=BATCH_SIZE):
            stamp = _int(value)
            if stamp is None or stamp < before:
                doomed.append(str(address))
            if len(doomed) >= BATCH_SIZE:
                dropped += int(self.client.hdel(key, *doomed))
                doomed = []
        if doomed:
            dropped += int(self.client.hdel(key, *doomed))
        fields = {
            "event": PRUNE_EVENT,
            "tenant": tenant,
            "before": str(before),
            "dropped": str(dropped),
        }
        self._audit(fields, now)
        log.info(
            "consent prune for tenant %s: %d last-bulk entries older than %d dropped",
            tenant, dropped, before, extra={"event": fields},
        )  # fmt: skip
        return dropped

    def _audit(self, fields: dict[str, str], now: float) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            queue_audit(pipe, fields, now)
            pipe.execute()

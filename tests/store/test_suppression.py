"""Suppression lists and token references against a real Redis."""

from __future__ import annotations

import time
from typing import cast

import pytest
import redis

from aupmilter.policy.tokens import TokenSigner
from aupmilter.store import keys
from aupmilter.store.keys import AUDIT_STREAM
from aupmilter.store.suppression import (
    AddressError,
    Source,
    Suppression,
    SuppressionStore,
    normalize_address,
    validate_address,
)

NOW = 1_700_000_000.0


def stream_events(client: redis.Redis) -> list[dict[str, str]]:
    entries = cast(list[tuple[str, dict[str, str]]], client.xrange(AUDIT_STREAM))
    return [fields for _id, fields in entries]


@pytest.fixture
def store(redis_client: redis.Redis) -> SuppressionStore:
    return SuppressionStore(redis_client)


def test_key_layout_is_the_one_the_eom_script_reads(
    store: SuppressionStore, redis_client: redis.Redis
) -> None:
    store.add("acme", "Alice@example.net", Source.ONE_CLICK, NOW)
    assert keys.suppressed("acme") == "aup:{acme}:suppressed"
    assert redis_client.hgetall("aup:{acme}:suppressed") == {
        "Alice@example.net": "one-click 1700000000"
    }


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Alice@Example.NET", "Alice@example.net"),
        ("bob@x.example", "bob@x.example"),
        ('"odd@local"@Host.Example', '"odd@local"@host.example'),
        ("no-at-sign", "no-at-sign"),
    ],
)
def test_normalisation_keeps_the_local_part(raw: str, normalised: str) -> None:
    assert normalize_address(raw) == normalised


@pytest.mark.parametrize(
    "raw", ["", "plain", "@example.net", "a@", "a b@example.net", "a@localhost", "a@ex..ample",
            "x" * 65 + "@example.net", "a@example.net, b@example.net", "a\n@example.net"],
)  # fmt: skip
def test_invalid_addresses_are_refused(raw: str) -> None:
    with pytest.raises(AddressError):
        validate_address(raw)


def test_validation_strips_brackets_and_normalises() -> None:
    assert validate_address(" <Bob@Example.Net> ") == "Bob@example.net"


def test_first_suppression_is_kept(store: SuppressionStore) -> None:
    first = store.add("acme", "a@example.net", Source.MAILTO, NOW)
    again = store.add("acme", "a@example.net", Source.ONE_CLICK, NOW + 50)
    assert first.added and not again.added
    assert again.suppression == Suppression("acme", "a@example.net", Source.MAILTO, int(NOW))
    assert store.get("acme", "a@example.net") == first.suppression
    assert store.get("globex", "a@example.net") is None, "lists are per tenant"


def test_every_change_is_an_audit_event(
    store: SuppressionStore, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="aupmilter.suppression")
    store.add("acme", "a@example.net", Source.COMPLAINT, NOW, detail="arf")
    store.add("acme", "a@example.net", Source.MANUAL, NOW + 1)
    assert store.remove("acme", "a@example.net", NOW + 2)
    assert not store.remove("acme", "a@example.net", NOW + 3)
    events = stream_events(redis_client)
    assert [(e["event"], e["source"], e["new"]) for e in events] == [
        ("suppress", "complaint", "1"),
        ("suppress", "complaint", "0"),
        ("unsuppress", "complaint", "1"),
    ]
    assert events[0]["detail"] == "arf" and events[0]["tenant"] == "acme"
    lines = [r.getMessage() for r in caplog.records if r.name == "aupmilter.suppression"]
    assert len(lines) == 3 and "already so" in lines[1]


def test_audit_events_are_appended_without_trimming(
    store: SuppressionStore, redis_client: redis.Redis
) -> None:
    """Only the milter trims (to its configured retention): a suppression never cuts the trail."""
    old_ms = int(time.time() * 1000) - 30 * 86_400_000
    with redis_client.pipeline(transaction=False) as pipe:
        for i in range(300):
            pipe.xadd(AUDIT_STREAM, {"event": "old"}, id=f"{old_ms}-{i}")
        pipe.execute()
    store.add("acme", "a@example.net", Source.MANUAL, time.time())
    events = [fields["event"] for fields in stream_events(redis_client)]
    assert events.count("old") == 300 and events[-1] == "suppress"


def test_bulk_add_and_lookup(store: SuppressionStore) -> None:
    addresses = [f"user{i}@example.net" for i in range(2500)]
    outcomes = store.add_many("acme", addresses, Source.BOUNCE, NOW, audit_log=False)
    assert sum(o.added for o in outcomes) == 2500
    assert store.count("acme") == 2500
    assert store.suppressed_among("acme", ["user7@example.net", "other@example.net"]) == [
        "user7@example.net"
    ]
    assert {s.address for s in store.scan("acme")} == set(addresses)


def test_hand_written_values_read_as_manual(
    store: SuppressionStore, redis_client: redis.Redis
) -> None:
    redis_client.hset("aup:{acme}:suppressed", "x@example.net", "1")
    entry = store.get("acme", "x@example.net")
    assert entry is not None and entry.source is Source.MANUAL and entry.since == 0


def test_references_expire_with_the_tokens(
    store: SuppressionStore, redis_client: redis.Redis
) -> None:
    signer = TokenSigner([b"k" * 32], 30)
    issued = signer.recipient_token("acme", "a@example.net", NOW)
    store.store_references([issued.reference], signer.lifetime_seconds)
    key = f"aup:unsubref:{issued.reference.ref_text}"
    assert 0 < redis_client.ttl(key) <= 30 * 86_400
    claims = signer.verify(issued.token, NOW)
    stored = store.resolve_reference(claims.ref_text)
    assert claims.resolve(stored) == issued.reference

"""The Feedback-ID value: where the campaign comes from, field cleaning and bounds, replacement."""

from __future__ import annotations

import pytest

from aupmilter.policy.actions import AddHeader
from aupmilter.policy.feedback import (
    MAX_CAMPAIGN,
    RELAY_ID,
    CampaignSource,
    clean_field,
    feedback_stamp,
    needs_fingerprint,
)
from aupmilter.policy.headers import HeaderField as H
from aupmilter.policy.unsubscribe import HeaderDeletion

FINGERPRINT = "3a9c1e0b7d42f00d" + "0" * 16
BASE = [H("From", b" news@acme.example"), H("Subject", b" Autumn news")]
LONG = "spring-sale-" + "x" * 40


def stamp(headers: list[H], fingerprint: str | None = FINGERPRINT, tenant: str = "acme") -> str:
    return feedback_stamp(
        [*BASE, *headers], tenant=tenant, stream="bulk", relay_id="relay1", fingerprint=fingerprint
    ).value


@pytest.mark.parametrize(
    ("headers", "fingerprint", "expected", "source"),
    [
        ([H("Feedback-ID", b" spring24:cust9:promo:tenantesp")], FINGERPRINT,
         "spring24:acme:bulk:relay1", CampaignSource.TENANT),
        ([H("feedback-id", b" a1:b")], None, "a1:acme:bulk:relay1", CampaignSource.TENANT),
        ([H("Feedback-ID", b" onlysender")], FINGERPRINT,
         "3a9c1e0b7d42:acme:bulk:relay1", CampaignSource.CONTENT),
        ([H("Feedback-ID", b" :x:y:esp12")], FINGERPRINT,
         "3a9c1e0b7d42:acme:bulk:relay1", CampaignSource.CONTENT),
        ([H("Feedback-ID", b" ::"), H("Feedback-ID", b" second:x")], None,
         "second:acme:bulk:relay1", CampaignSource.TENANT),
        ([H("Feedback-ID", b" c1:x"), H("List-Id", b" <news.acme.example>")], FINGERPRINT,
         "c1:acme:bulk:relay1", CampaignSource.TENANT),
        ([H("List-Id", b" Acme News <news.acme.example>")], FINGERPRINT,
         "news.acme.example:acme:bulk:relay1", CampaignSource.LIST_ID),
        ([H("List-Id", b" news.acme.example")], None,
         "news.acme.example:acme:bulk:relay1", CampaignSource.LIST_ID),
        ([H("List-Id", b" <>")], FINGERPRINT,
         "3a9c1e0b7d42:acme:bulk:relay1", CampaignSource.CONTENT),
        ([], FINGERPRINT, "3a9c1e0b7d42:acme:bulk:relay1", CampaignSource.CONTENT),
        ([], None, "none:acme:bulk:relay1", CampaignSource.NONE),
        ([H("Feedback-ID", b" Fr\xc3\xbchling 2024!:x")], None,
         "Fr-hling-2024:acme:bulk:relay1", CampaignSource.TENANT),
        ([H("Feedback-ID", b"\r\n\tfolded\r\n :x")], None,
         "folded:acme:bulk:relay1", CampaignSource.TENANT),
    ],
)  # fmt: skip
def test_campaign_rules(
    headers: list[H], fingerprint: str | None, expected: str, source: CampaignSource
) -> None:
    result = feedback_stamp(
        [*BASE, *headers], tenant="acme", stream="bulk", relay_id="relay1", fingerprint=fingerprint
    )
    assert result.value == expected
    assert result.campaign_source is source
    assert result.add == AddHeader("Feedback-ID", expected)
    assert needs_fingerprint([*BASE, *headers]) is (
        source in (CampaignSource.CONTENT, CampaignSource.NONE)
    )


@pytest.mark.parametrize(
    ("text", "bound", "expected"),
    [
        ("spring24", 32, "spring24"),
        ("a:b", 32, "a-b"),
        ("  spaced out  ", 32, "spaced-out"),
        ("--edge..", 32, "edge"),
        ("one\r\ntwo", 32, "one-two"),
        ("x" * 32, 32, "x" * 32),
        ("", 32, ""),
        (":::", 32, ""),
    ],
)  # fmt: skip
def test_clean_field(text: str, bound: int, expected: str) -> None:
    assert clean_field(text, bound) == expected


def test_long_campaigns_keep_a_prefix_and_stay_distinct() -> None:
    one = stamp([H("Feedback-ID", f" {LONG}a:x".encode())]).split(":")[0]
    two = stamp([H("Feedback-ID", f" {LONG}b:x".encode())]).split(":")[0]
    assert len(one) == len(two) == MAX_CAMPAIGN
    assert one.startswith("spring-sale-xxx") and one != two


@pytest.mark.parametrize(
    "hostile",
    [b" evil:acme:bulk:other", b" a\x00b:c", b" <x>:y", b" " + b"\xff" * 50 + b":z"],
)
def test_no_value_can_add_a_field_or_unsafe_bytes(hostile: bytes) -> None:
    value = stamp([H("Feedback-ID", hostile), H("List-Id", b" <a:b:c>")])
    campaign, tenant, stream, relay = value.split(":")
    assert (tenant, stream, relay) == ("acme", "bulk", "relay1")
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in campaign)


def test_fields_are_bounded() -> None:
    tenant = "t" * 64
    value = stamp([H("List-Id", b" <" + b"l" * 300 + b">")], tenant=tenant)
    campaign, got_tenant, _, _ = value.split(":")
    assert len(campaign) == MAX_CAMPAIGN and got_tenant == tenant, "tenant ids are never cut"


def test_every_own_feedback_id_is_deleted_highest_first() -> None:
    headers = [
        H("Feedback-ID", b" a:b"),
        H("Subject", b" x"),
        H("feedback-id", b" c:d"),
        H("Feedback-Idx", b" not ours"),
    ]
    result = feedback_stamp(headers, tenant="acme", stream="bulk", relay_id="relay1",
                            fingerprint=None)  # fmt: skip
    assert result.delete == (HeaderDeletion("feedback-id", 2), HeaderDeletion("Feedback-ID", 1))
    assert result.value == "a:acme:bulk:relay1"


def test_nothing_to_delete_without_one() -> None:
    result = feedback_stamp(BASE, tenant="acme", stream="bulk", relay_id="relay1",
                            fingerprint=None)  # fmt: skip
    assert result.delete == ()


@pytest.mark.parametrize(
    ("relay_id", "valid"),
    [
        ("relay1", True),
        ("abcde", True),
        ("a" * 15, True),
        ("Relay_2-EU", True),
        ("abcd", False),
        ("a" * 16, False),
        ("relay:1", False),
        ("relay 1", False),
        ("relay1\n", False),
        ("rélay1", False),
        ("", False),
    ],
)
def test_relay_id_rule(relay_id: str, valid: bool) -> None:
    assert (RELAY_ID.fullmatch(relay_id) is not None) is valid
    if not valid:
        with pytest.raises(ValueError, match="5 to 15"):
            feedback_stamp(BASE, tenant="acme", stream="bulk", relay_id=relay_id, fingerprint=None)

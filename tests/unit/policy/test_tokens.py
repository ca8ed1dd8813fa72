"""Unsubscribe tokens: issue, verify, refuse (pure; no store involved)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from aupmilter.policy.tokens import (
    LONGEST_TOKEN,
    MAX_HASHED_RECIPIENTS,
    MAX_TOKEN_LENGTH,
    SECONDS_PER_DAY,
    InvalidToken,
    Reference,
    TokenKind,
    TokenSigner,
    commitment,
)

OLD = b"o" * 32
NEW = b"n" * 40
OTHER = b"x" * 32
NOW = 1_700_000_000.0
DAY = SECONDS_PER_DAY


def signer(*secrets: bytes, lifetime: int = 60) -> TokenSigner:
    return TokenSigner(list(secrets or (NEW,)), lifetime)


def test_recipient_token_round_trip() -> None:
    issued = signer().recipient_token("acme", "Alice@example.net", NOW)
    claims = signer().verify(issued.token, NOW)
    assert claims.kind is TokenKind.RECIPIENT
    assert claims.ref == issued.reference.ref
    reference = claims.resolve(issued.reference.store_value)
    assert reference == Reference(TokenKind.RECIPIENT, "acme", "Alice@example.net")


RECIPIENTS = ("a@example.net", "B@example.org")


def test_message_token_round_trip() -> None:
    issued = signer().message_token("globex", "<m1@globex.example>", NOW, RECIPIENTS)
    claims = signer().verify(issued.token, NOW)
    assert claims.kind is TokenKind.MESSAGE
    reference = claims.resolve(issued.reference.store_value)
    assert reference == issued.reference
    assert (reference.tenant, reference.address) == ("globex", "")
    other = signer().message_token("globex", "<m2@globex.example>", NOW, RECIPIENTS)
    assert other.token != issued.token, "the message tag makes each message's token distinct"
    assert other.reference.ref_text != issued.reference.ref_text, "one stored entry per message"
    batch = signer().message_token("globex", "<m1@globex.example>", NOW, ("c@example.net",))
    assert batch.reference.ref_text != issued.reference.ref_text, (
        "a second batch of the same message keeps the first batch's entry"
    )


def test_a_message_token_knows_its_recipients_and_no_one_else() -> None:
    issued = signer().message_token("globex", "<m1@globex.example>", NOW, RECIPIENTS)
    reference = signer().verify(issued.token, NOW).resolve(issued.reference.store_value)
    assert all(signer().was_recipient(reference, address) for address in RECIPIENTS)
    assert signer().was_recipient(reference, "b@Example.org"), "case does not matter"
    for stranger in ("c@example.net", "b@example.com", "a@example.net ", ""):
        assert not signer().was_recipient(reference, stranger), stranger
    # The hashes are keyed: with another secret they mean nothing.
    assert not signer(OTHER).was_recipient(reference, "a@example.net")
    # A rotation keeps delivered links working: the old secret still verifies.
    assert signer(OTHER, NEW).was_recipient(reference, "B@example.org")


def test_a_recipient_token_knows_its_one_recipient() -> None:
    issued = signer().recipient_token("acme", "Alice@example.net", NOW)
    assert signer().was_recipient(issued.reference, "Alice@example.net")
    assert not signer().was_recipient(issued.reference, "alice@example.net")


def test_the_stored_recipients_are_bounded() -> None:
    many = [f"r{n}@example.net" for n in range(MAX_HASHED_RECIPIENTS + 50)]
    issued = signer().message_token("acme", "<big@x>", NOW, many)
    value = issued.reference.store_value
    assert len(issued.reference.recipient_hashes) == MAX_HASHED_RECIPIENTS
    assert len(value.encode()) < 11 * MAX_HASHED_RECIPIENTS + 100
    reference = signer().verify(issued.token, NOW).resolve(value)
    assert signer().was_recipient(reference, many[0])
    assert not signer().was_recipient(reference, many[-1])
    padded = value + " " + "a" * 10
    with pytest.raises(InvalidToken):
        signer().verify(issued.token, NOW).resolve(padded)


@pytest.mark.parametrize("hashes", ["\x80", "AAAAAAAAAA", "aaaaaaaaa", "aaaaaaaaaaa", "a!aaaaaaaa"])
def test_a_stored_recipient_list_that_is_not_hashes_is_refused(hashes: str) -> None:
    """Found by make fuzz: a non-ASCII stored hash raised UnicodeEncodeError."""
    claims = signer().verify(signer().message_token("acme", "<m@x>", NOW, RECIPIENTS).token, NOW)
    with pytest.raises(InvalidToken):
        claims.resolve(f"acme\n\n{hashes}")


@pytest.mark.parametrize("address", ["a@b.example", "x" * 64 + "@" + "d" * 180 + ".example"])
def test_tokens_are_short_and_url_and_local_part_safe(address: str) -> None:
    for token in (
        signer().recipient_token("t" * 64, address, NOW).token,
        signer().message_token("t" * 64, "<" + "m" * 900 + ">", NOW, [address]).token,
    ):
        assert len(token) <= LONGEST_TOKEN <= 48 < MAX_TOKEN_LENGTH
        assert re.fullmatch(r"[a-z2-7]+", token)
    # "unsubscribe+" and the longest token still fit a 64-octet local part
    assert len("unsubscribe+") + LONGEST_TOKEN <= 64


def test_token_is_deterministic_per_day() -> None:
    a = signer().recipient_token("acme", "a@b.example", NOW)
    b = signer().recipient_token("acme", "a@b.example", NOW + 60)
    c = signer().recipient_token("acme", "a@b.example", NOW + DAY)
    assert a.token == b.token != c.token


def test_upper_case_token_still_verifies() -> None:
    """Some mail systems upper-case local parts; base32 survives that."""
    issued = signer().recipient_token("acme", "a@b.example", NOW)
    assert signer().verify(issued.token.upper(), NOW).ref == issued.reference.ref


def _flip_last(token: str) -> str:
    return token[:-1] + ("a" if token[-1] != "a" else "b")


def _flip_first(token: str) -> str:
    return ("c" if token[0] != "c" else "d") + token[1:]


def _swap_reference(token: str) -> str:
    """Keep the MAC, claim another tenant's reference."""
    from aupmilter.policy.tokens import _b32, _unb32

    raw = bytearray(_unb32(token) or b"")
    raw[3:13] = commitment(TokenKind.RECIPIENT, "globex", "a@b.example")
    return _b32(bytes(raw))


@pytest.mark.parametrize(
    ("case", "mutate"),
    [
        ("truncated by one character", lambda t: t[:-1]),
        ("truncated by eight characters", lambda t: t[:-8]),
        ("one character appended", lambda t: t + "a"),
        ("MAC altered", _flip_last),
        ("header altered", _flip_first),
        ("reference swapped for another tenant's", _swap_reference),
        ("non-alphabet character", lambda t: t[:-1] + "1"),
        ("padding added", lambda t: t + "===="),
        ("URL-escaped junk", lambda t: "%2e%2e%2f" + t),
        ("empty", lambda t: ""),
        ("over-long", lambda t: t * 2),
        ("non-ASCII", lambda t: t[:-1] + "é"),
    ],
)
def test_altered_tokens_are_refused(case: str, mutate: Callable[[str], str]) -> None:
    token = signer().recipient_token("acme", "a@b.example", NOW).token
    with pytest.raises(InvalidToken):
        signer().verify(mutate(token), NOW)


def test_forged_token_with_wrong_secret_is_refused() -> None:
    forged = signer(OTHER).recipient_token("acme", "a@b.example", NOW).token
    with pytest.raises(InvalidToken, match="MAC"):
        signer(NEW, OLD).verify(forged, NOW)


def test_rotation_first_signs_all_verify() -> None:
    before = signer(OLD).recipient_token("acme", "a@b.example", NOW)
    rotated = signer(NEW, OLD)
    assert rotated.verify(before.token, NOW).ref == before.reference.ref
    after = rotated.recipient_token("acme", "a@b.example", NOW)
    assert after.token != before.token, "the new first secret signs"
    assert signer(NEW).verify(after.token, NOW)
    with pytest.raises(InvalidToken):
        signer(OLD).verify(after.token, NOW)
    with pytest.raises(InvalidToken):  # dropping the old secret ends its links
        signer(NEW).verify(before.token, NOW)


def test_expiry_and_future_dates() -> None:
    token = signer(lifetime=30).recipient_token("acme", "a@b.example", NOW).token
    assert signer(lifetime=30).verify(token, NOW + 30 * DAY)
    with pytest.raises(InvalidToken, match="expired"):
        signer(lifetime=30).verify(token, NOW + 31 * DAY)
    assert signer().verify(token, NOW - DAY), "one day of clock skew between hosts is fine"
    with pytest.raises(InvalidToken, match="future"):
        signer().verify(token, NOW - 2 * DAY)


def test_stored_reference_of_another_tenant_is_refused() -> None:
    issued = signer().recipient_token("acme", "a@b.example", NOW)
    claims = signer().verify(issued.token, NOW)
    for stored in (
        "globex\na@b.example",  # same address, other tenant
        "acme\nother@b.example",  # same tenant, other address
        "acme\nA@b.example",  # local parts are case-sensitive
        "acme\n",  # a tenant-only (message) entry
        "acme a@b.example",  # malformed
        "",
        None,  # nothing stored
    ):
        with pytest.raises(InvalidToken):
            claims.resolve(stored)


def test_message_token_cannot_use_a_recipient_entry() -> None:
    claims = signer().verify(signer().message_token("acme", "<m@x>", NOW, RECIPIENTS).token, NOW)
    with pytest.raises(InvalidToken):
        claims.resolve("acme\na@b.example")


@pytest.mark.parametrize(
    ("secrets", "lifetime"),
    [([], 60), ([b"short"], 60), ([NEW, b"short"], 60), ([NEW], 0), ([NEW], 5000)],
)
def test_signer_refuses_weak_settings(secrets: list[bytes], lifetime: int) -> None:
    with pytest.raises(ValueError):
        TokenSigner(secrets, lifetime)

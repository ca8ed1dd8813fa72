"""Unsubscribe tokens: short, URL- and local-part-safe, verified without Redis.

A token goes into two places: the one-click URL (`https://HOST/u/TOKEN`) and
the mailto address (`LOCAL+TOKEN@DOMAIN`), whose local part may hold at most
64 octets (RFC 5321 4.5.3.1.1). So a token cannot carry a whole recipient
address (up to 254 octets) or tenant id (up to 64): it carries a *reference*
instead, a 10-byte commitment SHA-256(kind, tenant, subject), and an
HMAC-SHA256 over (version, kind, issue day, reference[, message tag]).

A message token (a message to several recipients) names no address, so the
person using it says which address to remove (typed on the page, or the
From of the unsubscribe mail). It may only ever remove a recipient of that
message: its stored reference keeps keyed hashes of the message's
recipients (HMAC-SHA256 with the signing secret over tenant, message tag and
address, 48 bits each, at most MAX_HASHED_RECIPIENTS of them: a stored value
of at most ~11 KB), and `TokenSigner.was_recipient` checks an address against
them. The commitment covers the message tag and those hashes, so each
message (each distinct recipient set) has a reference of its own and a
stored list cannot be swapped for another. Whoever holds a forwarded message
token learns nothing from it: a non-recipient gets the answer a recipient
gets, and nothing is suppressed.

Verifying a token (`TokenSigner.verify`) needs only the secrets and the date:
a forged, altered, truncated or expired token is refused without any Redis
lookup, so junk requests cost no store traffic. Only a token that verifies is
then resolved: the relay stored `reference -> "tenant NL address"` when it sent
the message (`Reference.store_value`), and `resolve` recomputes the commitment
from that stored value, so a stored entry pointing at another tenant or
address is refused as well. The HMAC therefore covers tenant, recipient (or
message) and issue date, as RFC 8058 deployments need, while the token stays
at 40 characters (recipient) or 48 (message).

Encoding: RFC 4648 base32, lower case, no padding: only `a-z2-7`, safe in
URLs and in local parts, and immune to mail systems that change the case of
local parts.

Secrets: a list; the first one signs, every one verifies, so a secret can be
rotated without breaking links already delivered (add the new one first,
drop the old one after the token lifetime).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

VERSION = 1
SECONDS_PER_DAY = 86_400
MAC_BYTES = 12
"""96 bits: far beyond online guessing, and every guess is rate limited."""
REF_BYTES = 10
"""80-bit commitments: collisions would need ~2**40 stored references."""
MESSAGE_TAG_BYTES = 5
"""Names the message in logs and the audit trail; the MAC covers it."""
MAX_TOKEN_LENGTH = 64
MIN_SECRET_BYTES = 32
TOKEN_ALPHABET = re.compile(r"^[a-z2-7]+$")
RECIPIENT_HASH_BYTES = 6
"""48 bits per recipient: a typed non-recipient matches one of N hashes with
probability N / 2**48 (1000 hashes: 4e-12), and each try is rate limited."""
MAX_HASHED_RECIPIENTS = 1000
"""Recipients of one message whose hashes are stored (the first ones, in RCPT
order): the stored value stays under 11 KB. A plan that lets bulk messages
go to more recipients should set bulk_one_recipient_per_message."""
_RECIPIENT_HASH = re.compile(rf"^[a-z2-7]{{{(RECIPIENT_HASH_BYTES * 8 + 4) // 5}}}$")
_MAC_CONTEXT = b"aup-milter unsubscribe token\x00"
_REF_CONTEXT = b"aup-milter unsubscribe reference\x00"
_RECIPIENT_CONTEXT = b"aup-milter unsubscribe recipient\x00"


class TokenKind(IntEnum):
    RECIPIENT = 1
    """One recipient: true one-click, the token names the address."""
    MESSAGE = 2
    """A message to several recipients: names the tenant; the address is asked for."""


_LAYOUT = {
    # header (version and kind), issue day, reference, [message tag], MAC
    TokenKind.RECIPIENT: 1 + 2 + REF_BYTES + MAC_BYTES,
    TokenKind.MESSAGE: 1 + 2 + REF_BYTES + MESSAGE_TAG_BYTES + MAC_BYTES,
}


def encoded_length(kind: TokenKind) -> int:
    return (_LAYOUT[kind] * 8 + 4) // 5


LONGEST_TOKEN = max(encoded_length(kind) for kind in TokenKind)


class InvalidToken(Exception):
    """A token that must be refused. The reason is for logs, never for the client."""


@dataclass(frozen=True, slots=True)
class Reference:
    """What a token's reference stands for: stored by the relay, checked on use.

    Stored as ``tenant NL address`` (RECIPIENT) or ``tenant NL NL hashes``
    (MESSAGE: the recipients' keyed hashes, base32, space-separated).
    """

    kind: TokenKind
    tenant: str
    address: str
    """The recipient for RECIPIENT references; empty for MESSAGE (tenant-only) ones."""
    message_tag: bytes = b""
    """MESSAGE only: the token's message tag (the commitment covers it)."""
    recipient_hashes: tuple[str, ...] = ()
    """MESSAGE only: keyed hashes of the message's recipients (TokenSigner.recipient_hash)."""

    @property
    def ref(self) -> bytes:
        return commitment(
            self.kind, self.tenant, self.address, self.message_tag, self.recipient_hashes
        )

    @property
    def ref_text(self) -> str:
        return _b32(self.ref)

    @property
    def store_value(self) -> str:
        if self.kind is TokenKind.MESSAGE:
            return f"{self.tenant}\n\n{' '.join(self.recipient_hashes)}"
        return f"{self.tenant}\n{self.address}"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    reference: Reference
    issued_day: int


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """A token whose MAC and dates checked out; `resolve` it to learn tenant and address."""

    token: str
    kind: TokenKind
    issued_day: int
    ref: bytes
    message_tag: bytes

    @property
    def ref_text(self) -> str:
        return _b32(self.ref)

    @property
    def message_tag_text(self) -> str:
        return self.message_tag.hex()

    def resolve(self, stored_value: str | None) -> Reference:
        """The reference the relay stored for this token, checked against the commitment."""
        if stored_value is None:
            raise InvalidToken("no stored reference (expired from the store, or never issued)")
        tenant, newline, rest = stored_value.partition("\n")
        if not newline or not tenant:
            raise InvalidToken("stored reference is malformed")
        address, _, hashes = rest.partition("\n")
        recipient_hashes = tuple(hashes.split()) if self.kind is TokenKind.MESSAGE else ()
        if len(recipient_hashes) > MAX_HASHED_RECIPIENTS:
            raise InvalidToken("stored reference holds too many recipients")
        if not all(_RECIPIENT_HASH.match(h) for h in recipient_hashes):
            raise InvalidToken("stored reference holds a malformed recipient hash")
        reference = Reference(self.kind, tenant, address, self.message_tag, recipient_hashes)
        if not hmac.compare_digest(reference.ref, self.ref):
            raise InvalidToken("stored reference does not match the token's commitment")
        if (self.kind is TokenKind.RECIPIENT) != bool(address):
            raise InvalidToken("stored reference has the wrong kind")
        return reference


def commitment(
    kind: TokenKind,
    tenant: str,
    address: str,
    tag: bytes = b"",
    recipient_hashes: Sequence[str] = (),
) -> bytes:
    """SHA-256 over what the reference stands for, cut to REF_BYTES.

    A RECIPIENT reference commits to tenant and address (as it always has, so
    links already delivered keep working); a MESSAGE one also to its message
    tag and its recipients' hashes, so each message has its own.
    """
    parts = [_REF_CONTEXT, bytes([kind]), tenant.encode("utf-8"), address.encode("utf-8")]
    if kind is TokenKind.MESSAGE:
        parts += [tag, " ".join(recipient_hashes).encode("utf-8", "surrogateescape")]
    return hashlib.sha256(b"\x00".join(parts)).digest()[:REF_BYTES]


def message_tag(message_id: str) -> bytes:
    return hashlib.sha256(message_id.encode("utf-8", "surrogateescape")).digest()[
        :MESSAGE_TAG_BYTES
    ]


def day_of(now: float) -> int:
    return int(now // SECONDS_PER_DAY)


class TokenSigner:
    """Issues and verifies tokens; pure (the time is always passed in)."""

    def __init__(self, secrets: Sequence[bytes], lifetime_days: int) -> None:
        if not secrets:
            raise ValueError("at least one secret is needed")
        for secret in secrets:
            if len(secret) < MIN_SECRET_BYTES:
                raise ValueError(f"each secret needs at least {MIN_SECRET_BYTES} bytes")
        if not 1 <= lifetime_days <= 3650:
            raise ValueError("lifetime_days must be from 1 to 3650")
        self._secrets = tuple(secrets)
        self.lifetime_days = lifetime_days

    @property
    def lifetime_seconds(self) -> int:
        return self.lifetime_days * SECONDS_PER_DAY

    def recipient_token(self, tenant: str, address: str, now: float) -> IssuedToken:
        if not tenant or not address:
            raise ValueError("a recipient token needs a tenant and an address")
        reference = Reference(TokenKind.RECIPIENT, tenant, address)
        return self._issue(reference, b"", now)

    def message_token(
        self, tenant: str, message_id: str, now: float, recipients: Sequence[str]
    ) -> IssuedToken:
        """A token for a message to ``recipients`` (normalised): it can only ever
        suppress one of them (the first MAX_HASHED_RECIPIENTS)."""
        if not tenant:
            raise ValueError("a message token needs a tenant")
        tag = message_tag(message_id)
        hashes = dict.fromkeys(
            self.recipient_hash(self._secrets[0], tenant, tag, address)
            for address in recipients[:MAX_HASHED_RECIPIENTS]
        )
        reference = Reference(TokenKind.MESSAGE, tenant, "", tag, tuple(hashes))
        return self._issue(reference, tag, now)

    @staticmethod
    def recipient_hash(secret: bytes, tenant: str, tag: bytes, address: str) -> str:
        """The keyed hash of one recipient of one message, as its reference stores it.

        Of the address in lower case: a person typing ``Dave@`` for ``dave@`` is
        still recognised (what is suppressed is the address as typed).
        """
        folded = address.lower().encode("utf-8", "surrogateescape")
        material = b"\x00".join((tenant.encode("utf-8"), tag, folded))
        # Not hmac.digest: its one-shot form releases the GIL on every call, and a message
        # to 100 recipients then hands the GIL over 100 times among the callback threads.
        mac = hmac.new(secret, _RECIPIENT_CONTEXT + material, hashlib.sha256).digest()
        return _b32(mac[:RECIPIENT_HASH_BYTES])

    def was_recipient(self, reference: Reference, address: str) -> bool:
        """Whether ``address`` (normalised) was a recipient of the message of ``reference``.

        A RECIPIENT reference names its one address. Every configured secret is
        tried, so a rotation keeps delivered message links working. Constant
        work per stored hash (compare_digest on each), whatever the answer.
        """
        if reference.kind is TokenKind.RECIPIENT:
            return hmac.compare_digest(reference.address.encode(), address.encode())
        found = False
        for secret in self._secrets:
            wanted = self.recipient_hash(secret, reference.tenant, reference.message_tag, address)
            for stored in reference.recipient_hashes:
                found |= hmac.compare_digest(stored, wanted)
        return found

    def _issue(self, reference: Reference, tag: bytes, now: float) -> IssuedToken:
        day = day_of(now)
        if not 0 <= day < 1 << 16:
            raise ValueError("the clock is outside the token's date range")
        body = bytes([VERSION << 4 | reference.kind]) + day.to_bytes(2, "big") + reference.ref
        body += tag
        token = _b32(body + self._mac(self._secrets[0], body))
        return IssuedToken(token, reference, day)

    def verify(self, token: str, now: float) -> TokenClaims:
        """The token's claims, or InvalidToken. Needs no store: secrets and the date only."""
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_LENGTH:
            raise InvalidToken("empty or over-long token")
        token = token.lower()
        if not TOKEN_ALPHABET.match(token):
            raise InvalidToken("token has characters outside the base32 alphabet")
        raw = _unb32(token)
        if raw is None or not raw:
            raise InvalidToken("token is not valid base32")
        version, kind_number = raw[0] >> 4, raw[0] & 0x0F
        if version != VERSION:
            raise InvalidToken(f"unknown token version {version}")
        try:
            kind = TokenKind(kind_number)
        except ValueError:
            raise InvalidToken(f"unknown token kind {kind_number}") from None
        if len(raw) != _LAYOUT[kind] or len(token) != encoded_length(kind):
            raise InvalidToken("token has the wrong length (truncated or padded)")
        body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if not any(hmac.compare_digest(self._mac(s, body), mac) for s in self._secrets):
            raise InvalidToken("MAC does not verify with any configured secret")
        issued = int.from_bytes(body[1:3], "big")
        today = day_of(now)
        if issued > today + 1:
            raise InvalidToken(f"issued in the future (day {issued}, today {today})")
        if today - issued > self.lifetime_days:
            raise InvalidToken(f"expired ({today - issued} days old)")
        ref = body[3 : 3 + REF_BYTES]
        tag = body[3 + REF_BYTES :]
        return TokenClaims(token, kind, issued, ref, tag)

    @staticmethod
    def _mac(secret: bytes, body: bytes) -> bytes:
        return hmac.new(secret, _MAC_CONTEXT + body, hashlib.sha256).digest()[:MAC_BYTES]


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def _unb32(text: str) -> bytes | None:
    padding = "=" * (-len(text) % 8)
    try:
        raw = base64.b32decode(text.upper() + padding)
    except ValueError:
        return None
    # Only the canonical encoding is accepted: no second spelling of one token.
    return raw if _b32(raw) == text else None

"""Header structure: RFC 5322 section 3.6 counts and syntax, RFC 5321 line limits, raw bytes.

Input is the header section as the MTA passed it to the milter, field by
field, with each value's raw bytes (folds as LF or CRLF followed by white
space). Nothing here does I/O; the current time is an argument. Every fault
becomes a `Finding` naming the field and what is wrong with it, so the
sender's reply says exactly what to fix.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.errors import InvalidHeaderDefect
from email.headerregistry import Address, AddressHeader, HeaderRegistry
from email.utils import parsedate_to_datetime

from aupmilter import replies
from aupmilter.policy.findings import Check, Finding, quoted

MAX_LINE_OCTETS = 998
"""RFC 5322 section 2.1.1 (and RFC 5321 section 4.5.3.1.6 for the whole line)."""
MAX_PARSED_VALUE = 65536
"""Longer address fields are refused unparsed: the stdlib parser is not linear on hostile input."""

SINGULAR_FIELDS = (
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "message-id",
    "in-reply-to",
    "references",
    "subject",
)
"""RFC 5322 section 3.6: at most one of each (From and Date: exactly one)."""
ADDRESS_FIELDS = ("from", "sender", "reply-to", "to", "cc")
MAILBOX_ONLY_FIELDS = ("from", "sender", "reply-to")
"""Groups (`name: a@b;`) are allowed in To and Cc (e.g. `undisclosed-recipients:;`), not here."""

_FIELD_NAME = re.compile(rb"^[\x21-\x39\x3b-\x7e]+$")
_LINE_BREAK = re.compile(rb"\r?\n")
_BAD_LINE_BREAK = re.compile(rb"\r(?!\n)|\n(?![ \t])")
"""A CR not followed by LF, or an LF not followed by white space (not a fold)."""
_ATEXT = r"[A-Za-z0-9!#$&'*+/=?^_`{|}~%-]"
_DOT_ATOM_TEXT = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_MESSAGE_ID = re.compile(
    rf"^<(?P<left>{_DOT_ATOM_TEXT})@(?P<right>{_DOT_ATOM_TEXT}|\[[\x21-\x5a\x5e-\x7e]*\])>$"
)
_LDH_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_COMMENT = re.compile(r"\([^()]*\)")


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field as the MTA delivers it: the model every module uses.

    The raw bytes are kept, not a decoded string, because the checks judge
    bytes (NUL, bare CR, 8-bit without SMTPUTF8) and DKIM's "simple"
    canonicalization needs the exact bytes that were signed.
    """

    name: str
    raw: bytes
    """The value as passed by the MTA: leading white space and folds (CRLF or LF + WSP) kept."""
    key: str = dataclasses.field(init=False, repr=False, compare=False)
    """The name in lower case: what every lookup compares (made once, asked hundreds of
    times per message)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.name.lower())

    @classmethod
    def added(cls, name: str, value: str) -> HeaderField:
        """A field the milter adds (`value` without leading space), as the MTA will render it.

        The MTA writes one space after the colon (the glue sends it when
        leading space was negotiated), so a signature over the edited header
        list covers the bytes that are delivered.
        """
        return cls(name, f" {value}".encode("utf-8", "surrogateescape"))

    @property
    def value(self) -> str:
        """The raw bytes as text, leading white space and folds kept.

        Undecodable bytes become surrogate escapes, so encoding the value back
        (`utf-8`, `surrogateescape`) gives the raw bytes again.
        """
        return self.raw.decode("utf-8", "surrogateescape")

    @property
    def text(self) -> str:
        """Unfolded, decoded as UTF-8 (invalid bytes replaced), outer white space removed."""
        unfolded = _LINE_BREAK.sub(b"", self.raw)
        return unfolded.decode("utf-8", errors="replace").strip()


@dataclass(frozen=True, slots=True)
class HeaderBlock:
    fields: tuple[HeaderField, ...]
    seen_fields: int = -1
    """How many fields the MTA sent, counting those dropped past the collection limits."""
    seen_bytes: int = -1
    by_key: dict[str, list[HeaderField]] = dataclasses.field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    """The fields under their lower-case name, in message order: the checks ask for a
    dozen names, each of which would otherwise be a walk over every field."""

    def __post_init__(self) -> None:
        if self.seen_fields < 0:
            object.__setattr__(self, "seen_fields", len(self.fields))
        if self.seen_bytes < 0:
            size = sum(field_size(f.name, f.raw) for f in self.fields)
            object.__setattr__(self, "seen_bytes", size)
        for found in self.fields:
            self.by_key.setdefault(found.key, []).append(found)

    def all(self, name: str) -> list[HeaderField]:
        return list(self.by_key.get(name.lower(), ()))

    def first(self, name: str) -> HeaderField | None:
        found = self.by_key.get(name.lower())
        return found[0] if found else None

    def text(self, name: str) -> str | None:
        found = self.first(name)
        return found.text if found is not None else None

    def has(self, name: str) -> bool:
        return self.first(name) is not None


def field_size(name: str, raw: bytes) -> int:
    """Octets of one field in the message: name, colon, value, CRLF."""
    return len(name) + 1 + len(raw) + 2


@dataclass(frozen=True, slots=True)
class HeaderRules:
    """Daemon-wide limits (config `[messages]`), the same for every plan."""

    max_fields: int = 500
    max_bytes: int = 262144
    date_max_age: timedelta = timedelta(days=3)
    date_max_ahead: timedelta = timedelta(hours=2)


def _malformed(check: Check, fault: str) -> Finding:
    return Finding(check, replies.MALFORMED_HEADER, fault)


# --- the checks ----------------------------------------------------------------------


def check_headers(
    block: HeaderBlock, *, smtputf8: bool, now: datetime, rules: HeaderRules
) -> list[Finding]:
    """Every structural fault of the header section (RFC 5322 section 3.6, RFC 5321 limits)."""
    findings = list(check_limits(block, rules))
    findings += check_raw_bytes(block.fields, smtputf8=smtputf8)
    findings += check_counts(block)
    findings += check_address_fields(block)
    findings += check_message_id(block)
    findings += check_date(block, now=now, rules=rules)
    return findings


def check_limits(block: HeaderBlock, rules: HeaderRules) -> Iterator[Finding]:
    if block.seen_fields > rules.max_fields:
        yield _malformed(
            Check.HEADER_LIMITS,
            f"{block.seen_fields} header fields, more than the {rules.max_fields} allowed",
        )
    if block.seen_bytes > rules.max_bytes:
        yield _malformed(
            Check.HEADER_LIMITS,
            f"header section of {block.seen_bytes} bytes, more than the {rules.max_bytes} allowed",
        )


def check_raw_bytes(fields: Sequence[HeaderField], *, smtputf8: bool) -> Iterator[Finding]:
    """NUL, bare CR, line breaks that are not folds, 8-bit without SMTPUTF8, long lines."""
    for field in fields:
        name_bytes = field.name.encode("utf-8", errors="surrogateescape")
        if not _FIELD_NAME.match(name_bytes):
            fault = f"header field name {quoted(field.name)} is invalid"
            yield _malformed(Check.HEADER_BYTES, fault)
            continue
        value_fault = raw_value_fault(field.raw, smtputf8=smtputf8)
        if value_fault:
            yield _malformed(Check.HEADER_BYTES, f"{field.name} header {value_fault}")
            continue
        lines = _LINE_BREAK.split(field.raw)
        first = len(name_bytes) + 1 + len(lines[0])
        longest = max([first, *(len(line) for line in lines[1:])])
        if longest > MAX_LINE_OCTETS:
            yield _malformed(
                Check.HEADER_BYTES,
                f"{field.name} header has a line of {longest} octets (at most "
                f"{MAX_LINE_OCTETS}); fold it",
            )


def raw_value_fault(raw: bytes, *, smtputf8: bool) -> str | None:
    if b"\0" in raw:
        return "contains a NUL byte"
    # The first bad line break decides the answer; most values have none at all.
    bad = _BAD_LINE_BREAK.search(raw) if b"\r" in raw or b"\n" in raw else None
    if bad is not None:
        if bad.group() == b"\r":
            return "contains a bare CR"
        return "contains a bare LF (a line break that is not a fold)"
    if not raw.isascii():
        if not smtputf8:
            return "contains 8-bit bytes; encode them (RFC 2047) or send with SMTPUTF8"
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return "contains bytes that are not UTF-8"
    return None


def check_counts(block: HeaderBlock) -> Iterator[Finding]:
    for name in ("From", "Date"):
        count = len(block.all(name))
        if count == 0:
            yield _malformed(Check.HEADER_COUNTS, f"no {name} header (exactly one is required)")
        elif count > 1:
            yield _malformed(Check.HEADER_COUNTS, f"{count} {name} headers (exactly one allowed)")
    for key in SINGULAR_FIELDS:
        found = block.all(key)
        if len(found) > 1:
            yield _malformed(
                Check.HEADER_COUNTS, f"{len(found)} {found[0].name} headers (at most one allowed)"
            )
    authors = block.all("from")
    if len(authors) == 1 and not block.has("sender"):
        mailboxes = parse_addresses(authors[0])
        if mailboxes is not None and len(mailboxes.addresses) > 1:
            yield _malformed(
                Check.HEADER_COUNTS,
                "From has several mailboxes but there is no Sender header naming the one sender",
            )


@dataclass(frozen=True, slots=True)
class ParsedAddresses:
    addresses: tuple[Address, ...]
    has_groups: bool


PARSE_CACHE_SIZE = 4096
"""Address fields remembered parsed: a tenant's From repeats on every message it sends."""
_HEADERS = HeaderRegistry()


def parse_addresses(field: HeaderField) -> ParsedAddresses | None:
    """The mailboxes of an address field (encoded words decoded); None if it does not parse.

    The structure rules, the author count and the alignment each ask for the
    same fields; the stdlib parser is the largest cost of the message checks
    (~0.1 ms per field), so each distinct (name, text) is parsed once, and the
    cache (PARSE_CACHE_SIZE entries, values of at most MAX_PARSED_VALUE
    characters) serves later messages too. The result is immutable.
    """
    text = field.text
    if len(text) > MAX_PARSED_VALUE:
        return None
    return _parse_address_text(field.key, text)


@functools.lru_cache(maxsize=PARSE_CACHE_SIZE)
def _parse_address_text(name: str, text: str) -> ParsedAddresses | None:
    try:
        header = _HEADERS(name, text)
    except Exception:  # the stdlib parser raises assorted errors on some garbage
        return None
    if not isinstance(header, AddressHeader):
        return None
    if any(isinstance(d, InvalidHeaderDefect) for d in header.defects):
        return None
    addresses = tuple(header.addresses)
    if any(not a.username or not a.domain or not valid_domain(a.domain) for a in addresses):
        return None
    has_groups = any(g.display_name is not None for g in header.groups)
    return ParsedAddresses(addresses, has_groups)


def address_fault(field: HeaderField) -> str | None:
    text = field.text
    if len(text) > MAX_PARSED_VALUE:
        return f"{field.name} header is too long to be an address list"
    parsed = parse_addresses(field)
    if parsed is None:
        return f"{field.name} header {quoted(text)} is not a valid address list"
    if field.key in MAILBOX_ONLY_FIELDS and parsed.has_groups:
        return f"{field.name} header must list mailboxes, not a group"
    if field.key in MAILBOX_ONLY_FIELDS and not parsed.addresses:
        return f"{field.name} header has no address"
    if field.key == "sender" and len(parsed.addresses) != 1:
        return "Sender header must name exactly one mailbox"
    return None


def check_address_fields(block: HeaderBlock) -> Iterator[Finding]:
    for field in block.fields:
        if field.key not in ADDRESS_FIELDS:
            continue
        fault = address_fault(field)
        if fault:
            yield _malformed(Check.ADDRESS_SYNTAX, fault)


def valid_domain(domain: str) -> bool:
    """A host name (LDH labels, IDN allowed) or an address literal like `[192.0.2.1]`."""
    domain = domain.rstrip(".")
    if domain.startswith("[") and domain.endswith("]"):
        return len(domain) > 2
    try:
        ascii_form = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return False
    labels = ascii_form.split(".")
    return (
        0 < len(ascii_form) <= 253
        and len(labels) >= 2
        and all(_LDH_LABEL.match(label) for label in labels)
    )


def message_id_fault(value: str) -> str | None:
    text = _COMMENT.sub("", value).strip()
    if not _MESSAGE_ID.match(text):
        return f"Message-ID {quoted(value)} is not of the form <left@right>"
    return None


def check_message_id(block: HeaderBlock) -> Iterator[Finding]:
    for field in block.all("message-id"):
        fault = message_id_fault(field.text)
        if fault:
            yield _malformed(Check.MESSAGE_ID, fault)


def missing_message_id(block: HeaderBlock) -> Finding | None:
    """For `add_message_id = false`: a message without Message-ID is refused."""
    if block.has("message-id"):
        return None
    return _malformed(Check.MESSAGE_ID, "no Message-ID header")


def parse_date(value: str) -> datetime | None:
    """RFC 5322 date-time (obsolete forms too), as an aware datetime; None if it does not parse."""
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def check_date(block: HeaderBlock, *, now: datetime, rules: HeaderRules) -> Iterator[Finding]:
    for field in block.all("date"):
        value = field.text
        when = parse_date(value)
        if when is None:
            yield _malformed(Check.DATE, f"Date {quoted(value)} is not an RFC 5322 date")
            continue
        if when < now - rules.date_max_age:
            yield _malformed(
                Check.DATE,
                f"Date {quoted(value)} is more than {_span(rules.date_max_age)} in the past; "
                "check the sending host's clock",
            )
        elif when > now + rules.date_max_ahead:
            yield _malformed(
                Check.DATE,
                f"Date {quoted(value)} is more than {_span(rules.date_max_ahead)} in the future; "
                "check the sending host's clock and time zone",
            )


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400} day(s)"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} hour(s)"
    if seconds % 60 == 0:
        return f"{seconds // 60} minute(s)"
    return f"{seconds} second(s)"

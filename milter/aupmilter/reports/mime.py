"""Reading a report's MIME structure with bounded memory and without a traceback.

Reports come from anyone on the Internet, so every step has a bound:
MAX_REPORT_BYTES of input, MAX_CONTAINERS multipart/message containers (counted
in the raw bytes before parsing, because the standard parser recurses once per
nesting level), MAX_DEPTH and MAX_PARTS when walking, and MAX_TEXT_CHARS of
decoded text per part. Unknown charsets (`x-unknown`, misspellings) decode as
Latin-1, which maps every byte: the addresses and status codes that matter are
ASCII in every charset a report is written in.

Parsing uses the `compat32` policy: it keeps malformed header fields as text
instead of raising while they are read, and it is what flufl.bounce expects.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.header
import email.parser
import email.policy
import quopri
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from typing import Any

MAX_REPORT_BYTES = 10 * 1024 * 1024
"""A report is a few KiB; Postfix returns at most 50 KB of the original (bounce_size_limit)."""
MAX_CONTAINERS = 64
"""multipart/* and message/* headers in the whole input: real reports have 2 to 6."""
MAX_DEPTH = 8
MAX_PARTS = 200
MAX_TEXT_CHARS = 256 * 1024
"""Decoded text scanned per part: status lines and prose come first, originals later."""
ORIGINAL_TYPES = frozenset(
    {"message/rfc822", "text/rfc822-headers", "message/rfc822-headers", "message/global",
     "message/global-headers"}
)  # fmt: skip
"""Parts that carry the reported message (RFC 3462, RFC 5965, RFC 6533)."""
REPORT_PART_TYPES = frozenset(
    {"message/feedback-report", "message/delivery-status", "message/global-delivery-status"}
)
_CONTAINER = re.compile(rb"^content-type:[ \t]*(multipart|message)/", re.I | re.M)
_BLOCK_SPLIT = re.compile(r"\r?\n[ \t]*\r?\n")
_HEADERS = email.parser.HeaderParser(policy=email.policy.compat32)


class Unreadable(Exception):
    """The input cannot be read within the bounds; the text is the report's reason."""


@dataclass(frozen=True, slots=True)
class Parts:
    """One walk over a report: its own parts, and the originals it carries (not entered)."""

    leaves: tuple[Message, ...]
    """Non-container parts outside any original, the report's own text and fields."""
    originals: tuple[Message, ...]
    """ORIGINAL_TYPES parts, as found: their headers are read by `original_headers`."""


def parse(raw: bytes) -> Message:
    """The parsed message, or Unreadable: too big, too many containers, or a parser failure."""
    if len(raw) > MAX_REPORT_BYTES:
        raise Unreadable(f"larger than {MAX_REPORT_BYTES // (1024 * 1024)} MiB")
    containers = len(_CONTAINER.findall(raw))
    if containers > MAX_CONTAINERS:
        raise Unreadable(f"{containers} MIME containers (at most {MAX_CONTAINERS})")
    if not raw.strip():
        raise Unreadable("empty message")
    try:
        message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    except (RecursionError, MemoryError) as exc:
        raise Unreadable(f"MIME structure cannot be parsed ({type(exc).__name__})") from None
    except Exception as exc:  # the parser is documented not to raise; a bug must not kill us
        raise Unreadable(f"MIME structure cannot be parsed ({type(exc).__name__})") from None
    if not message.keys():
        raise Unreadable("no header section")
    return message


def walk(message: Message) -> Parts:
    """The report's leaves and originals, depth-first; Unreadable past MAX_DEPTH or MAX_PARTS."""
    leaves: list[Message] = []
    originals: list[Message] = []
    count = 0
    stack: list[tuple[Message, int]] = [(message, 0)]
    while stack:
        part, depth = stack.pop()
        count += 1
        if count > MAX_PARTS:
            raise Unreadable(f"more than {MAX_PARTS} MIME parts")
        if depth > MAX_DEPTH:
            raise Unreadable(f"MIME parts nested deeper than {MAX_DEPTH} levels")
        kind = content_type(part)
        if kind in ORIGINAL_TYPES:
            originals.append(part)
        elif kind.startswith("multipart/"):
            children = part.get_payload()
            if not isinstance(children, list):
                raise Unreadable(f"{kind} without the boundary it declares")
            stack.extend((c, depth + 1) for c in reversed(children) if isinstance(c, Message))
        elif part.is_multipart() and kind not in REPORT_PART_TYPES:
            # Another message/* type wrapping a message (message/partial, unknown): not ours.
            continue
        else:
            leaves.append(part)
    return Parts(tuple(leaves), tuple(originals))


def content_type(part: Message) -> str:
    """The lower-case type; text/plain where the header is missing or broken (RFC 2045 5.2)."""
    try:
        return part.get_content_type()
    except Exception:
        return "text/plain"


def body_bytes(part: Message) -> bytes:
    """The part's body with its transfer encoding undone; base64 that is broken yields b''.

    Feedback and status parts are sometimes base64 (Microsoft, inside
    multipart/mixed): the parser then sees the encoded text as a headerless
    block, so the text is put back together and decoded here.
    """
    payload = _payload(part)
    if not isinstance(payload, list):
        decoded = _payload(part, decode=True)
        return decoded if isinstance(decoded, bytes) else b""
    subs = (_as_text(sub) for sub in payload if isinstance(sub, Message))
    data = "".join(subs).encode("utf-8", "surrogateescape")
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    if encoding == "base64":
        try:
            return base64.b64decode(b"".join(data.split()) + b"==", validate=False)
        except (binascii.Error, ValueError):
            return b""
    if encoding == "quoted-printable":
        return quopri.decodestring(data)
    return data


def _payload(part: Message, decode: bool = False) -> Any:
    """``get_payload``, which decodes with the part's charset parameter and survives only an
    unknown one: a charset with a NUL in it raises ValueError (found by tests/fuzz). Such a
    part is read as Latin-1, like one in a charset Python lacks."""
    try:
        return part.get_payload(None, decode)  # type: ignore[call-overload]
    except ValueError:
        part.set_param("charset", "latin-1")
        return part.get_payload(None, decode)  # type: ignore[call-overload]


def _as_text(part: Message) -> str:
    try:
        return part.as_string()
    except Exception:
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""


def text_of(part: Message) -> str:
    """The part's decoded text, at most MAX_TEXT_CHARS; Latin-1 for charsets Python lacks."""
    data = body_bytes(part)[: MAX_TEXT_CHARS * 4]
    charset = str(part.get_content_charset("us-ascii") or "us-ascii")
    try:
        codecs.lookup(charset)
    except (LookupError, ValueError):
        charset = "latin-1"
    try:
        text = data.decode(charset, "replace")
    except Exception:  # a codec that fails other than by UnicodeError (e.g. a broken table)
        text = data.decode("latin-1")
    return text[:MAX_TEXT_CHARS]


def field_blocks(part: Message) -> list[Message]:
    """The header blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    if isinstance(payload, list) and encoding not in ("base64", "quoted-printable"):
        blocks = [block for block in payload if isinstance(block, Message)]
        if any(block.keys() for block in blocks):
            return blocks
    text = body_bytes(part)[:MAX_TEXT_CHARS].decode("latin-1")
    return [_HEADERS.parsestr(chunk) for chunk in _BLOCK_SPLIT.split(text) if chunk.strip()]


def original_headers(part: Message) -> Message:
    """The headers of an attached original, however attached; an empty Message if none."""
    kind = content_type(part)
    payload = part.get_payload()
    encoding = str(part.get("content-transfer-encoding", "")).strip().lower()
    if (
        kind in ("message/rfc822", "message/global")
        and isinstance(payload, list)
        and payload
        and isinstance(payload[0], Message)
        and encoding not in ("base64", "quoted-printable")
        and payload[0].keys()
    ):
        return payload[0]
    text = body_bytes(part)[:MAX_TEXT_CHARS].decode("utf-8", "replace")
    return _HEADERS.parsestr(text.lstrip("\r\n"))


def inline_original(text: str) -> Message | None:
    """The header section quoted after a plain-text bounce's copy marker, if there is one."""
    for marker in INLINE_ORIGINAL_MARKERS:
        found = marker.search(text)
        if found is not None:
            headers = _HEADERS.parsestr(text[found.end() :].lstrip("\r\n \t"))
            return headers if headers.keys() else None
    return None


INLINE_ORIGINAL_MARKERS = tuple(
    re.compile(pattern, re.I | re.M)
    for pattern in (
        r"^-+ ?Below this line is a copy of the message\.?.*$",  # qmail, Yahoo
        r"^-+ This is a copy of the message, including all the headers\.? -+$",  # Exim
        r"^-+ ?(The )?Original message( headers)?( follows)?( -+)?:?$",
        r"^Original message headers:$",  # Exchange
        r"^-+ Returned message -+$",
        r"^-+ ?Unsent message below ?-+$",
    )
)
"""Where the report's own text ends and the quoted original begins, in plain-text bounces."""


def own_text(text: str) -> str:
    """The report's own words: the text before the first inline-original marker."""
    cut = len(text)
    for marker in INLINE_ORIGINAL_MARKERS:
        found = marker.search(text)
        if found is not None:
            cut = min(cut, found.start())
    return text[:cut]


def subject(message: Message) -> str:
    """The first Subject with RFC 2047 words decoded (an Exchange auto-reply's or bounce's
    `=?utf-8?B?...?=`); undecodable words and unknown charsets read as Latin-1."""
    raw = next(iter_headers(message, "Subject"), "")
    if "=?" not in raw:
        return raw
    try:
        chunks = email.header.decode_header(raw)
    except Exception:  # a malformed encoded word: the raw text is still something
        return raw
    text = []
    for chunk, charset in chunks:
        if isinstance(chunk, str):
            text.append(chunk)
            continue
        try:
            text.append(chunk.decode(charset or "us-ascii", "replace"))
        except (LookupError, ValueError):
            text.append(chunk.decode("latin-1"))
    return "".join(text)


def iter_headers(message: Message, name: str) -> Iterator[str]:
    """Every value of one field, as text; undecodable bytes read as U+FFFD (compat32's Header)."""
    for value in message.get_all(name, []) or []:
        yield str(value)

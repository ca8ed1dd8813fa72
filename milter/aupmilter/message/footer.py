"""The sender footer in the MIME body: found, checked, and spliced into the original bytes.

Re-serializing a message with the `email` package changes bytes it was not
asked to change (boundaries, folding, the encoding of untouched parts), and
every one of them would be a change the tenant did not make. So the body is
walked as bytes (`scan`): multipart bodies are cut at their boundary
delimiter lines (RFC 2046 5.1.1), each part's own header section is parsed
with `email` (only to read Content-Type, charset, boundary,
Content-Transfer-Encoding and Content-Disposition), and every text part a
reader sees (text/plain and text/html, not an attachment; message/rfc822
parts are someone else's message and not entered) is decoded and its
visible text searched for the tenant's address (`policy.footer`).

`rewrite` then replaces only the body bytes of the parts that need the
footer, and nothing else:

- 7bit, 8bit, binary: the footer bytes are inserted at the place (before
  the last `</body>` of an HTML part, else at its end);
- quoted-printable: the footer, quoted-printable encoded, is inserted in
  the encoded text between soft line breaks, so the part's other lines stay
  as they were (if a soft break splits `</body>` the part is re-encoded);
- base64: the part is decoded, the footer inserted, and re-encoded in lines
  of 76 characters.

The footer is encoded in the part's own charset. A character the charset
cannot hold becomes an HTML character reference in HTML, and in plain text
its closest ASCII letter (NFKD without accents) or `?`; a 7bit part gets
ASCII only, the same way. Which fallback served is reported (`fallback`).
A charset that is not ASCII-compatible (UTF-16, UTF-32) cannot be spliced
and is reported unrewritable.

The work is bounded by the plan (`FooterPlan`): parts over
`max_part_bytes` are not rewritten (and, with oversize = refuse, not even
decoded), multipart nesting past `max_depth` and more than `max_parts`
parts are refused as malformed. Time and memory are linear in the body.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from aupmilter.message.wire import render_header_section
from aupmilter.policy.footer import (
    FooterPlan,
    FooterScan,
    FooterText,
    Oversize,
    PartFinding,
    TenantIdentity,
    shows_address,
)
from aupmilter.policy.headers import HeaderField

TEXT_TYPES = ("text/plain", "text/html")
PLAIN_ENCODINGS = ("7bit", "8bit", "binary")
QUOTED_PRINTABLE = "quoted-printable"
BASE64 = "base64"
KNOWN_ENCODINGS = (*PLAIN_ENCODINGS, QUOTED_PRINTABLE, BASE64)
MIME_FIELDS = frozenset({"content-type", "content-transfer-encoding", "content-disposition"})
_BODY_END = re.compile(rb"</body\s*>", re.IGNORECASE)
_HTML_END = re.compile(rb"</html\s*>", re.IGNORECASE)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
_header_parser = BytesHeaderParser(policy=compat32)


class MalformedMime(Exception):
    """The structure cannot be read as MIME; the text says where."""


@dataclass(frozen=True, slots=True)
class TextPart:
    """A text part a reader sees, located in the body: [start, end) are its encoded bytes."""

    content_type: str
    charset: str
    encoding: str
    start: int
    end: int

    @property
    def is_html(self) -> bool:
        return self.content_type == "text/html"


@dataclass(slots=True)
class Walk:
    """The scan's findings, and where each text part is, for the rewrite."""

    scan: FooterScan
    parts: tuple[TextPart, ...] = ()


@dataclass(slots=True)
class _Walker:
    body: bytes
    plan: FooterPlan
    found: list[TextPart] = field(default_factory=list)
    seen: int = 0

    def part(self, headers: Message, start: int, end: int, depth: int, digest: bool) -> None:
        self.seen += 1
        if self.seen > self.plan.max_parts:
            raise MalformedMime(f"more than {self.plan.max_parts} MIME parts")
        if digest and headers.get("content-type") is None:
            return  # a multipart/digest's default part is message/rfc822
        content_type = headers.get_content_type()
        if content_type.startswith("multipart/"):
            self.multipart(headers, content_type, start, end, depth)
            return
        if content_type not in TEXT_TYPES or headers.get_content_disposition() == "attachment":
            return
        charset = str(headers.get_content_charset("us-ascii")).strip() or "us-ascii"
        encoding = str(headers.get("content-transfer-encoding", "7bit")).strip().lower()
        self.found.append(TextPart(content_type, charset, encoding or "7bit", start, end))

    def multipart(
        self, headers: Message, content_type: str, start: int, end: int, depth: int
    ) -> None:
        if depth >= self.plan.max_depth:
            raise MalformedMime(f"multipart nested deeper than {self.plan.max_depth} levels")
        boundary = headers.get_boundary()
        if not boundary:
            raise MalformedMime(f"{content_type} without a boundary parameter")
        if len(boundary) > 70:
            raise MalformedMime("a boundary longer than 70 characters (RFC 2046)")
        digest = content_type == "multipart/digest"
        for part_start, part_end in self.split(boundary, start, end):
            header_bytes, body_start = self.header_section(part_start, part_end)
            child = _header_parser.parsebytes(header_bytes)
            self.part(child, body_start, part_end, depth + 1, digest)

    def header_section(self, start: int, end: int) -> tuple[bytes, int]:
        """A body part's header fields, and where its body starts (after the blank line)."""
        empty = _LINE_END.match(self.body, start, end)
        if empty is not None:  # no header fields: the part is all body, typed by default
            return b"", empty.end()
        blank = _HEADER_END.search(self.body, start, end)
        if blank is None:
            return self.body[start:end], end
        return self.body[start : blank.end()], blank.end()

    def split(self, boundary: str, start: int, end: int) -> list[tuple[int, int]]:
        """The body parts between the delimiter lines; the line break before one is its own."""
        try:
            marker = boundary.encode("ascii")
        except UnicodeEncodeError:
            raise MalformedMime("a boundary that is not ASCII") from None
        # No `^` in the pattern: a literal start lets the regex engine skip ahead
        # (several times faster); the line start is checked below instead.
        delimiter = re.compile(rb"(?m)--" + re.escape(marker) + rb"(--)?[ \t]*\r?$")
        parts: list[tuple[int, int]] = []
        opened: int | None = None
        closed = False
        for match in delimiter.finditer(self.body, start, end):
            if match.start() > start and self.body[match.start() - 1] != 0x0A:
                continue  # not at the start of a line: part of the content
            if opened is not None:
                parts.append((opened, _before_line_break(self.body, opened, match.start())))
            line_end = _LINE_END.match(self.body, match.end())
            opened = line_end.end() if line_end else match.end()
            if match.group(1):
                closed = True
                break
        if opened is None:
            raise MalformedMime(f"the boundary {boundary!r} never appears in the body")
        if not closed:
            parts.append((opened, end))  # no close delimiter: readers take the rest
        if not parts:
            raise MalformedMime(f"no body part between the {boundary!r} delimiters")
        return parts


def _before_line_break(body: bytes, floor: int, position: int) -> int:
    if position > floor and body[position - 1 : position] == b"\n":
        position -= 1
        if position > floor and body[position - 1 : position] == b"\r":
            position -= 1
    return position


def _top_headers(fields: Sequence[HeaderField]) -> Message:
    return _header_parser.parsebytes(
        render_header_section(f for f in fields if f.key in MIME_FIELDS)
    )


def decode(data: bytes, encoding: str) -> bytes:
    """The part's bytes without their transfer encoding; MalformedMime when it has another."""
    if encoding in PLAIN_ENCODINGS:
        return data
    if encoding == QUOTED_PRINTABLE:
        return binascii.a2b_qp(data)
    if encoding == BASE64:
        try:
            return binascii.a2b_base64(data)
        except binascii.Error as exc:
            raise MalformedMime(f"a base64 part that does not decode ({exc})") from None
    raise MalformedMime(
        f"the transfer encoding {encoding!r} (use 7bit, 8bit, quoted-printable or base64)"
    )


def _charset_problem(charset: str) -> str | None:
    try:
        codecs.lookup(charset)
    except LookupError:
        return f"the unknown charset {charset!r}"
    if "</body>\r\n".encode(charset, "replace") != b"</body>\r\n":
        return f"the charset {charset} is not ASCII-compatible"
    return None


def scan(
    headers: Sequence[HeaderField], body: bytes, identity: TenantIdentity, plan: FooterPlan
) -> Walk:
    """Every text part a reader sees, and whether it shows the identity's address."""
    walker = _Walker(body, plan)
    try:
        walker.part(_top_headers(headers), 0, len(body), 0, False)
    except MalformedMime as exc:
        return Walk(FooterScan(malformed=str(exc)))
    findings: list[PartFinding] = []
    for index, part in enumerate(walker.found):
        size = part.end - part.start
        oversize = size > plan.max_part_bytes
        if oversize and plan.oversize is Oversize.REFUSE:
            findings.append(PartFinding(index, part.content_type, size, None, oversize=True))
            continue
        try:
            raw = decode(body[part.start : part.end], part.encoding)
        except MalformedMime as exc:
            return Walk(FooterScan(malformed=str(exc)))
        problem = _charset_problem(part.charset)
        try:
            text = raw.decode(part.charset, "replace")
        except LookupError:
            text = raw.decode("latin-1")  # an unknown charset: its ASCII letters still read
        has = shows_address(text, part.is_html, identity)
        findings.append(PartFinding(index, part.content_type, size, has, oversize, problem))
    return Walk(FooterScan(tuple(findings)), tuple(walker.found))


@dataclass(frozen=True, slots=True)
class Rewritten:
    body: bytes
    fallback: str | None = None
    """Set when a character of the footer did not fit a part's charset: what stood in."""


def rewrite(body: bytes, walk: Walk, indexes: Sequence[int], footer: FooterText) -> Rewritten:
    """The body with the footer added to the text parts `indexes`; every other byte kept."""
    pieces: list[bytes] = []
    cursor = 0
    fallbacks: set[str] = set()
    for index in sorted(indexes):
        part = walk.parts[index]
        pieces.append(body[cursor : part.start])
        new, fallback = _rewrite_part(body[part.start : part.end], part, footer)
        pieces.append(new)
        if fallback is not None:
            fallbacks.add(fallback)
        cursor = part.end
    pieces.append(body[cursor:])
    return Rewritten(b"".join(pieces), ", ".join(sorted(fallbacks)) or None)


_LETTERS = str.maketrans(
    {"Ł": "L", "ł": "l", "Ø": "O", "ø": "o", "Đ": "D", "đ": "d", "ß": "ss", "Æ": "AE",
     "æ": "ae", "Œ": "OE", "œ": "oe", "Þ": "Th", "þ": "th", "\u0131": "i",
     "\u2013": "-", "\u2014": "-"}
)  # fmt: skip
"""Letters NFKD does not decompose, as their usual ASCII spelling."""


def _folded(char: str, charset: str) -> str:
    """A character the charset lacks: without its accents, else its ASCII spelling, else ?."""
    plain = "".join(
        c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c)
    ).translate(_LETTERS)
    try:
        plain.encode(charset)
    except UnicodeEncodeError:
        return "?"
    return plain


def _encoded(text: str, part: TextPart) -> tuple[bytes, str | None]:
    """`text` in the part's charset; 7bit parts get ASCII. The fallback used, if any."""
    charset = "ascii" if part.encoding == "7bit" else part.charset
    try:
        return text.encode(charset), None
    except UnicodeEncodeError:
        pass
    if part.is_html:
        return text.encode(charset, "xmlcharrefreplace"), "html-entities"
    fitted = []
    for char in text:
        try:
            char.encode(charset)
            fitted.append(char)
        except UnicodeEncodeError:
            fitted.append(_folded(char, charset))
    return "".join(fitted).encode(charset), "ascii-folded"


def _footer_block(part: TextPart, footer: FooterText) -> tuple[bytes, str | None]:
    """The footer in wire form (CRLF) for this part, without a final line break."""
    if part.is_html:
        return _encoded(footer.html.replace("\n", "\r\n"), part)
    return _encoded("\r\n".join(footer.plain_lines), part)


def _place(data: bytes, is_html: bool) -> int | None:
    """Where an HTML footer goes: before the last </body>, else </html>; None: at the end."""
    if not is_html:
        return None
    for pattern in (_BODY_END, _HTML_END):
        last = deque(pattern.finditer(data), maxlen=1)
        if last:
            return last[0].start()
    return None


def _splice(data: bytes, block: bytes, is_html: bool) -> bytes:
    """`block` inserted in decoded (or 7bit/8bit) part bytes."""
    position = _place(data, is_html)
    if position is not None:
        return data[:position] + block + b"\r\n" + data[position:]
    if data.endswith(b"\n"):
        return data + block + b"\r\n"
    return data + b"\r\n" + block


def _qp(block: bytes) -> bytes:
    encoded = binascii.b2a_qp(block.replace(b"\r\n", b"\n"), quotetabs=False, istext=True)
    return encoded.replace(b"\n", b"\r\n")


def _rewrite_part(data: bytes, part: TextPart, footer: FooterText) -> tuple[bytes, str | None]:
    block, fallback = _footer_block(part, footer)
    if part.encoding in PLAIN_ENCODINGS:
        return _splice(data, block, part.is_html), fallback
    if part.encoding == BASE64:
        decoded = binascii.a2b_base64(data)
        encoded = base64.encodebytes(_splice(decoded, block, part.is_html)).replace(b"\n", b"\r\n")
        return (encoded if data.endswith(b"\n") else encoded.rstrip(b"\r\n")), fallback
    position = _place(data, part.is_html)
    if part.is_html and position is None and _place(binascii.a2b_qp(data), True) is not None:
        # A soft line break splits </body>: this part is re-encoded whole.
        spliced = _splice(binascii.a2b_qp(data), block, True)
        return _qp(spliced), fallback
    if position is not None:
        inserted = b"=\r\n" + _qp(block + b"\r\n")
        return data[:position] + inserted + data[position:], fallback
    if data.endswith(b"\n"):
        return data + _qp(block) + b"\r\n", fallback
    if data.endswith(b"="):
        return data + b"\r\n" + _qp(b"\r\n" + block), fallback
    return data + b"\r\n" + _qp(block), fallback

"""Content fingerprint: the same mail sent again and again hashes the same.

The body is parsed as MIME and each part decoded (so random MIME boundaries
and transfer encodings do not matter). Text parts are normalised: HTML tags
dropped, entities and case folded, every word containing a digit removed
(tracking ids, dates, order numbers, per-recipient tokens), URL query strings
dropped, whitespace collapsed. Other parts count by their decoded bytes. The
fingerprint is SHA-256 over the parts, in order: 32 hex characters (128
bits) are kept.

Bounded work: at most MAX_FINGERPRINT_BYTES of the body are looked at.
Pure: bytes in, text out.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import html
import re
from email.message import Message

MAX_FINGERPRINT_BYTES = 1024 * 1024
MAX_PARTS = 100
FINGERPRINT_HEX_LENGTH = 32

_TAG = re.compile(r"<[^<>]{0,2000}>")


def normalise_text(text: str, is_html: bool) -> str:
    """Linear in the text's length (word by word, no backtracking patterns)."""
    if is_html:
        text = _TAG.sub(" ", text)
        text = html.unescape(text)
    words = []
    for word in text.casefold().split():
        if word.startswith(("http://", "https://")):
            word = word.split("?", 1)[0].split("#", 1)[0]
        if not any(c.isdigit() for c in word):
            words.append(word)
    return " ".join(words)


def body_fingerprint(content_type: str | None, transfer_encoding: str | None, body: bytes) -> str:
    """Fingerprint of a message body, given its top-level MIME headers."""
    head = b""
    if content_type:
        head += b"Content-Type: " + content_type.encode("utf-8", "replace") + b"\r\n"
    if transfer_encoding:
        head += b"Content-Transfer-Encoding: " + transfer_encoding.encode("ascii", "replace")
        head += b"\r\n"
    raw = head + b"\r\n" + body[:MAX_FINGERPRINT_BYTES]
    message = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
    digest = hashlib.sha256()
    for count, part in enumerate(message.walk()):
        if count >= MAX_PARTS:
            break
        if part.is_multipart():
            continue
        digest.update(_part_bytes(part))
        digest.update(b"\x00")
    return digest.hexdigest()[:FINGERPRINT_HEX_LENGTH]


def _part_bytes(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    data = payload if isinstance(payload, bytes) else b""
    maintype = part.get_content_maintype()
    if maintype != "text":
        return maintype.encode() + b":" + data
    charset = part.get_content_charset() or "utf-8"
    try:
        text = data.decode(charset, "replace")
    except LookupError:
        text = data.decode("utf-8", "replace")
    is_html = part.get_content_subtype() == "html"
    return b"text:" + normalise_text(text, is_html).encode("utf-8")

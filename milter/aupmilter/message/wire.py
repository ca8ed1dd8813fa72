"""Header fields in wire form: the one header renderer.

Inside the milter a header field is a `policy.headers.HeaderField`: its raw
bytes keep what the MTA passed (leading white space, folds, 8-bit bytes), so
DKIM's canonicalization sees the bytes that were signed. A field the milter
adds is made with `HeaderField.added`, one space after the colon, as the MTA
will write it. Rendering only normalises line ends: nothing is decoded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from aupmilter.policy.headers import HeaderField

CRLF = b"\r\n"
_LINE_BREAK = re.compile(rb"\r?\n")


def render_header_section(fields: Iterable[HeaderField]) -> bytes:
    """The header section in wire form: each field `name:raw` with CRLF line ends.

    Folds passed as LF become CRLF; every other byte, a bare CR included, is
    kept, so a signature is checked against what the client sent.
    """
    return b"".join(
        f.name.encode("utf-8", "surrogateescape") + b":" + _LINE_BREAK.sub(CRLF, f.raw) + CRLF
        for f in fields
    )


def message_id_of(fields: Iterable[HeaderField]) -> str | None:
    """The first non-empty Message-ID among `fields` (the message's, then those the milter adds)."""
    for field in fields:
        if field.key == "message-id" and field.value.strip():
            return field.value.strip()
    return None

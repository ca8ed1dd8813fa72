"""Header fields in the form the MTA delivers them: the one header renderer.

Inside the milter a header field is a (name, value) pair whose value keeps
what the MTA passed: its leading white space, its folds and any 8-bit bytes
(as surrogate escapes), so DKIM's canonicalization sees the bytes that were
signed. A field the milter adds is written with one space after the colon,
as the MTA will write it (`added_field`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from aupmilter.policy.headers import HeaderField

Headers = Sequence[tuple[str, str]]
CRLF = "\r\n"
_LINE_BREAK = re.compile(r"\r?\n")


def header_pairs(fields: Iterable[HeaderField]) -> list[tuple[str, str]]:
    """(name, value) with the value's raw bytes kept (surrogate escapes), leading space and all."""
    return [(f.name, f.raw.decode("utf-8", "surrogateescape")) for f in fields]


def added_field(name: str, value: str) -> tuple[str, str]:
    """A field the milter adds, as the MTA will render it: one space after the colon."""
    return name, value if value[:1] in (" ", "\t") else f" {value}"


def render_header_section(headers: Iterable[tuple[str, str]]) -> bytes:
    """The header section in wire form: each field `name:value` with CRLF line ends."""
    lines = (f"{name}:{_LINE_BREAK.sub(CRLF, value)}{CRLF}" for name, value in headers)
    return b"".join(line.encode("utf-8", "surrogateescape") for line in lines)


def message_id_of(headers: Headers, added: Headers) -> str | None:
    """The message's Message-ID, or the one the milter adds; None when neither has one."""
    for name, value in [*headers, *added]:
        if name.lower() == "message-id" and value.strip():
            return value.strip()
    return None

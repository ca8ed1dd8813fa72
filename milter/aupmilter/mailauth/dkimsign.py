"""DKIM signing (dkimpy) of the message as the MTA will deliver it.

RFC 8058: mailbox providers offer one-click unsubscribe only when a valid DKIM
signature covers both List-Unsubscribe and List-Unsubscribe-Post, and Gmail's
feedback loop trusts a Feedback-ID only under one. So the milter signs after
deciding its header edits, over the edited header list
(`stages.listmail.ListMail.signature`: the kept fields, then those the milter
adds) and the body, and inserts the DKIM-Signature at the top. A signature
the tenant made itself stays (ours is added beside it).

`h=` lists the identity and content headers below. Each one present is listed
once more than it occurs ("over-signed"): nobody can add another instance
later without breaking the signature. Absent ones are listed once (a later
addition breaks the signature too), except Date, Message-ID and the MIME
headers, which an MTA downstream may legitimately add to a message that
lacks them.

Canonicalisation relaxed/relaxed: header refolding and trailing whitespace on
the way do not break the signature.

Where the signing identities live: `[dkim.tenant.<id>]` tables of the config
file (and `[dkim.default]`), not tenant fields in Redis. Keys are files on the
relay; naming them in the config lets `aup-milter check` and every start-up
and reload verify that each key exists, is readable only by the daemon, and is
RSA >= 2048 bits or Ed25519, before any mail is signed with it. A key named
in Redis could only fail when a message needs it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import dkim

from aupmilter.config import SigningIdentity
from aupmilter.message.wire import render_header_section
from aupmilter.policy.actions import InsertHeader
from aupmilter.policy.headers import HeaderField

SIGNED_HEADERS = (
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
)
MAY_BE_ADDED_DOWNSTREAM = frozenset(
    {"date", "message-id", "mime-version", "content-type", "content-transfer-encoding"}
)
_BARE_LF = re.compile(rb"(?<!\r)\n")


class SigningError(Exception):
    """dkimpy refused to sign; the text says why (logged, the message is not signed)."""


def header_list(headers: Sequence[HeaderField]) -> list[str]:
    """The h= list, lower-case, with over-signing."""
    counts: dict[str, int] = {}
    for field in headers:
        counts[field.key] = counts.get(field.key, 0) + 1
    listed: list[str] = []
    for name in SIGNED_HEADERS:
        key = name.lower()
        present = counts.get(key, 0)
        if present:
            listed.extend([key] * (present + 1))
        elif key not in MAY_BE_ADDED_DOWNSTREAM:
            listed.append(key)
    return listed


def render(headers: Sequence[HeaderField], body: bytes) -> bytes:
    """The message in wire form (CRLF), as dkimpy reads it: the header list, a blank line, body."""
    body = _BARE_LF.sub(b"\r\n", body)
    return render_header_section(headers) + b"\r\n" + body


def sign(headers: Sequence[HeaderField], body: bytes, identity: SigningIdentity) -> InsertHeader:
    """The DKIM-Signature to insert at the top; its value folded with LF as libmilter expects.

    `headers`: the header list as the MTA will deliver it (fields the milter
    adds made with `HeaderField.added`).
    """
    message = render(headers, body)
    try:
        signature = dkim.sign(
            message,
            identity.selector.encode("ascii"),
            identity.domain.encode("ascii"),
            identity.key.material,
            canonicalize=(b"relaxed", b"relaxed"),
            signature_algorithm=identity.key.algorithm.encode("ascii"),
            include_headers=[h.encode("ascii") for h in header_list(headers)],
        )
    except dkim.DKIMException as exc:
        raise SigningError(f"{type(exc).__name__}: {exc}") from exc
    name, _, value = bytes(signature).decode("ascii").partition(":")
    return InsertHeader(name, value.strip().replace("\r\n", "\n"), index=0)

"""Hypothesis strategies for bad input at scale: what a hostile or broken sender sends.

One set of strategies for the short runs inside ``make test`` (tests/fuzz,
tests/milter/test_milter_fuzz.py) and the long one (``make fuzz``, ``python -m
tests.fuzz``): header blocks, bodies, MIME structures, ARF/DSN reports,
unsubscribe tokens and raw HTTP requests. Every strategy is bounded in size,
so a case costs at most a few hundred KiB.
"""

from __future__ import annotations

import base64
import quopri
from pathlib import Path

from hypothesis import strategies as st

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
REPORT_SAMPLES = sorted((CORPUS / "reports").glob("*.eml"))

KNOWN_NAMES = [
    "From", "To", "Cc", "Bcc", "Sender", "Reply-To", "Subject", "Date", "Message-ID",
    "In-Reply-To", "References", "Content-Type", "MIME-Version", "Precedence", "List-Id",
    "DKIM-Signature", "Received", "X-Mailer", "List-Unsubscribe", "List-Unsubscribe-Post",
    "Content-Transfer-Encoding", "Feedback-ID", "Auto-Submitted",
]  # fmt: skip
ODD_BYTES = [
    b"\r", b"\n", b"\r\n", b"\n ", b"\t", b"\xff", b"\xc3\xa9", b"=?", b"?=", b"%",
    b"<", b">", b"@", b":", b";", b",", b'"', b"=?utf-8?b?", b"=?x-unknown?q?=FF?=",
    b"\\", b"(", b")", b"[", b"]",
]  # fmt: skip
PLAUSIBLE_VALUES = [
    b"alice@acme.example", b"Alice <alice@acme.example>", b"<id@acme.example>",
    b"Fri, 14 Mar 2025 11:58:00 +0000", b"Re: hello", b"bulk", b"list",
    b"v=1; a=rsa-sha256; d=acme.example; s=test2048; h=from; bh=x; b=y",
    b"<https://acme.example/u/1>, <mailto:u@acme.example>", b"List-Unsubscribe=One-Click",
    b'multipart/mixed; boundary="b1"', b"text/plain; charset=utf-8", b"base64",
    b"quoted-printable", b"=?utf-8?b?w6k=?=", b"undisclosed-recipients:;",
]  # fmt: skip

header_names = st.one_of(
    st.sampled_from(KNOWN_NAMES),
    st.text(
        st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=":"),
        min_size=1,
        max_size=20,
    ),
)
header_values = st.lists(
    st.one_of(
        st.binary(max_size=40).map(lambda b: b.replace(b"\0", b"")),
        st.sampled_from(ODD_BYTES),
        st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass").replace(b"\0", b"")),
        st.integers(1, 1500).map(lambda n: b"x" * n),
        st.sampled_from(PLAUSIBLE_VALUES),
    ),
    max_size=6,
).map(b"".join)
header_blocks = st.lists(st.tuples(header_names, header_values), max_size=25)
"""(name, raw value) pairs as the MTA hands them to the milter, at most 25."""
bodies = st.binary(max_size=4096)

# ---- MIME structures -------------------------------------------------------------

CONTENT_TYPES = [
    "text/plain", "text/html", "text/plain; charset=utf-8", "text/plain; charset=x-unknown",
    "text/html; charset=iso-8859-1", "application/octet-stream", "image/png",
    "message/rfc822", "message/delivery-status", "message/feedback-report",
    "text/rfc822-headers", "message/global", "multipart/alternative",
]  # fmt: skip
ENCODINGS = ["7bit", "8bit", "base64", "quoted-printable", "binary", "x-uuencode", ""]
PART_TEXT = st.one_of(
    st.text(max_size=200),
    st.sampled_from(["Hello", "<p>Hi <b>there</b></p>", "Acme Inc., 1 Main St", "=\r\n", "--b1"]),
)


def _encode(text: str, encoding: str, corrupt: bool) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    if encoding == "base64":
        encoded = base64.encodebytes(raw)
        return encoded[: len(encoded) // 2] + b"!*" if corrupt else encoded
    if encoding == "quoted-printable":
        encoded = quopri.encodestring(raw)
        return encoded + b"=Z" if corrupt else encoded
    return raw


@st.composite
def mime_parts(draw: st.DrawFn, depth: int = 0) -> bytes:
    """One MIME entity: a leaf with a (maybe corrupt) encoding, or a multipart of entities,
    nested at most 4 deep, with boundaries that may be missing, repeated or inside a part."""
    multipart = depth < 4 and draw(st.booleans())
    if multipart:
        boundary = draw(st.sampled_from(["b1", "b2", "", "b1 b2", "=_x", "-" * 70]))
        subtype = draw(st.sampled_from(["mixed", "alternative", "report", "related", "signed"]))
        head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n'.encode()
        children = draw(st.lists(mime_parts(depth + 1), max_size=4))
        body = b"preamble\r\n"
        for child in children:
            body += f"--{boundary}\r\n".encode() + child + b"\r\n"
        if draw(st.booleans()):
            body += f"--{boundary}--\r\n".encode()
        return head + b"\r\n" + body
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    encoding = draw(st.sampled_from(ENCODINGS))
    head = f"Content-Type: {content_type}\r\n".encode()
    if encoding:
        head += f"Content-Transfer-Encoding: {encoding}\r\n".encode()
    if draw(st.booleans()):
        head += b'Content-Disposition: attachment; filename="=?utf-8?q?a=FF?="\r\n'
    text = draw(PART_TEXT)
    return head + b"\r\n" + _encode(text, encoding, draw(st.booleans())) + b"\r\n"


mime_messages = mime_parts()
"""A whole MIME entity (header lines, blank line, body): a message's top level."""

# ---- ARF and DSN reports ----------------------------------------------------------

REPORT_PIECES = [
    b"\n", b"\r\n", b"--", b":", b";", b"=?x-unknown?q?=FF?=", b"\xff\xfe", b"<", b">",
    b'Content-Type: multipart/mixed; boundary="x"\n', b"Content-Transfer-Encoding: base64\n",
    b"Action: failed\nStatus: 5.1.1\n", b"Final-Recipient: rfc822; a@example.com\n",
    b"Feedback-Type: abuse\n", b"Original-Rcpt-To: <b@example.net>\n",
    b"Content-Type: message/feedback-report\n", b"Content-Type: message/delivery-status\n",
]  # fmt: skip


@st.composite
def mangled_reports(draw: st.DrawFn) -> bytes:
    """A real ARF or DSN sample from tests/corpus/reports, with bytes replaced, cut, inserted."""
    raw = bytearray(draw(st.sampled_from(REPORT_SAMPLES)).read_bytes())
    for _ in range(draw(st.integers(1, 12))):
        at = draw(st.integers(0, len(raw)))
        choice = draw(st.integers(0, 2))
        if choice == 0:
            raw[at : at + 1] = bytes([draw(st.integers(0, 255))])
        elif choice == 1:
            del raw[at : at + draw(st.integers(1, 64))]
        else:
            raw[at:at] = draw(st.sampled_from(REPORT_PIECES))
    return bytes(raw)


@st.composite
def generated_reports(draw: st.DrawFn) -> bytes:
    """An ARF (RFC 5965) or DSN (RFC 3464) built from generated fields and MIME parts."""
    kind = draw(st.sampled_from(["report-type=feedback-report", "report-type=delivery-status",
                                 "", "report-type=x"]))  # fmt: skip
    fields = draw(st.lists(st.sampled_from(REPORT_PIECES), max_size=8))
    original = draw(st.one_of(mime_messages, st.binary(max_size=300)))
    head = (
        b"From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@relay.example\r\n"
        b"Subject: report\r\nMIME-Version: 1.0\r\n"
        + f'Content-Type: multipart/report; {kind}; boundary="r"\r\n'.encode()
    )
    return (
        head + b"\r\n--r\r\nContent-Type: text/plain\r\n\r\nA report.\r\n--r\r\n"
        + b"".join(fields) + b"\r\n--r\r\nContent-Type: message/rfc822\r\n\r\n"
        + original + b"\r\n--r--\r\n"
    )  # fmt: skip


reports = st.one_of(mangled_reports(), generated_reports(), mime_messages)

# ---- unsubscribe tokens and web requests ------------------------------------------

BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
tokens = st.one_of(
    st.text(st.sampled_from(BASE32), min_size=38, max_size=50),
    st.text(max_size=70),
    st.text(st.sampled_from(BASE32 + BASE32.upper() + "=0189"), max_size=64),
)
"""Strings where a token goes: near-valid base32 of about the right length, and anything."""


def mutated(token: str) -> st.SearchStrategy[str]:
    """``token`` with one character changed, cut short, or extended: all must be refused."""
    return st.one_of(
        st.tuples(st.integers(0, len(token) - 1), st.sampled_from(BASE32)).map(
            lambda change: token[: change[0]] + change[1] + token[change[0] + 1 :]
        ),
        st.integers(1, len(token) - 1).map(lambda n: token[:n]),
        st.text(st.sampled_from(BASE32), min_size=1, max_size=8).map(lambda s: token + s),
    )


addresses = st.one_of(
    st.emails().map(str),
    st.text(max_size=300),
    st.sampled_from(
        ["", " ", "<>", "a@b", "x@example.net", "Eve <eve@example.com>", "@", "a@@b.c"]
    ),
)
METHODS = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "POST", "POST", "G\x00T", "get"]
CONTENT_TYPES_HTTP = [
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=zz", "text/plain",
    "application/json", "", "application/x-www-form-urlencoded; charset=utf-16",
]  # fmt: skip


@st.composite
def http_requests(draw: st.DrawFn, paths: st.SearchStrategy[str]) -> bytes:
    """One raw HTTP/1.1 request: method, path, headers and body all generated; the
    Content-Length may lie, lines may be over-long, the form may be anything."""
    method = draw(st.sampled_from(METHODS))
    path = draw(paths)
    fields = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["List-Unsubscribe", "address", "x", "List-Unsubscribe\x00"]),
                st.one_of(st.just("One-Click"), addresses),
            ),
            max_size=4,
        )
    )
    body = "&".join(f"{k}={v}" for k, v in fields).encode("utf-8", "surrogatepass")
    body = draw(st.one_of(st.just(body), st.binary(max_size=2048)))
    headers = [("Host", "127.0.0.1"), ("Connection", "close")]
    content_type = draw(st.sampled_from(CONTENT_TYPES_HTTP))
    if content_type:
        headers.append(("Content-Type", content_type))
    # Exact, short (the rest is a second, garbage request on the connection) or absent; never
    # longer than the body, which would leave the server waiting for bytes that never come.
    length = draw(st.one_of(st.just(len(body)), st.integers(0, len(body)), st.just(-1)))
    if length >= 0:
        headers.append(("Content-Length", str(length)))
    for _ in range(draw(st.integers(0, 3))):
        headers.append((draw(st.sampled_from(["X-Forwarded-For", "Cookie", "X" * 5000])),
                        draw(st.text(max_size=60))))  # fmt: skip
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    raw_head = head.encode("utf-8", "surrogatepass")
    return raw_head + b"\r\n" + body

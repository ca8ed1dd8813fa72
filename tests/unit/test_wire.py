"""The milter protocol's framing and packet builders (aupmilter.wire), byte for byte.

The expected bytes are written out by hand from libmilter's mfdef.h and
smfi.c, not computed with wire's own helpers, so a change in framing shows here
before an MTA sees it.
"""

from __future__ import annotations

import pytest

from aupmilter import wire
from aupmilter.wire import ProtocolError


@pytest.mark.parametrize(
    ("command", "data", "expected"),
    [
        (b"c", b"", b"\x00\x00\x00\x01c"),
        (b"h", b"X\x00v\x00", b"\x00\x00\x00\x05hX\x00v\x00"),
        (b"b", b"x" * 300, b"\x00\x00\x01\x2db" + b"x" * 300),
        (b"b", b"x" * wire.BODY_CHUNK, b"\x00\x01\x00\x00b" + b"x" * wire.BODY_CHUNK),
    ],
    ids=["empty", "strings", "two-byte-length", "full-body-chunk"],
)
def test_packet_length_counts_the_command_byte(
    command: bytes, data: bytes, expected: bytes
) -> None:
    assert wire.packet(command, data) == expected


@pytest.mark.parametrize(
    ("constant", "expected"),
    [
        (wire.CONTINUE_PACKET, b"\x00\x00\x00\x01c"),
        (wire.REJECT_PACKET, b"\x00\x00\x00\x01r"),
        (wire.TEMPFAIL_PACKET, b"\x00\x00\x00\x01t"),
        (wire.ACCEPT_PACKET, b"\x00\x00\x00\x01a"),
        (wire.DISCARD_PACKET, b"\x00\x00\x00\x01d"),
        (wire.SKIP_PACKET, b"\x00\x00\x00\x01s"),
        (wire.PROGRESS_PACKET, b"\x00\x00\x00\x01p"),
    ],
)
def test_simple_replies_are_single_command_bytes(constant: bytes, expected: bytes) -> None:
    assert constant == expected


@pytest.mark.parametrize(
    ("parts", "expected"),
    [((), b""), ((b"a",), b"a\x00"), ((b"a", b"", b"bc"), b"a\x00\x00bc\x00")],
)
def test_cstrings(parts: tuple[bytes, ...], expected: bytes) -> None:
    assert wire.cstrings(*parts) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", []),
        (b"\x00", [b""]),
        (b"<a@x>\x00", [b"<a@x>"]),
        (b"<a@x>\x00SIZE=10\x00BODY=8BITMIME\x00", [b"<a@x>", b"SIZE=10", b"BODY=8BITMIME"]),
        (b"<a@x>\x00SIZE=10", [b"<a@x>", b"SIZE=10"]),
        (b"a\x00\x00b\x00", [b"a", b"", b"b"]),
        (b"a\x00\x00", [b"a", b""]),
    ],
    ids=["empty", "one-empty", "one", "three", "no-last-nul", "empty-middle", "empty-last"],
)
def test_split_cstrings(data: bytes, expected: list[bytes]) -> None:
    assert wire.split_cstrings(data) == expected


def test_parse_options() -> None:
    data = b"\x00\x00\x00\x06\x00\x00\x01\xff\x00\x1f\xff\xff"
    assert wire.parse_options(data) == (6, 0x1FF, 0x1FFFFF)
    # Later versions may append more; the first twelve bytes are what counts.
    assert wire.parse_options(data + b"\x00\x00\x00\x00") == (6, 0x1FF, 0x1FFFFF)


@pytest.mark.parametrize("length", [0, 1, 4, 8, 11])
def test_parse_options_refuses_a_short_packet(length: int) -> None:
    with pytest.raises(ProtocolError, match=f"of {length} bytes"):
        wire.parse_options(b"\x00" * length)


def test_options_reply() -> None:
    assert wire.options_reply(6, 0x29, 0x1000) == (
        b"\x00\x00\x00\x0dO\x00\x00\x00\x06\x00\x00\x00\x29\x00\x00\x10\x00"
    )


@pytest.mark.parametrize(
    ("data", "stage", "values"),
    [
        (b"C", ord("C"), {}),
        (b"Cj\x00relay.test\x00", ord("C"), {"j": "relay.test"}),
        (
            b"Mi\x00ABC123\x00{auth_authen}\x00acme\x00",
            ord("M"),
            {"i": "ABC123", "{auth_authen}": "acme"},
        ),
        # An empty value is a value, not a missing one.
        (b"R{rcpt_addr}\x00\x00", ord("R"), {"{rcpt_addr}": ""}),
        # A name without its value is dropped, not paired with the next name.
        (b"Hj\x00relay\x00{tls_version}\x00", ord("H"), {"j": "relay"}),
        (b"Ej\x00relay", ord("E"), {"j": "relay"}),
        (b"Cv\x00caf\xc3\xa9\x00", ord("C"), {"v": "caf\u00e9"}),
        (b"Cv\x00\xff\x00", ord("C"), {"v": "\udcff"}),
    ],
    ids=["no-macros", "one", "two", "empty-value", "odd", "no-last-nul", "utf8", "raw-byte"],
)
def test_parse_macros(data: bytes, stage: int, values: dict[str, str]) -> None:
    assert wire.parse_macros(data) == (stage, values)


def test_parse_macros_refuses_a_packet_without_its_command() -> None:
    with pytest.raises(ProtocolError, match="without a command"):
        wire.parse_macros(b"")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            b"mx.example\x004\xc3\x50192.0.2.10\x00",
            ("mx.example", 2, ("192.0.2.10", 50000)),
        ),
        (
            b"[192.0.2.10]\x004\x00\x19192.0.2.10",
            ("[192.0.2.10]", 2, ("192.0.2.10", 25)),
        ),
        (
            b"mx6.example\x006\x01\xbbIPv6:2001:db8::1\x00",
            ("mx6.example", 10, ("2001:db8::1", 443, 0, 0)),
        ),
        (
            b"mx6.example\x006\x01\xbb2001:db8::2\x00",
            ("mx6.example", 10, ("2001:db8::2", 443, 0, 0)),
        ),
        (b"localhost\x00L\x00\x00/run/smtp.sock\x00", ("localhost", 1, "/run/smtp.sock")),
        (b"unknown\x00U", ("unknown", 0, None)),
        (b"unknown\x00", ("unknown", 0, None)),
        (b"\x00U", ("", 0, None)),
    ],
    ids=[
        "inet",
        "inet-no-nul",
        "inet6-prefixed",
        "inet6-bare",
        "unix",
        "unknown",
        "no-family",
        "no-name",
    ],
)
def test_parse_connect(data: bytes, expected: tuple[str, int, object]) -> None:
    assert wire.parse_connect(data) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"mx.example", "without a host name"),
        (b"", "without a host name"),
        (b"mx.example\x004", "without a port"),
        (b"mx.example\x004\x00", "without a port"),
        (b"mx.example\x00X\x00\x19192.0.2.10\x00", "unknown family 'X'"),
    ],
    ids=["no-nul", "empty", "family-only", "half-port", "bad-family"],
)
def test_parse_connect_refuses_a_malformed_packet(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        wire.parse_connect(data)


@pytest.mark.parametrize(
    ("code", "status", "lines", "expected"),
    [
        # smfi_setreply: "code status text", or "code text" with no status.
        ("550", "5.7.1", ["Go away"], b"550 5.7.1 Go away\x00"),
        ("451", None, ["Try later"], b"451 Try later\x00"),
        ("550", "5.7.1", [], b"550 5.7.1\x00"),
        ("550", None, [], b"550 \x00"),
        # smfi_setmlreply: every line but the last has a hyphen; no status means x.0.0.
        (
            "550",
            "5.7.1",
            ["first", "second", "third"],
            b"550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\x00",
        ),
        ("451", None, ["first", "second"], b"451-4.0.0 first\r\n451 4.0.0 second\x00"),
        ("550", None, ["first", "second"], b"550-5.0.0 first\r\n550 5.0.0 second\x00"),
    ],
    ids=["status", "no-status", "status-no-text", "bare", "multi", "multi-4xx", "multi-5xx"],
)
def test_reply_text(code: str, status: str | None, lines: list[str], expected: bytes) -> None:
    assert wire.reply_text(code, status, lines) == expected


def test_reply_text_takes_any_iterable() -> None:
    assert wire.reply_text("550", "5.7.1", iter(["a", "b"])) == b"550-5.7.1 a\r\n550 5.7.1 b\x00"


@pytest.mark.parametrize(
    ("command", "name", "value", "index", "expected"),
    [
        (wire.R_ADDHEADER, "X-A", b" 1", None, b"\x00\x00\x00\x08hX-A\x00 1\x00"),
        (
            wire.R_INSHEADER,
            "X-B",
            b" 2",
            0,
            b"\x00\x00\x00\x0ci\x00\x00\x00\x00X-B\x00 2\x00",
        ),
        (
            wire.R_CHGHEADER,
            "Subject",
            b" new",
            3,
            b"\x00\x00\x00\x12m\x00\x00\x00\x03Subject\x00 new\x00",
        ),
        # An empty value deletes the header.
        (wire.R_CHGHEADER, "X-Old", b"", 1, b"\x00\x00\x00\x0cm\x00\x00\x00\x01X-Old\x00\x00"),
        (
            wire.R_ADDHEADER,
            "X-\u00e9",
            b"caf\xc3\xa9",
            None,
            b"\x00\x00\x00\x0chX-\xc3\xa9\x00caf\xc3\xa9\x00",
        ),
    ],
    ids=["add", "insert", "change", "delete", "utf8"],
)
def test_header_action(
    command: bytes, name: str, value: bytes, index: int | None, expected: bytes
) -> None:
    assert wire.header_action(command, name, value, index) == expected

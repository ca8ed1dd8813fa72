"""The milter protocol (version 6) on the milter's side: packets in, replies out. Pure.

Wire format (libmilter's mfdef.h): every packet is a 4-byte big-endian length
that counts the command byte, the command byte, then the data. Strings are
NUL-terminated. This module only frames, splits and builds packets; what a
command means to the daemon is `engine`'s business.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterable

# --- commands (MTA -> milter) -----------------------------------------------

CMD_ABORT = ord("A")
CMD_BODY = ord("B")
CMD_CONNECT = ord("C")
CMD_MACRO = ord("D")
CMD_EOM = ord("E")
CMD_HELO = ord("H")
CMD_QUIT_NC = ord("K")
CMD_HEADER = ord("L")
CMD_MAIL = ord("M")
CMD_EOH = ord("N")
CMD_OPTNEG = ord("O")
CMD_QUIT = ord("Q")
CMD_RCPT = ord("R")
CMD_DATA = ord("T")
CMD_UNKNOWN = ord("U")

# --- replies and actions (milter -> MTA) --------------------------------------

R_ADDRCPT = b"+"
R_DELRCPT = b"-"
R_ADDRCPT_PAR = b"2"
R_ACCEPT = b"a"
R_REPLBODY = b"b"
R_CONTINUE = b"c"
R_DISCARD = b"d"
R_CHGFROM = b"e"
R_ADDHEADER = b"h"
R_INSHEADER = b"i"
R_CHGHEADER = b"m"
R_OPTNEG = b"O"
R_PROGRESS = b"p"
R_QUARANTINE = b"q"
R_REJECT = b"r"
R_SKIP = b"s"
R_TEMPFAIL = b"t"
R_REPLYCODE = b"y"

PROTOCOL_VERSION = 6
MIN_MTA_VERSION = 2
"""Version 2 (Sendmail 8.12) is the oldest that negotiates options at all."""
MAX_PACKET = 1 << 20
"""The largest packet taken (libmilter's default is 1 MiB): a longer one is a broken peer.

A body chunk is at most 64 KiB (MILTER_CHUNK_SIZE), a header or macro set far less.
"""
BODY_CHUNK = 65_535
"""MILTER_CHUNK_SIZE: the largest body packet an MTA reads."""

# Macro stages, by the command their macros come with; libmilter's CI_* order,
# which is also the order a lookup searches them in, last to first.
MACRO_STAGES: dict[int, int] = {
    CMD_CONNECT: 0,
    CMD_HELO: 1,
    CMD_MAIL: 2,
    CMD_RCPT: 3,
    CMD_DATA: 4,
    CMD_EOM: 5,
    CMD_EOH: 6,
}
STAGE_COUNT = 7
MAIL_STAGE = MACRO_STAGES[CMD_MAIL]

_LENGTH = struct.Struct(">I")
_OPTIONS = struct.Struct(">III")
_INDEX = struct.Struct(">I")

# Connect packet families (SMFIA_*), and the socket family pymilter hands to `connect`.
FAMILY_UNKNOWN = ord("U")
FAMILY_UNIX = ord("L")
FAMILY_INET = ord("4")
FAMILY_INET6 = ord("6")


class ProtocolError(Exception):
    """The peer broke the protocol: the connection is closed (libmilter does the same)."""


def packet(command: bytes, data: bytes = b"") -> bytes:
    """One packet: length, command byte, data."""
    return _LENGTH.pack(len(data) + 1) + command + data


def cstrings(*parts: bytes) -> bytes:
    """NUL-terminated strings, back to back."""
    return b"".join(part + b"\0" for part in parts)


def split_cstrings(data: bytes) -> list[bytes]:
    """The NUL-terminated strings of `data`; a missing last NUL is forgiven."""
    if not data:
        return []
    if data.endswith(b"\0"):
        data = data[:-1]
    return data.split(b"\0")


CONTINUE_PACKET = packet(R_CONTINUE)
REJECT_PACKET = packet(R_REJECT)
TEMPFAIL_PACKET = packet(R_TEMPFAIL)
ACCEPT_PACKET = packet(R_ACCEPT)
DISCARD_PACKET = packet(R_DISCARD)
SKIP_PACKET = packet(R_SKIP)
PROGRESS_PACKET = packet(R_PROGRESS)


def parse_options(data: bytes) -> tuple[int, int, int]:
    """An OPTNEG packet's version, actions and protocol steps."""
    if len(data) < _OPTIONS.size:
        raise ProtocolError(f"option negotiation of {len(data)} bytes (12 expected)")
    version, actions, protocol = _OPTIONS.unpack_from(data)
    return int(version), int(actions), int(protocol)


def options_reply(version: int, actions: int, protocol: int) -> bytes:
    return packet(R_OPTNEG, _OPTIONS.pack(version, actions, protocol))


def parse_macros(data: bytes) -> tuple[int, dict[str, str]]:
    """A MACRO packet: the command its macros belong to, and name -> value."""
    if not data:
        raise ProtocolError("macro packet without a command")
    parts = split_cstrings(data[1:])
    values = {
        parts[i].decode("utf-8", "surrogateescape"): parts[i + 1].decode("utf-8", "surrogateescape")
        for i in range(0, len(parts) - 1, 2)
    }
    return data[0], values


def parse_connect(data: bytes) -> tuple[str, int, object]:
    """CONNECT: host name, socket family and address as pymilter gives them to `connect`.

    The address is (ip, port) for IPv4, (ip, port, 0, 0) for IPv6, the path for a
    unix socket and None when the MTA does not know it.
    """
    end = data.find(b"\0")
    if end < 0:
        raise ProtocolError("connect packet without a host name")
    hostname = data[:end].decode("utf-8", "surrogateescape")
    rest = data[end + 1 :]
    if not rest or rest[0] == FAMILY_UNKNOWN:
        return hostname, 0, None
    family = rest[0]
    if len(rest) < 3:
        raise ProtocolError("connect packet without a port")
    port = int.from_bytes(rest[1:3], "big")
    address = rest[3:].rstrip(b"\0").decode("ascii", "replace")
    if family == FAMILY_INET:
        return hostname, 2, (address, port)  # AF_INET
    if family == FAMILY_INET6:
        if address[:5].lower() == "ipv6:":
            address = address[5:]
        with contextlib.suppress(OSError):  # as libmilter gives it: inet_ntop's form
            address = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, address))
        return hostname, 10, (address, port, 0, 0)  # AF_INET6
    if family == FAMILY_UNIX:
        return hostname, 1, address  # AF_UNIX
    raise ProtocolError(f"connect packet with unknown family {chr(family)!r}")


def reply_text(code: str, status: str | None, lines: Iterable[str]) -> bytes:
    """SMFIR_REPLYCODE's text, as libmilter builds it: `550-5.7.1 a` CRLF `550 5.7.1 b`.

    One line is smfi_setreply's `550 text`, with no status unless given; more
    lines are smfi_setmlreply's (what pymilter calls for them), whose status
    is `5.0.0` or `4.0.0` when none is given.
    """
    texts = list(lines) or [""]
    last = len(texts) - 1
    if status is None and last > 0:
        status = code[0] + ".0.0"
    rendered = [
        code + (" " if number == last else "-") + " ".join(part for part in (status, text) if part)
        for number, text in enumerate(texts)
    ]
    return "\r\n".join(rendered).encode("utf-8", "surrogateescape") + b"\0"


def header_action(command: bytes, name: str, value: bytes, index: int | None) -> bytes:
    """ADDHEADER (no index), INSHEADER or CHGHEADER (with one)."""
    body = cstrings(name.encode("utf-8", "surrogateescape"), value)
    if index is None:
        return packet(command, body)
    return packet(command, _INDEX.pack(index) + body)

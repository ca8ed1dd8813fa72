"""The MTA's first words of the milter protocol: option negotiation, then quit.

`aup-milter status` proves the daemon serves requests the way Postfix or
Sendmail first meets it: connect to the socket, send SMFIC_OPTNEG (version 6,
every action and protocol step offered), read the milter's SMFIC_OPTNEG reply
(its version, the actions it wants, the steps it skips), then SMFIC_QUIT. A
bare connect would also succeed on a wedged daemon, or on a socket that
systemd holds while nothing serves it.

Wire format (libmilter's mfdef.h): each packet is a 4-byte big-endian length
(counting the command byte), one command byte, then the data. Every read is
bounded by one deadline: a milter that does not answer is an error, never a
hang. No message is sent, so the daemon starts no transaction and logs none.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from dataclasses import dataclass

from aupmilter.config import ListenAddress

PROTOCOL_VERSION = 6
ALL_ACTIONS = 0x1FF
"""SMFIF_ADDHDRS ... SMFIF_SETSYMLIST: everything a version-6 MTA allows."""
ALL_PROTOCOL = 0x1FFFFF
"""SMFIP_NOCONNECT ... SMFIP_HEADER_LEADSPC: every step and option Postfix 3.x offers."""

SMFIC_OPTNEG = b"O"
SMFIC_QUIT = b"Q"
MAX_REPLY = 1 << 16
"""An OPTNEG reply is 12 bytes plus macro lists; longer is not a milter talking."""

ACTION_NAMES = (
    (0x001, "add-header"),
    (0x002, "change-body"),
    (0x004, "add-rcpt"),
    (0x008, "delete-rcpt"),
    (0x010, "change-header"),
    (0x020, "quarantine"),
    (0x040, "change-from"),
    (0x080, "add-rcpt-args"),
    (0x100, "set-macros"),
)


class MilterCheckError(Exception):
    """No milter answered option negotiation; the text says what happened."""


@dataclass(frozen=True, slots=True)
class Negotiation:
    """The milter's OPTNEG reply, and how long the round trip took (connect included)."""

    version: int
    actions: int
    protocol: int
    seconds: float

    @property
    def action_names(self) -> tuple[str, ...]:
        return tuple(name for bit, name in ACTION_NAMES if self.actions & bit)


def socket_target(listen: ListenAddress) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    """The address family and connect() target of a `milter.listen` address."""
    if listen.kind == "unix" and listen.path is not None:
        return socket.AF_UNIX, str(listen.path)
    if listen.kind == "inet" and listen.port is not None:
        return socket.AF_INET, (listen.host or "127.0.0.1", listen.port)
    if listen.kind == "inet6" and listen.port is not None:
        return socket.AF_INET6, (listen.host or "::1", listen.port)
    raise MilterCheckError(f"cannot connect to {listen}: not a socket address")


def negotiate(listen: ListenAddress, timeout: float) -> Negotiation:
    """Connect, negotiate options, quit; MilterCheckError unless a milter answered in time."""
    family, target = socket_target(listen)
    started = time.monotonic()
    deadline = started + timeout
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(target)
            except OSError as exc:
                raise MilterCheckError(f"cannot connect to {listen}: {_why(exc)}") from None
            offer = struct.pack("!III", PROTOCOL_VERSION, ALL_ACTIONS, ALL_PROTOCOL)
            _send(sock, SMFIC_OPTNEG, offer, listen)
            command, data = _read_packet(sock, deadline, listen)
            elapsed = time.monotonic() - started
            if command != SMFIC_OPTNEG or len(data) < 12:
                raise MilterCheckError(
                    f"{listen} answered option negotiation with {command!r} ({len(data)} bytes),"
                    " not an SMFIC_OPTNEG reply: is a milter listening there?"
                )
            version, actions, protocol = struct.unpack("!III", data[:12])
            # It answered; a close before our goodbye is its business.
            with contextlib.suppress(MilterCheckError):
                _send(sock, SMFIC_QUIT, b"", listen)
    except OSError as exc:  # socket() itself, or close()
        raise MilterCheckError(f"cannot talk to {listen}: {_why(exc)}") from None
    if not 2 <= version <= PROTOCOL_VERSION:
        raise MilterCheckError(f"{listen} negotiated milter protocol version {version}")
    return Negotiation(version, actions, protocol, elapsed)


def _send(sock: socket.socket, command: bytes, data: bytes, listen: ListenAddress) -> None:
    try:
        sock.sendall(struct.pack("!I", len(data) + 1) + command + data)
    except OSError as exc:
        raise MilterCheckError(f"writing to {listen}: {_why(exc)}") from None


def _read_packet(
    sock: socket.socket, deadline: float, listen: ListenAddress
) -> tuple[bytes, bytes]:
    (length,) = struct.unpack("!I", _recv_exact(sock, 4, deadline, listen))
    if not 1 <= length <= MAX_REPLY:
        raise MilterCheckError(f"{listen} sent a packet of length {length}: not a milter reply")
    packet = _recv_exact(sock, length, deadline, listen)
    return packet[:1], packet[1:]


def _recv_exact(sock: socket.socket, count: int, deadline: float, listen: ListenAddress) -> bytes:
    chunks: list[bytes] = []
    left = count
    while left:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(left)
        except TimeoutError:
            raise MilterCheckError(f"{listen} did not answer option negotiation in time") from None
        except OSError as exc:
            raise MilterCheckError(f"reading from {listen}: {_why(exc)}") from None
        if not chunk:
            raise MilterCheckError(f"{listen} closed the connection during option negotiation")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__

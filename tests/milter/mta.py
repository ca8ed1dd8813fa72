"""The MTA side of the milter protocol (version 6), as Postfix speaks it.

A small, synchronous client for driving a real milter over its socket in
tests: option negotiation, macros, the SMTP-stage commands, and the replies
(including the modification actions a milter sends at end of message). It
honours what the milter negotiates: a step the milter asked to skip (P_NO*) is
not sent, and a step whose reply it suppressed (P_NR_*) gets no reply read.

Every socket read is bounded by ``timeout`` seconds; a milter that does not
answer raises ``MilterTimeout`` instead of hanging the test run.

Wire format (libmilter's mfdef.h): each packet is a 4-byte big-endian length
(counting the command byte), one command byte, then the data.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from enum import StrEnum
from types import TracebackType

from testbed.proc import milter_socket_address

PROTOCOL_VERSION = 6
MAX_PACKET = 1 << 20
"""A reply longer than this is a protocol error (libmilter's own cap is 64 KiB by default)."""

# --- commands (MTA -> milter) --------------------------------------------------

CMD_ABORT = b"A"
CMD_BODY = b"B"
CMD_CONNECT = b"C"
CMD_MACRO = b"D"
CMD_EOM = b"E"
CMD_HELO = b"H"
CMD_QUIT_NC = b"K"
CMD_HEADER = b"L"
CMD_MAIL = b"M"
CMD_EOH = b"N"
CMD_OPTNEG = b"O"
CMD_QUIT = b"Q"
CMD_RCPT = b"R"
CMD_DATA = b"T"
CMD_UNKNOWN = b"U"

# --- actions the MTA allows (SMFIF_*) ------------------------------------------

ACT_ADDHDRS = 0x001
ACT_CHGBODY = 0x002
ACT_ADDRCPT = 0x004
ACT_DELRCPT = 0x008
ACT_CHGHDRS = 0x010
ACT_QUARANTINE = 0x020
ACT_CHGFROM = 0x040
ACT_ADDRCPT_PAR = 0x080
ACT_SETSYMLIST = 0x100
ALL_ACTIONS = 0x1FF

# --- protocol steps (SMFIP_*) --------------------------------------------------

P_NOCONNECT = 0x000001
P_NOHELO = 0x000002
P_NOMAIL = 0x000004
P_NORCPT = 0x000008
P_NOBODY = 0x000010
P_NOHDRS = 0x000020
P_NOEOH = 0x000040
P_NR_HDR = 0x000080
P_NOUNKNOWN = 0x000100
P_NODATA = 0x000200
P_SKIP = 0x000400
P_RCPT_REJ = 0x000800
P_NR_CONN = 0x001000
P_NR_HELO = 0x002000
P_NR_MAIL = 0x004000
P_NR_RCPT = 0x008000
P_NR_DATA = 0x010000
P_NR_UNKN = 0x020000
P_NR_EOH = 0x040000
P_NR_BODY = 0x080000
P_HDR_LEADSPC = 0x100000
ALL_PROTOCOL = 0x1FFFFF
"""Every step and option a version-6 MTA can offer (what Postfix 3.x offers)."""

# Per command: the bit that skips it, and the bit that suppresses its reply.
_STEP_BITS: dict[bytes, tuple[int, int]] = {
    CMD_CONNECT: (P_NOCONNECT, P_NR_CONN),
    CMD_HELO: (P_NOHELO, P_NR_HELO),
    CMD_MAIL: (P_NOMAIL, P_NR_MAIL),
    CMD_RCPT: (P_NORCPT, P_NR_RCPT),
    CMD_DATA: (P_NODATA, P_NR_DATA),
    CMD_HEADER: (P_NOHDRS, P_NR_HDR),
    CMD_EOH: (P_NOEOH, P_NR_EOH),
    CMD_BODY: (P_NOBODY, P_NR_BODY),
    CMD_UNKNOWN: (P_NOUNKNOWN, P_NR_UNKN),
}

# Macro stages in the OPTNEG reply's symbol lists (SMFIM_*) -> the command they precede.
MACRO_STAGES: dict[int, bytes] = {
    0: CMD_CONNECT,
    1: CMD_HELO,
    2: CMD_MAIL,
    3: CMD_RCPT,
    4: CMD_DATA,
    5: CMD_EOM,
    6: CMD_EOH,
}


class MilterError(Exception):
    """The milter broke the protocol, closed the connection, or did not answer."""


class MilterTimeout(MilterError):
    """No complete reply within the read timeout."""


class Kind(StrEnum):
    """What a reply tells the MTA to do (a 'y' reply maps to REJECT or TEMPFAIL by its code)."""

    CONTINUE = "continue"
    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    DISCARD = "discard"
    SKIP = "skip"
    SHUTDOWN = "shutdown"
    CONNFAIL = "connfail"


_FINAL_KINDS: dict[bytes, Kind] = {
    b"c": Kind.CONTINUE,
    b"a": Kind.ACCEPT,
    b"r": Kind.REJECT,
    b"t": Kind.TEMPFAIL,
    b"d": Kind.DISCARD,
    b"s": Kind.SKIP,
    b"4": Kind.SHUTDOWN,
    b"f": Kind.CONNFAIL,
}
_REPLYCODE = b"y"
_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@dataclass(frozen=True, slots=True)
class Response:
    """One milter reply to one command.

    ``replied`` is False when no reply was read because the milter negotiated
    the step away (P_NO*) or its reply (P_NR_*); the MTA then assumes CONTINUE.
    ``wire`` is the reply's command byte ('y' for a reply with an SMTP code).
    """

    kind: Kind
    smtp_code: str | None = None
    status: str | None = None
    text: str | None = None
    wire: str = ""
    replied: bool = True

    @property
    def refuses(self) -> bool:
        """True when an MTA would refuse the command (or the message) on this reply."""
        return self.kind in (Kind.REJECT, Kind.TEMPFAIL, Kind.DISCARD, Kind.SHUTDOWN)

    @property
    def reply(self) -> str | None:
        """``"550 5.7.1"``: code and enhanced status, as the daemon's verdict log writes them."""
        if self.smtp_code is None:
            return None
        return f"{self.smtp_code} {self.status}" if self.status else self.smtp_code

    def __str__(self) -> str:
        if self.smtp_code is None:
            return self.kind.value if self.replied else f"{self.kind.value} (no reply)"
        parts = [self.smtp_code, self.status or "", self.text or ""]
        return f"{self.kind.value}: " + " ".join(p for p in parts if p)


NOT_SENT = Response(Kind.CONTINUE, replied=False)


def parse_replycode(data: bytes) -> Response:
    """A 'y' reply: ``550 5.7.1 text`` (possibly multi-line ``550-5.7.1 ...\\r\\n550 ...``)."""
    text = data.rstrip(b"\0").decode("utf-8", errors="replace")
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line]
    if not lines or not re.match(r"^[245]\d\d([ -]|$)", lines[0]):
        raise MilterError(f"malformed reply code packet: {data!r}")
    code = lines[0][:3]
    status: str | None = None
    texts = []
    for line in lines:
        rest = line[4:] if len(line) > 3 else ""
        token, _, remainder = rest.partition(" ")
        if _STATUS.match(token):
            status = status or token
            rest = remainder
        texts.append(rest)
    kind = {"2": Kind.ACCEPT, "4": Kind.TEMPFAIL}.get(code[0], Kind.REJECT)
    return Response(kind, code, status, " ".join(texts), wire="y")


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The milter's OPTNEG reply."""

    version: int
    actions: int
    protocol: int
    macros: Mapping[bytes, str] = field(default_factory=dict)
    """Symbol lists the milter asked for, by the command they precede."""

    def skips(self, command: bytes) -> bool:
        bits = _STEP_BITS.get(command)
        return bits is not None and bool(self.protocol & bits[0])

    def no_reply(self, command: bytes) -> bool:
        bits = _STEP_BITS.get(command)
        return bits is not None and bool(self.protocol & bits[1])


@dataclass(frozen=True, slots=True)
class EomResult:
    """Everything the milter sent in answer to end of message, in order of kind."""

    response: Response
    quarantine_reason: str | None = None
    added_headers: tuple[tuple[str, str], ...] = ()
    inserted_headers: tuple[tuple[int, str, str], ...] = ()
    """(index, name, value) from 'i' (insheader)."""
    changed_headers: tuple[tuple[int, str, str], ...] = ()
    """(index, name, value) from 'm' (chgheader); an empty value deletes the header."""
    added_rcpts: tuple[tuple[str, str | None], ...] = ()
    """(recipient, ESMTP args or None) from '+' and '2'."""
    deleted_rcpts: tuple[str, ...] = ()
    new_sender: tuple[str, str | None] | None = None
    """(sender, ESMTP args or None) from 'e' (chgfrom)."""
    replaced_body: bytes | None = None
    progress: int = 0
    """How many 'p' (progress) packets were skipped."""

    @property
    def modified(self) -> bool:
        return bool(
            self.quarantine_reason is not None
            or self.added_headers
            or self.inserted_headers
            or self.changed_headers
            or self.added_rcpts
            or self.deleted_rcpts
            or self.new_sender is not None
            or self.replaced_body is not None
        )


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """What happened at each stage of one transaction, up to the first refusal."""

    mail: Response
    rcpts: tuple[tuple[str, Response], ...] = ()
    data: Response | None = None
    headers: tuple[Response, ...] = ()
    eoh: Response | None = None
    body: Response | None = None
    eom: EomResult | None = None
    refused_at: str | None = None
    """The stage that ended the transaction early ('mail', 'rcpt', 'data', ...), or None."""

    @property
    def final(self) -> Response:
        """The response that decided the transaction."""
        if self.eom is not None:
            return self.eom.response
        if self.refused_at == "rcpt":
            return self.rcpts[-1][1]
        for stage in (self.body, self.eoh, self.headers[-1] if self.headers else None, self.data):
            if stage is not None and stage.refuses:
                return stage
        return self.mail

    @property
    def quarantine_reason(self) -> str | None:
        return self.eom.quarantine_reason if self.eom is not None else None


def _cstr(value: str) -> bytes:
    if "\0" in value:
        raise ValueError(f"NUL in a milter protocol string: {value!r}")
    return value.encode("utf-8", errors="surrogateescape") + b"\0"


def _split_cstrs(data: bytes) -> list[str]:
    if not data.endswith(b"\0"):
        raise MilterError(f"string list not NUL-terminated: {data!r}")
    return [part.decode("utf-8", errors="replace") for part in data[:-1].split(b"\0")]


class MilterClient:
    """One MTA-to-milter connection (one SMTP session's worth of transactions)."""

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        family, target = milter_socket_address(address)
        self.address = address
        self.timeout = timeout
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(target)
        except BaseException:
            self.sock.close()
            raise
        self.negotiated: Negotiated | None = None
        self.closed = False

    # --- context manager ---------------------------------------------------------

    def __enter__(self) -> MilterClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- framing -----------------------------------------------------------------

    def send_packet(self, command: bytes, data: bytes = b"") -> None:
        if len(command) != 1:
            raise ValueError(f"a command is one byte, got {command!r}")
        try:
            self.sock.settimeout(self.timeout)
            self.sock.sendall(struct.pack("!I", len(data) + 1) + command + data)
        except OSError as exc:
            raise MilterError(f"writing to milter at {self.address}: {exc}") from exc

    def _recv_exact(self, count: int, deadline: float) -> bytes:
        chunks = []
        left = count
        while left:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                self.sock.settimeout(remaining)
                chunk = self.sock.recv(left)
            except TimeoutError:
                raise MilterTimeout(
                    f"milter at {self.address} sent no complete reply within {self.timeout:g}s"
                ) from None
            except OSError as exc:
                raise MilterError(f"reading from milter at {self.address}: {exc}") from exc
            if not chunk:
                raise MilterError(f"milter at {self.address} closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def read_packet(self) -> tuple[bytes, bytes]:
        """One packet, complete within ``timeout`` seconds however the bytes trickle in."""
        deadline = time.monotonic() + self.timeout
        (length,) = struct.unpack("!I", self._recv_exact(4, deadline))
        if length < 1 or length > MAX_PACKET:
            raise MilterError(f"bad packet length {length} from {self.address}")
        packet = self._recv_exact(length, deadline)
        return packet[:1], packet[1:]

    def read_response(self) -> Response:
        """One reply to a non-EOM command ('p' progress packets are skipped)."""
        while True:
            command, data = self.read_packet()
            if command == b"p":
                continue
            return self._final(command, data)

    @staticmethod
    def _final(command: bytes, data: bytes) -> Response:
        if command == _REPLYCODE:
            return parse_replycode(data)
        kind = _FINAL_KINDS.get(command)
        if kind is None:
            raise MilterError(f"unexpected reply {command!r} ({data!r})")
        return Response(kind, wire=command.decode())

    # --- negotiation -------------------------------------------------------------

    def negotiate(
        self,
        version: int = PROTOCOL_VERSION,
        actions: int = ALL_ACTIONS,
        protocol: int = ALL_PROTOCOL,
    ) -> Negotiated:
        self.send_packet(CMD_OPTNEG, struct.pack("!III", version, actions, protocol))
        command, data = self.read_packet()
        if command != CMD_OPTNEG or len(data) < 12:
            raise MilterError(f"bad OPTNEG reply {command!r} {data!r}")
        got_version, got_actions, got_protocol = struct.unpack("!III", data[:12])
        if got_protocol & ~protocol:
            extra = got_protocol & ~protocol
            raise MilterError(f"milter asked for protocol bits {extra:#x} that were not offered")
        macros: dict[bytes, str] = {}
        rest = data[12:]
        while len(rest) >= 5:
            (stage,) = struct.unpack("!I", rest[:4])
            end = rest.find(b"\0", 4)
            if end < 0:
                raise MilterError(f"unterminated macro list in OPTNEG reply: {data!r}")
            macros[MACRO_STAGES.get(stage, b"?")] = rest[4:end].decode()
            rest = rest[end + 1 :]
        self.negotiated = Negotiated(got_version, got_actions, got_protocol, macros)
        return self.negotiated

    def _need(self) -> Negotiated:
        if self.negotiated is None:
            return self.negotiate()
        return self.negotiated

    # --- commands ----------------------------------------------------------------

    def macros(self, command: bytes, values: Mapping[str, str] | None) -> None:
        """'D' + the command the macros belong to + name\\0value\\0 pairs (no reply)."""
        if not values:
            return
        payload = b"".join(_cstr(name) + _cstr(value) for name, value in values.items())
        self.send_packet(CMD_MACRO, command + payload)

    def command(
        self, command: bytes, data: bytes = b"", macros: Mapping[str, str] | None = None
    ) -> Response:
        """Send one protocol step (with its macros first) unless negotiated away; read its reply."""
        negotiated = self._need()
        if negotiated.skips(command):
            return NOT_SENT
        self.macros(command, macros)
        self.send_packet(command, data)
        if negotiated.no_reply(command):
            return NOT_SENT
        return self.read_response()

    def connect(
        self,
        hostname: str = "client.example",
        address: str = "192.0.2.10",
        port: int = 50000,
        family: str = "4",
        macros: Mapping[str, str] | None = None,
    ) -> Response:
        if family == "U":
            data = _cstr(hostname) + b"U"
        else:
            data = _cstr(hostname) + family.encode() + struct.pack("!H", port) + _cstr(address)
        return self.command(CMD_CONNECT, data, macros)

    def helo(
        self, name: str = "client.example", macros: Mapping[str, str] | None = None
    ) -> Response:
        return self.command(CMD_HELO, _cstr(name), macros)

    def mail(self, sender: str, *args: str, macros: Mapping[str, str] | None = None) -> Response:
        """``sender`` without angle brackets ('' is the null sender); brackets are added."""
        return self.command(CMD_MAIL, _cstr(f"<{sender}>") + b"".join(map(_cstr, args)), macros)

    def rcpt(self, rcpt: str, *args: str, macros: Mapping[str, str] | None = None) -> Response:
        return self.command(CMD_RCPT, _cstr(f"<{rcpt}>") + b"".join(map(_cstr, args)), macros)

    def data(self, macros: Mapping[str, str] | None = None) -> Response:
        return self.command(CMD_DATA, b"", macros)

    def header(
        self, name: str, value: str | bytes, macros: Mapping[str, str] | None = None
    ) -> Response:
        """One header field; ``value`` as it follows ``Name: `` in the message (bytes: raw).

        Like Postfix, the leading space goes with the value only when the milter asked
        for it (P_HDR_LEADSPC); folds travel as LF + white space.
        """
        raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
        if self._need().protocol & P_HDR_LEADSPC:
            raw = b" " + raw
        if b"\0" in raw:
            raise ValueError(f"NUL in a milter protocol string: {raw!r}")
        return self.command(CMD_HEADER, _cstr(name) + raw + b"\0", macros)

    def eoh(self, macros: Mapping[str, str] | None = None) -> Response:
        return self.command(CMD_EOH, b"", macros)

    def body(self, chunk: bytes, macros: Mapping[str, str] | None = None) -> Response:
        return self.command(CMD_BODY, chunk, macros)

    def eom(self, macros: Mapping[str, str] | None = None) -> EomResult:
        """End of message: collect modification actions until the final reply."""
        self._need()
        self.macros(CMD_EOM, macros)
        self.send_packet(CMD_EOM)
        quarantine: str | None = None
        added: list[tuple[str, str]] = []
        inserted: list[tuple[int, str, str]] = []
        changed: list[tuple[int, str, str]] = []
        added_rcpts: list[tuple[str, str | None]] = []
        deleted: list[str] = []
        new_sender: tuple[str, str | None] | None = None
        body: bytes | None = None
        progress = 0
        while True:
            command, data = self.read_packet()
            if command == b"q":
                quarantine = _split_cstrs(data)[0]
            elif command == b"h":
                name, value = _split_cstrs(data)[:2]
                added.append((name, value))
            elif command in (b"i", b"m"):
                (index,) = struct.unpack("!I", data[:4])
                name, value = _split_cstrs(data[4:])[:2]
                (inserted if command == b"i" else changed).append((index, name, value))
            elif command in (b"+", b"2"):
                parts = _split_cstrs(data)
                added_rcpts.append((parts[0], parts[1] if len(parts) > 1 else None))
            elif command == b"-":
                deleted.append(_split_cstrs(data)[0])
            elif command == b"e":
                parts = _split_cstrs(data)
                new_sender = (parts[0], parts[1] if len(parts) > 1 else None)
            elif command == b"b":
                body = (body or b"") + data
            elif command == b"p":
                progress += 1
            else:
                return EomResult(
                    response=self._final(command, data),
                    quarantine_reason=quarantine,
                    added_headers=tuple(added),
                    inserted_headers=tuple(inserted),
                    changed_headers=tuple(changed),
                    added_rcpts=tuple(added_rcpts),
                    deleted_rcpts=tuple(deleted),
                    new_sender=new_sender,
                    replaced_body=body,
                    progress=progress,
                )

    def content(
        self,
        sender: str,
        recipients: Sequence[str],
        headers: Iterable[tuple[str, str | bytes]] | None = None,
        body: bytes = b"Hello.\r\n",
        macros: Mapping[str, str] | None = None,
    ) -> list[Response]:
        """DATA, the header fields (compliant ones by default), EOH and the body: the steps
        between the last RCPT and EOM, for tests that drive a transaction by hand."""
        responses = [self.data(macros=macros)]
        for name, value in (
            headers if headers is not None else compliant_headers(sender, recipients)
        ):
            responses.append(self.header(name, value, macros=macros))
        responses.append(self.eoh(macros=macros))
        if body:
            responses.append(self.body(body, macros=macros))
        return responses

    def abort(self) -> None:
        """End the current transaction (no reply)."""
        self._need()
        self.send_packet(CMD_ABORT)

    def quit(self) -> None:
        """Tell the milter the session is over (no reply), then close."""
        if not self.closed:
            with contextlib.suppress(MilterError):
                self.send_packet(CMD_QUIT)
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()

    # --- whole transactions ------------------------------------------------------

    def open_session(
        self,
        hostname: str = "client.example",
        address: str = "192.0.2.10",
        helo: str = "client.example",
        daemon_name: str = "smtpd-test",
    ) -> tuple[Response, Response]:
        """OPTNEG, CONNECT (with ``{daemon_name}``) and HELO, as an MTA starts a session."""
        self._need()
        connected = self.connect(
            hostname, address, macros={"{daemon_name}": daemon_name, "j": "relay.test"}
        )
        if connected.refuses:
            return connected, NOT_SENT
        return connected, self.helo(helo)

    def send_message(
        self,
        sender: str,
        recipients: Sequence[str],
        auth_login: str | None = None,
        headers: Iterable[tuple[str, str | bytes]] | None = None,
        body: bytes = b"Hello.\r\n",
        queue_id: str | None = None,
        abort_on_refusal: bool = True,
        mail_args: Sequence[str] = (),
        rcpt_args: Sequence[str] = (),
    ) -> TransactionResult:
        """One transaction, MAIL to EOM, stopping at the first refusal like an MTA.

        ``{auth_authen}`` (when ``auth_login`` is given) and ``i`` go with MAIL,
        ``i`` again before DATA and EOM. Refused recipients are dropped; with no
        recipient left the transaction ends. After a refusal an ABORT is sent
        (as Postfix does when it resets the transaction), so the connection can
        carry the next one.
        """
        if headers is None:
            headers = compliant_headers(sender, recipients)
        mail_macros = {"{mail_addr}": sender}
        if auth_login is not None:
            mail_macros.update({"{auth_type}": "PLAIN", "{auth_authen}": auth_login})
        qid_macros = {"i": queue_id} if queue_id else None
        if queue_id:
            mail_macros["i"] = queue_id
        done = _Progress(mail=self.mail(sender, *mail_args, macros=mail_macros))
        if done.mail.refuses:
            return self._refused(done, "mail", abort_on_refusal)
        for rcpt in recipients:
            response = self.rcpt(rcpt, *rcpt_args, macros={"{rcpt_addr}": rcpt})
            done.rcpts.append((rcpt, response))
        if all(response.refuses for _, response in done.rcpts):
            return self._refused(done, "rcpt", abort_on_refusal)
        done.data = self.data(macros=qid_macros)
        if done.data.refuses:
            return self._refused(done, "data", abort_on_refusal)
        for name, value in headers:
            done.headers.append(self.header(name, value, macros=qid_macros))
            if done.headers[-1].refuses:
                return self._refused(done, "header", abort_on_refusal)
        done.eoh = self.eoh(macros=qid_macros)
        if done.eoh.refuses:
            return self._refused(done, "eoh", abort_on_refusal)
        if body:
            done.body = self.body(body, macros=qid_macros)
            if done.body.refuses:
                return self._refused(done, "body", abort_on_refusal)
        done.eom = self.eom(macros=qid_macros)
        return done.result(None)

    def _refused(self, done: _Progress, stage: str, abort: bool) -> TransactionResult:
        if abort:
            self.abort()
        return done.result(stage)


def header_address(address: str) -> str:
    """An envelope address as a header may carry it without SMTPUTF8 (IDNA domain)."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    try:
        return f"{local}@{domain.rstrip('.').encode('idna').decode('ascii')}"
    except UnicodeError:
        return address


def folded_address_list(addresses: Sequence[str], per_line: int = 10) -> str:
    """An address list folded as an MTA passes it, so no line passes 998 octets."""
    if not addresses:
        return "undisclosed-recipients:;"
    lines = [
        ", ".join(addresses[start : start + per_line])
        for start in range(0, len(addresses), per_line)
    ]
    return ",\n ".join(lines)


def compliant_headers(
    sender: str, recipients: Sequence[str], subject: str = "test", author: str | None = None
) -> list[tuple[str, str]]:
    """Headers that pass the milter's message checks for a tenant sending as ``sender``.

    The null sender gets a delivery report (multipart/report) from the MAILER-DAEMON
    of a domain no tenant owns: pass ``headers`` to send a tenant's own report.
    """
    if author is None:
        author = header_address(sender) if sender else "MAILER-DAEMON@reports.example"
    headers = [
        ("From", author),
        ("To", folded_address_list([header_address(r) for r in recipients])),
        ("Subject", subject),
        ("Date", formatdate(localtime=True)),
        ("Message-ID", f"<{uuid.uuid4().hex}@client.example>"),
    ]
    if not sender:
        headers += [
            ("MIME-Version", "1.0"),
            ("Content-Type", 'multipart/report; report-type=delivery-status; boundary="b1"'),
        ]
    return headers


@dataclass(slots=True)
class _Progress:
    mail: Response
    rcpts: list[tuple[str, Response]] = field(default_factory=list)
    data: Response | None = None
    headers: list[Response] = field(default_factory=list)
    eoh: Response | None = None
    body: Response | None = None
    eom: EomResult | None = None

    def result(self, refused_at: str | None) -> TransactionResult:
        return TransactionResult(
            mail=self.mail,
            rcpts=tuple(self.rcpts),
            data=self.data,
            headers=tuple(self.headers),
            eoh=self.eoh,
            body=self.body,
            eom=self.eom,
            refused_at=refused_at,
        )


def session(address: str, timeout: float = 5.0, **session_args: str) -> MilterClient:
    """A connected, negotiated client with CONNECT and HELO done."""
    client = MilterClient(address, timeout)
    try:
        client.open_session(**session_args)
    except BaseException:
        client.close()
        raise
    return client

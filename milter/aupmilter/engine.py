"""The milter protocol engine: every MTA connection of a process in one event loop.

libmilter gives each MTA connection a thread of its own and calls into Python
from it for every command: with 32 connections, each callback, each socket
call and each log write that releases the GIL wakes another of 32 threads, and
those hand-offs cost more than the policy's own work (bench/README.md). Here
one asyncio loop reads every connection, frames the packets (`wire`) and calls
the connection object's callbacks itself. Only the callbacks that may wait on
the network (MAIL FROM and end of message, which call Redis and the resolver;
RCPT when the connection object says it will) go to a bounded thread pool, so
a slow Redis or DNS server stalls only those transactions, never the loop.

The connection objects are the same `Milter.Base` subclasses libmilter drives
(`callbacks.AupMilter`, the bench's floor milter): `Context` gives them what
pymilter's milterContext gives (macros, the reply, the end-of-message actions),
so the policy glue does not know which engine runs it. Per connection, the
commands stay strictly in order: while a callback runs in the pool the
connection is not read.

Every failure is spelled out: a broken packet or an unexpected exception in a
callback closes that connection (the MTA then applies its milter default
action, a tempfail in the shipped configuration), is logged once, and leaves
the other connections alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import Milter

from aupmilter import wire

log = logging.getLogger("aupmilter.engine")

CONTINUE: int = Milter.CONTINUE
REJECT: int = Milter.REJECT
DISCARD: int = Milter.DISCARD
ACCEPT: int = Milter.ACCEPT
TEMPFAIL: int = Milter.TEMPFAIL
NOREPLY: int = Milter.NOREPLY
SKIP: int = Milter.SKIP
ALL_OPTS: int = Milter.ALL_OPTS

POOL_THREADS = 64
"""Callbacks that may wait on the network, running at once per process; more wait their turn.

Each holds one transaction of one MTA connection: 64 are far more than two
cores keep busy, and a Redis or DNS timeout blocks at most 64 transactions.
"""
ACCEPTS_PER_WAKEUP = 4
"""Connections taken per readiness event: sibling workers get their share of a burst."""
ACCEPT_PAUSE = 1.0
"""Seconds to stop accepting after EMFILE/ENFILE, instead of spinning on the error."""
SWEEP_EVERY = 1.0
"""How often idle connections are looked for (the timeout is in whole seconds)."""

_SIMPLE_REPLIES = {
    CONTINUE: wire.CONTINUE_PACKET,
    REJECT: wire.REJECT_PACKET,
    TEMPFAIL: wire.TEMPFAIL_PACKET,
    ACCEPT: wire.ACCEPT_PACKET,
    DISCARD: wire.DISCARD_PACKET,
    SKIP: wire.SKIP_PACKET,
}


class EngineError(Exception):
    """A callback asked for something the protocol cannot do here (pymilter's milter.error)."""


class Context:
    """What a `Milter.Base` calls on its `_ctx`: pymilter's milterContext, without libmilter.

    Actions are kept as packets and sent just before the end-of-message reply, in
    the order they were asked for: on the wire, what libmilter sends too.
    """

    __slots__ = ("_priv", "_session", "actions", "in_eom", "macros", "reply")

    def __init__(self, session: Session) -> None:
        self._priv: Any = None
        self._session = session
        self.macros: list[dict[str, str] | None] = [None] * wire.STAGE_COUNT
        self.reply: bytes | None = None
        self.actions: list[bytes] = []
        self.in_eom = False

    def getpriv(self) -> Any:
        return self._priv

    def setpriv(self, priv: Any) -> None:
        self._priv = priv

    def getsymval(self, name: str) -> str | None:
        """libmilter's lookup: the latest stage first; `x` and `{x}` name the same macro."""
        other = None
        if len(name) == 1:
            other = "{" + name + "}"
        elif len(name) == 3 and name[0] == "{" and name[2] == "}":
            other = name[1]
        for stage in reversed(self.macros):
            if stage:
                value = stage.get(name)
                if value is None and other is not None:
                    value = stage.get(other)
                if value is not None:
                    return value
        return None

    def clear_macros(self, first_stage: int) -> None:
        for stage in range(first_stage, wire.STAGE_COUNT):
            self.macros[stage] = None

    def setreply(self, rcode: str, xcode: str | None, msg: str | None, *more: str) -> None:
        if len(rcode) != 3 or not rcode.isdigit() or rcode[0] not in "45":
            raise EngineError(f"reply code {rcode!r} is not a 4xx or 5xx SMTP code")
        lines = [line for line in (msg, *more) if line is not None]
        self.reply = wire.reply_text(rcode, xcode, lines)

    def _action(self, name: str, packet: bytes) -> None:
        if not self.in_eom:
            raise EngineError(f"{name} is only possible at end of message")
        self.actions.append(packet)

    def addheader(self, field: str, value: str | bytes, idx: int = -1) -> None:
        data = _bytes(value)
        if idx < 0:
            self._action("addheader", wire.header_action(wire.R_ADDHEADER, field, data, None))
        else:
            self._action("addheader", wire.header_action(wire.R_INSHEADER, field, data, idx))

    def chgheader(self, field: str, idx: int, value: str | bytes | None) -> None:
        data = b"" if value is None else _bytes(value)
        self._action("chgheader", wire.header_action(wire.R_CHGHEADER, field, data, idx))

    def delrcpt(self, rcpt: str) -> None:
        self._action("delrcpt", wire.packet(wire.R_DELRCPT, wire.cstrings(_bytes(rcpt))))

    def addrcpt(self, rcpt: str, params: str | None = None) -> None:
        if params:
            packet = wire.packet(wire.R_ADDRCPT_PAR, wire.cstrings(_bytes(rcpt), _bytes(params)))
        else:
            packet = wire.packet(wire.R_ADDRCPT, wire.cstrings(_bytes(rcpt)))
        self._action("addrcpt", packet)

    def chgfrom(self, sender: str, params: str | None = None) -> None:
        parts = (_bytes(sender), _bytes(params)) if params else (_bytes(sender),)
        self._action("chgfrom", wire.packet(wire.R_CHGFROM, wire.cstrings(*parts)))

    def replacebody(self, body: bytes) -> None:
        if len(body) > wire.BODY_CHUNK:
            raise EngineError("replacebody takes at most 65535 bytes per call")
        self._action("replacebody", wire.packet(wire.R_REPLBODY, bytes(body)))

    def quarantine(self, reason: str) -> None:
        self._action("quarantine", wire.packet(wire.R_QUARANTINE, wire.cstrings(_bytes(reason))))

    def progress(self) -> None:
        """Sent at once (from whichever thread asks): the MTA restarts its timeout."""
        self._session.send_threadsafe(wire.PROGRESS_PACKET)

    def setsymlist(self, stage: int, macros: bytes) -> None:
        raise EngineError("setsymlist is not supported by this engine")


def _bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


class Session(asyncio.Protocol):
    """One MTA connection: its packets in order, its connection object, its replies."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.loop = engine.loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.ctx = Context(self)
        self.milter: Any = None
        self.granted: tuple[int, int] | None = None
        """(actions, protocol steps) negotiated, for the objects after a QUIT_NC."""
        self.busy = False
        """A callback runs in the pool: nothing more is read or dispatched until it is done."""
        self.lost = False
        self.last_seen = self.loop.time()
        self.peer = "?"

    # --- asyncio -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix socket"
        self.engine.sessions.add(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.last_seen = self.loop.time()
        if not self.busy:
            self._advance()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.engine.sessions.discard(self)
        if not self.busy:
            self._close_milter()

    def send_threadsafe(self, packet: bytes) -> None:
        self.loop.call_soon_threadsafe(self._send, packet)

    def _send(self, packet: bytes) -> None:
        if not self.lost and self.transport is not None:
            self.transport.write(packet)

    def close(self, why: str | None = None) -> None:
        """Drop the connection (its connection object is closed once no callback runs)."""
        if why:
            log.warning("milter connection from %s closed: %s", self.peer, why)
        if self.transport is not None:
            self.transport.abort()

    # --- framing -------------------------------------------------------------

    def _advance(self) -> None:
        buffer = self.buffer
        position = 0
        available = len(buffer)
        try:
            while not self.busy and not self.lost and available - position >= 4:
                length = int.from_bytes(buffer[position : position + 4], "big")
                if length == 0 or length > wire.MAX_PACKET:
                    raise wire.ProtocolError(f"packet length {length}")
                end = position + 4 + length
                if end > available:
                    break
                command = buffer[position + 4]
                data = bytes(buffer[position + 5 : end])
                position = end
                self._dispatch(command, data)
        except wire.ProtocolError as exc:
            del buffer[:]
            self.close(f"protocol error: {exc}")
            return
        except Exception:
            del buffer[:]
            log.exception("milter connection from %s: unexpected error; closing it", self.peer)
            self.close()
            return
        del buffer[:position]
        if self.busy and self.transport is not None and not self.lost:
            self.transport.pause_reading()

    # --- commands ------------------------------------------------------------

    def _dispatch(self, command: int, data: bytes) -> None:
        ctx = self.ctx
        if command == wire.CMD_MACRO:
            stage, values = wire.parse_macros(data)
            index = wire.MACRO_STAGES.get(stage)
            if index is not None:
                ctx.macros[index] = values
            return
        if command == wire.CMD_OPTNEG:
            self._negotiate(data)
            return
        milter = self.milter
        if milter is None:
            milter = self._new_milter()
        if command == wire.CMD_HEADER:
            name_end = data.find(b"\0")
            if name_end < 0:
                raise wire.ProtocolError("header packet without a NUL after the name")
            value_end = data.find(b"\0", name_end + 1)
            value = data[name_end + 1 : value_end if value_end >= 0 else len(data)]
            self._answer(milter.header_bytes(_text(data[:name_end]), value))
        elif command == wire.CMD_RCPT:
            arguments = wire.split_cstrings(data)
            if not arguments:
                raise wire.ProtocolError("RCPT without an address")
            if getattr(milter, "rcpt_may_wait", False):
                self._offload(milter.envrcpt_bytes, arguments)
            else:
                self._answer(milter.envrcpt_bytes(*arguments))
        elif command == wire.CMD_BODY:
            self._answer(milter.body(data))
        elif command == wire.CMD_MAIL:
            arguments = wire.split_cstrings(data)
            if not arguments:
                raise wire.ProtocolError("MAIL without an address")
            self._offload(milter.envfrom_bytes, arguments)
        elif command == wire.CMD_EOM:
            if data:
                rc = milter.body(data)
                if rc not in (CONTINUE, NOREPLY):
                    self._answer(rc)
                    return
            ctx.in_eom = True
            self._offload(milter.eom, ())
        elif command == wire.CMD_EOH:
            self._answer(milter.eoh())
        elif command == wire.CMD_CONNECT:
            hostname, family, address = wire.parse_connect(data)
            self._answer(milter.connect(hostname, family, address))
        elif command == wire.CMD_HELO:
            helo = wire.split_cstrings(data)
            self._answer(milter.hello(_text(helo[0]) if helo else ""))
        elif command == wire.CMD_DATA:
            self._answer(milter.data())
        elif command == wire.CMD_ABORT:
            milter.abort()
            ctx.reply = None
            ctx.clear_macros(wire.MAIL_STAGE)
        elif command == wire.CMD_UNKNOWN:
            unknown = wire.split_cstrings(data)
            self._answer(milter.unknown(_text(unknown[0]) if unknown else ""))
        elif command == wire.CMD_QUIT:
            self._close_milter()
            if self.transport is not None:
                self.transport.close()
        elif command == wire.CMD_QUIT_NC:
            # The MTA keeps the socket for a new SMTP connection: a new object, same options.
            self._close_milter()
            ctx.clear_macros(0)
        else:
            raise wire.ProtocolError(f"unknown command {chr(command)!r}")

    def _negotiate(self, data: bytes) -> None:
        version, mta_actions, mta_protocol = wire.parse_options(data)
        if version < wire.MIN_MTA_VERSION:
            raise wire.ProtocolError(f"MTA speaks milter protocol version {version}")
        actions = mta_actions & self.engine.flags
        milter = self._new_milter(negotiate=False)
        options = [actions, mta_protocol, 0, 0]
        if milter.negotiate(options) == ALL_OPTS:
            options = [actions, 0, 0, 0]
        protocol = int(options[1]) & mta_protocol
        milter._actions, milter._protocol = actions, protocol
        self.granted = (actions, protocol)
        self._write(wire.options_reply(min(version, wire.PROTOCOL_VERSION), actions, protocol))

    def _new_milter(self, negotiate: bool = True) -> Any:
        milter = self.engine.factory()
        milter._setctx(self.ctx)
        if negotiate:
            # No OPTNEG (an MTA before version 2), or a new object after QUIT_NC.
            actions, protocol = self.granted or (self.engine.flags, 0)
            milter._actions, milter._protocol = actions, protocol
        self.milter = milter
        return milter

    def _close_milter(self) -> None:
        milter, self.milter = self.milter, None
        if milter is None:
            return
        try:
            milter.close()
        except Exception:
            log.exception("milter connection from %s: error in the close callback", self.peer)
        finally:
            milter._setctx(None)

    # --- replies -------------------------------------------------------------

    def _answer(self, rc: int) -> None:
        """The reply to one command; NOREPLY (a negotiated no-reply step) sends none."""
        ctx = self.ctx
        if rc == NOREPLY:
            ctx.reply = None
            return
        reply = ctx.reply
        if reply is not None:
            ctx.reply = None
            if (rc == REJECT and reply[0] == 0x35) or (rc == TEMPFAIL and reply[0] == 0x34):
                self._write(wire.packet(wire.R_REPLYCODE, reply))
                return
        packet = _SIMPLE_REPLIES.get(rc)
        if packet is None:
            raise wire.ProtocolError(f"callback returned {rc!r}, which is no milter reply")
        self._write(packet)

    def _write(self, packet: bytes) -> None:
        if self.transport is not None:
            self.transport.write(packet)

    # --- the pool ------------------------------------------------------------

    def _offload(self, callback: Callable[..., int], arguments: Any) -> None:
        self.busy = True
        self.engine.pool.submit(self._in_pool, callback, arguments)

    def _in_pool(self, callback: Callable[..., int], arguments: Any) -> None:
        try:
            rc: int | None = callback(*arguments)
        except Exception:
            log.exception("milter connection from %s: unexpected error in a callback", self.peer)
            rc = None
        # A closed loop: the engine stopped without waiting for this callback.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._done, rc)

    def _done(self, rc: int | None) -> None:
        self.busy = False
        # The idle timeout is the MTA's silence (libmilter times the read of the next
        # command): it starts from this reply, not from the command the callback took.
        self.last_seen = self.loop.time()
        ctx = self.ctx
        eom, ctx.in_eom = ctx.in_eom, False
        actions, ctx.actions = ctx.actions, []
        if self.lost:
            self._close_milter()
            return
        if rc is None:
            self.close()
            return
        try:
            if eom:
                if actions and rc in (CONTINUE, ACCEPT):
                    self._write(b"".join(actions))
                ctx.clear_macros(wire.MAIL_STAGE)
            self._answer(rc)
        except wire.ProtocolError as exc:
            self.close(f"protocol error: {exc}")
            return
        assert self.transport is not None
        self.transport.resume_reading()
        if self.buffer:
            self._advance()


class Engine:
    """One event loop thread serving a listening socket, and the pool for waiting callbacks."""

    def __init__(self, factory: Callable[[], Any], flags: int, timeout: int) -> None:
        self.factory = factory
        self.flags = flags
        self.timeout = timeout
        """Seconds an MTA connection may stay silent outside a callback (0: forever)."""
        self.loop = asyncio.new_event_loop()
        self.pool = concurrent.futures.ThreadPoolExecutor(POOL_THREADS, "milter-callback")
        self.sessions: set[Session] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self.error: str | None = None

    def start(self, listener: socket.socket) -> None:
        listener.setblocking(False)
        self._listener = listener
        self._thread = threading.Thread(target=self._run, name="milter-engine", daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float) -> bool:
        """Stop accepting, close every connection, wait for running callbacks; True if done."""
        if self._thread is None:
            return True
        with contextlib.suppress(RuntimeError):  # the loop has already ended
            self.loop.call_soon_threadsafe(self._request_stop)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except Exception as exc:
            log.exception("the milter engine stopped on an unexpected error")
            self.error = str(exc)
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        listener = self._listener
        assert listener is not None
        self.loop.add_reader(listener.fileno(), self._accept)
        sweeper = self.loop.create_task(self._sweep()) if self.timeout > 0 else None
        await self._stopping.wait()
        self.loop.remove_reader(listener.fileno())
        if sweeper is not None:
            sweeper.cancel()
        for session in list(self.sessions):
            session.close()
        # Callbacks still running finish (their transactions' state is written);
        # their connections are already gone, so they only close their objects.
        await asyncio.to_thread(self.pool.shutdown, True)
        for _ in range(3):
            await asyncio.sleep(0)

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                connection, _address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("cannot accept MTA connections (%s); trying again in 1 s", exc)
                self.loop.remove_reader(listener.fileno())
                self.loop.call_later(ACCEPT_PAUSE, self._resume_accepting)
                return
            connection.setblocking(False)
            if connection.family in (socket.AF_INET, socket.AF_INET6):
                # Small request/reply packets: without it they wait ~40 ms on delayed ACKs.
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.loop.create_task(self._adopt(connection))

    def _resume_accepting(self) -> None:
        if self._listener is not None and not (self._stopping and self._stopping.is_set()):
            self.loop.add_reader(self._listener.fileno(), self._accept)

    async def _adopt(self, connection: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: Session(self), connection)
        except OSError as exc:
            log.warning("an MTA connection failed as it was taken: %s", exc)
            connection.close()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            now = self.loop.time()
            for session in list(self.sessions):
                if not session.busy and now - session.last_seen > self.timeout:
                    session.close(f"the MTA said nothing for {self.timeout} s (milter.timeout)")

"""The event-loop milter engine (aupmilter.engine), run in this process and spoken to as an MTA.

The connection objects are small `Milter.Base` subclasses defined here, so each
test says exactly what a callback does and sees; the MTA side is `mta.py` over
a real unix socket. What is checked is what libmilter would do on the wire:
negotiation, macro lookup, replies, end-of-message actions and their order,
and what a broken peer, a failing or slow callback, an idle MTA and a stop do
to one connection and to the others.
"""

from __future__ import annotations

import logging
import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import Milter
import pytest

from aupmilter import engine as engine_module
from aupmilter import wire
from aupmilter.daemon import MILTER_FLAGS
from aupmilter.engine import Engine, EngineError
from tests.milter import mta
from tests.milter.harness import short_tempdir
from tests.milter.mta import Kind, MilterClient, MilterError
from tests.support import wait_until

WAIT = 5.0
"""The bound on every read, callback wait and stop in this file."""

F = TypeVar("F", bound=Callable[..., int])
noreply: Callable[[F], F] = Milter.noreply
CONTINUE: int = Milter.CONTINUE
ACCEPT: int = Milter.ACCEPT
REJECT: int = Milter.REJECT
TEMPFAIL: int = Milter.TEMPFAIL

ADDHDRS: int = Milter.ADDHDRS
CHGHDRS: int = Milter.CHGHDRS
CHGBODY: int = Milter.CHGBODY
ADDRCPT: int = Milter.ADDRCPT
ADDRCPT_PAR: int = Milter.ADDRCPT_PAR
DELRCPT: int = Milter.DELRCPT
QUARANTINE: int = Milter.QUARANTINE
CHGFROM: int = Milter.CHGFROM

CLOSED = r"closed the connection|reading from milter"
"""What MilterClient says when the engine closed (or reset) the connection, not a timeout."""
FINAL_REPLIES = frozenset({b"c", b"a", b"r", b"t", b"d", b"s", b"y"})

Hook = Callable[..., int]


@pytest.fixture(autouse=True)
def redis_db() -> None:
    """This file needs no Redis (its connection objects are its own): no server is started."""


# --- the connection objects ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One callback as a connection object saw it."""

    number: int
    """Which connection object (in the order the engine made them)."""
    name: str
    args: tuple[Any, ...]
    macros: dict[str, str | None]
    """getsymval of each of `World.names`, at the start of the callback."""
    thread: str
    at: float


@dataclass
class World:
    """One engine's connection objects: what they saw, and what each callback is to do."""

    hooks: dict[str, Hook] = field(default_factory=dict)
    """Callback name -> what it does instead of returning CONTINUE: hook(obj, *args) -> rc."""
    names: tuple[str, ...] = ()
    """Macros every callback looks up as it starts."""
    objects: list[Probe] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    gates: list[threading.Event] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gate(self) -> threading.Event:
        """An event a callback may wait on; the fixture sets them all before stopping."""
        event = threading.Event()
        self.gates.append(event)
        return event

    def seen(self, name: str, number: int | None = None) -> list[Call]:
        with self.lock:
            return [
                call
                for call in self.calls
                if call.name == name and (number is None or call.number == number)
            ]

    def number_of(self, hostname: str) -> int:
        """The connection object that saw CONNECT from `hostname`."""
        found = [call.number for call in self.seen("connect") if call.args[0] == hostname]
        assert len(found) == 1, f"CONNECT from {hostname}: {found}"
        return found[0]

    def closes(self, number: int) -> int:
        return len(self.seen("close", number))

    def wait_closed(self, number: int) -> None:
        """Until object `number`'s close has run; then it must have run exactly once."""
        wait_until(lambda: self.closes(number) > 0, timeout=WAIT, what=f"close of #{number}")
        time.sleep(0.05)  # a second close would come from the same loop turn or the next
        assert self.closes(number) == 1


@Milter.header_leading_space
class Probe(Milter.Base):  # type: ignore[misc]
    """Records every callback, then does what the world's hook for it says (else CONTINUE).

    CONNECT, header and body are @noreply (as in AupMilter); every other optional
    step is overridden, so the MTA must send it and wait for its reply.
    """

    def __init__(self, world: World) -> None:
        self.world = world
        with world.lock:
            self.number = len(world.objects)
            world.objects.append(self)
        self.options: tuple[int, int] | None = None

    def _call(self, name: str, *args: Any) -> int:
        world = self.world
        macros = {macro: self.getsymval(macro) for macro in world.names}
        call = Call(
            self.number, name, args, macros, threading.current_thread().name, time.monotonic()
        )
        with world.lock:
            world.calls.append(call)
        hook = world.hooks.get(name)
        return CONTINUE if hook is None else hook(self, *args)

    @noreply
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        self.options = (self._actions, self._protocol)
        return self._call("connect", hostname, family, hostaddr)

    def hello(self, name: str) -> int:
        return self._call("hello", name)

    def envfrom(self, sender: str, *params: str) -> int:
        return self._call("mail", sender, *params)

    def envrcpt(self, recipient: str, *params: str) -> int:
        return self._call("rcpt", recipient, *params)

    def data(self) -> int:
        return self._call("data")

    @noreply
    def header(self, name: str, value: str) -> int:
        return self._call("header", name, value)

    def eoh(self) -> int:
        return self._call("eoh")

    @noreply
    def body(self, chunk: bytes) -> int:
        return self._call("body", chunk)

    def unknown(self, command: str) -> int:
        return self._call("unknown", command)

    def eom(self) -> int:
        return self._call("eom")

    def abort(self) -> int:
        return self._call("abort")

    def close(self) -> int:
        return self._call("close")


# --- the engine ----------------------------------------------------------------------


@dataclass
class Served:
    engine: Engine
    world: World
    address: str

    def client(self) -> MilterClient:
        return MilterClient(self.address, timeout=WAIT)

    def session(
        self,
        hostname: str = "client.example",
        macros: Mapping[str, str] | None = None,
        **negotiate: int,
    ) -> MilterClient:
        """A client through OPTNEG, CONNECT (from `hostname`) and HELO."""
        client = self.client()
        try:
            client.negotiate(**negotiate)
            client.connect(hostname, macros=macros)
            assert client.helo("client.example").kind is Kind.CONTINUE
        except BaseException:
            client.close()
            raise
        return client


Serve = Callable[..., Served]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """serve(flags=MILTER_FLAGS, timeout=0): an Engine of Probes on a fresh unix socket."""
    started: list[tuple[Served, socket.socket]] = []
    folders: list[Path] = []

    def start(flags: int = MILTER_FLAGS, timeout: int = 0) -> Served:
        folder = short_tempdir()
        folders.append(folder)
        path = folder / "engine.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(16)
        world = World()
        engine = Engine(lambda: Probe(world), flags, timeout)
        engine.start(listener)
        served = Served(engine, world, f"unix:{path}")
        started.append((served, listener))
        return served

    yield start
    stopped = []
    for served, listener in started:
        # A test that failed with a callback still waiting must not leave a pool thread behind.
        for gate in served.world.gates:
            gate.set()
        stopped.append(served.engine.stop(WAIT))
        listener.close()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    assert all(stopped), "an engine did not stop"


def eom_packets(client: MilterClient, macros: Mapping[str, str] | None = None) -> list[bytes]:
    """EOM, then every packet up to the final reply, raw: command byte + data."""
    client.macros(mta.CMD_EOM, macros)
    client.send_packet(mta.CMD_EOM)
    packets = []
    for _ in range(100):
        command, data = client.read_packet()
        packets.append(command + data)
        if command in FINAL_REPLIES:
            return packets
    raise AssertionError(f"no final reply to EOM among {packets}")


def assert_silent(client: MilterClient, wait: float = 0.2) -> None:
    """Nothing arrives for `wait` seconds: the last command got no reply (and none was due)."""
    client.sock.settimeout(wait)
    with pytest.raises(TimeoutError):
        data = client.sock.recv(64)
        raise AssertionError(f"unexpected bytes from the engine: {data!r}")


def assert_closed(client: MilterClient) -> None:
    """The engine closed this connection (it reads EOF or a reset, within WAIT)."""
    with pytest.raises(MilterError, match=CLOSED):
        client.read_packet()


def send_mail(client: MilterClient, sender: str) -> None:
    """MAIL without waiting for its reply (to have a callback running in the pool)."""
    client.send_packet(mta.CMD_MAIL, f"<{sender}>".encode() + b"\0")


def full_transaction(client: MilterClient, sender: str = "a@sender.example") -> mta.EomResult:
    result = client.send_message(sender, ["b@dest.example"])
    assert result.refused_at is None and result.eom is not None, result
    return result.eom


# --- negotiation ---------------------------------------------------------------------

EXPECTED_PROTOCOL = mta.P_NR_CONN | mta.P_NR_HDR | mta.P_NR_BODY | mta.P_HDR_LEADSPC | mta.P_SKIP
"""What Probe asks of an MTA offering everything: no reply to its three @noreply steps,
headers with their leading space, SKIP allowed; every step sent."""


def test_negotiation_grants_the_actions_both_allow_and_the_steps_the_object_asks(
    serve: Serve,
) -> None:
    served = serve()
    world = served.world
    world.hooks["mail"] = lambda obj, sender: TEMPFAIL
    offered = ADDHDRS | DELRCPT | ADDRCPT | CHGFROM
    with served.client() as client:
        negotiated = client.negotiate(actions=offered)
        assert negotiated.version == 6
        assert negotiated.actions == offered & MILTER_FLAGS == ADDHDRS | DELRCPT
        assert negotiated.protocol == EXPECTED_PROTOCOL

        # CONNECT and a header get no reply (negotiated away): the first packet the
        # engine sends after them is MAIL's tempfail, not a stray continue.
        assert client.connect("client.example", "192.0.2.10", 50000).replied is False
        assert client.header("Subject", "hello").replied is False
        assert_silent(client)
        assert client.mail("a@sender.example").kind is Kind.TEMPFAIL

    (obj,) = world.objects
    assert obj.options == (ADDHDRS | DELRCPT, EXPECTED_PROTOCOL)
    (connect,) = world.seen("connect")
    assert connect.args == ("client.example", socket.AF_INET, ("192.0.2.10", 50000))
    (header,) = world.seen("header")
    assert header.args == ("Subject", " hello"), "P_HDR_LEADSPC: the value keeps its space"


def test_a_no_reply_step_the_mta_does_not_offer_is_answered(serve: Serve) -> None:
    served = serve()
    with served.client() as client:
        negotiated = client.negotiate(protocol=mta.ALL_PROTOCOL & ~(mta.P_NR_HDR | mta.P_NR_CONN))
        assert negotiated.protocol == EXPECTED_PROTOCOL & ~(mta.P_NR_HDR | mta.P_NR_CONN)
        assert client.connect().wire == "c"
        assert client.header("Subject", "hello").wire == "c"
        assert client.body(b"text\r\n").replied is False


def test_an_action_the_mta_did_not_offer_is_refused_by_the_object(serve: Serve) -> None:
    served = serve()
    refused: list[BaseException] = []

    def eom(obj: Probe) -> int:
        try:
            obj.quarantine("held")
        except Exception as exc:
            refused.append(exc)
        obj.addheader("X-Allowed", " yes")
        return CONTINUE

    served.world.hooks["eom"] = eom
    with served.session(actions=ADDHDRS) as client:
        result = full_transaction(client)
    assert len(refused) == 1 and isinstance(refused[0], Milter.DisabledAction)
    assert result.added_headers == (("X-Allowed", " yes"),)
    assert result.quarantine_reason is None


@pytest.mark.parametrize(("version", "expected"), [(6, 6), (2, 2), (7, 6)])
def test_the_version_replied_is_the_lower_of_both(
    serve: Serve, version: int, expected: int
) -> None:
    with serve().client() as client:
        assert client.negotiate(version=version).version == expected


def test_an_mta_before_version_2_is_refused(serve: Serve) -> None:
    served = serve()
    with served.client() as client:
        client.send_packet(mta.CMD_OPTNEG, struct.pack("!III", 1, mta.ALL_ACTIONS, 0))
        assert_closed(client)
    with served.session() as other:
        assert full_transaction(other).response.kind is Kind.CONTINUE


# --- macros --------------------------------------------------------------------------


def test_macros_are_looked_up_from_the_latest_stage_back(serve: Serve) -> None:
    served = serve()
    world = served.world
    world.names = ("j", "{j}", "i", "{k}", "v", "{mail_addr}", "mail_addr", "{daemon_name}")
    with served.client() as client:
        client.negotiate()
        client.connect(
            macros={"j": "conn", "{daemon_name}": "smtpd", "{i}": "braced", "k": "plain"}
        )
        client.helo(macros={"j": "helo"})
        client.mail("a@sender.example", macros={"j": "mail", "{mail_addr}": "a@sender.example"})
        client.rcpt("b@dest.example", macros={"{rcpt_addr}": "b@dest.example"})
        client.data(macros={"v": "data"})
        client.header("Subject", "x")
        client.eoh(macros={"v": "eoh"})
        client.body(b"text\r\n")
        assert client.eom(macros={"v": "eom"}).response.kind is Kind.CONTINUE

    def at(name: str) -> dict[str, str | None]:
        (call,) = world.seen(name)
        return call.macros

    assert at("connect") == {
        "j": "conn",
        "{j}": "conn",  # {x} finds x ...
        "i": "braced",  # ... and x finds {x}
        "{k}": "plain",
        "v": None,
        "{mail_addr}": None,
        "mail_addr": None,
        "{daemon_name}": "smtpd",
    }
    assert at("hello")["j"] == at("hello")["{j}"] == "helo"
    assert at("mail")["j"] == "mail"
    assert at("mail")["{mail_addr}"] == "a@sender.example"
    assert at("mail")["mail_addr"] is None, "only one-letter names have a braced twin"
    assert at("rcpt")["j"] == "mail", "RCPT's macros lack j: MAIL's is next"
    assert at("data")["v"] == "data"
    assert at("eoh")["v"] == "eoh"
    # libmilter's stage order puts EOH (6) after EOM (5): EOH's macros win at end of message.
    assert at("eom")["v"] == "eoh"
    assert at("eom")["{daemon_name}"] == "smtpd"


def test_macros_from_mail_on_are_dropped_after_eom_and_abort(serve: Serve) -> None:
    served = serve()
    world = served.world
    world.names = ("j", "{helo_m}", "{auth_authen}", "{rcpt_addr}", "v", "{eom_m}")
    with served.client() as client:
        client.negotiate()
        client.connect(macros={"j": "conn"})
        client.helo(macros={"{helo_m}": "helo"})
        client.mail("a@sender.example", macros={"{auth_authen}": "acme"})
        client.rcpt("b@dest.example", macros={"{rcpt_addr}": "b@dest.example"})
        client.data(macros={"v": "data"})
        client.eoh()
        assert client.eom(macros={"{eom_m}": "eom"}).response.kind is Kind.CONTINUE
        before = world.seen("eom")[0].macros
        assert before == {
            "j": "conn",
            "{helo_m}": "helo",
            "{auth_authen}": "acme",
            "{rcpt_addr}": "b@dest.example",
            "v": "data",
            "{eom_m}": "eom",
        }

        kept = {"j": "conn", "{helo_m}": "helo"}
        dropped = dict.fromkeys(("{auth_authen}", "{rcpt_addr}", "v", "{eom_m}"))
        client.helo()
        assert world.seen("hello")[1].macros == kept | dropped, "after EOM"

        client.mail("a@sender.example", macros={"{auth_authen}": "acme"})
        client.rcpt("b@dest.example", macros={"{rcpt_addr}": "b@dest.example"})
        client.abort()
        client.helo()
        assert world.seen("hello")[2].macros == kept | dropped, "after ABORT"
    assert len(world.seen("abort")) == 1


# --- replies -------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["mail", "rcpt"], ids=["in-the-pool", "in-the-loop"])
@pytest.mark.parametrize(
    ("reply", "rc", "expected"),
    [
        (("550", "5.7.1", "Go away"), REJECT, b"y550 5.7.1 Go away\0"),
        (("451", None, "Try later"), TEMPFAIL, b"y451 Try later\0"),
        (
            ("451", "4.3.0", "Busy", "Try later"),
            TEMPFAIL,
            b"y451-4.3.0 Busy\r\n451 4.3.0 Try later\0",
        ),
        (("550", None, "No", "Really"), REJECT, b"y550-5.0.0 No\r\n550 5.0.0 Really\0"),
        # A reply whose class does not match the verdict is not sent: plain reject/tempfail.
        (("550", "5.7.1", "Go away"), TEMPFAIL, b"t"),
        (("451", "4.3.0", "Busy"), REJECT, b"r"),
        (("550", "5.7.1", "Go away"), CONTINUE, b"c"),
    ],
    ids=[
        "reject",
        "no-status",
        "multi-line",
        "multi-no-status",
        "5xx-tempfail",
        "4xx-reject",
        "continue",
    ],
)
def test_setreply_reaches_the_mta_and_is_used_once(
    serve: Serve, stage: str, reply: tuple[str | None, ...], rc: int, expected: bytes
) -> None:
    served = serve()
    calls = iter(range(100))

    def answer(obj: Probe, *_args: str) -> int:
        if next(calls) == 0:
            obj.setreply(*reply)
            return rc
        return REJECT  # without a reply of its own: the first one must be gone

    served.world.hooks[stage] = answer
    with served.session() as client:
        send = {"mail": mta.CMD_MAIL, "rcpt": mta.CMD_RCPT}[stage]
        for expect in (expected, b"r"):
            client.send_packet(send, b"<a@sender.example>\0")
            command, data = client.read_packet()
            assert command + data == expect


def test_bad_requests_raise_in_the_callback(serve: Serve) -> None:
    """An action outside EOM, a reply that is no 4xx/5xx, a body chunk too large: each raises
    in the callback that asked, which may catch it; the connection carries on."""
    served = serve()
    world = served.world
    raised: dict[str, BaseException] = {}

    def attempt(label: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception as exc:
            raised[label] = exc

    def mail(obj: Probe, sender: str) -> int:
        attempt(f"addheader at MAIL {sender}", lambda: obj.addheader("X-A", " 1"))
        attempt("setreply 250", lambda: obj.setreply("250", "2.0.0", "OK"))
        return CONTINUE

    def rcpt(obj: Probe, recipient: str) -> int:
        attempt("delrcpt at RCPT", lambda: obj.delrcpt(recipient))
        return CONTINUE

    def header(obj: Probe, name: str, value: str) -> int:
        attempt("chgheader at a header", lambda: obj.chgheader(name, 1, None))
        return CONTINUE

    def eom(obj: Probe) -> int:
        attempt("replacebody too large", lambda: obj.replacebody(b"x" * 65_536))
        obj.addheader("X-At-Eom", " fine")
        return CONTINUE

    world.hooks.update(mail=mail, rcpt=rcpt, header=header, eom=eom)
    with served.session() as client:
        first = full_transaction(client, "one@sender.example")
        assert first.added_headers == (("X-At-Eom", " fine"),)
        assert first.replaced_body is None
        # End of message is over: the same action at the next MAIL raises again.
        assert client.mail("two@sender.example").kind is Kind.CONTINUE

    assert set(raised) == {
        "addheader at MAIL <one@sender.example>",
        "addheader at MAIL <two@sender.example>",
        "setreply 250",
        "delrcpt at RCPT",
        "chgheader at a header",
        "replacebody too large",
    }
    assert all(isinstance(exc, EngineError) for exc in raised.values()), raised
    assert "only possible at end of message" in str(raised["delrcpt at RCPT"])


# --- end of message ------------------------------------------------------------------


def test_eom_actions_go_out_in_call_order_before_the_final_reply(serve: Serve) -> None:
    served = serve(flags=MILTER_FLAGS | ADDRCPT | ADDRCPT_PAR | CHGFROM)
    world = served.world

    def eom(obj: Probe) -> int:
        obj.progress()
        obj.addheader("X-A", " 1")
        obj.addheader("X-B", " 2", 0)
        obj.chgheader("Subject", 1, " new")
        obj.chgheader("X-Old", 1, None)
        obj.delrcpt("<b@dest.example>")
        obj.addrcpt("<c@dest.example>")
        obj.addrcpt("<d@dest.example>", "NOTIFY=NEVER")
        obj.chgfrom("<s@sender.example>", "SIZE=10")
        obj.quarantine("held for review")
        obj.replacebody(b"new body\r\n")
        return ACCEPT

    world.hooks["eom"] = eom
    with served.session() as client:
        client.mail("a@sender.example")
        client.rcpt("b@dest.example")
        client.content("a@sender.example", ["b@dest.example"])
        assert eom_packets(client) == [
            b"p",
            b"hX-A\0 1\0",
            b"i\0\0\0\0X-B\0 2\0",
            b"m\0\0\0\x01Subject\0 new\0",
            b"m\0\0\0\x01X-Old\0\0",
            b"-<b@dest.example>\0",
            b"+<c@dest.example>\0",
            b"2<d@dest.example>\0NOTIFY=NEVER\0",
            b"e<s@sender.example>\0SIZE=10\0",
            b"qheld for review\0",
            b"bnew body\r\n",
            b"a",
        ]
        # The actions were the last message's: the next one ends with its reply alone.
        world.hooks.pop("eom")
        client.mail("a@sender.example")
        client.rcpt("b@dest.example")
        client.content("a@sender.example", ["b@dest.example"])
        assert eom_packets(client) == [b"c"]
    assert {call.thread.split("_")[0] for call in world.seen("eom")} == {"milter-callback"}


# --- connection lifetime -------------------------------------------------------------


def test_quit_nc_gives_a_new_object_with_the_same_options(serve: Serve) -> None:
    served = serve()
    world = served.world
    world.names = ("j",)
    with served.client() as client:
        negotiated = client.negotiate(actions=ADDHDRS | QUARANTINE)
        client.connect("first.example", macros={"j": "relay"})
        client.helo()
        full_transaction(client)
        client.send_packet(mta.CMD_QUIT_NC)
        assert_silent(client)
        world.wait_closed(0)

        # The MTA reuses the connection for its next SMTP client, without a new OPTNEG.
        client.connect("second.example")
        client.helo()
        full_transaction(client)

    first, second = world.objects
    assert world.number_of("first.example") == 0 and world.number_of("second.example") == 1
    assert first.options == second.options == (negotiated.actions, negotiated.protocol)
    assert negotiated.actions == ADDHDRS | QUARANTINE
    assert world.seen("connect", 1)[0].macros == {"j": None}, "the old session's macros went"
    assert len(world.seen("eom", 0)) == len(world.seen("eom", 1)) == 1
    world.wait_closed(1)  # at the final close of the socket


def test_abort_calls_abort_and_no_reply_is_sent(serve: Serve) -> None:
    served = serve()
    world = served.world
    with served.session() as client:
        client.mail("a@sender.example")
        client.rcpt("b@dest.example")
        client.abort()
        assert_silent(client)
        assert len(world.seen("abort")) == 1
        assert full_transaction(client).response.kind is Kind.CONTINUE
    assert len(world.objects) == 1, "an abort ends the transaction, not the object"


def test_quit_closes_the_object_and_the_connection(serve: Serve) -> None:
    served = serve()
    with served.session() as client:
        client.send_packet(mta.CMD_QUIT)
        assert_closed(client)
    served.world.wait_closed(0)


def raw_packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + command + data


BROKEN_PACKETS = {
    "length-0": b"\0\0\0\0",
    "length-over-1MiB": struct.pack("!I", wire.MAX_PACKET + 1) + b"B",
    "unknown-command": raw_packet(b"Z"),
    "connect-bad-family": raw_packet(b"C", b"bad.example\0X\0\0"),
    "mail-without-address": raw_packet(b"M"),
    "header-without-nul": raw_packet(b"L", b"Subject"),
}


@pytest.mark.parametrize("raw", BROKEN_PACKETS.values(), ids=BROKEN_PACKETS.keys())
def test_a_protocol_error_closes_only_its_connection(
    serve: Serve, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    served = serve()
    world = served.world
    with served.session("good.example") as good, served.session("bad.example") as bad:
        caplog.set_level(logging.WARNING, logger="aupmilter.engine")
        bad.sock.sendall(raw)
        assert_closed(bad)
        world.wait_closed(world.number_of("bad.example"))

        assert full_transaction(good).response.kind is Kind.CONTINUE
        assert world.closes(world.number_of("good.example")) == 0
    assert [r.getMessage() for r in caplog.records if "protocol error" in r.getMessage()]
    assert served.engine.is_alive()


@pytest.mark.parametrize("stage", ["mail", "rcpt", "eom"])
def test_an_exception_in_a_callback_closes_its_connection_and_close_runs_once(
    serve: Serve, stage: str, caplog: pytest.LogCaptureFixture
) -> None:
    served = serve()
    world = served.world

    def boom(obj: Probe, *_args: str) -> int:
        if world.number_of("bad.example") == obj.number:
            raise RuntimeError("boom")
        return CONTINUE

    world.hooks[stage] = boom
    with served.session("good.example") as good, served.session("bad.example") as bad:
        with pytest.raises(MilterError, match=CLOSED):
            bad.send_message("a@sender.example", ["b@dest.example"])
        world.wait_closed(world.number_of("bad.example"))
        assert full_transaction(good).response.kind is Kind.CONTINUE
    errors = [r.exc_info for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0] is not None and str(errors[0][1]) == "boom"


# --- the pool, the idle timeout, stopping --------------------------------------------


def test_a_waiting_mail_callback_stalls_only_its_own_connection(serve: Serve) -> None:
    served = serve()
    world = served.world
    gate = world.gate()
    released: list[bool] = []

    def mail(obj: Probe, sender: str) -> int:
        if sender == "<slow@sender.example>":
            released.append(gate.wait(WAIT))
        return CONTINUE

    world.hooks["mail"] = mail
    with served.session("slow.example") as slow, served.session("fast.example") as fast:
        slow_number = world.number_of("slow.example")
        send_mail(slow, "slow@sender.example")
        # Pipelined behind it: not dispatched while MAIL's callback runs.
        slow.send_packet(mta.CMD_RCPT, b"<b@dest.example>\0")
        wait_until(lambda: world.seen("mail", slow_number), timeout=WAIT, what="the slow MAIL")

        started = time.monotonic()
        assert full_transaction(fast, "fast@sender.example").response.kind is Kind.CONTINUE
        assert time.monotonic() - started < WAIT / 2
        assert not released, "the fast transaction ran while the slow MAIL still waited"
        assert not world.seen("rcpt", slow_number), "the slow connection's RCPT jumped the queue"

        gate.set()
        assert slow.read_response().kind is Kind.CONTINUE
        assert slow.read_response().kind is Kind.CONTINUE
        assert released == [True]
        (rcpt,) = world.seen("rcpt", slow_number)
        assert rcpt.at >= world.seen("mail", slow_number)[0].at

    # MAIL runs in the pool, RCPT (the object says it will not wait) in the loop.
    assert {call.thread.split("_")[0] for call in world.seen("mail")} == {"milter-callback"}
    assert {call.thread for call in world.seen("rcpt")} == {"milter-engine"}


def test_the_idle_timeout_closes_a_silent_connection_only(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "SWEEP_EVERY", 0.05)
    served = serve(timeout=1)
    world = served.world
    with served.session("silent.example") as silent, served.session("busy.example") as busy:
        last_word = time.monotonic()
        for _ in range(8):  # 1.6 s of a command every 0.2 s
            assert busy.helo().kind is Kind.CONTINUE
            time.sleep(0.2)
        assert_closed(silent)
        silent_number = world.number_of("silent.example")
        world.wait_closed(silent_number)
        closed_after = world.seen("close", silent_number)[0].at - last_word
        assert 0.9 < closed_after < 2.0
        assert full_transaction(busy).response.kind is Kind.CONTINUE
        assert world.closes(world.number_of("busy.example")) == 0


def test_the_idle_timeout_counts_from_the_reply_not_from_the_command(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libmilter times the wait for the MTA's next command; a slow callback is not the MTA's."""
    monkeypatch.setattr(engine_module, "SWEEP_EVERY", 0.05)
    served = serve(timeout=1)
    gate = served.world.gate()

    def slow_mail(obj: Probe, sender: str) -> int:
        gate.wait(1.5)  # never set: 1.5 s, longer than the timeout
        return CONTINUE

    served.world.hooks["mail"] = slow_mail
    with served.session() as client:
        assert client.mail("a@sender.example").kind is Kind.CONTINUE
        time.sleep(0.5)
        assert client.rcpt("b@dest.example").kind is Kind.CONTINUE


def test_stop_lets_a_running_callback_finish(serve: Serve) -> None:
    served = serve()
    world = served.world
    gate = world.gate()
    finished: list[bool] = []

    def mail(obj: Probe, sender: str) -> int:
        finished.append(gate.wait(WAIT))
        return CONTINUE

    world.hooks["mail"] = mail
    stopped: list[bool] = []
    with served.session() as client:
        send_mail(client, "a@sender.example")
        wait_until(lambda: world.seen("mail"), timeout=WAIT, what="MAIL's callback")
        stopper = threading.Thread(target=lambda: stopped.append(served.engine.stop(WAIT)))
        stopper.start()
        assert_closed(client)  # the MTA's connections go at once ...
        time.sleep(0.2)
        assert stopper.is_alive() and not finished, "... but the stop waits for the callback"
        assert world.closes(0) == 0, "the object is closed once its callback is done"
        gate.set()
        stopper.join(WAIT)
    assert stopped == [True]
    assert finished == [True]
    assert world.closes(0) == 1
    assert not served.engine.is_alive()

"""A small authoritative DNS server for the tests and the demo (dnslib), UDP and TCP on loopback.

It serves ``testbed.zones`` with real DNS semantics, so the milter's resolver
(dnspython), pyspf and dkimpy are exercised over the real protocol:
NXDOMAIN and no-data answers carry the SOA (negative caching), wildcards
follow RFC 4592's closest encloser, empty non-terminals exist, answers too
big for UDP are truncated (TC) so the client retries over TCP, and the
``FAILURES`` names answer SERVFAIL or nothing at all. ``--servfail`` makes
every query answer SERVFAIL (a resolver whose upstream is broken: the fault
tests).

In a test process: ``with DnsServer(port=0) as server: server.port``.
As a process (what ``testbed.Stack`` runs)::

    python -m testbed.dnsserver --host 127.0.0.1 --port 2537 --pidfile run/dns.pid \
        [--records FILE]   # extra zone-file lines
        [--servfail]       # answer every query SERVFAIL
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from dnslib import QTYPE, RCODE, RR, DNSError, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

from testbed.proc import free_port
from testbed.zones import ORIGIN, ZoneData

UDP_PAYLOAD = 512
"""RFC 1035: without EDNS a UDP answer carries at most 512 octets."""
MAX_UDP_PAYLOAD = 4096


def _key(name: Any) -> str:
    return str(name).lower().rstrip(".")


class ZoneResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, zone: ZoneData, *, servfail: bool = False) -> None:
        self.servfail = servfail
        self.origin = _key(ORIGIN)
        self.records: dict[str, list[RR]] = {}
        for line in zone.lines:
            for rr in RR.fromZone(line):
                self.records.setdefault(_key(rr.rname), []).append(rr)
        # Every ancestor of an owner name exists too (empty non-terminals answer no data).
        self.names: set[str] = set()
        for owner in self.records:
            labels = owner.split(".")
            self.names.update(".".join(labels[i:]) for i in range(len(labels)))
        self.failures = {_key(name): kind for name, kind in zone.failures.items()}
        soa = self.records.get(self.origin, [])
        self.soa = [rr for rr in soa if rr.rtype == QTYPE.SOA]

    def failure(self, name: str) -> str | None:
        labels = name.split(".")
        for i in range(len(labels)):
            kind = self.failures.get(".".join(labels[i:]))
            if kind:
                return kind
        return None

    def owner_records(self, name: str) -> list[RR] | None:
        """Records at `name`, synthesized from a wildcard if needed; None if it does not exist."""
        if name in self.names:
            return self.records.get(name, [])
        labels = name.split(".")
        for i in range(1, len(labels)):
            encloser = ".".join(labels[i:])
            if encloser in self.names:
                wildcard = self.records.get(f"*.{encloser}")
                if wildcard is None:
                    return None
                return [RR(name + ".", rr.rtype, rr.rclass, rr.ttl, rr.rdata) for rr in wildcard]
        return None

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = _key(request.q.qname)
        qtype = request.q.qtype
        kind = "servfail" if self.servfail else self.failure(name)
        if kind == "timeout":
            raise DNSError(f"{name}: configured never to answer")
        if kind == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if not (name == self.origin or name.endswith("." + self.origin)):
            reply.header.rcode = RCODE.REFUSED
            reply.header.aa = 0
            return reply
        found = self.owner_records(name)
        if found is None:
            reply.header.rcode = RCODE.NXDOMAIN
            reply.auth.extend(self.soa)
            return reply
        answers = [rr for rr in found if rr.rtype == qtype or qtype == QTYPE.ANY]
        if not answers:
            aliases = [rr for rr in found if rr.rtype == QTYPE.CNAME]
            answers = aliases
        if answers:
            reply.rr.extend(answers)
        else:
            reply.auth.extend(self.soa)
        return reply


class TruncatingHandler(DNSHandler):  # type: ignore[misc]
    """Over UDP, an answer larger than the client's payload size (512 without EDNS) is
    replaced by an empty one with TC set, question kept, so the client retries over TCP."""

    def get_reply(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        reply = self.server.resolver.resolve(request, self)
        packed: bytes = reply.pack()
        if self.protocol == "udp" and len(packed) > _payload_size(request):
            truncated = request.reply()
            truncated.header.rcode = reply.header.rcode
            truncated.header.tc = 1
            packed = truncated.pack()
        return packed


def _payload_size(request: DNSRecord) -> int:
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(UDP_PAYLOAD, min(int(rr.rclass), MAX_UDP_PAYLOAD))
    return UDP_PAYLOAD


class QuietLogger(DNSLogger):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(log="-recv,-send,-request,-reply,-truncated,-data,-error")


class DnsServer:
    """UDP and TCP listeners on one port, serving ``ZoneData``; a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        extra: Iterable[str] = (),
        *,
        servfail: bool = False,
    ) -> None:
        self.host = host
        self.resolver = ZoneResolver(ZoneData(extra), servfail=servfail)
        self.port = port or free_port(host, udp=True)
        logger = QuietLogger()
        self.udp = DNSServer(
            self.resolver, address=host, port=self.port, logger=logger, handler=TruncatingHandler
        )
        self.tcp = DNSServer(
            self.resolver,
            address=host,
            port=self.port,
            tcp=True,
            logger=logger,
            handler=TruncatingHandler,
        )

    @property
    def address(self) -> str:
        """``HOST:PORT``, as the milter's ``[dns] nameservers`` takes it."""
        return f"{self.host}:{self.port}"

    def start(self) -> DnsServer:
        self.udp.start_thread()
        self.tcp.start_thread()
        return self

    def stop(self) -> None:
        for server in (self.udp, self.tcp):
            server.stop()
            server.server.server_close()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a DNS server on host:port answers a UDP query for the zone's SOA."""
    query = DNSRecord.question(ORIGIN, "SOA")
    try:
        reply = query.send(host, port, timeout=timeout)
    except OSError:
        return False
    answered: bool = DNSRecord.parse(reply).header.id == query.header.id
    return answered


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.dnsserver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pidfile", type=Path)
    parser.add_argument("--records", type=Path, help="a file of extra zone-file lines")
    parser.add_argument("--servfail", action="store_true", help="answer every query SERVFAIL")
    args = parser.parse_args(argv)
    extra = args.records.read_text().splitlines() if args.records else []
    records = [line for line in extra if line.strip()]
    server = DnsServer(args.host, args.port, records, servfail=args.servfail)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    if args.pidfile:
        args.pidfile.write_text(f"{os.getpid()}\n")
    print(f"testbed.dnsserver: serving {ORIGIN} on {server.address} (udp, tcp)", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

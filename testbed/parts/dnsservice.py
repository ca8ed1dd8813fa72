"""The stack's DNS server: ``python -m testbed.dnsserver`` serving the test zones.

A process of its own, unlike the in-process ``testbed.dnsserver.DnsServer``
of the fast tests: the demo keeps it running after ``make demo`` returns.
"""

from __future__ import annotations

import sys
from pathlib import Path

from testbed.dnsserver import answers as dns_answers
from testbed.parts.service import HOST, Service, command_line, python_env, require_free_port


class DnsService(Service):
    """``testbed.zones`` plus ``records`` (zone-file lines) on ``host:port``, UDP and TCP.

    ``records`` is kept by reference: a caller may change the list, then stop
    and start the server (a running server keeps the records it started with).
    ``servfail`` (read at start) makes it answer every query SERVFAIL.
    """

    def __init__(
        self,
        run_dir: Path,
        port: int,
        records: list[str],
        *,
        host: str = HOST,
        python: str = sys.executable,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(
            run_dir, stem="dns", marker="testbed.dnsserver", what="DNS server", timeout=timeout
        )
        self.port = port
        self.records = records
        self.servfail = False
        self.host = host
        self.python = python

    @property
    def address(self) -> str:
        """``HOST:PORT``, as the milter's ``[dns] nameservers`` takes it."""
        return f"{self.host}:{self.port}"

    @property
    def records_file(self) -> Path:
        return self.run_dir / "dns-records.txt"

    def start(self) -> None:
        """Start it unless it already runs from ``run_dir``; return once it answers."""
        if self.running:
            return
        require_free_port(self.host, self.port, "the DNS server", self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.records_file.write_text("".join(f"{line}\n" for line in self.records))
        argv = command_line(
            self.python, "-m", "testbed.dnsserver",
            host=self.host, port=self.port, pidfile=self.pidfile, records=self.records_file,
        )  # fmt: skip
        if self.servfail:
            argv.append("--servfail")
        # The server writes its pidfile itself once it is bound.
        self.launch(argv, env=python_env(), record_pid=False)
        self.wait_ready(lambda: self.pidfile.exists() and dns_answers(self.host, self.port))

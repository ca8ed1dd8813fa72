"""A small RDAP server for the tests (aiohttp, loopback): the IANA bootstrap and recorded answers.

It serves what `aup-milter tenant verify-domain` asks (mailauth/rdap.py):

- ``GET /bootstrap/dns.json``: an RFC 9224 bootstrap file whose one service,
  for the TLD ``example``, is this server's ``/rdap/``;
- ``GET /rdap/domain/NAME``: the recorded RDAP answer ``ANSWERS/NAME.json``
  (``tests/corpus/rdap/`` by default: a normal registrant, a privacy/proxy
  service with RFC 9537 redactions, a GDPR-redacted one) as
  ``application/rdap+json`` (a name in ``ALIASES`` gets another's); a name in
  ``FAILURES`` answers HTTP 500 or nothing in time; any other name 404 (an
  RFC 9083 error object).

In a test process: ``with RdapServer() as server: server.bootstrap_url``.
As a process (the demo's, ``testbed/parts/rdapservice.py``)::

    python -m testbed.rdapserver --host 127.0.0.1 --port 8897 [--answers DIR] [--pidfile F]

It writes the pidfile once it serves, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType

from aiohttp import web

from testbed.proc import free_port

ANSWERS_DIR = Path(__file__).resolve().parents[1] / "tests" / "corpus" / "rdap"
RDAP_JSON = "application/rdap+json"
BOOTSTRAP_PATH = "/bootstrap/dns.json"
FAILURES: dict[str, int | str] = {
    "rdap-error.example": 500,
    "rdap-slow.example": "timeout",
}
"""Names whose lookup fails: an HTTP status, or "timeout" (no answer for `slow_seconds`)."""
ALIASES = {name: "acme.example" for name in ("spffail.example", "nodmarc.example",
                                             "badpolicy.example")}  # fmt: skip
"""Names answered with another name's recorded answer (a normal registrant), so a test of
their DNS faults sees RDAP pass."""
TLDS = ("example",)


class RdapServer:
    """aiohttp on its own event loop in a daemon thread; a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        answers: Path = ANSWERS_DIR,
        *,
        slow_seconds: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.answers = answers
        self.slow_seconds = slow_seconds
        self.requests: list[str] = []
        """Paths asked, in order (for tests that count requests)."""
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def bootstrap_url(self) -> str:
        return f"{self.base_url}{BOOTSTRAP_PATH}"

    def bootstrap(self) -> dict[str, object]:
        return {
            "version": "1.0",
            "publication": "2026-12-01T00:00:00Z",
            "description": "testbed.rdapserver: the test zones' registry",
            "services": [[list(TLDS), [f"{self.base_url}/rdap/"]]],
        }

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(BOOTSTRAP_PATH, self._bootstrap)
        app.router.add_get("/rdap/domain/{name}", self._domain)
        return app

    async def _bootstrap(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        return web.json_response(self.bootstrap())

    async def _domain(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        name = request.match_info["name"].lower().rstrip(".")
        failure = FAILURES.get(name)
        if failure == "timeout":
            await asyncio.sleep(self.slow_seconds)
            failure = 504
        if isinstance(failure, int):
            return _error(failure, "recorded failure")
        path = self.answers / f"{ALIASES.get(name, name)}.json"
        if "/" in name or not path.is_file():
            return _error(404, f"{name} is not registered")
        return web.Response(body=path.read_bytes(), content_type=RDAP_JSON)

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def start(self) -> RdapServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> RdapServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _error(status: int, description: str) -> web.Response:
    body = {"errorCode": status, "title": "error", "description": [description]}
    return web.Response(status=status, text=json.dumps(body), content_type=RDAP_JSON)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8897)
    parser.add_argument("--answers", type=Path, default=ANSWERS_DIR)
    parser.add_argument("--pidfile", type=Path, help="written once the server serves")
    args = parser.parse_args()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = RdapServer(args.host, args.port, args.answers).start()
    if args.pidfile:
        args.pidfile.write_text(f"{os.getpid()}\n")
    print(f"RDAP on {server.base_url}, bootstrap {server.bootstrap_url}", flush=True)
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()

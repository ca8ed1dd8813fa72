"""The bench's floor: a pymilter milter that does nothing, the way aup-milter is wired.

``python -m bench.floor_milter SOCKET`` listens on the unix socket SOCKET and
answers connect, MAIL FROM, each RCPT, each header, the body and end of
message with CONTINUE. What it shares with aup-milter, so that the gap
between the two is aup-milter's own work and nothing else:

- the same protocol steps negotiated: the same callbacks overridden, the same
  ones marked no-reply (connect, header, body) and the same ones never sent
  (HELO, end of headers, DATA, unknown: pymilter's ``nocallback`` defaults),
  header values with their leading space, and the same action flags
  (``aupmilter.daemon.MILTER_FLAGS``);
- the same registration, by aup-milter's own code (``aupmilter.daemon.register_milter``:
  the callbacks to the connection's object, the raw header bytes) and libmilter's own thread
  pool, run off the main thread with the listen backlog at SOMAXCONN;
- SIGTERM and SIGINT stop it (libmilter stopped from the main thread).

It touches no Redis, no DNS, no configuration and writes no per-message log.
"""

from __future__ import annotations

import grp
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import Milter
import milter as libmilter

from aupmilter.daemon import register_milter

FLOOR_NAME = "bench-floor"
CONTINUE: int = Milter.CONTINUE
F = TypeVar("F", bound=Callable[..., int])
noreply: Callable[[F], F] = Milter.noreply
TIMEOUT = 60
SOCKET_GROUP = "postfix"


@Milter.header_leading_space
class FloorMilter(Milter.Base):  # type: ignore[misc]
    """One instance per MTA connection, like aup-milter's; every answer is CONTINUE."""

    @noreply
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        return CONTINUE

    def envfrom(self, sender: str, *esmtp_params: str) -> int:
        return CONTINUE

    def envrcpt(self, recipient: str, *esmtp_params: str) -> int:
        return CONTINUE

    def header_bytes(self, name: str, value: bytes) -> int:
        return self.header(name, value)

    @noreply
    def header(self, name: str, value: bytes) -> int:
        return CONTINUE

    @noreply
    def body(self, chunk: bytes) -> int:
        return CONTINUE

    def eom(self) -> int:
        return CONTINUE

    def abort(self) -> int:
        return CONTINUE

    def close(self) -> int:
        return CONTINUE


def register() -> None:
    """aup-milter's own registration (daemon.register_milter), with the do-nothing class."""
    register_milter(FLOOR_NAME, FloorMilter, TIMEOUT)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m bench.floor_milter SOCKET", file=sys.stderr)
        return 2
    path = Path(args[0])
    path.unlink(missing_ok=True)
    register()
    libmilter.setconn(f"unix:{path}")
    libmilter.opensocket(True)
    # As the sample config has it (socket_mode 0660, socket_group postfix): smtpd connects.
    os.chown(path, -1, grp.getgrnam(SOCKET_GROUP).gr_gid)
    os.chmod(path, 0o660)

    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    errors: list[str] = []

    def serve() -> None:
        try:
            libmilter.main()
        except libmilter.error as exc:
            errors.append(str(exc))
        finally:
            stopping.set()

    worker = threading.Thread(target=serve, name="libmilter", daemon=True)
    worker.start()
    print(f"{FLOOR_NAME}: listening on unix:{path}", flush=True)
    while not stopping.wait(0.5):
        pass
    libmilter.stop()
    worker.join(timeout=10)
    if errors:
        print(f"{FLOOR_NAME}: libmilter: {errors[0]}", file=sys.stderr, flush=True)
        return 1
    print(f"{FLOOR_NAME}: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

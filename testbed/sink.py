"""An SMTP sink standing in for "the Internet" behind the relay.

Every message Postfix delivers here is written as one ``.eml`` file, so tests
can look at exactly what left the relay. The envelope is prepended as
``Return-Path:`` and ``X-Sink-Rcpt-To:`` headers (like a delivery agent adds
Return-Path), which keeps one file per message.

A recipient whose local part starts with REFUSE_PREFIX (``refuse-550-``) is
answered ``550 5.1.1`` at RCPT, as a remote server refuses an unknown user;
one starting with DEFER_PREFIX (``refuse-450-``) ``450 4.2.1`` (mailbox
temporarily unavailable), every time, so Postfix keeps retrying it until
``maximal_queue_lifetime``. Tests see the bounce and delay notices the
relay's own Postfix makes of them; every other recipient is accepted.

Run: ``python -m testbed.sink --host 127.0.0.1 --port N --maildir DIR --pidfile F``
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from testbed.proc import write_pidfile

# Temp files live in a subfolder of the maildir, so a rename is atomic and a
# reader listing ``*.eml`` never sees a half-written message.
TMP_SUBDIR = ".tmp"
REFUSE_PREFIX = "refuse-550-"
DEFER_PREFIX = "refuse-450-"


class MaildirHandler:
    """aiosmtpd handler: accept everything, store each message atomically."""

    def __init__(self, maildir: Path) -> None:
        self.maildir = maildir
        self.tmpdir = maildir / TMP_SUBDIR
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self._counter = itertools.count(1)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.lower().startswith(REFUSE_PREFIX):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown (sink)"
        if address.lower().startswith(DEFER_PREFIX):
            return f"450 4.2.1 <{address}>: Mailbox temporarily unavailable (sink)"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        # aiosmtpd gives the null sender as "<>"; the Return-Path shows it as `<>`.
        mail_from = "" if envelope.mail_from in (None, "<>") else str(envelope.mail_from)
        self.store(mail_from, list(envelope.rcpt_tos), _content_bytes(envelope))
        return "250 2.0.0 Ok: stored by testbed sink"

    def store(self, mail_from: str, rcpt_tos: list[str], content: bytes) -> Path:
        # Nanosecond time first: file names sort in delivery order.
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._counter):06d}.eml"
        envelope = (
            f"Return-Path: <{mail_from}>\r\n"
            f"X-Sink-Rcpt-To: {', '.join(f'<{r}>' for r in rcpt_tos)}\r\n"
        ).encode()
        tmp = self.tmpdir / name
        with open(tmp, "wb") as fh:
            fh.write(envelope + content)
            fh.flush()
            os.fsync(fh.fileno())
        final = self.maildir / name
        tmp.replace(final)
        print(f"stored {final.name} from=<{mail_from}> to={rcpt_tos}", flush=True)
        return final


def _content_bytes(envelope: Envelope) -> bytes:
    # original_content keeps the bytes as sent (no decoding, no line-ending rewrite).
    raw = envelope.original_content if envelope.original_content is not None else envelope.content
    if raw is None:
        return b""
    return raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape")


async def serve(host: str, port: int, maildir: Path, pidfile: Path | None) -> None:
    handler = MaildirHandler(maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler,
            hostname="sink.testbed.invalid",
            decode_data=False,
            enable_SMTPUTF8=True,
            data_size_limit=None,
        ),
        host=host,
        port=port,
        reuse_address=True,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The pidfile appears only once the port is bound: it doubles as a readiness mark.
    if pidfile is not None:
        write_pidfile(pidfile, os.getpid())
    print(f"sink listening on {host}:{port}, storing into {maildir}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
        if pidfile is not None:
            pidfile.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.sink", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", type=Path, required=True)
    parser.add_argument("--pidfile", type=Path)
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port, args.maildir, args.pidfile))
    except OSError as exc:
        print(f"sink: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

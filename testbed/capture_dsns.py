"""``python -m testbed.capture_dsns OUTDIR``: the test bed's Postfix makes real DSNs; keep them.

How the `dsn-testbed-*` samples of tests/corpus/reports/ were made. A stack
of its own (run/capture-dsns, the end-to-end tests' ports: run it under
``flock /tmp/aup-e2e.lock``) with the intake's Postfix settings, except that
the postmaster copies of bounce and delay notices go to the sink
(POSTMASTER_COPY) instead of the report intake, so both copies can be kept.
Tenant acme (authenticated, DKIM-signed by the milter) sends one
transactional message to each of:

- ``refuse-550-gone@example.net``: the sink answers 550 5.1.1, Postfix bounces
  at once;
- ``refuse-450-full@example.net``: the sink answers 450 4.2.1 every time;
  with delay_warning_time = 1s Postfix sends a delay notice, and with
  maximal_queue_lifetime = 3s it returns the message with the 4.2.1 status.

Every null-sender message the sink got is written to OUTDIR as it arrived
(without the sink's own envelope headers), named by its kind and copy:
``dsn-testbed-550-bounce.eml``, ``dsn-testbed-550-bounce-postmaster.eml``,
``dsn-testbed-450-delay.eml``, ... The files are Postfix's own output and
classify as tests/corpus/reports/manifest.toml says.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from testbed.client import SmtpClient, make_message
from testbed.parts.sinkservice import SinkMessage
from testbed.proc import wait_until
from testbed.sink import DEFER_PREFIX, REFUSE_PREFIX
from testbed.stack import REPO_ROOT, Stack, port_offset
from testbed.tenants import DEMO_ACCOUNTS

SENDER = "news@acme.example"
POSTMASTER_COPY = "postmaster-copy@example.net"
RECIPIENTS = {"550": f"{REFUSE_PREFIX}gone@example.net", "450": f"{DEFER_PREFIX}full@example.net"}
SETTINGS = {
    "queue_run_delay": "1s",
    "minimal_backoff_time": "1s",
    "maximal_backoff_time": "2s",
    "delay_warning_time": "1s",
    "maximal_queue_lifetime": "3s",
    "bounce_queue_lifetime": "3s",
    "bounce_notice_recipient": POSTMASTER_COPY,
    "delay_notice_recipient": POSTMASTER_COPY,
}
EXPECTED = 6
"""550: bounce + copy; 450: delay + copy, expiry bounce + copy."""
SINK_HEADERS = re.compile(rb"\A(?:(?:Return-Path|X-Sink-[A-Za-z-]+):[^\r\n]*\r?\n)+")


def name_of(message: SinkMessage) -> str:
    """``dsn-testbed-CODE-KIND[-postmaster].eml`` from the notice's subject and recipient."""
    subject = str(message.message.get("Subject", ""))
    text = message.raw.decode("latin-1")
    code = "550" if "5.1.1" in text else "450"
    kind = "delay" if "Delayed Mail" in subject else "bounce"
    copy = "-postmaster" if POSTMASTER_COPY in message.rcpt_to else ""
    return f"dsn-testbed-{code}-{kind}{copy}.eml"


def capture(out_dir: Path) -> list[Path]:
    stack = Stack(
        REPO_ROOT / "run" / "capture-dsns",
        redis_port=6395 + port_offset(),
        smtp_port=2535 + port_offset(),
        sink_port=2536 + port_offset(),
        unsubscribe=True,
        postfix_overrides=SETTINGS,
    )
    stack.start(clean=True)
    try:
        stack.add_demo_tenants()
        acme = DEMO_ACCOUNTS[0]
        with SmtpClient(stack.host, stack.smtp_port) as client:
            assert client.login(acme.tenant.logins[0], acme.password).code == 235
            for recipient in RECIPIENTS.values():
                message, _ = make_message(SENDER, [recipient], subject="Your order has shipped")
                assert client.send(SENDER, [recipient], message).accepted

        def notices_so_far() -> list[SinkMessage] | None:
            # The originals are all refused: whatever the sink holds is a notice.
            found = stack.sink_messages()
            return found if len(found) >= EXPECTED else None

        notices = wait_until(
            notices_so_far,
            timeout=60,
            interval=0.2,
            what=f"{EXPECTED} notices from Postfix in the sink",
            on_timeout=lambda: stack.relay.diagnostics(),
        )
        time.sleep(0.5)
        written = []
        out_dir.mkdir(parents=True, exist_ok=True)
        for notice in notices:
            path = out_dir / name_of(notice)
            path.write_bytes(SINK_HEADERS.sub(b"", notice.raw))
            written.append(path)
        return written
    finally:
        stack.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.capture_dsns", description=__doc__)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    for path in capture(args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

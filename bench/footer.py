"""``python -m bench.footer``: CPU per sender-footer check and insertion (issue 15).

The message is a newsletter as tenants send them: multipart/mixed holding a
multipart/alternative (UTF-8 quoted-printable text, HTML with `</body>`) and
a base64 PDF attachment, about 19 KB in all. For it this times, with
`aupmilter.message.footer` and `aupmilter.policy.footer` as the end of
message calls them:

- check: the MIME walk, both text parts decoded and searched, the judgement
  (what `footer = "check"` costs every bulk message, and `insert` too);
- insert: the check, then the footer spliced into both parts (the body
  rebuilt); the cost per insertion is this one;
- sign_delta: DKIM signing (RSA-2048 through OpenSSL) over the body with
  the footer against the body without: what the longer body adds to the
  signature the relay makes anyway.

Figures are process CPU milliseconds per message, the median of `--rounds`
rounds; the last line is for scripts:

    footer: check_ms=0.449 insert_ms=0.471 sign_delta_ms=0.039 body_bytes=18606
"""

from __future__ import annotations

import argparse
import email.policy
import shutil
import sys
import tempfile
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path

from aupmilter.config import SigningIdentity
from aupmilter.mailauth.dkimkeys import load_signing_key
from aupmilter.mailauth.dkimsign import sign
from aupmilter.message.footer import rewrite, scan
from aupmilter.policy.footer import FooterMode, FooterPlan, TenantIdentity, footer_text, judge
from aupmilter.policy.headers import HeaderField
from bench.signing import cpu_ms
from testbed.zones import private_key_path

IDENTITY = TenantIdentity(
    "Initech, Inc.",
    ("4120 Freidrich Lane", "Austin, TX 78744", "USA"),
    "https://initech.example/contact",
)
PLAN = FooterPlan(mode=FooterMode.INSERT)
LINK = "https://unsub.relay.example/u/abcdefghijklmnopqrstuvwxyz234567"


def newsletter() -> tuple[list[HeaderField], bytes]:
    """Header fields as the milter collects them, and the CRLF body."""
    message = EmailMessage()
    message["From"] = "Initech News <news@initech.example>"
    message["To"] = "reader@example.net"
    message["Subject"] = "Autumn news"
    message["Date"] = "Tue, 14 Nov 2023 22:13:20 +0000"
    message["Message-ID"] = "<20231114221320.1@initech.example>"
    text = "Über unsere Herbstangebote, für alle Leserinnen und Leser. " * 60
    message.set_content(text, charset="utf-8", cte="quoted-printable")
    paragraphs = "".join(f"<p>{text[:200]} ({n})</p>\n" for n in range(20))
    message.add_alternative(
        f"<html><head><title>News</title></head><body>\n{paragraphs}</body></html>\n",
        subtype="html",
        charset="utf-8",
        cte="quoted-printable",
    )
    message.make_mixed()
    message.add_attachment(
        bytes(range(256)) * 24, maintype="application", subtype="pdf", filename="prices.pdf"
    )
    raw = message.as_bytes(policy=email.policy.SMTP)  # the boundaries are made here
    sent = email.message_from_bytes(raw, policy=email.policy.compat32)
    fields = [HeaderField(name, f" {value}".encode()) for name, value in sent.items()]
    body = raw.partition(b"\r\n\r\n")[2]
    return fields, body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.footer", description=__doc__)
    parser.add_argument("--count", type=int, default=300, help="messages per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    fields, body = newsletter()
    footer = footer_text(IDENTITY, LINK)

    def check() -> object:
        return judge(PLAN, IDENTITY, scan(fields, body, IDENTITY, PLAN).scan, "initech")

    def insert() -> bytes:
        walk = scan(fields, body, IDENTITY, PLAN)
        judgement = judge(PLAN, IDENTITY, walk.scan, "initech")
        return rewrite(body, walk, judgement.rewrite, footer).body

    with_footer = insert()
    assert len(with_footer) > len(body), "the footer was not inserted"
    check_ms = cpu_ms(check, args.count, args.rounds)
    insert_ms = cpu_ms(insert, args.count, args.rounds)
    with tempfile.TemporaryDirectory(prefix="aup-bench-footer-") as folder:
        key_file = Path(folder) / "rsa2048.key"
        shutil.copy(private_key_path("test-rsa2048"), key_file)
        key_file.chmod(0o600)
        identity = SigningIdentity("initech.example", "sel", load_signing_key(key_file))
        plain_ms = cpu_ms(lambda: sign(fields, body, identity), args.count, args.rounds)
        footer_ms = cpu_ms(lambda: sign(fields, with_footer, identity), args.count, args.rounds)
    print(
        f"CPU ms per message (median of {args.rounds} rounds of {args.count}), a"
        f" {len(body)}-byte multipart newsletter, footer into both alternatives"
    )
    print(
        f"footer: check_ms={check_ms:.3f} insert_ms={insert_ms:.3f}"
        f" sign_delta_ms={footer_ms - plain_ms:.3f} body_bytes={len(body)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The intake behind Postfix's pipe transport: `aup-milter intake -c FILE [--recipient ADDRESS]`
for mailto unsubscribes, `aup-milter intake -c FILE --reports` for complaints and bounces.

Unsubscribes: the `aup-intake` pipe service, bound to `UNSUB_LOCAL+*@UNSUB_DOMAIN`,
hands over one message on standard input and its recipient as `${recipient}`
or Delivered-To (postfix-sample/master.cf.intake). The token in the
recipient's local part is verified like the web service's; a recipient token
suppresses its recipient, a message token suppresses the message's From address.

Reports: the `aup-reports` pipe service runs the same command with `--reports`
for the addresses the transport map routes to it (the feedback-loop address
given to mailbox providers, and the one that receives a copy of every DSN the
relay's Postfix returns to a tenant). Which service, not the message, decides:
a report is never read as an unsubscribe, nor the reverse.
unsubscribe/report_intake.py says what each kind of report changes.

Exit codes (aupmilter.exitcodes, sysexits.h), which Postfix's pipe maps to
delivery status:

  0   EX_OK        unsubscribe: suppressed (or already suppressed): delivered.
                   report: acted on (complaint, hard bounce suppressed; soft bounce,
                   delay counted), or nothing to do, with a log line saying why:
                   not a report (auto-reply, vacation, challenge-response,
                   auth-failure report, positive DSN), the tenant unknown, or
                   unparseable or hostile (too big, too deep, broken MIME): discarded.
  64  EX_USAGE     no recipient address given or found in the headers, or
                   arguments argparse refuses: bounced
  65  EX_DATAERR   a message token but no usable From address: bounced
  67  EX_NOUSER    not an unsubscribe address of ours, or a token that does not
                   verify (forged, altered, expired): bounced ("user unknown")
  75  EX_TEMPFAIL  Redis unreachable, the configuration does not load, or an
                   unexpected error: deferred, retried

Each outcome is counted for Prometheus in the shared counts hash
(store/shared_counts.py, exported by the daemon): `unsubscribe:<outcome>`
with outcome unsubscribed, already (suppressed before), refused (67) or
invalid (64, 65), and `report:<kind>` for each report. The count is one
HINCRBY of its own, after the work; it never changes the exit code.

Every fault of the relay's own making defers the message, so it loses no
unsubscribe and no report: Postfix keeps it in its queue until the fault is
fixed (EX_CONFIG would be permanent to Postfix, 5.3.5, and bounce it).

An unparseable report exits 0 on purpose: a bounce of it would go to the
null sender of a DSN (Postfix drops it, or mails the postmaster a double
bounce) or to a provider's feedback loop, which reads no replies and may
end the loop for a relay that answers; deferring would keep it in the queue
to expire days later with the same result. The warning log line (reason,
bound broken) is what is kept, and `aup-milter report classify` reads a copy.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import email.utils
import logging
import sys
import time
from typing import BinaryIO

import redis

from aupmilter.config import Config, ConfigError, UnsubscribeSettings, load_config
from aupmilter.exitcodes import EX_DATAERR, EX_NOUSER, EX_OK, EX_TEMPFAIL, EX_USAGE
from aupmilter.policy.tokens import InvalidToken, TokenKind, TokenSigner
from aupmilter.store.shared_counts import count_quietly
from aupmilter.store.suppression import (
    AddressError,
    Source,
    SuppressionStore,
    validate_address,
)

log = logging.getLogger("aupmilter.unsubscribe.intake")

MAX_KEPT_BYTES = 256 * 1024
"""Only the header is used; the rest of a (possibly huge) message is read and dropped."""
MAX_DRAINED_BYTES = 64 * 1024 * 1024


class IntakeRefusal(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def read_message(stream: BinaryIO, limit: int = MAX_KEPT_BYTES) -> bytes:
    """The first `limit` bytes; the rest is drained so the MTA's write does not fail."""
    kept = stream.read(limit)
    drained = 0
    while drained < MAX_DRAINED_BYTES:
        chunk = stream.read(65536)
        if not chunk:
            break
        drained += len(chunk)
    return kept


def token_of(address: str, settings: UnsubscribeSettings) -> str:
    """The token in LOCAL+TOKEN@DOMAIN, or IntakeRefusal(EX_NOUSER)."""
    address = address.strip().strip("<>")
    local, at, domain = address.rpartition("@")
    base, plus, token = local.partition("+")
    if (
        not at
        or domain.lower().rstrip(".") != settings.mailto_domain
        or base.lower() != settings.mailto_local.lower()
        or not plus
        or not token
    ):
        raise IntakeRefusal(EX_NOUSER, f"{address} is not an unsubscribe address of this relay")
    return token


def find_recipient(headers: email.message.Message, settings: UnsubscribeSettings) -> str:
    """The envelope recipient as the MTA recorded it on top of the message.

    Postfix's pipe flag D prepends Delivered-To (O: X-Original-To): only the first
    one counts, because lower ones come from the sender. Without either, the first
    unsubscribe address in To or Cc.
    """
    for name in ("Delivered-To", "X-Original-To"):
        found = email.utils.getaddresses(headers.get_all(name, [])[:1])
        if found and found[0][1]:
            return found[0][1]
    for name in ("To", "Cc"):
        for _display, address in email.utils.getaddresses(headers.get_all(name, [])):
            try:
                token_of(address, settings)
            except IntakeRefusal:
                continue
            return address
    raise IntakeRefusal(EX_USAGE, "no --recipient given and no unsubscribe address in the headers")


def sender_address(headers: email.message.Message) -> str:
    """The From address of a message token's unsubscribe mail, validated."""
    found = email.utils.getaddresses(headers.get_all("From", []))
    addresses = [address for _display, address in found if address]
    if len(addresses) != 1:
        raise IntakeRefusal(
            EX_DATAERR,
            "the unsubscribe message needs exactly one From address (it is the one removed)",
        )
    try:
        return validate_address(addresses[0])
    except AddressError as exc:
        raise IntakeRefusal(EX_DATAERR, f"the From address is not usable: {exc}") from None


UNSUBSCRIBED, ALREADY, REFUSED, INVALID = "unsubscribed", "already", "refused", "invalid"
NOT_RECIPIENT = "not-recipient"
"""A message token's From that was no recipient of the message: nothing suppressed, and
the answer (exit status, output) is a success's, so a forged From learns nothing."""
"""The outcomes counted (`unsubscribe:<outcome>` in the shared counts)."""


def process(
    raw: bytes,
    recipient: str | None,
    settings: UnsubscribeSettings,
    store: SuppressionStore,
    now: float,
) -> str:
    """Suppress what the message asks for; the suppressed address, or IntakeRefusal."""
    return process_outcome(raw, recipient, settings, store, now)[0]


def process_outcome(
    raw: bytes,
    recipient: str | None,
    settings: UnsubscribeSettings,
    store: SuppressionStore,
    now: float,
) -> tuple[str, str]:
    """`process`, with the outcome: UNSUBSCRIBED, ALREADY or NOT_RECIPIENT."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    address_to = recipient or find_recipient(headers, settings)
    token = token_of(address_to, settings)
    signer = TokenSigner(settings.secrets, settings.token_lifetime_days)
    try:
        claims = signer.verify(token, now)
    except InvalidToken as exc:
        raise _refusal(address_to, exc, "is not valid (altered or expired)") from None
    stored = store.resolve_reference(claims.ref_text)
    try:
        reference = claims.resolve(stored)
    except InvalidToken as exc:
        raise _refusal(address_to, exc, "is not valid any more") from None
    address = reference.address
    if claims.kind is TokenKind.MESSAGE:
        # Anyone can write any From: only a recipient of the message is ever removed.
        address = sender_address(headers)
    detail = f"token {claims.token[:8]} message {claims.message_tag_text}".strip()
    if not signer.was_recipient(reference, address):
        store.refuse_not_recipient(reference.tenant, address, Source.MAILTO, now, detail)
        return address, NOT_RECIPIENT
    outcome = store.add(reference.tenant, address, Source.MAILTO, now, detail=detail)
    return address, UNSUBSCRIBED if outcome.added else ALREADY


def _refusal(address: str, exc: InvalidToken, why: str) -> IntakeRefusal:
    """EX_NOUSER ("user unknown" to Postfix) for a token that does not stand."""
    log.info("refused unsubscribe address %s: %s", address[:24], exc)
    return IntakeRefusal(
        EX_NOUSER,
        f"this unsubscribe address {why}; use the unsubscribe link of a more recent message",
    )


def main(args: argparse.Namespace, stdin: BinaryIO | None = None) -> int:
    from aupmilter import logs

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EX_TEMPFAIL
    logs.configure(config.log)
    if args.reports:
        return reports_main(config, stdin or sys.stdin.buffer)
    if config.unsubscribe is None:
        print(f"{config.path}: key 'unsubscribe': expected an [unsubscribe] section, got none",
              file=sys.stderr)  # fmt: skip
        return EX_TEMPFAIL
    from aupmilter.store.client import connect

    raw = read_message(stdin or sys.stdin.buffer)
    client = connect(config.redis)
    try:
        address, outcome = process_outcome(raw, args.recipient, config.unsubscribe,
                                           SuppressionStore(client), time.time())  # fmt: skip
        if outcome != NOT_RECIPIENT:  # refuse_not_recipient counted it with its audit event
            count_quietly(client, "unsubscribe", outcome)
    except IntakeRefusal as exc:
        print(f"aup-milter intake: {exc}", file=sys.stderr)
        count_quietly(client, "unsubscribe", REFUSED if exc.code == EX_NOUSER else INVALID)
        return exc.code
    except (redis.RedisError, OSError) as exc:
        print(f"aup-milter intake: policy store unavailable, try again later: {exc}",
              file=sys.stderr)  # fmt: skip
        return EX_TEMPFAIL
    except Exception:
        log.exception("unexpected error; deferring the message")
        return EX_TEMPFAIL
    finally:
        client.close()
    print(f"aup-milter intake: {address} unsubscribed")
    return EX_OK


def reports_main(config: Config, stdin: BinaryIO) -> int:
    """`--reports`: one complaint or bounce report acted on (unsubscribe/report_intake.py)."""
    from aupmilter.reports.mime import MAX_REPORT_BYTES
    from aupmilter.store.client import connect
    from aupmilter.unsubscribe.report_intake import StoreDown, process_report

    # One byte past the bound: a longer report classifies as unparseable, within the bound.
    raw = read_message(stdin, MAX_REPORT_BYTES + 1)
    client = connect(config.redis)
    try:
        acted = process_report(raw, config, client, time.time())
        count_quietly(client, "report", str(acted.report.kind))
    except StoreDown as exc:
        print(f"aup-milter intake: policy store unavailable, try again later: {exc}",
              file=sys.stderr)  # fmt: skip
        return EX_TEMPFAIL
    except Exception:
        log.exception("unexpected error; deferring the report")
        return EX_TEMPFAIL
    finally:
        client.close()
    return EX_OK

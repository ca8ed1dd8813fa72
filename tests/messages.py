"""Running raw messages through the message checks, as the milter would see them.

``split_message`` turns RFC 5322 bytes into header fields the way an MTA
hands them to a milter with leading space kept (raw = the bytes after the
colon, folds included) and the body; ``run_checks`` feeds
them to ``MessageChecks`` with a real resolver (the test DNS server), so the
pure policy and the DNS-backed checks are judged exactly as in the daemon.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from aupmilter.config import Config, load_config
from aupmilter.mailauth.resolver import Resolver
from aupmilter.policy.findings import PlanChecks
from aupmilter.policy.headers import HeaderField
from aupmilter.policy.verdict import Verdict
from aupmilter.stages.message_checks import EndOfMessage, MessageChecks, Sender

_LINE = re.compile(rb"\r\n")
_FOLD_START = (b" ", b"\t")


def split_message(raw: bytes) -> tuple[list[HeaderField], bytes]:
    """Header fields (raw = the bytes after the colon) and the body of a CRLF message."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep and raw.endswith(b"\r\n"):
        head, body = raw[:-2], b""
    lines = _LINE.split(head) if head else []
    fields: list[HeaderField] = []
    for line in lines:
        if line.startswith(_FOLD_START) and fields:
            last = fields[-1]
            fields[-1] = HeaderField(last.name, last.raw + b"\r\n" + line)
            continue
        name_bytes, colon, value = line.partition(b":")
        if not colon:
            # Not a header line: an MTA would take the body to start here.
            body = b"\r\n".join(lines[lines.index(line) :]) + b"\r\n" + body
            break
        fields.append(HeaderField(name_bytes.decode("utf-8", "surrogateescape").rstrip(), value))
    return fields, body


def write_config(directory: Path, dns_address: str, plans_text: str, extra: str = "") -> Config:
    (directory / "policies").mkdir(exist_ok=True)
    (directory / "policies" / "plans.toml").write_text(plans_text)
    path = directory / "aup-milter.toml"
    path.write_text(
        f'[dns]\nnameservers = ["{dns_address}"]\ntimeout = 0.3\nlifetime = 0.6\n{extra}'
    )
    return load_config(path)


@dataclass(frozen=True)
class CheckRun:
    mail_from: Verdict
    eom: EndOfMessage | None

    @property
    def final(self) -> Verdict:
        return self.eom.verdict if self.eom is not None else self.mail_from

    @property
    def reply(self) -> str:
        """``"550 5.6.0"``, or ``"250"`` when the message is accepted."""
        reply = self.final.reply
        return f"{reply.code} {reply.status}" if reply else "250"


def run_checks(
    raw: bytes,
    *,
    config: Config,
    resolver: Resolver,
    sender: str,
    tenant: str | None = "acme",
    domains: frozenset[str] | None = frozenset({"acme.example"}),
    allowed_domains: frozenset[str] = frozenset(),
    plan: PlanChecks | None = None,
    smtputf8: bool = False,
    now: datetime,
) -> CheckRun:
    plan_checks = plan if plan is not None else next(iter(config.plans.values())).checks
    who = Sender(sender, tenant, domains, allowed_domains, plan_checks, smtputf8)
    checks = MessageChecks(who, config, resolver)
    passed = Verdict.accept(f"tenant {tenant} is active", tenant)
    try:
        at_mail = checks.at_mail_from(passed)
        if at_mail.refuses:
            return CheckRun(at_mail, None)
        fields, body = split_message(raw)
        for field in fields:
            checks.collected.add_header(field.name, field.raw)
        for start in range(0, len(body), 65536):
            checks.collected.add_body(body[start : start + 65536])
        return CheckRun(at_mail, checks.at_end_of_message(at_mail, now, "relay.test"))
    finally:
        checks.close()

"""Delivery status notifications (RFC 3464), judged one recipient at a time.

Per recipient block of a message/delivery-status part (or RFC 6533's
message/global-delivery-status):

- `Action: failed` with a 5.x.x Status: hard; with 4.x.x: soft (the MTA gave
  up after retrying a temporary failure, e.g. Postfix past
  maximal_queue_lifetime); no usable Status: the class of the
  Diagnostic-Code's reply (550 -> hard), or of a reply code written in the
  Status field itself (`Status: 553 ...`, seen in the wild), else soft, since
  a suppression on a guess cannot be undone by the recipient;
- `Action: delayed`: delayed;
- `delivered`, `relayed`, `expanded`: positive, nothing to do.

The address is Original-Recipient when it is an rfc822 address (what the
tenant sent to, before the receiving side's aliases), else Final-Recipient.
Other address types (X.400, `unknown`) count in the kind but name no one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import Message

from aupmilter.reports.mime import Parts, content_type, field_blocks, iter_headers
from aupmilter.reports.model import MAX_ADDRESSES, Kind, mailbox

STATUS_PARTS = frozenset({"message/delivery-status", "message/global-delivery-status"})
POSITIVE_ACTIONS = frozenset({"delivered", "relayed", "expanded"})
_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY = re.compile(r"(?:^|;)\s*([245])\d\d\b|\b([245])\.\d{1,3}\.\d{1,3}\b")


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    address: str | None
    """None when the block names no rfc822 address."""
    kind: Kind | None
    """HARD_BOUNCE, SOFT_BOUNCE, DELAYED; None for positive or unknown actions."""
    action: str
    status: str
    """The Status code (`5.1.1`), or what the judgement came from (`smtp; 550`)."""


def is_dsn(message: Message, parts: Parts) -> bool:
    if any(content_type(part) in STATUS_PARTS for part in parts.leaves):
        return True
    declared = str(message.get_param("report-type", "", header="content-type") or "")
    return content_type(message) == "multipart/report" and declared.lower() == "delivery-status"


def status_parts(parts: Parts) -> list[Message]:
    """The report's own delivery-status parts (none inside an attached original)."""
    return [part for part in parts.leaves if content_type(part) in STATUS_PARTS]


def recipient_statuses(parts: Parts) -> tuple[list[RecipientStatus], list[str]]:
    """Every recipient block, and the per-message fields naming the original's sender."""
    statuses: list[RecipientStatus] = []
    senders: list[str] = []
    for part in parts.leaves:
        if content_type(part) not in STATUS_PARTS:
            continue
        for block in field_blocks(part):
            senders.extend(_senders(block))
            if block.get("Action") is None and block.get("Final-Recipient") is None:
                continue  # the per-message block (Reporting-MTA, Arrival-Date)
            statuses.append(judge(block))
            if len(statuses) >= MAX_ADDRESSES:
                return statuses, senders
    return statuses, senders


def _senders(block: Message) -> list[str]:
    found = []
    for name in ("X-Postfix-Sender", "Original-Mail-From", "X-Original-Sender"):
        for value in iter_headers(block, name):
            address = _typed_address(value)
            if address:
                found.append(address)
    return found


def judge(block: Message) -> RecipientStatus:
    action = next(iter_headers(block, "Action"), "").strip().lower()
    action = action.split()[0].rstrip(";(") if action else ""
    address = None
    for name in ("Original-Recipient", "Final-Recipient", "X-Actual-Recipient"):
        address = next((a for a in map(_typed_address, iter_headers(block, name)) if a), None)
        if address:
            break
    status = next(iter_headers(block, "Status"), "").strip()
    diagnostic = " ".join(next(iter_headers(block, "Diagnostic-Code"), "").split())
    if action in POSITIVE_ACTIONS:
        return RecipientStatus(address, None, action, status)
    if action.startswith("delayed"):
        return RecipientStatus(address, Kind.DELAYED, action, status)
    if not action.startswith(("fail", "error")):  # `error`: OpenSMTPD's non-standard spelling
        return RecipientStatus(address, None, action or "none", status)
    found = _STATUS.match(status)
    if found is not None and found.group(1) != "2":
        kind = Kind.HARD_BOUNCE if found.group(1) == "5" else Kind.SOFT_BOUNCE
        return RecipientStatus(address, kind, action, found.group(0).strip())
    for field, text in (("Diagnostic-Code", diagnostic), ("Status", status)):
        reply = _REPLY.search(text)
        if reply is not None:
            digit = reply.group(1) or reply.group(2)
            kind = Kind.HARD_BOUNCE if digit == "5" else Kind.SOFT_BOUNCE
            code = reply.group(0).lstrip("; \t")
            return RecipientStatus(address, kind, action, f"{field} {code}")
    return RecipientStatus(address, Kind.SOFT_BOUNCE, action, "no status")


def _typed_address(value: str) -> str | None:
    """`rfc822; user@example.com` (or an untyped angle-addr, as some MTAs write) -> address."""
    address_type, semicolon, rest = value.partition(";")
    if semicolon:
        if address_type.strip().lower() not in ("rfc822", "utf-8"):
            return None
        return mailbox(rest)
    stripped = value.strip()
    return mailbox(stripped) if stripped.startswith("<") or "@" in stripped else None

"""Complaints: ARF feedback reports (RFC 5965) as the feedback loops really send them.

Recognised by a message/feedback-report part anywhere in the report, whatever
the container and the transfer encoding (Microsoft's JMRP has sent it base64
inside multipart/mixed), or by `report-type=feedback-report` alone.

The complainer, first source that names one:

1. `Original-Rcpt-To` (and the draft ARF's `Removal-Recipient`) of the
   feedback part, less redacted placeholders;
2. the recipient of our recipient token in the original's List-Unsubscribe
   (the tenant lookup reads it from the store);
3. one header of the attached original naming the recipient:
   `X-HmXmrOriginalRecipient` (Microsoft), `X-Original-To`, the top
   `Delivered-To`, or a `To` with exactly one address.

Never the original's sender, and never any other address of the original
(Cc, Reply-To, the body): those are not who complained.

Feedback types: `auth-failure` (RFC 6591) is a report about the domain's
authentication and `not-spam` (RFC 6430) the opposite of a complaint; both
are `not-a-report` and suppress no one. Every other type, unknown ones
included, is a user complaint (RFC 5965 3.1 registers `abuse`, `fraud`,
`virus`, `other`; loops add `opt-out` and their own).
"""

from __future__ import annotations

import email.utils
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message

from aupmilter.reports.mime import (
    Parts,
    content_type,
    field_blocks,
    iter_headers,
    original_headers,
)
from aupmilter.reports.model import mailbox, redacted, unique

FEEDBACK_PART = "message/feedback-report"
NOT_COMPLAINTS = {
    "auth-failure": "an authentication failure report (RFC 6591) is about the domain",
    "not-spam": "a not-spam report (RFC 6430) is no complaint",
}
COMPLAINER_FIELDS = ("Original-Rcpt-To", "Removal-Recipient")
ORIGINAL_RECIPIENT_HEADERS = ("X-HmXmrOriginalRecipient", "X-Original-To", "Delivered-To")


@dataclass(frozen=True, slots=True)
class Feedback:
    """What an ARF report's fields and attached original say."""

    feedback_type: str | None
    named: tuple[str, ...]
    """Recipients named by the feedback part itself (Original-Rcpt-To, Removal-Recipient)."""
    original_recipient: str | None
    """The one recipient an original's header names, when the feedback part names none."""
    original_recipient_source: str
    senders: tuple[str, ...]
    """Original-Mail-From and the original's own senders: never complainers."""
    originals: tuple[Message, ...]
    """Header sections of the attached originals."""

    @property
    def complaint(self) -> bool:
        return self.feedback_type not in NOT_COMPLAINTS


def is_feedback_report(message: Message, parts: Parts) -> bool:
    declared = str(message.get_param("report-type", "", header="content-type") or "")
    if content_type(message) == "multipart/report" and declared.lower() == "feedback-report":
        return True
    return any(content_type(part) == FEEDBACK_PART for part in parts.leaves)


def read_feedback(parts: Parts) -> Feedback:
    fields = Message()
    for part in parts.leaves:
        if content_type(part) == FEEDBACK_PART:
            for block in field_blocks(part):
                for name, value in block.items():
                    fields[name] = value
            break
    raw_type = next(iter_headers(fields, "Feedback-Type"), "").strip().lower()
    feedback_type = raw_type.split()[0].rstrip(";") if raw_type else None
    originals = tuple(original_headers(part) for part in parts.originals)
    senders = [mailbox(v) for v in iter_headers(fields, "Original-Mail-From")]
    for headers in originals:
        for name in ("Return-Path", "From", "Sender"):
            senders.extend(mailbox(a) for _, a in _addresses(headers, name))
    sender_set = unique(s for s in senders if s)
    named = unique(
        (
            address
            for name in COMPLAINER_FIELDS
            for value in iter_headers(fields, name)
            for address in [mailbox(value)]
            if address and not redacted(address)
        ),
        excluded=sender_set,
    )
    recipient, source = _original_recipient(originals, sender_set)
    return Feedback(feedback_type, named, recipient, source, sender_set, originals)


def _original_recipient(
    originals: Sequence[Message], senders: Sequence[str]
) -> tuple[str | None, str]:
    """The complainer as a header of the original names them, and which header; or None."""
    excluded = {s.lower() for s in senders}
    for headers in originals:
        for name in ORIGINAL_RECIPIENT_HEADERS:
            for _, raw in _addresses(headers, name)[:1]:
                address = mailbox(raw)
                if address and not redacted(address) and address.lower() not in excluded:
                    return address, f"the original's {name}"
        to = [mailbox(raw) for _, raw in _addresses(headers, "To")]
        valid = [a for a in to if a and not redacted(a) and a.lower() not in excluded]
        if len(valid) == 1 and len(to) == 1:
            return valid[0], "the original's To"
        if len(to) > 1:
            return None, f"the original's To names {len(to)} addresses"
    return None, "no recipient named"


def _addresses(headers: Message, name: str) -> list[tuple[str, str]]:
    values = list(iter_headers(headers, name))
    if not values:
        return []
    try:
        return [(d, a) for d, a in email.utils.getaddresses(values) if a]
    except Exception:  # getaddresses on hostile input: no address rather than a traceback
        return []

"""Bulk or transactional? Decides whether a message needs an unsubscribe.

In order, the first rule that applies decides:

1. the sender stream: a login or sender address assigned the stream `bulk` or
   `transactional` (like the message streams of the big ESPs) is believed;
2. `Precedence: bulk | list | junk` marks bulk;
3. a `List-Id` header marks bulk (RFC 2919: mailing-list mail);
4. at least the plan's `bulk_recipients` recipients is bulk;
5. content (its fingerprint) that went to at least the plan's
   `bulk_fingerprint_recipients` recipients within the plan's window is bulk;

otherwise the message is transactional and gets no unsubscribe header.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from aupmilter.policy.headers import HeaderField
from aupmilter.policy.plans import UnsubscribePlan

BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})
_WORD = re.compile(r"[A-Za-z-]+")


class MailClass(StrEnum):
    BULK = "bulk"
    TRANSACTIONAL = "transactional"


@dataclass(frozen=True, slots=True)
class Classification:
    mail_class: MailClass
    reason: str

    @property
    def bulk(self) -> bool:
        return self.mail_class is MailClass.BULK


def header_values(headers: Sequence[HeaderField], name: str) -> list[str]:
    """The values of every `name` field, in order, leading white space kept."""
    wanted = name.lower()
    return [field.value for field in headers if field.key == wanted]


def classify(
    stream: str | None,
    headers: Sequence[HeaderField],
    recipient_count: int,
    fingerprint_recipients: int | None,
    plan: UnsubscribePlan,
) -> Classification:
    """`fingerprint_recipients`: recipients this content reached in the plan's window (None:
    not counted)."""
    if stream == MailClass.BULK:
        return Classification(MailClass.BULK, "sender stream is bulk")
    if stream == MailClass.TRANSACTIONAL:
        return Classification(MailClass.TRANSACTIONAL, "sender stream is transactional")
    for value in header_values(headers, "Precedence"):
        match = _WORD.match(value.strip())
        word = match.group(0).lower() if match else ""
        if word in BULK_PRECEDENCE:
            return Classification(MailClass.BULK, f"Precedence: {word}")
    if header_values(headers, "List-Id"):
        return Classification(MailClass.BULK, "has a List-Id header")
    if plan.bulk_recipients is not None and recipient_count >= plan.bulk_recipients:
        return Classification(
            MailClass.BULK,
            f"{recipient_count} recipients (plan's bulk_recipients is {plan.bulk_recipients})",
        )
    threshold = plan.bulk_fingerprint_recipients
    reached = fingerprint_recipients or 0
    if threshold is not None and reached >= threshold:
        return Classification(
            MailClass.BULK,
            f"same content went to {reached} recipients within"
            f" {plan.bulk_fingerprint_window} s (plan's threshold {threshold})",
        )
    return Classification(MailClass.TRANSACTIONAL, "no sign of bulk mail")

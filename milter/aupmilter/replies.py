"""Every SMTP reply the milter gives, as named constants.

Each reply carries its basic code, the RFC 3463 enhanced status code and a text
that tells the sender what to do next. Texts are passed to libmilter's
smfi_setreply, which treats ``%`` as a format character: no text may hold an
unescaped ``%`` (checked by a unit test over this table).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    code: str
    status: str
    text: str

    def __post_init__(self) -> None:
        if len(self.code) != 3 or not self.code.isdigit() or self.code[0] not in "45":
            raise ValueError(f"reply code must be 4xx or 5xx, got {self.code!r}")
        if not self.status.startswith(self.code[0] + "."):
            raise ValueError(f"enhanced status {self.status!r} does not match {self.code}")

    @property
    def is_temporary(self) -> bool:
        return self.code.startswith("4")

    def with_text(self, text: str) -> Reply:
        """Same codes, a text made for one case (e.g. naming the tenant)."""
        return Reply(self.code, self.status, text)

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"


STORE_UNAVAILABLE = Reply(
    "451",
    "4.3.0",
    "Policy store temporarily unavailable; please try again later",
)
SHUTTING_DOWN = Reply(
    "421",
    "4.3.2",
    "Policy service is restarting; please try again in a minute",
)
INTERNAL_ERROR = Reply(
    "451",
    "4.3.0",
    "Temporary local problem in the policy service; please try again later",
)
UNKNOWN_SENDER = Reply(
    "550",
    "5.7.1",
    "Sender is not authorized to send through this relay; "
    "authenticate with your account or contact the relay's administrator",
)
ACCOUNT_TERMINATED = Reply(
    "550",
    "5.7.1",
    "Sending account is terminated; this relay no longer accepts its mail",
)
ACCOUNT_MISCONFIGURED = Reply(
    "451",
    "4.7.0",
    "Sending account is not fully configured on this relay; "
    "please try again later or contact the relay's administrator",
)
# --- unsubscribe and suppression --------------------------------------------------
UNSUBSCRIBE_NONCOMPLIANT = Reply(
    "550",
    "5.7.1",
    "Bulk mail needs a working one-click unsubscribe: exactly one List-Unsubscribe header "
    "with one https URI and List-Unsubscribe-Post: List-Unsubscribe=One-Click (RFC 8058); "
    "fix or remove these headers and send again",
)
RECIPIENTS_UNSUBSCRIBED = Reply(
    "550",
    "5.7.1",
    "Recipient(s) have unsubscribed from this sender's mail; remove them from your list",
)
"""Texts name the tenant: use `unsubscribed_reply(tenant)`."""
RECIPIENT_UNSUBSCRIBED = Reply(
    "550",
    "5.7.1",
    "Recipient has unsubscribed from this sender's mail; remove it from your list",
)
BULK_ONE_RECIPIENT = Reply(
    "452",
    "4.5.3",
    "Bulk mail on this plan takes one recipient per message, so that each gets its own "
    "one-click unsubscribe; send to the other recipients in separate messages",
)

ALL_REPLIES: tuple[Reply, ...] = (
    STORE_UNAVAILABLE,
    SHUTTING_DOWN,
    INTERNAL_ERROR,
    UNKNOWN_SENDER,
    ACCOUNT_TERMINATED,
    ACCOUNT_MISCONFIGURED,
    UNSUBSCRIBE_NONCOMPLIANT,
    RECIPIENTS_UNSUBSCRIBED,
    RECIPIENT_UNSUBSCRIBED,
    BULK_ONE_RECIPIENT,
)


def unsubscribed_reply(tenant: str, single: bool = False) -> Reply:
    """550 5.7.1 naming the tenant whose list the recipient(s) left."""
    if single:
        return RECIPIENT_UNSUBSCRIBED.with_text(
            f"Recipient has unsubscribed from {tenant}'s mail; remove it from your list"
        )
    return RECIPIENTS_UNSUBSCRIBED.with_text(
        f"Recipient(s) have unsubscribed from {tenant}'s mail; remove them from your list"
    )

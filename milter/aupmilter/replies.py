"""Every SMTP reply the milter gives, as named constants.

Each reply carries its basic code, the RFC 3463 enhanced status code and a text
that tells the sender what to do next. Texts are passed to libmilter's
smfi_setreply, which treats ``%`` as a format character: no text may hold an
unescaped ``%`` (every `Reply` checks its own text when it is made).

`safe_text` is the one cleaner for text that reaches a reply, a quarantine
reason or an audit line from outside (the sender's headers, logins, the
operators' free text): printable ASCII, no ``%``, one bounded line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_TEXT_LENGTH = 400
"""SMTP reply lines are limited to 512 octets (RFC 5321 4.5.3.1.5) with code and status."""
_UNSAFE = re.compile(r"[^\x20-\x7e]|%")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_text(text: str, limit: int = MAX_TEXT_LENGTH, *, control: str = "?") -> str:
    """Printable ASCII without ``%``, stripped, at most ``limit`` characters.

    ``%`` is libmilter's format character and SMTP reply text is ASCII, so
    both become ``?``; control characters (line breaks, tabs, NUL) become
    ``control``, which is where a caller that keeps words apart passes ``" "``.
    A text cut to ``limit`` ends in ``...`` so the cut shows.
    """
    safe = _UNSAFE.sub(lambda m: control if _CONTROL.match(m.group()) else "?", text).strip()
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."


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
        bare = self.text.replace("%%", "")
        if not self.text or len(self.text) > MAX_TEXT_LENGTH or _UNSAFE.search(bare):
            raise ValueError(
                f"reply text must be 1-{MAX_TEXT_LENGTH} characters of printable ASCII"
                f" with every % doubled, got {self.text!r}"
            )

    @property
    def is_temporary(self) -> bool:
        return self.code.startswith("4")

    def with_text(self, text: str) -> Reply:
        """Same codes, a text made for one case (e.g. naming the tenant or a window).

        The text may carry names that came from the client (logins, addresses):
        it goes through `safe_text`, so it cannot break the reply line.
        """
        return Reply(self.code, self.status, safe_text(text))

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
RECIPIENT_UNSUBSCRIBED = Reply(
    "550",
    "5.7.1",
    "Recipient has unsubscribed from this sender's mail; remove it from your list",
)
RECIPIENTS_LAPSED = Reply(
    "550",
    "5.7.1",
    "The consent of every recipient has lapsed or they have unsubscribed; re-confirm their "
    "consent and have it imported into the relay's consent ledger before mailing them again",
)
NEW_RECIPIENTS = Reply(
    "550",
    "5.7.1",
    "Too many recipients of this bulk message never got mail from your account; have your "
    "consent records imported into the relay's consent ledger, or send to fewer new "
    "addresses per message",
)
BULK_ONE_RECIPIENT = Reply(
    "452",
    "4.5.3",
    "Bulk mail on this plan takes one recipient per message, so that each gets its own "
    "one-click unsubscribe; send to the other recipients in separate messages",
)

TOO_MANY_RECIPIENTS = Reply(
    "452",
    "4.5.3",
    "Too many recipients for one message on this account; "
    "send to the remaining recipients in another transaction",
)
WINDOW_FULL = Reply(
    "450",
    "4.7.1",
    "Sending rate limit reached for this account; please try again later",
)
WINDOW_TAKEN = Reply(
    "451",
    "4.7.1",
    "Sending rate limit reached by concurrent messages of this account; please try again later",
)
RECIPIENTS_UNSUBSCRIBED = Reply(
    "550",
    "5.7.1",
    "All recipients have unsubscribed from this sender's mail; do not send to them again",
)


def too_many_recipients(cap: int) -> Reply:
    return TOO_MANY_RECIPIENTS.with_text(
        f"Too many recipients: this account may address at most {cap} recipients per message;"
        " send to the remaining recipients in another transaction"
    )


def window_full(window: str, retry_after: int) -> Reply:
    return WINDOW_FULL.with_text(
        f"Rate limit reached: {window}; room again in {retry_after} seconds, retry then"
    )


def window_taken(window: str, retry_after: int) -> Reply:
    return WINDOW_TAKEN.with_text(
        f"Rate limit reached by concurrent messages: {window};"
        f" room again in {retry_after} seconds, retry then"
    )


def recipients_unsubscribed(tenant: str) -> Reply:
    return RECIPIENTS_UNSUBSCRIBED.with_text(
        f"All recipients have unsubscribed from {tenant}'s mail; do not send to them again"
    )


def recipients_lapsed(tenant: str, lapse_days: int) -> Reply:
    """550 5.7.1 at end of message: no recipient left after suppression and consent lapse."""
    return RECIPIENTS_LAPSED.with_text(
        f"The consent of every recipient has lapsed (no consent or bulk mail from {tenant}"
        f" within {lapse_days} days) or they have unsubscribed; re-confirm their consent and"
        " have it imported into the relay's consent ledger (aup-milter consent import)"
        " before mailing them again"
    )


def new_recipients(new: int, recipients: int) -> Reply:
    """550 5.7.1 at end of message: the share of never-mailed bulk recipients is too high."""
    return NEW_RECIPIENTS.with_text(
        f"{new} of the {recipients} recipients of this bulk message never got mail from your"
        " account (a bought list looks like that); have your consent records imported into"
        " the relay's consent ledger (aup-milter consent import), or send to fewer new"
        " addresses per message"
    )


# --- message checks: each is used with the exact fault in front of its text ---

MALFORMED_HEADER = Reply(
    "550",
    "5.6.0",
    "Message header does not follow RFC 5322; correct the sending software and send it again",
)
FOREIGN_DOMAIN = Reply(
    "553",
    "5.7.1",
    "Sender addresses must use a domain registered to your account; "
    "send from one of your domains or ask the relay's administrator to add this one",
)
MISALIGNED_SENDER = Reply(
    "553",
    "5.7.1",
    "The From domain and the envelope sender (Return-Path) domain must match; "
    "send with a MAIL FROM address in the same domain as From",
)
FOREIGN_REPLY_DOMAIN = Reply(
    "553",
    "5.7.1",
    "Reply-To and Sender must use your account's domains or domains allowed for it; "
    "change the address or ask the relay's administrator to allow the domain",
)
NULL_SENDER_NOT_REPORT = Reply(
    "553",
    "5.7.1",
    "The empty envelope sender <> is only for delivery status and other report messages "
    "(multipart/report); send this message with your own address in MAIL FROM",
)
SENDER_DOMAIN_UNROUTABLE = Reply(
    "550",
    "5.1.8",
    "The envelope sender domain cannot receive bounces: it has no MX or address record; "
    "publish one or send from a domain that receives mail",
)
SENDER_DOMAIN_NULL_MX = Reply(
    "550",
    "5.7.27",
    "The envelope sender domain publishes a null MX (RFC 7505) and cannot receive bounces; "
    "send from a domain that receives mail",
)
DNS_TEMPORARY_FAILURE = Reply(
    "451",
    "4.4.3",
    "A DNS lookup for this message failed temporarily; please try again later",
)
DKIM_FAILED = Reply(
    "550",
    "5.7.1",
    "A DKIM signature of your domain does not verify; check the public key in DNS and "
    "that nothing changes the signed headers or body after signing",
)
SPF_NOT_AUTHORIZED = Reply(
    "550",
    "5.7.23",
    "The SPF record of your envelope sender domain does not authorize this relay; "
    "add the relay's addresses (or its include) to the record",
)
MISLEADING_SUBJECT = Reply(
    "550",
    "5.7.1",
    "The subject line is misleading; change it and send the message again",
)
MESSAGE_TOO_LARGE = Reply(
    "552",
    "5.3.4",
    "Message is larger than this relay accepts; send a smaller message",
)
SPOOL_UNAVAILABLE = Reply(
    "452",
    "4.3.1",
    "The relay cannot store the message right now; please try again later",
)

# --- the sender-identity footer of bulk mail (policy.footer) ------------------------
FOOTER_MISSING = Reply(
    "550",
    "5.7.1",
    "Bulk mail must show your postal address in every text part; "
    "add a footer with the address registered for your account and send again",
)
FOOTER_NO_IDENTITY = Reply(
    "451",
    "4.7.0",
    "Your account has no sender identity (name, postal address, contact) for the footer "
    "bulk mail must carry; ask the relay's operators to register it",
)
FOOTER_MALFORMED_MIME = Reply(
    "550",
    "5.6.0",
    "The MIME structure of the message cannot be read; fix it and send the message again",
)
FOOTER_NO_TEXT_PART = Reply(
    "550",
    "5.7.1",
    "Bulk mail needs a text/plain or text/html part showing your postal address; "
    "add one and send again",
)
FOOTER_PART_TOO_LARGE = Reply(
    "552",
    "5.3.4",
    "A text part is larger than this relay reads for the sender footer; send a smaller message",
)

# --- domain onboarding (policy.onboarding) -------------------------------------------
DOMAIN_UNVERIFIED = Reply(
    "550",
    "5.7.1",
    "Bulk mail needs a sender domain verified on this relay (ownership, SPF, DKIM, DMARC, "
    "registration); fix what fails, then run or ask the relay's operator to run "
    "aup-milter tenant verify-domain",
)
DOMAIN_VERIFICATION_UNKNOWN = Reply(
    "451",
    "4.7.0",
    "The sender domain's verification could not complete (a DNS or RDAP lookup failed); "
    "please try again later, or ask the relay's operator to run aup-milter tenant verify-domain",
)

ALL_REPLIES: tuple[Reply, ...] = (
    STORE_UNAVAILABLE,
    SHUTTING_DOWN,
    INTERNAL_ERROR,
    UNKNOWN_SENDER,
    ACCOUNT_TERMINATED,
    ACCOUNT_MISCONFIGURED,
    TOO_MANY_RECIPIENTS,
    WINDOW_FULL,
    WINDOW_TAKEN,
    RECIPIENTS_UNSUBSCRIBED,
    MALFORMED_HEADER,
    FOREIGN_DOMAIN,
    MISALIGNED_SENDER,
    FOREIGN_REPLY_DOMAIN,
    NULL_SENDER_NOT_REPORT,
    SENDER_DOMAIN_UNROUTABLE,
    SENDER_DOMAIN_NULL_MX,
    DNS_TEMPORARY_FAILURE,
    DKIM_FAILED,
    SPF_NOT_AUTHORIZED,
    MISLEADING_SUBJECT,
    MESSAGE_TOO_LARGE,
    SPOOL_UNAVAILABLE,
    UNSUBSCRIBE_NONCOMPLIANT,
    RECIPIENT_UNSUBSCRIBED,
    BULK_ONE_RECIPIENT,
    RECIPIENTS_LAPSED,
    NEW_RECIPIENTS,
    FOOTER_MISSING,
    FOOTER_NO_IDENTITY,
    FOOTER_MALFORMED_MIME,
    FOOTER_NO_TEXT_PART,
    FOOTER_PART_TOO_LARGE,
    DOMAIN_UNVERIFIED,
    DOMAIN_VERIFICATION_UNKNOWN,
)


def recipient_unsubscribed(tenant: str) -> Reply:
    """550 5.7.1 at RCPT (suppression_check = "rcpt"), naming the tenant."""
    return RECIPIENT_UNSUBSCRIBED.with_text(
        f"Recipient has unsubscribed from {tenant}'s mail; remove it from your list"
    )


def domain_unverified(domain: str, tenant: str, detail: str) -> Reply:
    """550 5.7.1 for bulk mail from a domain not verified for good: what fails, and the command."""
    return DOMAIN_UNVERIFIED.with_text(
        f"Bulk mail from {domain} needs a verified sender domain on this relay, but {detail};"
        f" fix it, then run (or ask the relay's operator to run)"
        f" aup-milter tenant verify-domain {tenant} {domain}"
    )


def domain_verification_unknown(domain: str, tenant: str, detail: str) -> Reply:
    """451 4.7.0: the recorded verification failed only by lookups that could not answer."""
    return DOMAIN_VERIFICATION_UNKNOWN.with_text(
        f"The verification of {domain} is incomplete: {detail}; please try again later"
        f" (the relay's operator runs aup-milter tenant verify-domain {tenant} {domain})"
    )

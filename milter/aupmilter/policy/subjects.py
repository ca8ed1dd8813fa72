"""Misleading subject lines.

- Bulk mail whose subject pretends to answer or forward something
  (`Re:`, `Fwd:` and their localized forms) while the message has neither
  `In-Reply-To` nor `References`: a common trick to look like a conversation.
- Per-plan forbidden subject patterns (regular expressions, `[plan.NAME.checks]
  forbidden_subjects`).

The subject is judged as a reader sees it: RFC 2047 encoded words decoded,
leading list tags such as `[news]` skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.errors import HeaderParseError
from email.header import decode_header, make_header

from aupmilter import replies
from aupmilter.policy.findings import Check, Finding, PlanChecks, quoted
from aupmilter.policy.headers import HeaderBlock

REPLY_PREFIXES: tuple[str, ...] = (
    "re",  # English, and most languages' reply
    "fw",
    "fwd",  # forward
    "aw",  # German: Antwort
    "wg",  # German: Weitergeleitet
    "sv",  # Swedish, Danish, Norwegian: Svar
    "vs",  # Norwegian, Danish: Videresendt
    "vb",  # Danish: Videresendt (older clients)
    "vl",  # Finnish: Vastaus
    "ed",  # Finnish: Edelleen
    "tr",  # French: Transfert
    "réf",  # French: Référence (Outlook)
    "rif",  # Italian: Riferimento
    "i",  # Italian: Inoltrato
    "r",  # Italian: Risposta
    "antw",  # Dutch: Antwoord
    "doorst",  # Dutch: Doorsturen
    "rv",  # Spanish: Reenviado
    "res",  # Portuguese: Resposta
    "enc",  # Portuguese: Encaminhado
    "odp",  # Polish: Odpowiedź
    "pd",  # Polish: Przekazanie dalej
    "ynt",  # Turkish: Yanit
    "ilt",  # Turkish: İlet
    "tl",  # Vietnamese: Trả lời
    "přep",  # Czech: Přeposlat
    "odg",  # Croatian, Serbian: Odgovor
    "vá",  # Hungarian: Válasz
    "továbbítás",  # Hungarian
    "ответ",  # Russian: reply
    "отв",  # Russian: reply, abbreviated
    "пер",  # Russian: Переслать
    "回复",  # Chinese (simplified): reply
    "回覆",  # Chinese (traditional): reply
    "答复",
    "转发",  # Chinese (simplified): forward
    "轉寄",  # Chinese (traditional): forward
    "返信",  # Japanese: reply
    "転送",  # Japanese: forward
    "답장",  # Korean: reply
    "전달",  # Korean: forward
)
_WORDS = "|".join(re.escape(p) for p in sorted(REPLY_PREFIXES, key=len, reverse=True))
FULLWIDTH_COLON = "\uff1a"
"""CJK clients write the marker with a full-width colon."""
_PREFIX = re.compile(
    r"^(?:\s*\[[^\]]{0,80}\])*\s*"  # list tags, e.g. "[news] "
    rf"(?P<word>{_WORDS})"
    r"\s*(?:\[\d{1,4}\]|\^\d{1,4}|\(\d{1,4}\))?\s*[:" + FULLWIDTH_COLON + "]",
    re.IGNORECASE,
)
BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})


def decoded_subject(block: HeaderBlock) -> str | None:
    """The Subject as a reader sees it; None when there is none."""
    text = block.text("subject")
    if text is None:
        return None
    try:
        return str(make_header(decode_header(text)))
    except (ValueError, LookupError, UnicodeError, HeaderParseError):
        # Undecodable encoded words (HeaderParseError: base64 that is not, found by
        # make fuzz; it would have been the glue's internal-error 451): judge the raw text.
        return text


def bulk_by_headers(block: HeaderBlock) -> bool:
    """Mailing-list markers: `Precedence: bulk|list|junk` or a `List-Id`."""
    precedence = (block.text("precedence") or "").strip().lower()
    return precedence in BULK_PRECEDENCE or block.has("list-id")


def reply_prefix(subject: str) -> str | None:
    """The reply/forward marker the subject starts with (e.g. `AW`), or None."""
    match = _PREFIX.match(subject)
    return match.group("word") if match else None


def check_subject(block: HeaderBlock, *, bulk: bool, plan: PlanChecks) -> list[Finding]:
    subject = decoded_subject(block)
    if subject is None:
        return []
    return [*_fake_reply(block, subject, bulk), *_forbidden(subject, plan)]


def _fake_reply(block: HeaderBlock, subject: str, bulk: bool) -> Iterator[Finding]:
    if not bulk or block.has("in-reply-to") or block.has("references"):
        return
    marker = reply_prefix(subject)
    if marker is not None:
        yield Finding(
            Check.REPLY_PREFIX,
            replies.MISLEADING_SUBJECT,
            f"bulk mail with subject {quoted(subject)} poses as a reply or forward "
            f"('{marker}:') but has no In-Reply-To or References; remove the prefix",
        )


def _forbidden(subject: str, plan: PlanChecks) -> Iterator[Finding]:
    for pattern in plan.forbidden_subjects:
        if pattern.search(subject):
            yield Finding(
                Check.FORBIDDEN_SUBJECT,
                replies.MISLEADING_SUBJECT,
                f"subject {quoted(subject)} matches the forbidden pattern "
                f"{quoted(pattern.pattern, 40)} of your plan",
            )
            return

"""Mail that answers a message without being a report about it: change nothing.

Two kinds, told apart by different evidence because they are checked at
different points of the classification:

- challenge-response ("confirm you are a person before I accept your mail"):
  checked before the DSN parser, because some are built like a DSN to get
  through. Their own headers (TMDA, BoxTrapper, Spam Arrest, ...) or their
  words in the Subject or the report's own text decide;
- auto-replies (vacation, out of office, autoresponders): checked after the
  DSN parser and before the heuristics for plain-text bounces. Not by
  `Auto-Submitted: auto-replied` alone: Postfix and Exim put it on their
  bounces too (RFC 3834 allows it), so it needs a reply marker beside it.

Both look at the report's own header and text only, never at a quoted
original, which may say anything.
"""

from __future__ import annotations

import re
from email.message import Message

from aupmilter.reports.mime import iter_headers
from aupmilter.reports.mime import subject as decoded_subject

CHALLENGE_HEADERS = (
    "X-Challenge", "X-Challenge-Response", "X-Boxtrapper", "X-TMDA-Confirm", "X-TMDA-Fingerprint",
    "X-Spam-Arrest", "X-SpamArrest-Challenge", "X-Bluebottle-Request", "X-Whitelist-Request",
    "X-ChoiceMail-Registration-Request", "X-Sender-Verification",
)  # fmt: skip
_CHALLENGE_WORDS = re.compile(
    r"\b(challenge[- ]response|sender verification|verify (that )?you are (a )?(real|human|person)"
    r"|confirm (that )?you are (a )?(real|human|person)|prove (that )?you are (a )?human"
    r"|add (you|yourself) to (my|the) (whitelist|approved senders)|whitelist request"
    r"|awaiting (your )?(confirmation|verification)|spam ?arrest|boxtrapper|tmda"
    r"|(please )?(confirm|verify) (your|the) (message|e-?mail|sender address) (by|before|to)"
    r"|one-time verification|only accepts? (e-?mail|mail|messages) from (approved|verified))",
    re.I,
)
_REPLY_HEADERS = (
    "X-Autoreply", "X-Autorespond", "X-Autoresponder", "X-Vacation", "X-Mail-Autoreply"
)  # fmt: skip
_REPLY_PRECEDENCE = re.compile(r"^\s*auto[_-]?reply\b", re.I)
_REPLY_SUBJECT = re.compile(
    r"^\s*(auto(matic|matische)?[ -]?(reply|response|answer|antwort)\b|auto:|autoreply"
    r"|out of (the )?office|ooo\b|vacation|away from (my|the) (desk|office)"
    r"|abwesenheit|r[ée]ponse automatique|absence|respuesta autom[áa]tica|risposta automatica"
    r"|on (annual )?leave|thank you for (your )?(e-?mail|message|contacting))",
    re.I,
)
_REPLY_WORDS = re.compile(
    r"\b(i am|i'm|i will be) (currently )?(out of (the )?office|on (vacation|holiday|leave)"
    r"|away|travell?ing)\b|\bwith limited access to (my )?e-?mail\b",
    re.I,
)


def challenge_marker(message: Message, own_text: str) -> str | None:
    """Why this is challenge-response mail, or None."""
    for name in CHALLENGE_HEADERS:
        if message.get(name) is not None:
            return f"challenge-response ({name} header)"
    subject = decoded_subject(message)
    for where, text in (("Subject", subject), ("text", own_text)):
        found = _CHALLENGE_WORDS.search(text)
        if found is not None:
            return f"challenge-response ({where}: {found.group(0).strip()!r})"
    return None


def autoreply_marker(message: Message, own_text: str) -> str | None:
    """Why this is an auto-reply (vacation, out of office), or None."""
    for name in _REPLY_HEADERS:
        if message.get(name) is not None:
            return f"auto-reply ({name} header)"
    precedence = next(iter_headers(message, "Precedence"), "")
    if _REPLY_PRECEDENCE.match(precedence):
        return "auto-reply (Precedence: auto_reply)"
    subject = decoded_subject(message)
    if _REPLY_SUBJECT.match(subject):
        return f"auto-reply (Subject {subject.strip()[:60]!r})"
    auto = next(iter_headers(message, "Auto-Submitted"), "").strip().lower()
    found = _REPLY_WORDS.search(own_text[:4096])
    if found is not None and auto.startswith("auto-replied"):
        return f"auto-reply (Auto-Submitted: auto-replied, {found.group(0).strip()!r})"
    if found is not None and message.get("X-Auto-Response-Suppress") is not None:
        return f"auto-reply (Exchange's X-Auto-Response-Suppress, {found.group(0).strip()!r})"
    return None

"""Bounces that are not RFC 3464: Exim, qmail, Yahoo, old Exchange prose, and the like.

Two sources of addresses, both limited to the bounce's own text (before the
quoted original) and its X-Failed-Recipients header, so an address that only
appears inside the returned message is never taken:

- flufl.bounce (Mailman's detectors; Debian 12 ships 4.0 as
  python3-flufl.bounce). `all_failures` returns (temporary, permanent) sets
  of byte addresses from the first detector that finds any; its detectors
  cannot all tell the two apart and report most failures as permanent;
- this module's heuristic: an address followed, before the next address, by
  an SMTP reply or enhanced status code or a failure phrase
  ("user unknown", "does not exist", "mailbox full").

Each address is then judged by the text after it: a 5xx reply or 5.x.x
status is hard, 4xx/4.x.x soft (or delayed when the bounce is a warning:
"delayed", "will be retried"), no code at all falls back on flufl's
temporary/permanent and the bounce's words ("permanent error", mailbox
full). A heuristic address without a code or a phrase naming a missing
mailbox is not taken: a suppression must rest on the bounce saying so.

Only run on mail that looks like a bounce (from MAILER-DAEMON or postmaster,
a null Return-Path, X-Failed-Recipients, or a bounce Subject), so a person's
reply that quotes "550 5.1.1" is not one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import Message

from aupmilter.reports.mime import iter_headers
from aupmilter.reports.model import MAX_ADDRESSES, Kind, mailbox, unique

log = logging.getLogger("aupmilter.reports.bounces")

WINDOW = 600
"""Characters after an address in which its reply code is looked for."""
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_ENHANCED = re.compile(r"(?<![\d.])([245])\.\d{1,3}\.\d{1,3}(?!\.?\d)")
_REPLY = re.compile(r"(?<![\w.:/#-])([45])\d\d(?=[ -][A-Za-z0-9<\[(\"'])")
_MISSING = re.compile(
    r"user unknown|unknown user|no such (user|mailbox|recipient|address)|does ?n[o']t exist"
    r"|couldn'?t be found|could not be found|not found|invalid (recipient|mailbox|address)"
    r"|recipient address rejected|mailbox unavailable|account (has been )?(disabled|deactivated)"
    r"|not a valid (mailbox|recipient|user)|unrouteable address|address rejected"
    r"|(user|mailbox|recipient) (is )?(unknown|not (found|valid|known|available))",
    re.I,
)
_FULL = re.compile(r"mailbox (is )?full|over quota|quota exceeded|exceeded (the )?storage", re.I)
_PERMANENT = re.compile(r"permanent (error|failure)|given up|giving up|won'?t be retried", re.I)
_WARNING = re.compile(
    r"\bdelayed\b|still being retried|will (be )?retr(y|ied)|will (continue to )?(re)?try"
    r"|not yet been delivered|warning only|delivery (status notification )?\(delay\)"
    r"|has not been delivered yet|is being (re)?tried",
    re.I,
)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|returned mail|delivery (status notification|failure|failed|problem)"
    r"|mail delivery (failed|failure|system)|failure notice|non[- ]?delivery|could not be delivered"
    r"|nicht zustellbar|unzustellbar|non remis|delivery has failed|mail system error|bounce",
    re.I,
)
_DAEMON_LOCALS = frozenset(
    {"mailer-daemon", "mailerdaemon", "mail-daemon", "postmaster", "mdaemon", "mail.delivery",
     "maildelivery", "no-reply-bounce"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class TextBounce:
    address: str
    kind: Kind
    evidence: str
    """The code or phrase that decided, and the detector (`flufl.bounce`, `heuristic`)."""


def looks_like_bounce(message: Message) -> bool:
    if message.get("X-Failed-Recipients") is not None:
        return True
    return_path = next(iter_headers(message, "Return-Path"), None)
    if return_path is not None and return_path.strip() in ("<>", ""):
        return True
    for value in iter_headers(message, "From"):
        address = mailbox(_angle(value)) or ""
        if address.rpartition("@")[0].lower() in _DAEMON_LOCALS:
            return True
        if re.search(r"mail delivery (system|subsystem)|postmaster", value, re.I):
            return True
    subject = next(iter_headers(message, "Subject"), "")
    return _BOUNCE_SUBJECT.search(subject) is not None


def text_bounces(
    message: Message, own_text: str, excluded: Iterable[str]
) -> tuple[list[TextBounce], str]:
    """The failed addresses of a non-RFC-3464 bounce, judged; and a note on the detectors."""
    skip = {a.lower() for a in excluded}
    temporary, permanent, note = _flufl(message)
    header_failed = [
        address
        for value in iter_headers(message, "X-Failed-Recipients")
        for raw in value.split(",")
        if (address := mailbox(raw))
    ]
    lower_text = own_text.lower()
    flufl_found = [a for a in unique([*permanent, *temporary]) if a.lower() in lower_text]
    candidates = unique([*header_failed, *flufl_found, *_mentioned(own_text)], excluded=skip)
    candidates = tuple(
        sorted(
            (a for a in candidates if a.split("@")[0].lower() not in _DAEMON_LOCALS),
            key=lambda a: lower_text.find(a.lower()),
        )
    )
    warning = _WARNING.search(next(iter_headers(message, "Subject"), "") + "\n" + own_text)
    permanent_words = _PERMANENT.search(own_text) is not None
    temporary_set = {a.lower() for a in temporary}
    listed = {a.lower() for a in (*header_failed, *flufl_found)}
    found: list[TextBounce] = []
    for address in candidates[:MAX_ADDRESSES]:
        window = _window(own_text, address, candidates)
        judged = _judge(window, warning is not None, permanent_words)
        if judged is None and address.lower() in listed:
            if address.lower() in temporary_set:
                judged = (Kind.DELAYED if warning else Kind.SOFT_BOUNCE, "flufl.bounce: temporary")
            elif warning is not None and not permanent_words:
                judged = (Kind.DELAYED, f"no code; {warning.group(0)!r}")
            else:
                judged = (Kind.HARD_BOUNCE, "no code; reported as permanent")
        if judged is not None:
            source = "flufl.bounce" if address.lower() in listed else "heuristic"
            found.append(TextBounce(address, judged[0], f"{judged[1]} ({source})"))
    return found, note


def _flufl(message: Message) -> tuple[list[str], list[str], str]:
    """flufl.bounce's (temporary, permanent) addresses; a detector's crash is only noted."""
    try:
        from flufl.bounce import all_failures
    except ImportError:  # pragma: no cover - a dependency of the package
        return [], [], "flufl.bounce is not installed"
    try:
        temporary, permanent = all_failures(message)
    except Exception as exc:  # its detectors are heuristics over hostile text
        log.debug("flufl.bounce failed: %r", exc)
        return [], [], f"flufl.bounce failed ({type(exc).__name__})"
    return _decoded(temporary), _decoded(permanent), ""


def _decoded(found: Iterable[bytes | str]) -> list[str]:
    addresses = []
    for raw in found:
        text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
        address = mailbox(text)
        if address:
            addresses.append(address)
    return addresses


def _mentioned(text: str) -> list[str]:
    """Addresses of the bounce's text that a failure code or phrase follows."""
    addresses = [m.group(0) for m in _ADDRESS.finditer(text)]
    normal = [a for a in (mailbox(a.rstrip(".")) for a in addresses) if a]
    keep = []
    for address in unique(normal):
        window = _window(text, address, normal)
        if _ENHANCED.search(window) or _REPLY.search(window) or _MISSING.search(window):
            keep.append(address)
    return keep


def _window(text: str, address: str, others: Sequence[str]) -> str:
    """The text after the address's first mention, up to the next other address or WINDOW."""
    lower = text.lower()
    start = lower.find(address.lower())
    if start < 0:
        return ""
    start += len(address)
    end = min(len(text), start + WINDOW)
    for other in others:
        if other.lower() == address.lower():
            continue
        at = lower.find(other.lower(), start, end)
        if at >= 0:
            end = at
    return text[start:end]


def _judge(window: str, warning: bool, permanent_words: bool) -> tuple[Kind, str] | None:
    codes = [(m.start(), m.group(1), m.group(0)) for m in _ENHANCED.finditer(window)]
    codes += [(m.start(), m.group(1), m.group(0)) for m in _REPLY.finditer(window)]
    codes = [c for c in codes if c[1] != "2"]
    if codes:
        _, digit, text = min(codes)
        if digit == "5":
            return Kind.HARD_BOUNCE, text
        return (Kind.DELAYED if warning and not permanent_words else Kind.SOFT_BOUNCE), text
    if (full := _FULL.search(window)) is not None:
        return Kind.SOFT_BOUNCE, full.group(0)
    if (missing := _MISSING.search(window)) is not None and not warning:
        return Kind.HARD_BOUNCE, missing.group(0)
    return None


def _angle(value: str) -> str:
    found = re.search(r"<([^<>]*)>", value)
    return found.group(1) if found else value

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

import bisect
import copy
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import Message

from aupmilter.reports.mime import iter_headers, subject
from aupmilter.reports.model import MAX_ADDRESSES, Kind, mailbox, unique

log = logging.getLogger("aupmilter.reports.bounces")


class _NoTraceback(logging.Filter):
    """flufl.bounce logs a detector's exception with its traceback before re-raising it.

    `_flufl` catches it and says so in the reason; the log keeps one debug line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is not None:
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


logging.getLogger("flufl.bounce").addFilter(_NoTraceback())

WINDOW = 600
"""Characters after an address in which its reply code is looked for."""
MAX_DETECTOR_CHARS = 256 * 1024
"""The most text handed to flufl.bounce (see `_bounded`)."""
MAX_MENTIONS = 5000
"""Addresses read from one bounce's text: a few per failed recipient, MAX_ADDRESSES of those."""
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
    r"|has not been delivered yet|is being (re)?tried|(delivery )?attempts will continue",
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
    if return_path is not None and _daemon(return_path):
        return True
    for value in iter_headers(message, "From"):
        if _daemon(value):
            return True
        if re.search(r"mail delivery (system|subsystem)|postmaster", value, re.I):
            return True
    return _BOUNCE_SUBJECT.search(subject(message)) is not None


def _daemon(value: str) -> bool:
    """The address is a mail system's own (MAILER-DAEMON, postmaster)."""
    address = mailbox(_angle(value)) or ""
    return address.rpartition("@")[0].lower() in _DAEMON_LOCALS


def text_bounces(
    message: Message, own_text: str, excluded: Iterable[str]
) -> tuple[list[TextBounce], str]:
    """The failed addresses of a non-RFC-3464 bounce, judged; and a note on the detectors."""
    skip = {a.lower() for a in excluded}
    temporary, permanent, note = _flufl(_bounded(message, own_text))
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
    warning = _WARNING.search(subject(message) + "\n" + own_text)
    permanent_words = _PERMANENT.search(own_text) is not None
    temporary_set = {a.lower() for a in temporary}
    listed = {a.lower() for a in (*header_failed, *flufl_found)}
    found: list[TextBounce] = []
    mentions = _mentions(own_text)
    for address in candidates[:MAX_ADDRESSES]:
        window = _window(own_text, address, mentions)
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


def _bounded(message: Message, own_text: str) -> Message:
    """The message, or past MAX_DETECTOR_CHARS its header and own text alone.

    flufl.bounce's detectors read every line of every part, the returned
    original included, several times over: a 10 MiB message takes seconds.
    Real bounces are a few KiB and keep their structure, which some detectors need.
    """
    size = 0
    for part in message.walk():
        payload = part.get_payload()
        size += len(payload) if isinstance(payload, str) else 0
        if size > MAX_DETECTOR_CHARS:
            view = Message()
            for name, value in message.items():
                if name.lower() not in ("content-type", "content-transfer-encoding"):
                    view[name] = str(value)
            view.set_payload(own_text[:MAX_DETECTOR_CHARS])
            return view
    if all(isinstance(value, str) for _, value in message.items()):
        return message
    # An 8-bit header comes back as an email.header.Header, which some detectors call
    # str methods on (and crash, ending the scan): give them text.
    view = copy.copy(message)
    for name in {name for name, value in message.items() if not isinstance(value, str)}:
        values = [str(value) for value in message.get_all(name, [])]
        del view[name]
        for value in values:
            view[name] = value
    return view


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


def _mentions(text: str) -> list[tuple[int, int, str]]:
    """(start, end, lower-case address) of every address in the text, in order, bounded."""
    found = []
    for match in _ADDRESS.finditer(text):
        found.append((match.start(), match.end(), match.group(0).rstrip(".").lower()))
        if len(found) >= MAX_MENTIONS:
            break
    return found


def _mentioned(text: str) -> list[str]:
    """Addresses of the bounce's text that a failure code or phrase follows."""
    mentions = _mentions(text)
    keep: list[str] = []
    for start, _end, lower in mentions:
        address = mailbox(text[start : start + len(lower)])
        if address is None or address.lower() in (k.lower() for k in keep):
            continue
        window = _window(text, address, mentions)
        if any(p.search(window) for p in (_ENHANCED, _REPLY, _MISSING, _FULL)):
            keep.append(address)
            if len(keep) >= MAX_ADDRESSES:
                break
    return keep


def _window(text: str, address: str, mentions: Sequence[tuple[int, int, str]]) -> str:
    """The text after the address's first mention, up to the next other address or WINDOW."""
    lower = address.lower()
    first = next((m for m in mentions if m[2] == lower), None)
    if first is None:
        at = text.lower().find(lower)
        if at < 0:
            return ""
        first = (at, at + len(lower), lower)
    end = min(len(text), first[1] + WINDOW)
    index = bisect.bisect_right(mentions, (first[1],))
    for start, _end, other in mentions[index:]:
        if start >= end:
            break
        if other != lower:
            end = start
            break
    return text[first[1] : end]


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

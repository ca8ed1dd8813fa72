"""One report in, one `Report` out: the classification the intake and `report classify` share.

Order, first match decides:

1. a feedback report (ARF, reports/arf.py): complaint, or not-a-report for
   auth-failure and not-spam;
2. challenge-response mail (reports/autoreply.py), even built like a DSN;
3. a delivery status notification (reports/dsn.py), judged per recipient:
   the kind of the most severe (hard > soft > delayed), only hard failures
   suppressed; only positive recipients (delivered, relayed): not-a-report;
   a bounce without a status part of its own that attaches a whole DSN (a
   gateway forwarding it as message/rfc822) is judged by the attached one;
4. an auto-reply (vacation, out of office);
5. a bounce in words (reports/bounces.py: flufl.bounce and heuristics), also
   what is built like a DSN (report-type=delivery-status) but has no
   recipient block to read;
6. anything else: not-a-report.

Addresses of the report's own header (its From, To, Sender, Reply-To,
Return-Path) and the envelope sender the caller passes are never suppressed:
they are the reporting system and our own tenant, not the recipients the
report is about.

Pure: bytes and a tenant lookup in, a Report out; no file, store or clock.
Hostile input ends as `unparseable` with the bound it broke, never as an
exception (mime.py has the bounds).
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from email.message import Message

from aupmilter.reports import arf, autoreply, bounces, dsn, mime
from aupmilter.reports.model import (
    SEVERITY,
    Attribution,
    Kind,
    Report,
    TenantLookup,
    mailbox,
    no_lookup,
    unique,
)
from aupmilter.reports.tenant import clues_of

log = logging.getLogger("aupmilter.reports")

MAX_REASON = 300
_OWN_HEADERS = ("From", "To", "Cc", "Sender", "Reply-To", "Return-Path")
_TAG = re.compile(r"<[^>]*>")


def classify_bytes(
    raw: bytes, lookup: TenantLookup = no_lookup, report_sender: str | None = None
) -> Report:
    """Classify one message; `report_sender` is its envelope sender when the caller knows it."""
    try:
        message = mime.parse(raw)
        return classify(message, mime.walk(message), lookup, report_sender)
    except mime.Unreadable as exc:
        return Report(Kind.UNPARSEABLE, _line(str(exc)))
    except RecursionError:
        return Report(Kind.UNPARSEABLE, "MIME structure too deep to read")
    except Exception as exc:  # a report must never stop the intake; its text says what broke
        log.debug("classification failed", exc_info=True)
        return Report(Kind.UNPARSEABLE, _line(f"cannot be classified ({type(exc).__name__})"))


def classify(
    message: Message,
    parts: mime.Parts,
    lookup: TenantLookup = no_lookup,
    report_sender: str | None = None,
) -> Report:
    own = _own_addresses(message, report_sender)
    text = _text(parts.leaves)
    own_text = mime.own_text(text)
    if arf.is_feedback_report(message, parts):
        return _complaint(parts, lookup, own)
    marker = autoreply.challenge_marker(message, own_text)
    if marker is not None:
        return Report(Kind.NOT_A_REPORT, _line(marker))
    shaped = dsn.is_dsn(message, parts)
    if shaped:
        report = _delivery_status(parts, lookup, own)
        if report is not None:
            return report
    bounce = shaped or bounces.looks_like_bounce(message)
    if bounce and not dsn.status_parts(parts):
        report = _wrapped(parts, lookup, own)
        if report is not None:
            return report
    marker = autoreply.autoreply_marker(message, own_text)
    if marker is not None:
        return Report(Kind.NOT_A_REPORT, _line(marker))
    if bounce:
        return _text_bounce(message, parts, text, own_text, lookup, own)
    return Report(Kind.NOT_A_REPORT, "no feedback report, delivery status or bounce text")


def _complaint(parts: mime.Parts, lookup: TenantLookup, own: Sequence[str]) -> Report:
    feedback = arf.read_feedback(parts)
    attribution = lookup(clues_of(feedback.originals, feedback.senders))
    tenant, whose = _tenant(attribution)
    label = f"Feedback-Type: {feedback.feedback_type or 'missing'}"
    excluded = [*own, *feedback.senders]
    if not feedback.complaint:
        why = arf.NOT_COMPLAINTS[feedback.feedback_type or ""]
        named = unique(feedback.named, excluded)
        return Report(
            Kind.NOT_A_REPORT, _line(f"{why}: suppresses no one; {whose}"), named, (), tenant,
            feedback.feedback_type,
        )  # fmt: skip
    if feedback.named:
        complainers, source = unique(feedback.named, excluded), "Original-Rcpt-To"
    elif attribution is not None and attribution.recipient:
        complainers, source = unique([attribution.recipient], excluded), "our recipient token"
    elif feedback.original_recipient is not None:
        complainers = unique([feedback.original_recipient], excluded)
        source = feedback.original_recipient_source
    else:
        complainers, source = (), feedback.original_recipient_source
    source = f"complainer from {source}" if complainers else f"complainer unknown ({source})"
    reason = f"ARF complaint ({label}); {source}; {whose}"
    return Report(
        Kind.COMPLAINT, _line(reason), complainers, complainers, tenant, feedback.feedback_type
    )


def _delivery_status(parts: mime.Parts, lookup: TenantLookup, own: Sequence[str]) -> Report | None:
    statuses, senders = dsn.recipient_statuses(parts)
    if not statuses:
        return None
    originals = [mime.original_headers(p) for p in parts.originals]
    tenant, whose = _tenant(lookup(clues_of(originals, senders)))
    excluded = [*own, *senders]
    recipients = unique((s.address for s in statuses if s.address), excluded)
    kinds = [s.kind for s in statuses if s.kind is not None]
    if not kinds:
        actions = ", ".join(sorted({s.action for s in statuses}))
        reason = f"positive DSN ({actions}): nothing failed; {whose}"
        return Report(Kind.NOT_A_REPORT, _line(reason), recipients, (), tenant)
    kind = next(k for k in SEVERITY if k in kinds)
    hard = unique(
        (s.address for s in statuses if s.kind is Kind.HARD_BOUNCE and s.address), excluded
    )
    judged = "; ".join(
        f"{s.address or 'no address'} {s.action} {s.status}".strip() for s in statuses[:5]
    )
    more = f" and {len(statuses) - 5} more" if len(statuses) > 5 else ""
    reason = f"DSN (RFC 3464): {judged}{more}; {whose}"
    soft, delayed = (
        unique((s.address for s in statuses if s.kind is k and s.address), [*excluded, *hard])
        for k in (Kind.SOFT_BOUNCE, Kind.DELAYED)
    )
    return Report(kind, _line(reason), recipients, hard, tenant, soft=soft, delayed=delayed)


def _wrapped(parts: mime.Parts, lookup: TenantLookup, own: Sequence[str]) -> Report | None:
    """A bounce whose DSN is attached whole (message/rfc822), as some gateways forward it.

    Only one level, and only the first attachment that is itself a DSN with
    recipient blocks; its own header's addresses are excluded like the outer's.
    """
    for part in parts.originals:
        inner = part.get_payload()
        if mime.content_type(part) != "message/rfc822" or not isinstance(inner, list) or not inner:
            continue
        wrapped = inner[0]
        if not isinstance(wrapped, Message):
            continue
        inner_parts = mime.walk(wrapped)
        if not dsn.status_parts(inner_parts):
            continue
        report = _delivery_status(inner_parts, lookup, [*own, *_own_addresses(wrapped, None)])
        if report is not None:
            return replace(report, reason=_line(f"attached {report.reason}"))
    return None


def _text_bounce(
    message: Message,
    parts: mime.Parts,
    text: str,
    own_text: str,
    lookup: TenantLookup,
    own: Sequence[str],
) -> Report:
    originals = [mime.original_headers(p) for p in parts.originals]
    inline = mime.inline_original(text)
    if inline is not None:
        originals.append(inline)
    clues = clues_of(originals)
    excluded = [*own, *clues.senders]
    found, note = bounces.text_bounces(message, own_text, excluded)
    tenant, whose = _tenant(lookup(clues))
    if not found:
        why = f"looks like a bounce, but names no failed recipient{'; ' + note if note else ''}"
        return Report(Kind.NOT_A_REPORT, _line(f"{why}; {whose}"), (), (), tenant)
    kind = next(k for k in SEVERITY if any(b.kind is k for b in found))
    recipients = unique(b.address for b in found)
    hard = unique(b.address for b in found if b.kind is Kind.HARD_BOUNCE)
    judged = "; ".join(f"{b.address} {b.kind} {b.evidence}" for b in found[:5])
    reason = f"bounce without a status part: {judged}; {whose}"
    soft, delayed = (
        unique((b.address for b in found if b.kind is k), hard)
        for k in (Kind.SOFT_BOUNCE, Kind.DELAYED)
    )
    return Report(kind, _line(reason), recipients, hard, tenant, soft=soft, delayed=delayed)


def _tenant(attribution: Attribution | None) -> tuple[str | None, str]:
    if attribution is None:
        return None, "tenant unknown"
    return attribution.tenant, f"tenant {attribution.tenant} from {attribution.evidence}"


def _own_addresses(message: Message, report_sender: str | None) -> list[str]:
    found = [report_sender] if report_sender else []
    for name in _OWN_HEADERS:
        for value in mime.iter_headers(message, name):
            found.extend(re.findall(r"[^\s<>,;:\"()]+@[^\s<>,;:\"()]+", value))
    return [a for a in (mailbox(raw) for raw in found) if a]


def _text(leaves: Iterable[Message]) -> str:
    """The report's own readable text: text/plain as is, text/html without its tags."""
    chunks = []
    total = 0
    for part in leaves:
        kind = mime.content_type(part)
        if not kind.startswith("text/") or kind in mime.ORIGINAL_TYPES:
            continue
        chunk = mime.text_of(part)
        if kind == "text/html":
            chunk = html.unescape(_TAG.sub(" ", chunk))
        chunks.append(chunk)
        total += len(chunk)
        if total >= mime.MAX_TEXT_CHARS:
            break
    return "\n".join(chunks)[: mime.MAX_TEXT_CHARS]


def _line(text: str) -> str:
    """One printable line of at most MAX_REASON characters."""
    flat = " ".join(text.split())
    flat = "".join(c if c.isprintable() else "?" for c in flat)
    return flat if len(flat) <= MAX_REASON else flat[: MAX_REASON - 3] + "..."

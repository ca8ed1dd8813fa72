"""The sender-identity footer of bulk mail: the plan's mode, the tenant's identity, the decision.

The AUPs ("your valid physical address in any commercial / mailing list
email", "a footer that includes the sender's identity and contact
information") and CAN-SPAM ask that bulk mail show who sent it and where
that sender can be reached by post; Gmail and Yahoo want a visible
unsubscribe link in the body besides the header. Per plan:

- `off`: nothing is looked at (and the body is not collected for it);
- `check`: the tenant's registered postal address must appear in every text
  part a reader sees, else the message is refused (550 5.7.1) saying which
  part lacks it;
- `insert`: a part that lacks it gets the footer (identity, address,
  contact, unsubscribe link) appended, MIME-safe (`message.footer`).

The address is compared word by word (`address_words`): case, white space,
line breaks and punctuation do not matter, HTML tags and entities are read
as a browser shows them. What the MIME walk found (`FooterScan`, made by
`message.footer.scan`) is judged here (`judge`) without I/O; the bound on
the work is the plan's (`max_part_bytes`, `max_depth`, `max_parts`).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from enum import StrEnum
from html.parser import HTMLParser

from aupmilter import replies
from aupmilter.policy.verdict import Verdict

_WORD = re.compile(r"\w+")
MAX_IDENTITY_LINES = 8
MAX_IDENTITY_TEXT = 200


class FooterMode(StrEnum):
    OFF = "off"
    CHECK = "check"
    INSERT = "insert"


class Oversize(StrEnum):
    CHECK = "check"
    """A text part over max_part_bytes is read and checked, never rewritten."""
    REFUSE = "refuse"
    """A text part over max_part_bytes refuses the message unread (the cheaper bound)."""


@dataclass(frozen=True, slots=True)
class FooterPlan:
    """`[plan.NAME.footer]`."""

    mode: FooterMode = FooterMode.OFF
    max_part_bytes: int = 1 << 20
    """Encoded size of one text part beyond which it is not rewritten."""
    oversize: Oversize = Oversize.CHECK
    max_depth: int = 8
    """Multipart nesting levels read; deeper is refused as malformed."""
    max_parts: int = 100
    """MIME parts read in one message; more is refused as malformed."""

    @property
    def enabled(self) -> bool:
        return self.mode is not FooterMode.OFF


@dataclass(frozen=True, slots=True)
class TenantIdentity:
    """Who sends: the tenant's legal name, postal address (lines) and contact (URL or mailbox)."""

    name: str = ""
    address: tuple[str, ...] = ()
    contact: str = ""

    @property
    def missing(self) -> tuple[str, ...]:
        """The fields not set, by their CLI names."""
        names = (("name", self.name), ("address", self.address), ("contact", self.contact))
        return tuple(label for label, value in names if not value)

    @property
    def address_text(self) -> str:
        return ", ".join(self.address)


def address_words(text: str) -> str:
    """The words of `text`, case-folded, one space apart, framed by spaces.

    Both the registered address and a part's text go through this, so
    "1 Main St.,\\n Springfield" matches "1 MAIN ST SPRINGFIELD".
    """
    words = _WORD.findall(text.casefold())
    return " " + " ".join(words) + " " if words else ""


class _VisibleText(HTMLParser):
    """The text a browser shows: tags dropped, entities decoded, script and style skipped."""

    _HIDDEN = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._HIDDEN:
            self._hidden += 1
        self.chunks.append(" ")  # <br>, <p>, <td>: a word boundary

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN and self._hidden:
            self._hidden -= 1
        self.chunks.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.chunks.append(data)


_TAG = re.compile(r"<[^>]*>")


def visible_text(text: str, is_html: bool) -> str:
    """The text a reader sees; HTML the standard parser gives up on is read tag-stripped."""
    if not is_html:
        return text
    parser = _VisibleText()
    try:
        parser.feed(text)
        parser.close()
    except AssertionError:  # html.parser's answer to some broken markup (`<![x`)
        return html.unescape(_TAG.sub(" ", text))
    return "".join(parser.chunks)


def shows_address(text: str, is_html: bool, identity: TenantIdentity) -> bool:
    wanted = address_words(identity.address_text)
    return bool(wanted) and wanted in address_words(visible_text(text, is_html))


@dataclass(frozen=True, slots=True)
class PartFinding:
    """One text part a reader sees, as the MIME walk found it."""

    index: int
    """Its place among the text parts, from 0, in the message's order."""
    content_type: str
    size: int
    """Encoded bytes."""
    has_address: bool | None
    """None: not read (over the size bound, with oversize = refuse)."""
    oversize: bool = False
    unrewritable: str | None = None
    """Why the relay cannot append to this part (an ASCII-incompatible charset, ...)."""


@dataclass(frozen=True, slots=True)
class FooterScan:
    parts: tuple[PartFinding, ...] = ()
    malformed: str | None = None
    """Why the MIME structure cannot be read; nothing else is judged then."""


@dataclass(frozen=True, slots=True)
class FooterJudgement:
    verdict: Verdict | None = None
    """A refusal, or None."""
    rewrite: tuple[int, ...] = ()
    """Indexes of the text parts to append the footer to."""
    outcome: str = "present"
    """For the verdict log line: present, inserted, missing, oversize, malformed, ..."""
    log: dict[str, object] = field(default_factory=dict)


def judge_identity(identity: TenantIdentity | None, tenant: str) -> Verdict | None:
    """451 when the tenant's identity record is incomplete: operators must register it."""
    missing = identity.missing if identity is not None else ("name", "address", "contact")
    if not missing:
        return None
    reply = replies.FOOTER_NO_IDENTITY.with_text(
        f"Account {tenant} has no sender identity ({', '.join(missing)} missing) for the"
        " footer bulk mail must carry; ask the relay's operators to register it"
    )
    reason = f"tenant {tenant} has no identity record ({', '.join(missing)} missing)"
    return Verdict.refuse(reply, reason, tenant, rule="footer-identity")


def judge(
    plan: FooterPlan, identity: TenantIdentity, scan: FooterScan, tenant: str
) -> FooterJudgement:
    """What the footer rule makes of the scanned message; every refusal says how to fix it."""
    if scan.malformed is not None:
        reply = replies.FOOTER_MALFORMED_MIME.with_text(
            f"The MIME structure of the message cannot be read ({scan.malformed});"
            " fix the message's MIME structure and send it again"
        )
        reason = f"malformed MIME: {scan.malformed}"
        return _refused(reply, reason, tenant, "malformed", {"footer_problem": scan.malformed})
    if not scan.parts:
        reason = "no text/plain or text/html part a reader sees"
        return _refused(replies.FOOTER_NO_TEXT_PART, reason, tenant, "no-text-part")
    unread = [p for p in scan.parts if p.has_address is None]
    if unread:
        part = unread[0]
        reply = replies.FOOTER_PART_TOO_LARGE.with_text(
            f"A {part.content_type} part of {part.size} bytes is larger than this relay reads"
            f" for the sender footer ({plan.max_part_bytes}); send a smaller message"
        )
        reason = f"{part.content_type} part of {part.size} bytes over max_part_bytes"
        return _refused(reply, reason, tenant, "oversize")
    missing = [p for p in scan.parts if not p.has_address]
    if not missing:
        return FooterJudgement(outcome="present")
    kinds = ", ".join(sorted({p.content_type for p in missing}))
    registered = identity.address_text
    if plan.mode is FooterMode.CHECK:
        reply = replies.FOOTER_MISSING.with_text(
            f"Bulk mail must show your postal address ({registered}) in every text part; the"
            f" {kinds} part lacks it. Add a footer with that address and send again"
        )
        reason = f"postal address missing from the {kinds} part"
        return _refused(reply, reason, tenant, "missing", {"footer_missing": kinds})
    for part in missing:
        problem = f"it is over {plan.max_part_bytes} bytes" if part.oversize else part.unrewritable
        if problem is not None:
            reply = replies.FOOTER_MISSING.with_text(
                f"Bulk mail must show your postal address ({registered}); the relay cannot"
                f" add it to the {part.content_type} part ({problem}). Add the footer"
                " yourself and send again"
            )
            reason = f"footer cannot be added to the {part.content_type} part: {problem}"
            return _refused(reply, reason, tenant, "unrewritable", {"footer_problem": problem})
    return FooterJudgement(
        rewrite=tuple(p.index for p in missing),
        outcome="inserted",
        log={"footer_parts": len(missing)},
    )


def _refused(
    reply: replies.Reply,
    reason: str,
    tenant: str,
    outcome: str,
    log: dict[str, object] | None = None,
) -> FooterJudgement:
    verdict = Verdict.refuse(reply, reason, tenant, rule="footer")
    return FooterJudgement(verdict=verdict, outcome=outcome, log=log or {})


@dataclass(frozen=True, slots=True)
class FooterText:
    """The footer in the two forms a text part takes; made once per message."""

    plain_lines: tuple[str, ...]
    html: str


def footer_text(identity: TenantIdentity, unsubscribe: str | None) -> FooterText:
    """Identity, address, contact and the visible unsubscribe link (the header's own URL)."""
    lines = [identity.name, *identity.address, f"Contact: {identity.contact}"]
    if unsubscribe is not None:
        lines.append(f"Unsubscribe: {unsubscribe}")
    contact = html.escape(identity.contact)
    if identity.contact.startswith(("http://", "https://", "mailto:")):
        contact = f'<a href="{contact}">{contact}</a>'
    rows = [html.escape(identity.name), *(html.escape(line) for line in identity.address)]
    rows.append(f"Contact: {contact}")
    if unsubscribe is not None:
        rows.append(f'<a href="{html.escape(unsubscribe)}">Unsubscribe</a>')
    body = "<br>\n".join(rows)
    markup = (
        '<div class="aup-footer" style="margin-top:2em;font-size:smaller;color:#555">\n'
        f"{body}\n</div>"
    )
    return FooterText(plain_lines=("", "--", *lines), html=markup)


_UNSUBSCRIBE_URI = re.compile(r"<\s*(https?://[^>\s]+)\s*>", re.IGNORECASE)
_UNSUBSCRIBE_MAILTO = re.compile(r"<\s*(mailto:[^>\s]+)\s*>", re.IGNORECASE)


def unsubscribe_target(list_unsubscribe: str | None) -> str | None:
    """The link the footer shows: the List-Unsubscribe header's https URI, else its mailto."""
    if not list_unsubscribe:
        return None
    for pattern in (_UNSUBSCRIBE_URI, _UNSUBSCRIBE_MAILTO):
        found = pattern.search(list_unsubscribe)
        if found is not None:
            return found.group(1)
    return None

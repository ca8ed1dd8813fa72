"""The List-Unsubscribe headers of bulk mail (RFC 2369, RFC 8058).

On bulk mail:
- exactly one `List-Unsubscribe` with one `https:` URI, and exactly one
  `List-Unsubscribe-Post: List-Unsubscribe=One-Click`: the tenant runs its own
  compliant one-click unsubscribe; both are kept;
- otherwise every `List-Unsubscribe*` header is removed and the relay's pair is
  inserted (plan `on_noncompliant_unsubscribe = "replace"`, the default), or the
  message is refused (`"reject"`).

A message to one recipient carries a recipient token: one click unsubscribes
exactly that address. A message to several recipients has one header for all
of them, so its token names the tenant and the message; the page behind it
asks for the address (plans that need true one-click for every recipient set
`bulk_one_recipient_per_message`).

Pure: the tokens are issued with the time passed in.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from aupmilter import replies
from aupmilter.policy.actions import AddHeader
from aupmilter.policy.classify import Classification, MailClass
from aupmilter.policy.headers import HeaderField
from aupmilter.policy.plans import UnsubscribePlan, UnsubscribeSettings
from aupmilter.policy.tokens import IssuedToken, TokenSigner
from aupmilter.policy.verdict import Verdict
from aupmilter.replies import Reply

LIST_UNSUBSCRIBE = "List-Unsubscribe"
LIST_UNSUBSCRIBE_POST = "List-Unsubscribe-Post"
ONE_CLICK = "List-Unsubscribe=One-Click"
_URI = re.compile(r"<\s*([^<>\s]*)\s*>")


class UnsubscribeAction(StrEnum):
    NONE = "none"
    """Transactional mail: nothing to do."""
    KEEP = "keep"
    """The tenant's own compliant headers stay."""
    INSERT = "insert"
    """No List-Unsubscribe* headers were there; the relay's are added."""
    REPLACE = "replace"
    """Non-compliant headers removed, the relay's added."""
    REJECT = "reject"
    LEAVE = "leave"
    """Non-compliant, but no [unsubscribe] service is configured to replace them."""


@dataclass(frozen=True, slots=True)
class UnsubscribeLinks:
    """The relay's header pair for one message, and the token behind it."""

    issued: IssuedToken
    list_unsubscribe: str
    list_unsubscribe_post: str = ONE_CLICK


@dataclass(frozen=True, slots=True)
class HeaderDeletion:
    name: str
    index: int
    """1-based among the headers of that name (case-insensitive), as smfi_chgheader counts."""


@dataclass(frozen=True, slots=True)
class UnsubscribeDecision:
    action: UnsubscribeAction
    reason: str
    delete: tuple[HeaderDeletion, ...] = ()
    """Highest index first, so earlier deletions do not shift later ones."""
    add: tuple[AddHeader, ...] = ()
    """The relay's pair, appended after the deletions."""
    links: UnsubscribeLinks | None = None
    verdict: Verdict | None = None
    """Set for REJECT only."""


def issue_links(
    signer: TokenSigner,
    settings: UnsubscribeSettings,
    tenant: str,
    recipients: Sequence[str],
    message_id: str,
    now: float,
) -> UnsubscribeLinks:
    """Recipient token for one (normalised) recipient, message token for several."""
    if len(recipients) == 1:
        issued = signer.recipient_token(tenant, recipients[0], now)
    else:
        issued = signer.message_token(tenant, message_id, now, recipients)
    value = f"<{settings.url(issued.token)}>, <{settings.mailto(issued.token)}>"
    return UnsubscribeLinks(issued, value)


def compliance_problem(headers: Sequence[HeaderField]) -> str | None:
    """Why the message's own unsubscribe headers are not RFC 8058 one-click; None if they are."""
    lists = [f.value for f in headers if f.key == LIST_UNSUBSCRIBE.lower()]
    posts = [f.value for f in headers if f.key == LIST_UNSUBSCRIBE_POST.lower()]
    if not lists:
        return "no List-Unsubscribe header"
    if len(lists) > 1:
        return f"{len(lists)} List-Unsubscribe headers"
    uris = _URI.findall(lists[0])
    https = [u for u in uris if u.lower().startswith("https:")]
    if len(https) != 1:
        return f"List-Unsubscribe has {len(https)} https URIs, RFC 8058 needs exactly one"
    if any(u.lower().startswith("http:") for u in uris):
        return "List-Unsubscribe has a plain http URI"
    if len(posts) != 1:
        return f"{len(posts)} List-Unsubscribe-Post headers, RFC 8058 needs exactly one"
    if posts[0].strip() != ONE_CLICK:
        return f"List-Unsubscribe-Post is not exactly {ONE_CLICK!r}"
    return None


def unsubscribe_deletions(headers: Sequence[HeaderField]) -> tuple[HeaderDeletion, ...]:
    """Every List-Unsubscribe* header, as chgheader deletions, highest index first."""
    seen: dict[str, int] = {}
    found: list[HeaderDeletion] = []
    for field in headers:
        key = field.key
        seen[key] = seen.get(key, 0) + 1
        if key.startswith(LIST_UNSUBSCRIBE.lower()):
            found.append(HeaderDeletion(field.name, seen[key]))
    return tuple(sorted(found, key=lambda d: (d.name.lower(), -d.index)))


def decide_unsubscribe(
    classification: Classification,
    headers: Sequence[HeaderField],
    plan: UnsubscribePlan,
    links: UnsubscribeLinks | None,
    tenant: str | None,
) -> UnsubscribeDecision:
    if not classification.bulk:
        return UnsubscribeDecision(UnsubscribeAction.NONE, classification.reason)
    problem = compliance_problem(headers)
    if problem is None:
        return UnsubscribeDecision(
            UnsubscribeAction.KEEP, "the message's own one-click unsubscribe is compliant"
        )
    deletions = unsubscribe_deletions(headers)
    if plan.on_noncompliant_unsubscribe == "reject" and deletions:
        reason = f"bulk mail with a non-compliant unsubscribe ({problem})"
        verdict = Verdict.refuse(
            replies.UNSUBSCRIBE_NONCOMPLIANT, reason, tenant, rule="unsubscribe-headers"
        )
        return UnsubscribeDecision(UnsubscribeAction.REJECT, reason, verdict=verdict)
    if links is None:
        return UnsubscribeDecision(
            UnsubscribeAction.LEAVE, f"{problem}; no [unsubscribe] service configured"
        )
    action = UnsubscribeAction.REPLACE if deletions else UnsubscribeAction.INSERT
    return UnsubscribeDecision(
        action,
        problem,
        delete=deletions,
        add=(
            AddHeader(LIST_UNSUBSCRIBE, links.list_unsubscribe),
            AddHeader(LIST_UNSUBSCRIBE_POST, links.list_unsubscribe_post),
        ),
        links=links,
    )


def kept_headers(
    headers: Sequence[HeaderField], deletions: Sequence[HeaderDeletion]
) -> list[HeaderField]:
    """The message's fields that `deletions` do not delete, in order."""
    doomed = {(d.name.lower(), d.index) for d in deletions}
    seen: dict[str, int] = {}
    kept = []
    for field in headers:
        key = field.key
        seen[key] = seen.get(key, 0) + 1
        if (key, seen[key]) not in doomed:
            kept.append(field)
    return kept


def edited_headers(
    headers: Sequence[HeaderField],
    deletions: Sequence[HeaderDeletion],
    added: Sequence[AddHeader],
) -> list[HeaderField]:
    """The header list as the MTA will deliver it after the edits (what gets signed).

    Deleted fields go (every deletion counts among the message's own fields:
    the milter sends them before any addition); added ones are appended at
    the end in the order they are added, as smfi_addheader does.
    """
    appended = [HeaderField.added(a.name, a.value) for a in added]
    return [*kept_headers(headers, deletions), *appended]


def one_recipient_per_bulk_message(
    stream: str | None, plan: UnsubscribePlan, accepted: int
) -> Reply | None:
    """452 4.5.3 for the second recipient of a bulk-stream transaction, when the plan asks.

    Then every bulk message has one recipient, hence a recipient token: true
    one-click for everyone. Only the sender stream is known at RCPT time.
    """
    if plan.bulk_one_recipient_per_message and stream == MailClass.BULK and accepted >= 1:
        return replies.BULK_ONE_RECIPIENT
    return None

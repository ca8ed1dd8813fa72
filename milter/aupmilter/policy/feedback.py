"""The Feedback-ID of bulk mail, in Gmail's format, so complaints map back to tenant and campaign.

`Feedback-ID: CAMPAIGN:TENANT:STREAM:RELAY_ID`. Gmail's feedback loop reports
spam rates per value of each field, keyed by the last one, which must be
stable and 5 to 15 characters: the relay's own id, the same on every
message. ARF reports from other providers carry the original's headers, so
the intake reads tenant and campaign back from the same field.

- CAMPAIGN, the first rule that applies: the first field of the tenant's own
  `Feedback-ID` (when it has at least two fields: a value of one field is the
  tenant's sender id, in Gmail's layout, not a campaign); the identifier of
  the `List-Id` (RFC 2919), stable over the list's mailings so that a rate
  gathers enough volume to be reported; the first 12 hex digits of the
  content fingerprint (`policy.fingerprint`); `none`;
- TENANT: the tenant id;
- STREAM: the mail class (`bulk`: only bulk mail is stamped);
- RELAY_ID: `[feedback_id] relay_id`.

The tenant's own `Feedback-ID` fields are deleted (its campaign kept as the
first field): a second one would leave receivers to pick, and Gmail must
see ours, under the relay's signature.

Each field is bounded and holds only letters, digits, `.`, `_` and `-`
(`:` separates the fields; anything else is replaced by `-`). A campaign
longer than its bound keeps a prefix and a hash of the whole, so two long
campaign ids stay two. Pure: headers and the fingerprint in, the value out.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from aupmilter.policy.actions import AddHeader
from aupmilter.policy.headers import HeaderField
from aupmilter.policy.unsubscribe import HeaderDeletion

FEEDBACK_ID = "Feedback-ID"
RELAY_ID = re.compile(r"[A-Za-z0-9_-]{5,15}")
"""Gmail's rule for the last field (5-15 characters), in characters no parser trips on."""
RELAY_ID_FORM = "5 to 15 letters, digits, '-' or '_' (Gmail's stable last field)"
MAX_CAMPAIGN = 32
MAX_TENANT = 64
"""A tenant id's own limit (store.keys.TENANT_ID): never cut, or the mapping is lost."""
MAX_STREAM = 16
FINGERPRINT_DIGITS = 12
"""48 bits: collisions among one tenant's campaigns are not a concern."""
HASH_DIGITS = 8
NO_CAMPAIGN = "none"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_LIST_ID = re.compile(r"<([^<>]*)>")


class CampaignSource(StrEnum):
    TENANT = "tenant"
    """The first field of the message's own Feedback-ID."""
    LIST_ID = "list-id"
    CONTENT = "content"
    """The content fingerprint."""
    NONE = "none"


@dataclass(frozen=True, slots=True)
class FeedbackStamp:
    """The relay's Feedback-ID for one message, and the tenant's ones it replaces."""

    value: str
    campaign_source: CampaignSource
    delete: tuple[HeaderDeletion, ...] = ()
    """The message's own Feedback-ID fields, highest index first."""

    @property
    def add(self) -> AddHeader:
        return AddHeader(FEEDBACK_ID, self.value)


def clean_field(text: str, bound: int) -> str:
    """`text` as one Feedback-ID field: safe characters only, at most `bound` of them.

    Past the bound, a prefix, `-` and HASH_DIGITS hex digits of the whole.
    """
    cleaned = _UNSAFE.sub("-", text.strip()).strip("-.")
    if len(cleaned) <= bound:
        return cleaned
    digest = hashlib.sha256(cleaned.encode("ascii")).hexdigest()[:HASH_DIGITS]
    return f"{cleaned[: bound - HASH_DIGITS - 1].rstrip('-.')}-{digest}"


def tenant_campaign(headers: Sequence[HeaderField]) -> str | None:
    """The campaign of the message's own Feedback-ID (the first one that names one)."""
    for field in headers:
        if field.key != FEEDBACK_ID.lower():
            continue
        parts = field.text.split(":")
        if len(parts) >= 2:
            campaign = clean_field(parts[0], MAX_CAMPAIGN)
            if campaign:
                return campaign
    return None


def list_campaign(headers: Sequence[HeaderField]) -> str | None:
    """The identifier of the first List-Id: `<id>` (RFC 2919), or the bare value."""
    for field in headers:
        if field.key != "list-id":
            continue
        text = field.text
        bracketed = _LIST_ID.findall(text)
        campaign = clean_field(bracketed[-1] if bracketed else text, MAX_CAMPAIGN)
        if campaign:
            return campaign
    return None


def needs_fingerprint(headers: Sequence[HeaderField]) -> bool:
    """Whether the campaign would come from the content (so the caller hashes the body)."""
    return tenant_campaign(headers) is None and list_campaign(headers) is None


def feedback_deletions(headers: Sequence[HeaderField]) -> tuple[HeaderDeletion, ...]:
    """Every Feedback-ID field, as chgheader deletions, highest index first."""
    found = [
        HeaderDeletion(field.name, index)
        for index, field in enumerate((f for f in headers if f.key == FEEDBACK_ID.lower()), 1)
    ]
    return tuple(reversed(found))


def feedback_stamp(
    headers: Sequence[HeaderField],
    *,
    tenant: str,
    stream: str,
    relay_id: str,
    fingerprint: str | None,
) -> FeedbackStamp:
    """The Feedback-ID of a bulk message; `fingerprint` from `policy.fingerprint` (None: unknown).

    `relay_id` must fully match RELAY_ID (the configuration checks it).
    """
    if not RELAY_ID.fullmatch(relay_id):
        raise ValueError(f"relay id {relay_id!r}: expected {RELAY_ID_FORM}")
    source, campaign = CampaignSource.NONE, NO_CAMPAIGN
    if (own := tenant_campaign(headers)) is not None:
        source, campaign = CampaignSource.TENANT, own
    elif (listed := list_campaign(headers)) is not None:
        source, campaign = CampaignSource.LIST_ID, listed
    elif fingerprint:
        content = clean_field(fingerprint[:FINGERPRINT_DIGITS], MAX_CAMPAIGN)
        if content:
            source, campaign = CampaignSource.CONTENT, content
    fields = (
        campaign,
        clean_field(tenant, MAX_TENANT) or "-",
        clean_field(stream, MAX_STREAM) or "-",
        relay_id,
    )
    return FeedbackStamp(":".join(fields), source, feedback_deletions(headers))

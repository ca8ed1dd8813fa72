"""`[feedback_id]`: the relay's Feedback-ID on bulk mail (Gmail's feedback loop).

Optional: without the section bulk mail gets no Feedback-ID. With it,
`relay_id` is required, since it is the one field Gmail reports by: an id
that changes splits the relay's history, so there is no default to fall
back to silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aupmilter.config.loader import Section
from aupmilter.policy.feedback import RELAY_ID, RELAY_ID_FORM

SECTION = "feedback_id"


@dataclass(frozen=True, slots=True)
class FeedbackIdSettings:
    relay_id: str
    """The last field of every Feedback-ID: stable, 5-15 characters."""


def read_feedback_id(path: Path, root: Section, problems: list[str]) -> FeedbackIdSettings | None:
    """[feedback_id] (optional); problems are appended, never raised."""
    if SECTION not in root.table:
        root.seen.add(SECTION)
        return None
    section = Section(path, SECTION, root.subtable(SECTION), problems)
    relay_id = section.get("relay_id", "", RELAY_ID_FORM, _relay_id)
    section.require("relay_id")
    section.reject_unknown()
    return FeedbackIdSettings(relay_id) if relay_id else None


def _relay_id(raw: Any) -> str | None:
    return raw if isinstance(raw, str) and RELAY_ID.fullmatch(raw) else None

"""`[plan.NAME.consent]`: the consent ledger's mode, lapse and the new-recipient share.

The rules are policy.consent's; this module only reads the table. Durations
are written as elsewhere in the plan files: seconds, or a text with a unit
("180d", "4320h"); the lapse is at least a day and at most ten years.
"""

from __future__ import annotations

import re
from typing import Any

from aupmilter.config.loader import Section, choice, integer, number
from aupmilter.policy.consent import (
    DAY,
    MAX_LAPSE_DAYS,
    MIN_LAPSE_DAYS,
    PPM,
    ConsentMode,
    ConsentPlan,
    Unrecorded,
)

LAPSE = re.compile(r"^([1-9][0-9]{0,7})([smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": DAY}
LAPSE_FORM = (
    f"seconds, or a text such as '180d' or '4320h' (from {MIN_LAPSE_DAYS}d to {MAX_LAPSE_DAYS}d)"
)


def parse_lapse(raw: Any) -> int | None:
    """Seconds from a whole number or a text with a unit; None outside 1 day .. 10 years."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        seconds = raw
    elif isinstance(raw, str) and (match := LAPSE.match(raw.strip())):
        seconds = int(match[1]) * UNITS[match[2]]
    else:
        return None
    return seconds if MIN_LAPSE_DAYS * DAY <= seconds <= MAX_LAPSE_DAYS * DAY else None


def read_plan_consent(plan: Section) -> ConsentPlan:
    """The plan's `[plan.NAME.consent]` table; absent: off."""
    section = Section(plan.file, plan.key_path("consent"), plan.subtable("consent"), plan.problems)
    defaults = ConsentPlan()
    mode = section.get(
        "mode", defaults.mode.value, "'off', 'warn' or 'enforce'", choice(*ConsentMode)
    )
    lapse = section.get("lapse", defaults.lapse, LAPSE_FORM, parse_lapse)
    unrecorded = section.get(
        "unrecorded", defaults.unrecorded.value, "'new' or 'lapsed'", choice(*Unrecorded)
    )
    share = section.get(
        "new_recipient_share",
        -1.0,
        "a share of the message's bulk recipients from 0 to 1 (0.5 means half)",
        number(0.0, 1.0),
    )
    minimum = section.get(
        "new_recipient_min",
        defaults.new_recipient_min,
        "a whole number of recipients from 1 to 100000",
        integer(1, 100_000),
    )
    section.reject_unknown()
    return ConsentPlan(
        mode=ConsentMode(mode),
        lapse=lapse,
        unrecorded=Unrecorded(unrecorded),
        new_recipient_share_ppm=None if share < 0 else round(share * PPM),
        new_recipient_min=minimum,
    )

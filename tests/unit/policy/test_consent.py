"""The consent ledger's pure rules (policy.consent): standing, the new-recipient share."""

from __future__ import annotations

import pytest

from aupmilter.policy.consent import (
    DAY,
    ConsentMode,
    ConsentPlan,
    Standing,
    Unrecorded,
    lapses_at,
    standing,
    too_many_new,
)

NOW = 1_800_000_000
LAPSE = 180 * DAY
PLAN = ConsentPlan(mode=ConsentMode.ENFORCE, lapse=LAPSE)
STRICT = ConsentPlan(mode=ConsentMode.ENFORCE, lapse=LAPSE, unrecorded=Unrecorded.LAPSED)

# (consent, last bulk, has ledger, plan, standing): times as seconds before NOW, None = absent.
STANDINGS = [
    (10 * DAY, None, True, PLAN, Standing.CURRENT),
    (LAPSE, None, True, PLAN, Standing.CURRENT),  # exactly the lapse: not older than it
    (LAPSE + 1, None, True, PLAN, Standing.LAPSED),
    (400 * DAY, 30 * DAY, True, PLAN, Standing.CURRENT),  # bulk mail since kept it alive
    (400 * DAY, 200 * DAY, True, PLAN, Standing.LAPSED),  # both older than the lapse
    (None, 30 * DAY, True, PLAN, Standing.CURRENT),  # no record, but mailed recently
    (None, 200 * DAY, True, PLAN, Standing.LAPSED),
    (None, None, True, PLAN, Standing.NEW),  # unrecorded = "new" (default)
    (None, None, True, STRICT, Standing.LAPSED),  # unrecorded = "lapsed"
    (None, None, False, PLAN, Standing.NEW),  # no ledger, never mailed
    (None, 400 * DAY, False, PLAN, Standing.CURRENT),  # no ledger: no lapse
    (None, 0, False, STRICT, Standing.CURRENT),
]


@pytest.mark.parametrize(("consent", "last_bulk", "ledger", "plan", "expected"), STANDINGS)
def test_standing(
    consent: int | None,
    last_bulk: int | None,
    ledger: bool,
    plan: ConsentPlan,
    expected: Standing,
) -> None:
    given = None if consent is None else NOW - consent
    mailed = None if last_bulk is None else NOW - last_bulk
    assert standing(given, mailed, NOW, plan, has_ledger=ledger) is expected


SHARE = ConsentPlan(mode=ConsentMode.ENFORCE, new_recipient_share_ppm=500_000, new_recipient_min=20)


@pytest.mark.parametrize(
    ("new", "considered", "plan", "refused"),
    [
        (11, 20, SHARE, True),  # 55 % of 20
        (10, 20, SHARE, False),  # exactly half is not above it
        (19, 19, SHARE, False),  # below the minimum: a new tenant's small first message
        (1000, 1000, SHARE, True),  # a bought list
        (499, 1000, SHARE, False),
        (501, 1000, SHARE, True),
        (0, 0, SHARE, False),
        (1000, 1000, PLAN, False),  # no share rule
        (1, 1, ConsentPlan(new_recipient_share_ppm=0, new_recipient_min=1), True),
    ],
)
def test_too_many_new(new: int, considered: int, plan: ConsentPlan, refused: bool) -> None:
    assert too_many_new(new, considered, plan) is refused


def test_lapses_at_and_plan_properties() -> None:
    assert lapses_at(100, 50, PLAN) == 100 + LAPSE
    assert lapses_at(None, 70, PLAN) == 70 + LAPSE
    assert lapses_at(None, None, PLAN) is None
    assert ConsentPlan().mode is ConsentMode.OFF and not ConsentPlan().enabled
    assert PLAN.enforced and PLAN.lapse_days == 180
    warn = ConsentPlan(mode=ConsentMode.WARN)
    assert warn.enabled and not warn.enforced
    assert SHARE.describe() == (
        "enforce, lapse 180 days, unrecorded recipients new;"
        " refused above 50 % never-mailed recipients (from 20 recipients)"
    )

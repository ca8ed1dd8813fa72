"""A plan's `[plan.NAME.consent]` table: mode, lapse, unrecorded, new-recipient share."""

from __future__ import annotations

from pathlib import Path

import pytest

from aupmilter.config import load_config
from aupmilter.policy.consent import DAY, ConsentMode, ConsentPlan, Unrecorded
from tests.unit.configfiles import problems, write


def test_defaults_and_values(confdir: Path) -> None:
    (confdir / "policies" / "extra.toml").write_text(
        '[plan.lists.consent]\nmode = "enforce"\nlapse = "90d"\nunrecorded = "lapsed"\n'
        "new_recipient_share = 0.5\nnew_recipient_min = 50\n"
        '[plan.watch.consent]\nmode = "warn"\nlapse = 864000\n'
    )
    plans = load_config(write(confdir, "")).plans
    assert plans["lists"].consent == ConsentPlan(
        mode=ConsentMode.ENFORCE,
        lapse=90 * DAY,
        unrecorded=Unrecorded.LAPSED,
        new_recipient_share_ppm=500_000,
        new_recipient_min=50,
    )
    assert plans["watch"].consent == ConsentPlan(mode=ConsentMode.WARN, lapse=10 * DAY)
    assert plans["standard"].consent == ConsentPlan()
    assert ConsentPlan().lapse == 180 * DAY and ConsentPlan().new_recipient_share_ppm is None


LAPSE = "seconds, or a text such as '180d' or '4320h' (from 1d to 3650d)"


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        ("mode = 'on'", "mode", "'off', 'warn' or 'enforce'"),
        ("lapse = '12h'", "lapse", LAPSE),
        ("lapse = '3651d'", "lapse", LAPSE),
        ("lapse = 'six months'", "lapse", LAPSE),
        ("lapse = true", "lapse", LAPSE),
        ("unrecorded = 'drop'", "unrecorded", "'new' or 'lapsed'"),
        ("new_recipient_share = 1.5", "new_recipient_share", "a share of the message's bulk"),
        ("new_recipient_share = '50%'", "new_recipient_share", "a share"),
        ("new_recipient_min = 0", "new_recipient_min", "a whole number of recipients"),
        ("lapse_days = 3", "lapse_days", "unknown key"),
    ],
)
def test_bad_values_name_file_key_and_form(
    confdir: Path, body: str, key: str, expected: str
) -> None:
    extra = confdir / "policies" / "extra.toml"
    extra.write_text(f"[plan.lists.consent]\n{body}\n")
    found = problems(confdir, "")
    assert len(found) == 1, found
    assert str(extra) in found[0] and f"'plan.lists.consent.{key}'" in found[0]
    assert expected in found[0]


def test_every_problem_is_collected_at_once(confdir: Path) -> None:
    found = problems(confdir, "", "[plan.lists.consent]\nmode = 1\nlapse = 0\n")
    assert len(found) == 2, found

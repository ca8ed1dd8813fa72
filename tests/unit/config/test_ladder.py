"""A plan's `[plan.NAME.ladder]` table: near-cap ratio, repeats, window, enabled."""

from __future__ import annotations

from pathlib import Path

import pytest

from aupmilter.config import load_config
from aupmilter.policy.ladder import LadderPlan
from tests.unit.configfiles import problems, write


def test_defaults_and_values(confdir: Path) -> None:
    (confdir / "policies" / "extra.toml").write_text(
        "[plan.lists.ladder]\nnear_cap_ratio = 0.8\nnear_cap_repeats = 5\n"
        'near_cap_window = "12h"\n'
        "[plan.quiet.ladder]\nenabled = false\nnear_cap_window = 7200\n"
    )
    plans = load_config(write(confdir, "")).plans
    assert plans["lists"].ladder == LadderPlan(
        enabled=True, ratio_ppm=800_000, repeats=5, window=43_200
    )
    assert plans["quiet"].ladder == LadderPlan(enabled=False, window=7200)
    assert plans["standard"].ladder == LadderPlan()
    assert LadderPlan() == LadderPlan(enabled=True, ratio_ppm=900_000, repeats=3, window=86_400)


WINDOW = "seconds from 60, or a text such as '12h', '1d' (at most 31d)"


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        ("near_cap_ratio = 0.4", "near_cap_ratio", "a ratio of the recipient cap from 0.5 to 1"),
        ("near_cap_ratio = 90", "near_cap_ratio", "a ratio of the recipient cap from 0.5 to 1"),
        ("near_cap_ratio = '90%'", "near_cap_ratio", "a ratio"),
        ("near_cap_repeats = 0", "near_cap_repeats", "a whole number from 1 to 1000000"),
        ("near_cap_repeats = 2.5", "near_cap_repeats", "a whole number from 1 to 1000000"),
        ("near_cap_window = '30s'", "near_cap_window", WINDOW),
        ("near_cap_window = '40d'", "near_cap_window", WINDOW),
        ("near_cap_window = true", "near_cap_window", WINDOW),
        ("enabled = 'yes'", "enabled", "true or false"),
        ("near_cap = 3", "near_cap", "unknown key"),
    ],
)
def test_bad_values_name_file_key_and_form(
    confdir: Path, body: str, key: str, expected: str
) -> None:
    extra = confdir / "policies" / "extra.toml"
    extra.write_text(f"[plan.lists.ladder]\n{body}\n")
    found = problems(confdir, "")
    assert len(found) == 1, found
    assert str(extra) in found[0] and f"'plan.lists.ladder.{key}'" in found[0]
    assert expected in found[0]


def test_the_ladder_must_be_a_table(confdir: Path) -> None:
    extra = confdir / "policies" / "extra.toml"
    extra.write_text("[plan.lists]\nladder = 3\n")
    found = problems(confdir, "")
    assert len(found) == 1 and "'plan.lists.ladder'" in found[0] and "a table" in found[0]

"""The report intake's keys of a plan: soft bounces that become a suppression."""

from __future__ import annotations

from pathlib import Path

import pytest

from aupmilter.config import load_config
from aupmilter.policy.plans import BouncePlan
from tests.unit.configfiles import problems, write


def test_defaults_and_values(confdir: Path) -> None:
    (confdir / "policies" / "extra.toml").write_text(
        "[plan.lists]\nsoft_bounces_to_suppress = 5\nsoft_bounce_window = 86400\n"
    )
    plans = load_config(write(confdir, "")).plans
    assert plans["lists"].bounces == BouncePlan(5, 86_400)
    assert plans["standard"].bounces == BouncePlan(3, 7 * 86_400)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("soft_bounces_to_suppress", "0", "a whole number from 1 to 100"),
        ("soft_bounces_to_suppress", '"3"', "a whole number from 1 to 100"),
        ("soft_bounces_to_suppress", "true", "a whole number from 1 to 100"),
        ("soft_bounce_window", "60", "seconds from 3600 to 2678400 (31 days)"),
        ("soft_bounce_window", '"7d"', "seconds from 3600 to 2678400 (31 days)"),
    ],
)
def test_bad_values_name_file_key_and_form(
    confdir: Path, key: str, value: str, expected: str
) -> None:
    extra = confdir / "policies" / "extra.toml"
    extra.write_text(f"[plan.lists]\n{key} = {value}\n")
    found = problems(confdir, "")
    assert len(found) == 1, found
    assert str(extra) in found[0] and f"'plan.lists.{key}'" in found[0]
    assert expected in found[0]

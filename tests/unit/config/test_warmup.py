"""A plan's `[plan.NAME.warmup]` table: start_percent, factor, step, enabled."""

from __future__ import annotations

from pathlib import Path

import pytest

from aupmilter.config import load_config
from aupmilter.policy.warmup import WarmupPlan
from tests.unit.configfiles import problems, write


def test_defaults_and_values(confdir: Path) -> None:
    (confdir / "policies" / "extra.toml").write_text(
        '[plan.lists.warmup]\nstart_percent = 5\nfactor = 1.5\nstep = "12h"\n'
        "[plan.fresh.warmup]\n"
        "[plan.quiet.warmup]\nenabled = false\nstep = 3600\n"
    )
    plans = load_config(write(confdir, "")).plans
    assert plans["lists"].warmup == WarmupPlan(True, 5, 1.5, 43_200)
    assert plans["fresh"].warmup == WarmupPlan(True, 10, 2.0, 86_400)
    assert plans["quiet"].warmup == WarmupPlan(False, 10, 2.0, 3600)
    # The shipped plans have no ramp: their tenants keep their full limits.
    assert plans["standard"].warmup == WarmupPlan() and not WarmupPlan().enabled


STEP = "seconds from 60, or a text such as '12h', '1d' (at most 31d)"


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        ("start_percent = 0", "start_percent", "a whole percentage from 1 to 100"),
        ("start_percent = 101", "start_percent", "a whole percentage from 1 to 100"),
        ("start_percent = 12.5", "start_percent", "a whole percentage from 1 to 100"),
        ("factor = 1", "factor", "a number from 1.1 to 10"),
        ("factor = 11", "factor", "a number from 1.1 to 10"),
        ("factor = true", "factor", "a number from 1.1 to 10"),
        ("step = '30s'", "step", STEP),
        ("step = '40d'", "step", STEP),
        ("step = 'day'", "step", STEP),
        ("enabled = 'yes'", "enabled", "true or false"),
        ("days = 3", "days", "unknown key"),
    ],
)
def test_bad_values_name_file_key_and_form(
    confdir: Path, body: str, key: str, expected: str
) -> None:
    extra = confdir / "policies" / "extra.toml"
    extra.write_text(f"[plan.lists.warmup]\n{body}\n")
    found = problems(confdir, "")
    assert len(found) == 1, found
    assert str(extra) in found[0] and f"'plan.lists.warmup.{key}'" in found[0]
    assert expected in found[0]


def test_every_problem_is_collected_at_once(confdir: Path) -> None:
    extra = confdir / "policies" / "extra.toml"
    extra.write_text("[plan.lists.warmup]\nstart_percent = 0\nfactor = 0\nstep = 'x'\n")
    found = problems(confdir, "")
    assert len(found) == 3, found


def test_the_warmup_must_be_a_table(confdir: Path) -> None:
    extra = confdir / "policies" / "extra.toml"
    extra.write_text("[plan.lists]\nwarmup = 3\n")
    found = problems(confdir, "")
    assert len(found) == 1 and "'plan.lists.warmup'" in found[0] and "a table" in found[0]

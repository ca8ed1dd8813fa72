"""A plan's complaint and bounce rate keys: period, minimum volumes, thresholds."""

from __future__ import annotations

from pathlib import Path

import pytest

from aupmilter.config import load_config
from aupmilter.policy.reputation import ReputationPlan, Thresholds
from tests.unit.configfiles import problems, write


def test_defaults_and_values(confdir: Path) -> None:
    (confdir / "policies" / "extra.toml").write_text(
        "[plan.lists]\nrate_period = 172800\ncomplaint_min_delivered = 500\n"
        "complaint_review = 0.05\ncomplaint_suspend = 0.2\n"
        "bounce_min_delivered = 100\nbounce_review = 2\nbounce_suspend = 4.5\n"
    )
    plans = load_config(write(confdir, "")).plans
    assert plans["lists"].reputation == ReputationPlan(
        period=172_800,
        complaints=Thresholds(500, 500, 2000),
        bounces=Thresholds(100, 20_000, 45_000),
    )
    assert plans["standard"].reputation == ReputationPlan()
    assert ReputationPlan().complaints == Thresholds(1000, 1000, 3000)
    assert ReputationPlan().bounces == Thresholds(200, 50_000, 100_000)


PERCENT = "a percentage from 0.0001 to 100 (0.3 means 0.3 %)"


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        ("rate_period = 3600", "rate_period", "seconds from 86400 (1 day) to 2678400"),
        ("rate_period = '7d'", "rate_period", "seconds from 86400 (1 day) to 2678400"),
        ("complaint_min_delivered = 0", "complaint_min_delivered", "a whole number"),
        ("complaint_suspend = 0", "complaint_suspend", PERCENT),
        ("bounce_review = '5%'", "bounce_review", PERCENT),
        ("bounce_suspend = 101", "bounce_suspend", PERCENT),
        ("complaint_review = 0.5", "complaint_review", "at most complaint_suspend (0.3)"),
    ],
)
def test_bad_values_name_file_key_and_form(
    confdir: Path, body: str, key: str, expected: str
) -> None:
    extra = confdir / "policies" / "extra.toml"
    extra.write_text(f"[plan.lists]\n{body}\n")
    found = problems(confdir, "")
    assert len(found) == 1, found
    assert str(extra) in found[0] and f"'plan.lists.{key}'" in found[0]
    assert expected in found[0]

"""[audit] and the plans' `mode`: accepted forms, defaults, and the error texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from aupmilter.config import load_config
from tests.unit.configfiles import problems, write


def test_audit_defaults_keep_eight_days(confdir: Path) -> None:
    config = load_config(write(confdir, ""))
    assert config.audit.retention_days == 8
    assert config.audit.retention_seconds == 8 * 86_400
    assert config.audit.recipients_listed == 10


def test_recipients_listed_is_bounded(confdir: Path) -> None:
    config = load_config(write(confdir, "[audit]\nrecipients_listed = 0\n"))
    assert config.audit.recipients_listed == 0
    (problem,) = problems(confdir, "[audit]\nrecipients_listed = 51\n")
    assert "key 'audit.recipients_listed': expected a whole number from 0 to 50" in problem


def test_audit_retention_is_read(confdir: Path) -> None:
    config = load_config(write(confdir, "[audit]\nretention_days = 30\n"))
    assert config.audit.retention_seconds == 30 * 86_400


@pytest.mark.parametrize("value", ["6", "0", "401", '"8"', "8.5", "true"])
def test_audit_retention_below_a_week_or_not_whole_days_is_refused(
    confdir: Path, value: str
) -> None:
    (problem,) = problems(confdir, f"[audit]\nretention_days = {value}\n")
    assert "key 'audit.retention_days': expected whole days from 7 to 400" in problem


def test_unknown_audit_key_is_refused(confdir: Path) -> None:
    (problem,) = problems(confdir, "[audit]\nretention = 8\n")
    assert "audit.retention" in problem


def test_plan_mode_defaults_to_enforce_and_reads_shadow(confdir: Path) -> None:
    plans = '[plan.trial]\nmode = "shadow"\n'
    config = load_config(write(confdir, "", plans))
    assert config.plans["trial"].mode == "shadow"
    assert config.plans["standard"].mode == "enforce"


def test_plan_mode_other_than_enforce_or_shadow_is_refused(confdir: Path) -> None:
    (problem,) = problems(confdir, "", '[plan.trial]\nmode = "warn"\n')
    assert "key 'plan.trial.mode': expected 'enforce' or 'shadow'" in problem

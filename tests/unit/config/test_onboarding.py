"""`[plan.NAME.onboarding]` and `[onboarding]`: values, defaults, and problems named."""

from __future__ import annotations

from pathlib import Path

import pytest

from aupmilter.config import load_config
from aupmilter.mailauth.rdap import IANA_BOOTSTRAP, RdapSettings
from aupmilter.policy.onboarding import CheckName, OnboardingMode, OnboardingPlan
from tests.unit.configfiles import problems, write


def test_values_and_defaults(confdir: Path) -> None:
    (confdir / "policies" / "extra.toml").write_text(
        '[plan.lists.onboarding]\nmode = "enforce"\nmax_age = "90d"\n'
        'require = ["ownership", "dmarc"]\ncheck_envelope = true\n'
        '[plan.trial.onboarding]\nmode = "warn"\nmax_age = 7200\n'
    )
    config = load_config(write(confdir, ""))
    assert config.plans["lists"].onboarding == OnboardingPlan(
        OnboardingMode.ENFORCE,
        max_age=90 * 86_400,
        required=frozenset({CheckName.OWNERSHIP, CheckName.DMARC}),
        check_envelope=True,
    )
    assert config.plans["trial"].onboarding == OnboardingPlan(OnboardingMode.WARN, max_age=7200)
    # Shipped plans keep onboarding off: existing tenants are not refused after an upgrade.
    assert all(not plan.onboarding.enabled for name, plan in config.plans.items()
               if name not in ("lists", "trial"))  # fmt: skip
    assert OnboardingPlan().required == frozenset(CheckName)
    assert config.onboarding == RdapSettings(IANA_BOOTSTRAP, 10.0)


AGE = "seconds from 3600 to 34560000, or a text such as '12h', '30d' (at most 400d)"


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        ("mode = 'shadow'", "mode", "'off', 'warn' or 'enforce'"),
        ("max_age = '30m'", "max_age", AGE),
        ("max_age = 60", "max_age", AGE),
        ("max_age = '500d'", "max_age", AGE),
        ("max_age = true", "max_age", AGE),
        ("require = ['spf', 'smtp']", "require", "a list of checks from 'ownership'"),
        ("require = 'spf'", "require", "a list of checks"),
        ("check_envelope = 1", "check_envelope", "true or false"),
        ("enabled = true", "enabled", "unknown key"),
    ],
)
def test_bad_plan_values(confdir: Path, body: str, key: str, expected: str) -> None:
    extra = confdir / "policies" / "extra.toml"
    extra.write_text(f"[plan.lists.onboarding]\n{body}\n")
    found = problems(confdir, "")
    assert len(found) == 1, found
    assert str(extra) in found[0] and f"'plan.lists.onboarding.{key}'" in found[0]
    assert expected in found[0]


def test_rdap_settings(confdir: Path) -> None:
    config = load_config(
        write(confdir, '[onboarding]\nrdap_bootstrap = "rdap/dns.json"\nrdap_timeout = 2.5\n')
    )
    assert config.onboarding == RdapSettings(str(confdir / "rdap" / "dns.json"), 2.5)
    url = "http://127.0.0.1:2538/bootstrap/dns.json"
    config = load_config(write(confdir, f'[onboarding]\nrdap_bootstrap = "{url}"\n'))
    assert config.onboarding.bootstrap == url


@pytest.mark.parametrize(
    ("body", "key", "expected"),
    [
        ("rdap_timeout = 0", "rdap_timeout", "seconds from 0.1 to 120"),
        ("rdap_bootstrap = ''", "rdap_bootstrap", "an http(s) URL or a file path"),
        ("rdap_bootstrap = 3", "rdap_bootstrap", "an http(s) URL or a file path"),
        ("rdap = 'x'", "rdap", "unknown key"),
    ],
)
def test_bad_rdap_settings(confdir: Path, body: str, key: str, expected: str) -> None:
    found = problems(confdir, f"[onboarding]\n{body}\n")
    assert len(found) == 1, found
    assert f"'onboarding.{key}'" in found[0] and expected in found[0]


def test_check_names_the_onboarding_plans(
    confdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aupmilter.cli.main import main

    (confdir / "policies" / "extra.toml").write_text(
        '[plan.lists.onboarding]\nmode = "enforce"\nmax_age = "90d"\nrequire = ["spf", "dmarc"]\n'
    )
    assert main(["check", "-c", str(write(confdir, ""))]) == 0
    out = capsys.readouterr().out
    assert (
        "    onboarding: enforce (bulk mail needs a domain verified within 90 days: dmarc, spf)"
        in out
    )
    assert out.count("onboarding:") == 1  # the shipped plans keep it off

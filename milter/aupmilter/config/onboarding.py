"""Domain onboarding's keys: `[plan.NAME.onboarding]` in the plan files, `[onboarding]` in the
config file (where `tenant verify-domain` finds the RDAP bootstrap).

The plan's table (policy.onboarding.OnboardingPlan):

    [plan.bulk.onboarding]
    mode = "enforce"            # "off" (default) | "warn" | "enforce"
    max_age = "30d"             # a verification counts this long: seconds or "12h", "30d"
    require = ["ownership", "spf", "dkim", "dmarc", "rdap"]   # default: all five
    check_envelope = false      # the MAIL FROM domain must be verified too

The config file's section (mailauth.rdap.RdapSettings):

    [onboarding]
    rdap_bootstrap = "https://data.iana.org/rdap/dns.json"   # or a file path
    rdap_timeout = 10           # seconds per RDAP request
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aupmilter.config.loader import Section, boolean, choice, number, string
from aupmilter.mailauth.rdap import IANA_BOOTSTRAP, RdapSettings
from aupmilter.policy.onboarding import CheckName, OnboardingMode, OnboardingPlan

AGE = re.compile(r"^([1-9][0-9]{0,6})([hd])$")
MIN_AGE = 3600
MAX_AGE = 400 * 86_400
AGE_FORM = "seconds from 3600 to 34560000, or a text such as '12h', '30d' (at most 400d)"
CHECKS_FORM = "a list of checks from " + ", ".join(f"'{c.value}'" for c in CheckName)


def read_plan_onboarding(plan: Section) -> OnboardingPlan:
    """`[plan.NAME.onboarding]` of one plan; absent: onboarding off."""
    section = Section(plan.file, plan.key_path("onboarding"), plan.subtable("onboarding"),
                      plan.problems)  # fmt: skip
    defaults = OnboardingPlan()
    mode = section.get(
        "mode", defaults.mode.value, "'off', 'warn' or 'enforce'", choice(*OnboardingMode)
    )
    max_age = section.get("max_age", defaults.max_age, AGE_FORM, _age)
    required = section.get("require", defaults.required, CHECKS_FORM, _checks)
    envelope = section.get("check_envelope", defaults.check_envelope, "true or false", boolean)
    section.reject_unknown()
    return OnboardingPlan(
        mode=OnboardingMode(mode), max_age=max_age, required=required, check_envelope=envelope
    )


def read_onboarding(path: Path, root: Section, problems: list[str]) -> RdapSettings:
    """`[onboarding]`: the RDAP bootstrap (URL, or a file relative to the config file)."""
    section = Section(path, "onboarding", root.subtable("onboarding"), problems)
    defaults = RdapSettings()
    bootstrap = section.get(
        "rdap_bootstrap",
        IANA_BOOTSTRAP,
        "an http(s) URL or a file path (relative to this file)",
        lambda raw: raw if (text := string(raw)) and text.strip() else None,
    )
    timeout = section.get(
        "rdap_timeout", defaults.timeout, "seconds from 0.1 to 120", number(0.1, 120.0)
    )
    section.reject_unknown()
    if not bootstrap.startswith(("http://", "https://")):
        bootstrap = str((path.parent / bootstrap).resolve())
    return RdapSettings(bootstrap=bootstrap, timeout=timeout)


def _age(raw: Any) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        seconds = raw
    elif isinstance(raw, str) and (match := AGE.match(raw.strip())):
        seconds = int(match[1]) * (3600 if match[2] == "h" else 86_400)
    else:
        return None
    return seconds if MIN_AGE <= seconds <= MAX_AGE else None


def _checks(raw: Any) -> frozenset[CheckName] | None:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        return None
    try:
        return frozenset(CheckName(x) for x in raw)
    except ValueError:
        return None

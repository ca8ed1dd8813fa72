"""`[policy]` of the config file, and the plan files it points at (`[plan.NAME]` tables).

The plan types themselves (`Plan`, `UnsubscribePlan`, `Limits`, `Window`,
`PlanChecks`) are the policy layer's; this module only reads them from TOML.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from aupmilter.config.consent import read_plan_consent
from aupmilter.config.loader import (
    ConfigError,
    Section,
    boolean,
    choice,
    domain_set,
    integer,
    number,
    patterns,
    read_toml,
    string,
)
from aupmilter.config.onboarding import read_plan_onboarding
from aupmilter.config.warmup import read_plan_warmup
from aupmilter.policy.findings import DEFAULT_MODES, AlignmentMode, Check, Mode, PlanChecks
from aupmilter.policy.footer import FooterMode, FooterPlan, Oversize
from aupmilter.policy.ladder import LadderPlan
from aupmilter.policy.limits import Limits, Scope, Unit, Window
from aupmilter.policy.plans import BouncePlan, Plan, UnsubscribePlan
from aupmilter.policy.reputation import Measure, ReputationPlan, Thresholds

PLAN_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
WINDOW_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
PERIOD = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
PERIOD_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_PERIOD_SECONDS = 31 * 86400
DEFAULT_MAX_RECIPIENTS = 100
SUPPRESSION_CHECKS = ("eom", "rcpt")
MODE_FORM = "'enforce', 'warn' or 'off'"


@dataclass(frozen=True, slots=True)
class PolicySettings:
    on_store_error: Literal["tempfail", "accept"]
    unknown_sender: Literal["reject", "accept"]
    plans_dir: Path
    suppression_check: Literal["eom", "rcpt"] = "eom"
    """Where suppressed recipients are stopped: in the end-of-message script, or at each RCPT."""


def read_policy(section: Section) -> PolicySettings:
    """`[policy]`; `plans_dir` is resolved against the config file's folder."""
    on_store_error = section.get(
        "on_store_error", "tempfail", "'tempfail' or 'accept'", choice("tempfail", "accept")
    )
    unknown_sender = section.get(
        "unknown_sender", "reject", "'reject' or 'accept'", choice("reject", "accept")
    )
    plans_dir_text = section.get(
        "plans_dir", "policies", "a directory path (relative to this file)", string
    )
    suppression_check = section.get(
        "suppression_check", "eom", "'eom' or 'rcpt'", choice(*SUPPRESSION_CHECKS)
    )
    section.reject_unknown()
    return PolicySettings(
        on_store_error=cast(Literal["tempfail", "accept"], on_store_error),
        unknown_sender=cast(Literal["reject", "accept"], unknown_sender),
        plans_dir=(section.file.parent / plans_dir_text).resolve(),
        suppression_check=cast(Literal["eom", "rcpt"], suppression_check),
    )


def plan_files(plans_dir: Path) -> list[Path]:
    return sorted(p for p in plans_dir.glob("*.toml") if p.is_file())


def load_plans(plans_dir: Path, problems: list[str]) -> dict[str, Plan]:
    """Every `*.toml` in the directory may define `[plan.NAME]` tables."""
    plans: dict[str, Plan] = {}
    files = plan_files(plans_dir)
    if not files:
        problems.append(f"{plans_dir}: expected at least one plan file '*.toml', found none")
    for file in files:
        try:
            data = read_toml(file)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        root = Section(file, "", data, problems)
        table = root.subtable("plan", "a table of plans, [plan.NAME]")
        root.reject_unknown()
        for name, body in table.items():
            if not PLAN_NAME.match(name):
                problems.append(
                    f"{file}: key 'plan.{name}': expected a plan name of lower-case letters,"
                    " digits, '-' or '_' (at most 64)"
                )
                continue
            if name in plans:
                problems.append(
                    f"{file}: key 'plan.{name}': plan already defined in {plans[name].source}"
                )
                continue
            plans[name] = _plan(file, name, Section(file, f"plan.{name}", body, problems))
    return plans


def _plan(file: Path, name: str, section: Section) -> Plan:
    description = section.get("description", "", "a text", string)
    mode = section.get("mode", "enforce", "'enforce' or 'shadow'", choice("enforce", "shadow"))
    max_recipients = section.get(
        "max_recipients_per_message",
        DEFAULT_MAX_RECIPIENTS,
        "a whole number from 1 to 100000",
        integer(1, 100_000),
    )
    windows = _windows(file, f"plan.{name}.windows", section.subtable("windows"), section.problems)
    checks = read_plan_checks(
        Section(file, f"plan.{name}.checks", section.subtable("checks"), section.problems)
    )
    unsubscribe_plan = read_plan_unsubscribe(section)
    bounce_plan = read_plan_bounces(section)
    reputation = read_plan_reputation(section)
    ladder = read_plan_ladder(
        Section(file, f"plan.{name}.ladder", section.subtable("ladder"), section.problems)
    )
    footer = read_plan_footer(section)
    warmup = read_plan_warmup(section)
    onboarding = read_plan_onboarding(section)
    consent = read_plan_consent(section)
    section.reject_unknown()
    return Plan(
        name=name,
        description=description,
        source=file,
        limits=Limits(max_recipients=max_recipients, windows=windows),
        checks=checks,
        unsubscribe=unsubscribe_plan,
        bounces=bounce_plan,
        ladder=ladder,
        reputation=reputation,
        footer=footer,
        warmup=warmup,
        onboarding=onboarding,
        consent=consent,
        mode=cast(Literal["enforce", "shadow"], mode),
    )


def parse_period(raw: Any) -> int | None:
    """Seconds (a whole number) or a text such as '30s', '10m', '1h', '1d'; in milliseconds."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        seconds = raw
    elif isinstance(raw, str) and (match := PERIOD.match(raw.strip())):
        seconds = int(match[1]) * PERIOD_UNITS[match[2]]
    else:
        return None
    return seconds * 1000 if 1 <= seconds <= MAX_PERIOD_SECONDS else None


def _windows(
    file: Path, prefix: str, table: dict[str, Any], problems: list[str]
) -> tuple[Window, ...]:
    """`[plan.NAME.windows.WINDOW]` tables: per, count, limit, period."""
    windows: list[Window] = []
    for name, body in table.items():
        if not WINDOW_NAME.match(name):
            problems.append(
                f"{file}: key '{prefix}.{name}': expected a window name of lower-case letters,"
                " digits, '-' or '_' (at most 64)"
            )
            continue
        section = Section(file, f"{prefix}.{name}", body, problems)
        per = section.get("per", "", "'sender' or 'tenant'", choice(*Scope))
        count = section.get("count", "", "'recipients' or 'messages'", choice(*Unit))
        limit = section.get("limit", -1, "a whole number from 0 to 10^9", integer(0, 10**9))
        period = section.get(
            "period",
            0,
            "seconds, or a text such as '30s', '10m', '1h', '1d' (at most 31d)",
            parse_period,
        )
        for key in ("per", "count", "limit", "period"):
            if key not in section.table:
                problems.append(f"{file}: key '{prefix}.{name}.{key}': required")
        section.reject_unknown()
        if per and count and limit >= 0 and period:
            windows.append(Window(name, Scope(per), Unit(count), limit, period))
    counters = [window.counter for window in windows]
    for window in windows:
        if counters.count(window.counter) > 1:
            problems.append(
                f"{file}: key '{prefix}.{window.name}': another window of this plan counts the same"
                f" {window.unit} per {window.scope} over the same period; keep one"
            )
    return tuple(windows)


def read_plan_checks(section: Section) -> PlanChecks:
    """`[plan.NAME.checks]`: a mode per check, alignment, allowed domains, subject patterns."""
    modes = dict(DEFAULT_MODES)
    for check in Check:
        modes[check] = Mode(
            section.get(check.value, DEFAULT_MODES[check].value, MODE_FORM, choice(*Mode))
        )
    defaults = PlanChecks()
    checks = PlanChecks(
        modes=modes,
        alignment=AlignmentMode(
            section.get(
                "alignment_mode", defaults.alignment.value, "'relaxed' or 'strict'",
                choice(*AlignmentMode),
            )
        ),
        dkim_satisfies_alignment=section.get(
            "dkim_satisfies_alignment", defaults.dkim_satisfies_alignment, "true or false",
            boolean,
        ),
        allowed_reply_to_domains=section.get(
            "allowed_reply_to_domains", frozenset(), "a list of domain names", domain_set
        ),
        allowed_sender_domains=section.get(
            "allowed_sender_domains", frozenset(), "a list of domain names", domain_set
        ),
        forbidden_subjects=section.get(
            "forbidden_subjects", (), "a list of regular expressions (Python syntax)",
            patterns,
        ),
    )  # fmt: skip
    section.reject_unknown()
    return checks


def read_plan_unsubscribe(section: Section) -> UnsubscribePlan:
    """The unsubscribe and bulk-classification keys of one [plan.NAME] table."""
    defaults = UnsubscribePlan()
    recipients = section.get(
        "bulk_recipients",
        cast(int | None, None),
        "a whole number from 2 to 100000",
        integer(2, 100_000),
    )
    fingerprint = section.get(
        "bulk_fingerprint_recipients",
        cast(int | None, None),
        "a whole number from 2 to 10000000",
        integer(2, 10_000_000),
    )
    window = section.get(
        "bulk_fingerprint_window",
        defaults.bulk_fingerprint_window,
        "seconds from 60 to 2592000 (30 days)",
        integer(60, 2_592_000),
    )
    noncompliant = section.get(
        "on_noncompliant_unsubscribe",
        str(defaults.on_noncompliant_unsubscribe),
        "'replace' or 'reject'",
        choice("replace", "reject"),
    )
    one_recipient = section.get(
        "bulk_one_recipient_per_message",
        defaults.bulk_one_recipient_per_message,
        "true or false",
        boolean,
    )
    return UnsubscribePlan(
        bulk_recipients=recipients,
        bulk_fingerprint_recipients=fingerprint,
        bulk_fingerprint_window=window,
        on_noncompliant_unsubscribe=cast(Literal["replace", "reject"], noncompliant),
        bulk_one_recipient_per_message=one_recipient,
    )


def read_plan_bounces(section: Section) -> BouncePlan:
    """The report intake's keys of one [plan.NAME] table: soft bounces that become hard."""
    defaults = BouncePlan()
    count = section.get(
        "soft_bounces_to_suppress",
        defaults.soft_bounces_to_suppress,
        "a whole number from 1 to 100",
        integer(1, 100),
    )
    window = section.get(
        "soft_bounce_window",
        defaults.soft_bounce_window,
        "seconds from 3600 to 2678400 (31 days)",
        integer(3600, MAX_PERIOD_SECONDS),
    )
    return BouncePlan(soft_bounces_to_suppress=count, soft_bounce_window=window)


PERCENT_FORM = "a percentage from 0.0001 to 100 (0.3 means 0.3 %)"


def read_plan_reputation(section: Section) -> ReputationPlan:
    """The complaint and bounce rates' keys of one [plan.NAME] table.

    Percentages become parts per million, so the decision compares integers;
    a review threshold above the suspend threshold is a problem, not a silent swap.
    """
    defaults = ReputationPlan()
    period = section.get(
        "rate_period",
        defaults.period,
        "seconds from 86400 (1 day) to 2678400 (31 days)",
        integer(86_400, MAX_PERIOD_SECONDS),
    )
    measures: dict[Measure, Thresholds] = {}
    for measure, prefix in ((Measure.COMPLAINTS, "complaint"), (Measure.BOUNCES, "bounce")):
        base = defaults.thresholds(measure)
        minimum = section.get(
            f"{prefix}_min_delivered",
            base.min_delivered,
            "a whole number of delivered recipients from 1 to 100000000",
            integer(1, 100_000_000),
        )
        review, suspend = (
            section.get(
                f"{prefix}_{name}",
                default / 10_000,
                PERCENT_FORM,
                number(0.0001, 100.0),
            )
            for name, default in (("review", base.review_ppm), ("suspend", base.suspend_ppm))
        )
        if review > suspend:
            section.fail(f"{prefix}_review", f"at most {prefix}_suspend ({suspend})", review)
        measures[measure] = Thresholds(minimum, round(review * 10_000), round(suspend * 10_000))
    return ReputationPlan(
        period=period, complaints=measures[Measure.COMPLAINTS], bounces=measures[Measure.BOUNCES]
    )


def read_plan_ladder(section: Section) -> LadderPlan:
    """`[plan.NAME.ladder]`: what a near-cap repeat is (policy.ladder); the rungs are fixed."""
    defaults = LadderPlan()
    enabled = section.get("enabled", defaults.enabled, "true or false", boolean)
    ratio = section.get(
        "near_cap_ratio",
        defaults.ratio,
        "a ratio of the recipient cap from 0.5 to 1 (0.9 means 90 %)",
        number(0.5, 1.0),
    )
    repeats = section.get(
        "near_cap_repeats",
        defaults.repeats,
        "a whole number from 1 to 1000000",
        integer(1, 1_000_000),
    )
    window_ms = section.get(
        "near_cap_window",
        defaults.window * 1000,
        "seconds from 60, or a text such as '12h', '1d' (at most 31d)",
        lambda raw: period if (period := parse_period(raw)) and period >= 60_000 else None,
    )
    section.reject_unknown()
    return LadderPlan(
        enabled=enabled,
        ratio_ppm=round(ratio * 1_000_000),
        repeats=repeats,
        window=window_ms // 1000,
    )


FOOTER_FORM = "'check', 'insert' or 'off', or a table [plan.NAME.footer] with mode = one of them"


def read_plan_footer(plan: Section) -> FooterPlan:
    """`footer = "check"` of a plan, or its `[plan.NAME.footer]` table with the bounds too.

    The sender-identity footer of bulk mail (policy.footer); the short form
    takes the default bounds.
    """
    raw = plan.get("footer", cast(object, {}), FOOTER_FORM, _string_or_table)
    defaults = FooterPlan()
    if isinstance(raw, str):
        short = choice(*FooterMode)(raw)
        if short is None:
            plan.fail("footer", FOOTER_FORM, raw)
        return FooterPlan(mode=FooterMode(short or defaults.mode))
    section = Section(plan.file, plan.key_path("footer"), raw, plan.problems)
    mode = section.get(
        "mode", defaults.mode.value, "'check', 'insert' or 'off'", choice(*FooterMode)
    )
    max_part_bytes = section.get(
        "max_part_bytes",
        defaults.max_part_bytes,
        "a whole number of bytes from 1024 to 67108864 (64 MiB)",
        integer(1024, 64 << 20),
    )
    oversize = section.get(
        "oversize", defaults.oversize.value, "'check' or 'refuse'", choice(*Oversize)
    )
    max_depth = section.get(
        "max_depth", defaults.max_depth, "a whole number from 1 to 50", integer(1, 50)
    )
    max_parts = section.get(
        "max_parts", defaults.max_parts, "a whole number from 1 to 10000", integer(1, 10_000)
    )
    section.reject_unknown()
    return FooterPlan(
        mode=FooterMode(mode),
        max_part_bytes=max_part_bytes,
        oversize=Oversize(oversize),
        max_depth=max_depth,
        max_parts=max_parts,
    )


def _string_or_table(raw: Any) -> object | None:
    return raw if isinstance(raw, str | dict) else None

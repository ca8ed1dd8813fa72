"""`[plan.NAME.warmup]`: the warm-up ramp of a plan's new tenants (policy.warmup).

Optional: a plan without the table has no ramp, and neither do tenants on it.
With the table the ramp is on unless `enabled = false`; `step` is written as
the windows' periods are ("1d", "12h", or seconds; at least a minute, at most
31 days).
"""

from __future__ import annotations

from typing import Any

from aupmilter.config.loader import Section, boolean, integer, number
from aupmilter.policy.warmup import WarmupPlan

KEY = "warmup"
MIN_STEP_MS = 60_000


def read_plan_warmup(plan: Section) -> WarmupPlan:
    """The plan's ramp; problems are collected in the plan's section, never raised."""
    if KEY not in plan.table:
        plan.seen.add(KEY)
        return WarmupPlan()
    from aupmilter.config.plans import parse_period  # plans imports this module

    section = Section(plan.file, plan.key_path(KEY), plan.subtable(KEY), plan.problems)
    defaults = WarmupPlan(enabled=True)
    enabled = section.get("enabled", True, "true or false", boolean)
    start = section.get(
        "start_percent",
        defaults.start_percent,
        "a whole percentage from 1 to 100 (10 means 10 % of the limits on day 1)",
        integer(1, 100),
    )
    factor = section.get(
        "factor",
        defaults.factor,
        "a number from 1.1 to 10 (2 doubles the scale at each step)",
        number(1.1, 10.0),
    )

    def step_period(raw: Any) -> int | None:
        period = parse_period(raw)
        return period if period is not None and period >= MIN_STEP_MS else None

    step_ms = section.get(
        "step",
        defaults.step * 1000,
        "seconds from 60, or a text such as '12h', '1d' (at most 31d)",
        step_period,
    )
    section.reject_unknown()
    return WarmupPlan(enabled=enabled, start_percent=start, factor=factor, step=step_ms // 1000)

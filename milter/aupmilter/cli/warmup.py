"""`aup-milter tenant warmup ID --restart | --finish`, and the ramp as `tenant show` tells it.

The scale shown is the one the tenant's next transaction runs at: the ramp
as stored, with the pause its rates call for now (the counters read as the
MAIL FROM reads them; `policy.warmup.at_mail_from`), so `show` and the
milter agree even before a transaction recorded a change.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from aupmilter.config import Config
from aupmilter.exitcodes import EX_FAILURE, EX_OK
from aupmilter.policy.plans import Plan
from aupmilter.policy.warmup import Phase, Ramp, RateCounts, at_mail_from, review_finding
from aupmilter.store import keys
from aupmilter.store.tenants import TenantAdmin, TenantInfo, warmup_state


def add_parser(actions: Any) -> None:
    warmup = actions.add_parser(
        "warmup", help="restart a tenant's warm-up ramp from day 1, or finish it (audited)"
    )
    warmup.add_argument("tenant_id", metavar="ID")
    what = warmup.add_mutually_exclusive_group(required=True)
    what.add_argument("--restart", action="store_true", help="start the ramp again at day 1")
    what.add_argument("--finish", action="store_true", help="end the ramp: full limits now")
    warmup.add_argument("--reason", default="", help="why (kept in the tenant and the audit)")


def run(admin: TenantAdmin, args: argparse.Namespace, config: Config | None) -> int:
    info = admin.show(args.tenant_id)  # TenantError for an unknown tenant
    plan = config.plans.get(info.plan or "") if config is not None else None
    if args.restart:
        if config is not None and (plan is None or not plan.warmup.enabled):
            print(
                f"aup-milter tenant: plan {info.plan!r} of tenant {info.tenant_id} has no"
                f" [plan.{info.plan}.warmup]: a ramp would not scale anything",
                file=sys.stderr,
            )
            return EX_FAILURE
        info = admin.restart_warmup(info.tenant_id, args.reason)
        print(f"warm-up of tenant {info.tenant_id} restarted at day 1")
    else:
        info = admin.finish_warmup(info.tenant_id, args.reason)
        print(f"warm-up of tenant {info.tenant_id} finished: full limits")
    return EX_OK


def current(client: Any, info: TenantInfo, plan: Plan | None, now: float) -> Ramp | None:
    """The ramp the tenant's next transaction runs at; None when its plan is unknown."""
    if plan is None:
        return None
    state = warmup_state(info.fields)
    finding = None
    if plan.warmup.enabled and state is not None and state.finished_at is None:
        from aupmilter.policy.reputation import Measure
        from aupmilter.store.reputation import ReputationCounters

        counters = ReputationCounters(client)
        complaints = counters.count(info.tenant_id, Measure.COMPLAINTS, 0, plan.reputation, now)
        bounces = counters.count(info.tenant_id, Measure.BOUNCES, 0, plan.reputation, now)
        rates = RateCounts(complaints.events, bounces.events, complaints.delivered)
        finding = review_finding(rates, plan.reputation)
    ramp, _ = at_mail_from(plan.warmup, state, finding, now)
    return ramp


def lines(ramp: Ramp | None, info: TenantInfo, plan: Plan | None) -> list[str]:
    """`tenant show`'s warm-up lines: scale, day, pause and why, next step."""
    if plan is None:
        return ["warm-up: unknown (the plan is not in the configuration read)"]
    assert ramp is not None
    state = warmup_state(info.fields)
    text = [f"warm-up: {ramp.describe()}"]
    if plan.warmup.enabled and ramp.phase is Phase.NONE:
        text[0] += f" (no ramp recorded; plan {plan.name}: {plan.warmup.describe()})"
    elif plan.warmup.enabled:
        text.append(f"  plan {plan.name}: {plan.warmup.describe()}")
    elif state is not None:
        text[0] += f" (plan {plan.name} has no [plan.{plan.name}.warmup]; its ramp is ignored)"
    if state is not None and ramp.phase is not Phase.NONE:
        started = _when(state.started_at)
        text.append(f"  started {started}" + (f" ({state.reason})" if state.reason else ""))
        if ramp.paused_at is not None:
            text.append(f"  paused since {_when(ramp.paused_at)}")
        if ramp.next_step_at is not None:
            text.append(
                f"  next step: {ramp.next_percent} % at {_when(ramp.next_step_at)}"
                " if the rates stay below review"
            )
        for problem in state.problems:
            text.append(f"  problem: {problem}")
    return text


def as_json(ramp: Ramp | None, info: TenantInfo, plan: Plan | None) -> dict[str, object]:
    state = warmup_state(info.fields)
    if ramp is None:
        return {"warmup": {"phase": "unknown"}}
    payload: dict[str, object] = {
        "phase": ramp.phase.value,
        "percent": ramp.percent,
        "day": ramp.day,
        "paused": ramp.paused_at is not None,
        "pause_reason": ramp.pause_reason or None,
        "paused_since": ramp.paused_at,
        "next_step_at": ramp.next_step_at,
        "next_percent": ramp.next_percent,
        "good_standing_seconds": round(ramp.good_seconds, 3),
        "plan_ramp": plan.warmup.describe() if plan is not None and plan.warmup.enabled else None,
        "started_at": state.started_at if state is not None else None,
        "reason": info.fields.get(keys.FIELD_WARMUP_REASON) or None,
    }
    return {"warmup": payload}


def _when(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(unix))

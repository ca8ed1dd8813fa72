"""Warm-up through the private Postfix: a fresh tenant throttled by its ramp, more the next day.

The milter's clock is real, so "the next day" is simulated by moving the
ramp's start a day into the past in Redis (what a day of good standing does).
"""

from __future__ import annotations

import json
import time

import pytest

from testbed import Stack
from testbed.client import ClientFactory, Outcome
from testbed.proc import wait_until
from tests.e2e.test_limits import delivered_to, recipients, send

pytestmark = pytest.mark.e2e

DAY = 86_400


def codes(outcome: Outcome) -> list[int]:
    return [r.code for r in outcome.rcpts]


def ramp_shown(stack: Stack) -> dict[str, object]:
    """`tenant show --json` with the stack's configuration (the plans' ramps)."""
    args = ("-c", str(stack.milter_config), "show", "acme", "--json")
    shown: dict[str, object] = json.loads(stack.tenant_cli(*args).stdout)["warmup"]
    return shown


def warmup_events(stack: Stack) -> list[dict[str, str]]:
    raw = stack.redis_cli("--json", "XRANGE", "aup:audit", "-", "+")
    found = []
    for _id, flat in json.loads(raw or "[]"):
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        if fields.get("event", "").startswith("warmup-") and fields.get("tenant") == "acme":
            found.append(fields)
    return found


def test_a_fresh_tenant_is_throttled_by_the_ramp_and_let_through_more_the_next_day(
    stack: Stack, connect: ClientFactory
) -> None:
    # A fresh tenant: `tenant add` on a plan with [plan.NAME.warmup] starts its ramp.
    stack.remove_tenant("acme")
    config = str(stack.milter_config)
    login = stack.auth_authen("acme")
    stack.tenant_cli(
        "-c", config, "add", "acme", "--plan", "e2e-warmup", "--login", login,
        "--domain", "acme.example",
    )  # fmt: skip
    started = ramp_shown(stack)
    assert (started["phase"], started["percent"], started["day"]) == ("ramp", 10, 1)

    # Day 1: 10 % of 50 recipients a day.
    first, token = send(connect("acme"), recipients(6, "day1"), "warm-up day 1")
    assert codes(first) == [250] * 5 + [450], first.rcpts
    refused = first.rcpts[5]
    assert refused.enhanced == "4.7.1"
    assert "5 recipients per day for tenant acme" in refused.text
    assert "in warm-up at 10 percent of its limits" in refused.text
    assert "room again in" in refused.text
    assert first.accepted
    delivered_to(stack, token, 5)

    # The next day (simulated): the ramp started a day ago, 20 % = 10 a day, 5 used.
    stack.redis_cli(
        "HSET", "aup:tenant:acme", "warmup_started_at", str(int(time.time()) - DAY - 60)
    )
    second, token = send(connect("acme"), recipients(7, "day2"), "warm-up day 2")
    assert codes(second) == [250] * 5 + [450, 450], second.rcpts
    assert "in warm-up at 20 percent of its limits" in second.rcpts[5].text
    delivered_to(stack, token, 5)

    shown = ramp_shown(stack)
    assert (shown["phase"], shown["percent"], shown["day"], shown["paused"]) == (
        "ramp", 20, 2, False,
    )  # fmt: skip
    assert shown["next_percent"] == 40
    assert isinstance(shown["next_step_at"], float) and shown["next_step_at"] > time.time()
    text = stack.tenant_cli("-c", config, "show", "acme").stdout
    assert "warm-up day 2: windows at 20 % of the plan's limits" in text
    assert "next step: 40 %" in text

    # Each scale the tenant ran at was audited once, as it changed.
    def two_events() -> list[dict[str, str]] | None:
        found = warmup_events(stack)
        return found if len(found) >= 2 else None

    events = wait_until(two_events, timeout=10, what="two warm-up audit events")
    assert [(e["event"], e["percent"]) for e in events] == [
        ("warmup-step", "10"),
        ("warmup-step", "20"),
    ]

    # A restart (as for a newly verified domain) is day 1 again: 10 used of 5.
    stack.tenant_cli("-c", config, "warmup", "acme", "--restart", "--reason", "new domain")
    third, _ = send(connect("acme"), recipients(1, "restarted"), "after the restart")
    assert codes(third) == [450]
    assert "in warm-up at 10 percent" in third.rcpts[0].text
    # And finished: the plan's full 50 a day.
    stack.tenant_cli("-c", config, "warmup", "acme", "--finish")
    fourth, token = send(connect("acme"), recipients(3, "finished"), "after the finish")
    assert codes(fourth) == [250] * 3
    delivered_to(stack, token, 3)

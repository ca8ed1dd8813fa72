"""The RCPT decision: per-message cap, window room, overrides, retry times (pure)."""

from __future__ import annotations

import pytest

from aupmilter.policy.limits import (
    LimitOverrides,
    Limits,
    OverrideError,
    RecipientGate,
    Scope,
    Unit,
    Window,
    WindowFill,
    bucket_ms,
    format_period,
    open_gate,
    recipient_key,
    sender_identity,
    with_overrides,
)
from aupmilter.policy.verdict import Action
from aupmilter.store.tenants import limit_overrides

HOUR = 3_600_000
NOW = 1_000 * HOUR  # an exact multiple of every bucket length used below

RCPT_HOUR = Window("sender-rcpt-hour", Scope.SENDER, Unit.RECIPIENTS, 10, HOUR)
MSG_HOUR = Window("tenant-msg-hour", Scope.TENANT, Unit.MESSAGES, 3, HOUR)


def gate(cap: int = 100, windows: tuple[tuple[Window, int], ...] = ()) -> RecipientGate:
    limits = Limits(cap, tuple(w for w, _ in windows))
    fills = [WindowFill(used) for _, used in windows]
    return RecipientGate(limits, fills, "alice", "acme", NOW)


def codes(g: RecipientGate, recipients: list[str]) -> list[str]:
    return [(r.code + " " + r.status) if (r := g.decide(a)) else "ok" for a in recipients]


def test_cap_refuses_the_rcpt_beyond_it_with_452_453() -> None:
    g = gate(cap=3)
    assert codes(g, ["a@x", "b@x", "c@x", "d@x", "e@x"]) == ["ok"] * 3 + ["452 4.5.3"] * 2
    assert list(g.accepted.values()) == ["a@x", "b@x", "c@x"]
    reply = g.decide("f@x")
    assert reply is not None and "at most 3 recipients per message" in reply.text
    assert "another transaction" in reply.text


@pytest.mark.parametrize(
    ("first", "again"),
    [("a@x.example", "a@x.example"), ("a@x.example", "a@X.EXAMPLE")],
)
def test_identical_rcpt_counts_once(first: str, again: str) -> None:
    g = gate(cap=2)
    assert codes(g, [first, again, "b@x.example", again]) == ["ok"] * 4
    assert len(g.accepted) == 2


def test_local_part_case_is_significant() -> None:
    g = gate(cap=1)
    assert codes(g, ["Bob@x.example", "bob@x.example"]) == ["ok", "452 4.5.3"]


@pytest.mark.parametrize(
    ("used", "expected"),
    [
        (0, ["ok"] * 5),
        (7, ["ok"] * 3 + ["450 4.7.1"] * 2),
        (10, ["450 4.7.1"] * 5),
        (12, ["450 4.7.1"] * 5),
    ],
)
def test_recipient_window_room(used: int, expected: list[str]) -> None:
    g = gate(windows=((RCPT_HOUR, used),))
    assert codes(g, [f"r{i}@x" for i in range(5)]) == expected


@pytest.mark.parametrize(("used", "first"), [(2, "ok"), (3, "450 4.7.1")])
def test_message_window_needs_room_for_one_more_message(used: int, first: str) -> None:
    g = gate(windows=((MSG_HOUR, used),))
    assert codes(g, ["a@x", "b@x", "c@x"]) == [first] * 3


def test_cap_is_reported_before_a_window_that_is_also_full() -> None:
    g = gate(cap=2, windows=((RCPT_HOUR, 8),))
    assert codes(g, ["a@x", "b@x", "c@x"]) == ["ok", "ok", "452 4.5.3"]


def test_window_reply_names_the_window_and_the_wait() -> None:
    # 6 recipients in the oldest counted bucket, 4 in the current one.
    current = NOW // bucket_ms(HOUR)
    fill = WindowFill(10, ((current - 60, 6), (current, 4)))
    g = RecipientGate(Limits(100, (RCPT_HOUR,)), [fill], "alice", "acme", NOW)
    reply = g.decide("a@x")
    assert reply is not None
    assert (reply.code, reply.status) == ("450", "4.7.1")
    assert "10 recipients per hour for sender alice" in reply.text
    # The oldest bucket stops counting one bucket (60 s) from now.
    assert "room again in 60 seconds" in reply.text


@pytest.mark.parametrize(
    ("buckets", "needed", "seconds"),
    [
        (((0, 10),), 1, 3600 + 60),
        (((-30, 3), (0, 7)), 3, 30 * 60 + 60),
        (((-30, 3), (0, 7)), 4, 3600 + 60),
        (((-60, 5), (-59, 5)), 6, 120),
    ],
)
def test_seconds_until_room(
    buckets: tuple[tuple[int, int], ...], needed: int, seconds: int
) -> None:
    current = NOW // bucket_ms(HOUR)
    fill = WindowFill(10, tuple((current + i, c) for i, c in buckets))
    assert fill.seconds_until_room(RCPT_HOUR, needed, NOW) == seconds


def test_more_than_the_limit_never_fits() -> None:
    fill = WindowFill(0)
    assert fill.seconds_until_room(RCPT_HOUR, 11, NOW) == 3600


def test_no_room_reply_after_a_concurrent_charge() -> None:
    g = gate(windows=((RCPT_HOUR, 0),))
    assert codes(g, ["a@x", "b@x"]) == ["ok", "ok"]
    current = NOW // bucket_ms(HOUR)
    reply = g.no_room_reply(0, WindowFill(9, ((current, 9),)), NOW)
    assert (reply.code, reply.status) == ("451", "4.7.1")
    assert "concurrent" in reply.text and "10 recipients per hour for sender alice" in reply.text


@pytest.mark.parametrize(
    ("fields", "cap", "limits"),
    [
        ({}, 100, (10, 3)),
        ({"max_recipients_per_message": "5"}, 5, (10, 3)),
        ({"window.tenant-msg-hour": "0"}, 100, (10, 0)),
        ({"window.sender-rcpt-hour": "5000", "status": "active"}, 100, (5000, 3)),
    ],
)
def test_overrides(fields: dict[str, str], cap: int, limits: tuple[int, ...]) -> None:
    result = with_overrides(Limits(100, (RCPT_HOUR, MSG_HOUR)), limit_overrides(fields))
    assert result.max_recipients == cap
    assert tuple(w.limit for w in result.windows) == limits


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_recipients_per_message": "ten"}, "must be a whole number"),
        ({"max_recipients_per_message": "-1"}, "must be a whole number"),
        ({"window.sender-rcpt-hour": ""}, "must be a whole number"),
        ({"window.no-such": "5"}, "names no window of the plan"),
    ],
)
def test_bad_overrides(fields: dict[str, str], message: str) -> None:
    with pytest.raises(OverrideError, match=message):
        with_overrides(Limits(100, (RCPT_HOUR,)), limit_overrides(fields))


def test_overrides_as_the_store_hands_them_over() -> None:
    plan = Limits(100, (RCPT_HOUR, MSG_HOUR))
    assert with_overrides(plan, LimitOverrides()) is plan
    result = with_overrides(plan, LimitOverrides(7, {MSG_HOUR.name: 1}))
    assert result.max_recipients == 7 and tuple(w.limit for w in result.windows) == (10, 1)
    with pytest.raises(OverrideError, match="names no window of the plan"):
        with_overrides(plan, LimitOverrides(windows={"gone": 1}))
    with pytest.raises(OverrideError, match="the store's own words"):
        with_overrides(plan, LimitOverrides(problems=("the store's own words",)))


def test_open_gate_turns_a_bad_override_into_451_470() -> None:
    opened = open_gate(
        Limits(100, ()),
        limit_overrides({"max_recipients_per_message": "x"}),
        [],
        sender="alice",
        tenant="acme",
        now_ms=NOW,
    )
    assert not isinstance(opened, RecipientGate)
    assert opened.action is Action.TEMPFAIL
    assert opened.reply is not None and opened.reply.status == "4.7.0"


def test_open_gate_refuses_mismatched_fills() -> None:
    opened = open_gate(
        Limits(100, (RCPT_HOUR,)), LimitOverrides(), [], sender="a", tenant="t", now_ms=NOW
    )
    assert not isinstance(opened, RecipientGate) and opened.refuses


@pytest.mark.parametrize(
    ("period_ms", "text"),
    [
        (1000, "second"),
        (30_000, "30 seconds"),
        (60_000, "minute"),
        (HOUR, "hour"),
        (2 * HOUR, "2 hours"),
        (86_400_000, "day"),
        (90_000, "90 seconds"),
    ],
)
def test_format_period(period_ms: int, text: str) -> None:
    assert format_period(period_ms) == text


@pytest.mark.parametrize(
    ("period_ms", "bucket", "buckets"),
    [(HOUR, 60_000, 60), (1000, 17, 59), (6000, 100, 60), (59, 1, 59)],
)
def test_buckets_cover_the_period(period_ms: int, bucket: int, buckets: int) -> None:
    window = Window("w", Scope.TENANT, Unit.MESSAGES, 1, period_ms)
    assert (window.bucket_ms, window.buckets) == (bucket, buckets)
    assert window.bucket_ms * window.buckets >= period_ms


@pytest.mark.parametrize(
    ("login", "sender", "identity"),
    [
        ("acme", "a@acme.example", "acme"),
        (None, "A@Acme.Example", "A@acme.example"),
        (None, "", "<>"),
        ("", "b@x.example", "b@x.example"),
    ],
)
def test_sender_identity(login: str | None, sender: str, identity: str) -> None:
    assert sender_identity(login, sender) == identity


def test_recipient_key_without_domain_is_kept() -> None:
    assert recipient_key("postmaster") == "postmaster"

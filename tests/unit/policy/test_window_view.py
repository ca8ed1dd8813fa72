"""policy.window_view: a window's fill, room and expiry as operators see them (pure)."""

from __future__ import annotations

import pytest

from aupmilter.policy.limits import Scope, Unit, Window, WindowFill
from aupmilter.policy.window_view import (
    UnknownWindow,
    chosen_windows,
    duration,
    fill_of,
    window_status,
)

HOUR = Window("sender-hour", Scope.SENDER, Unit.RECIPIENTS, 10, 3_600_000)  # buckets of 60 s
DAY = Window("tenant-day", Scope.TENANT, Unit.MESSAGES, 3, 86_400_000)  # buckets of 1440 s
NOW = 1_000 * 60_000 + 30_000  # bucket 1000 of HOUR, 30 s into it


@pytest.mark.parametrize(
    ("buckets", "used", "pairs"),
    [
        ({}, 0, ()),
        ({"1000": "4"}, 4, ((1000, 4),)),
        # The current bucket and the 60 before it count; older ones do not.
        ({"940": "1", "939": "7", "1000": "2"}, 3, ((940, 1), (1000, 2))),
        # Fields that are no bucket are skipped; a count that is no number counts 0.
        ({"x": "5", "999": "y", "998": "3"}, 3, ((998, 3), (999, 0))),
    ],
)
def test_fill_is_summed_like_the_mail_from_script(
    buckets: dict[str, str], used: int, pairs: tuple[tuple[int, int], ...]
) -> None:
    fill = fill_of(buckets, HOUR, NOW)
    assert (fill.used, tuple(fill.buckets)) == (used, pairs)


@pytest.mark.parametrize(
    ("window", "fill", "sender", "expected"),
    [
        # Empty: all free, room now, nothing to expire; a tenant window names no sender.
        (DAY, WindowFill(0), "bob", (None, 0, 3, 0, None)),
        # 4 of 10: room now; the oldest bucket (990) stops counting at bucket 1051.
        (HOUR, WindowFill(4, ((990, 4),)), "bob", ("bob", 4, 6, 0, 51 * 60 - 30)),
        # Full: room when enough buckets expire (the oldest, 941, frees 6 of 10).
        (HOUR, WindowFill(10, ((941, 6), (1000, 4))), "bob", ("bob", 10, 0, 90, 90)),
        # Over its limit (the limit was lowered): room once 3 expire, the first two buckets.
        (HOUR, WindowFill(12, ((950, 2), (960, 1), (1000, 9))), "b", ("b", 12, 0, 1230, 630)),
    ],
)
def test_window_status(
    window: Window,
    fill: WindowFill,
    sender: str,
    expected: tuple[str | None, int, int, int, int | None],
) -> None:
    status = window_status(window, window.limit, fill, NOW, sender)
    got = (status.sender, status.used, status.free, status.room_in_s, status.oldest_expires_in_s)
    assert got == expected
    assert status.room_in_s == fill.seconds_until_room(window, 1, NOW)


def test_an_override_is_shown_beside_the_plans_limit() -> None:
    status = window_status(Window("w", Scope.TENANT, Unit.MESSAGES, 5, 60_000), 3, WindowFill(4), 0)
    assert status.overridden and status.fraction == 0.8
    assert status.as_json()["plan_limit"] == 3 and status.as_json()["limit"] == 5
    zero = window_status(Window("z", Scope.TENANT, Unit.MESSAGES, 0, 60_000), 0, WindowFill(0), 0)
    assert zero.fraction == 1.0 and not zero.overridden


@pytest.mark.parametrize(
    ("name", "chosen"),
    [(None, ("sender-hour", "tenant-day")), ("sender-hour", ("sender-hour",))],
)
def test_chosen_windows(name: str | None, chosen: tuple[str, ...]) -> None:
    assert tuple(w.name for w in chosen_windows((HOUR, DAY), name)) == chosen


def test_an_unknown_window_lists_the_plans() -> None:
    with pytest.raises(
        UnknownWindow, match=r"no window 'x' \(its windows: sender-hour, tenant-day\)"
    ):
        chosen_windows((HOUR, DAY), "x")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0, "now"),
        (45, "45s"),
        (60, "1m"),
        (725, "12m 5s"),
        (3600 * 3 + 120, "3h 2m"),
        (86400 * 2 + 3600 * 4 + 59, "2d 4h"),
    ],
)
def test_durations(seconds: int | None, text: str) -> None:
    assert duration(seconds) == text

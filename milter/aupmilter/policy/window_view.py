"""A rate window as an operator sees it: its fill from the stored buckets, its room, and
when room comes back (`aup-milter windows show`, `aup-milter top`).

Pure, like the rest of policy/: the buckets come from the store, the clock is
passed in. The fill is computed exactly as scripts/sender_state.lua computes
it at MAIL FROM, so what the command shows is what the next transaction sees.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aupmilter.policy.limits import Scope, Window, WindowFill


def fill_of(buckets: Mapping[str, str], window: Window, now_ms: int) -> WindowFill:
    """The window's fill from its hash (bucket index -> count), as sender_state.lua sums it:
    the current bucket and the `buckets` before it; other fields are ignored."""
    current = now_ms // window.bucket_ms
    oldest = current - window.buckets
    pairs: list[tuple[int, int]] = []
    for raw_index, raw_count in buckets.items():
        try:
            index = int(raw_index)
        except ValueError:
            continue
        if index < oldest:
            continue
        try:
            count = int(raw_count)
        except ValueError:
            count = 0
        pairs.append((index, count))
    pairs.sort()
    return WindowFill(sum(count for _, count in pairs), tuple(pairs))


def expires_in(index: int, window: Window, now_ms: int) -> int:
    """Seconds until bucket `index` stops counting (at least 1, as the 450's retry time)."""
    free_at = (index + window.buckets + 1) * window.bucket_ms
    return max(1, math.ceil((free_at - now_ms) / 1000))


@dataclass(frozen=True, slots=True)
class WindowStatus:
    """One window of one tenant (and sender, for a per-sender window) now."""

    window: Window
    """With the limit in force: the tenant's override, else the plan's."""
    plan_limit: int
    sender: str | None
    used: int
    free: int
    room_in_s: int
    """Seconds until one more recipient (or message) fits; 0: it fits now."""
    oldest_expires_in_s: int | None
    """Seconds until the oldest counted bucket stops counting; None when nothing counts."""

    @property
    def overridden(self) -> bool:
        return self.window.limit != self.plan_limit

    @property
    def fraction(self) -> float:
        """How full, 0.0 to 1.0 (a limit of 0 is full)."""
        if self.window.limit <= 0:
            return 1.0
        return min(1.0, self.used / self.window.limit)

    def as_json(self) -> dict[str, object]:
        window = self.window
        return {
            "window": window.name,
            "per": window.scope.value,
            "counts": window.unit.value,
            "period_s": window.period_ms // 1000,
            "sender": self.sender,
            "used": self.used,
            "limit": window.limit,
            "plan_limit": self.plan_limit,
            "free": self.free,
            "room_in_s": self.room_in_s,
            "oldest_expires_in_s": self.oldest_expires_in_s,
        }


def window_status(
    window: Window, plan_limit: int, fill: WindowFill, now_ms: int, sender: str | None = None
) -> WindowStatus:
    oldest = min((index for index, count in fill.buckets if count), default=None)
    return WindowStatus(
        window=window,
        plan_limit=plan_limit,
        sender=sender if window.scope is Scope.SENDER else None,
        used=fill.used,
        free=max(0, window.limit - fill.used),
        room_in_s=fill.seconds_until_room(window, 1, now_ms),
        oldest_expires_in_s=None if oldest is None else expires_in(oldest, window, now_ms),
    )


class UnknownWindow(ValueError):
    """A window name the tenant's plan does not have; the text lists the ones it has."""


def chosen_windows(windows: Sequence[Window], name: str | None) -> tuple[Window, ...]:
    """The plan's window called `name`, or every window when `name` is None."""
    if name is None:
        return tuple(windows)
    for window in windows:
        if window.name == name:
            return (window,)
    known = ", ".join(w.name for w in windows) or "none"
    raise UnknownWindow(f"the plan has no window {name!r} (its windows: {known})")


def duration(seconds: int | None) -> str:
    """`now`, `45s`, `12m 5s`, `3h 2m`, `2d 4h`; `-` for None."""
    if seconds is None:
        return "-"
    if seconds <= 0:
        return "now"
    for size, unit, next_size, next_unit in (
        (86400, "d", 3600, "h"),
        (3600, "h", 60, "m"),
        (60, "m", 1, "s"),
    ):
        if seconds >= size:
            whole, rest = divmod(seconds, size)
            part = rest // next_size
            return f"{whole}{unit} {part}{next_unit}" if part else f"{whole}{unit}"
    return f"{seconds}s"

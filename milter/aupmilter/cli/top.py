"""`aup-milter top`: a live terminal view of the relay, from the audit trail.

Every `--interval` seconds: the audit events of the last `--minutes`
(XREVRANGE, at most `EVENT_BOUND` of them), the busiest tenants' window
fills (their hashes and window keys, pipelined), turned into one frame by
cli.top_model and drawn with rich. On a terminal it redraws in place (rich
Live, alternate screen) and reads the keyboard in cbreak mode: `q` quits,
so does Ctrl-C (exit 0). When stdout is not a terminal, or with `--once`,
it prints one frame as plain text and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from aupmilter.cli import top_model
from aupmilter.cli.top_model import Frame, bar
from aupmilter.exitcodes import EX_OK, EX_UNAVAILABLE, EX_USAGE
from aupmilter.policy.window_view import duration

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from aupmilter.config import Config
    from aupmilter.policy.window_view import WindowStatus

RedisFor = Callable[[], "tuple[str, Config | None]"]
EVENT_BOUND = 50_000
"""At most this many events are read per refresh; the header says when it was not all."""
WINDOW_TENANTS = 5
"""Window fills are read for this many of the busiest tenants."""
SENDERS_PER_TENANT = 3
BAR_WIDTH = 20


def add_parser(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    top = commands.add_parser("top", help="a live view: busiest tenants, windows, refusals, holds")
    config_option(top)
    top.add_argument("--redis", metavar="URL", help="Redis URL (default: from the config)")
    top.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="refresh (default 1)"
    )
    top.add_argument(
        "--minutes",
        type=int,
        default=10,
        metavar="N",
        help="count refusals, held messages and actions over the last N minutes (default 10)",
    )
    top.add_argument("--top", type=int, default=10, metavar="N", help="rows per table (default 10)")
    top.add_argument("--once", action="store_true", help="print one frame as text and exit")


def run(args: argparse.Namespace, redis_for: RedisFor) -> int:
    import redis

    from aupmilter.cli.status import redact
    from aupmilter.store.client import command_settings, connect

    if args.interval <= 0 or args.minutes < 1 or args.top < 1:
        print("aup-milter top: --interval, --minutes and --top must be positive", file=sys.stderr)
        return EX_USAGE
    url, config = redis_for()
    client = connect(command_settings(url, config.redis if config else None, 5.0))
    try:
        first = collect(client, config, time.time(), args.minutes * 60, args.top)
        shown = redact(url)  # the screen may be shared; the password stays off it
        if args.once or not sys.stdout.isatty():
            console = plain_console()
            console.print(render(first, shown))
            return EX_OK
        return _live(client, config, args, shown, first)
    except (redis.RedisError, OSError) as exc:
        print(f"aup-milter top: cannot use Redis at {url}: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except KeyboardInterrupt:
        return EX_OK
    finally:
        client.close()


def plain_console() -> Console:
    from rich.console import Console

    width = shutil.get_terminal_size((120, 24)).columns
    return Console(width=width, color_system=None, force_terminal=False, highlight=False)


# --- reading --------------------------------------------------------------------------


def collect(client: Any, config: Config | None, now: float, span_s: int, top: int) -> Frame:
    """One frame: the span's events, then the window fills of its busiest tenants."""
    from aupmilter.store.inspection import Inspection

    inspection = Inspection(client)
    entries = inspection.newest_events(int((now - span_s) * 1000), EVENT_BOUND)
    first = top_model.frame(entries, now, span_s, top, complete=len(entries) < EVENT_BOUND)
    if config is None:
        return first
    return top_model.with_windows(first, _window_fills(inspection, config, first, now))


def _window_fills(
    inspection: Any, config: Config, frame: Frame, now: float
) -> list[tuple[str, WindowStatus]]:
    from aupmilter.cli.windows import limits_in_force
    from aupmilter.policy.limits import Scope
    from aupmilter.policy.window_view import window_status

    tenants = top_model.busiest_tenants(frame)[:WINDOW_TENANTS]
    hashes = inspection.tenant_fields(tenants)
    now_ms = int(now * 1000)
    found: list[tuple[str, WindowStatus]] = []
    for tenant in tenants:
        fields = hashes.get(tenant)
        plan = config.plans.get(fields.get("plan", "")) if fields else None
        if fields is None or plan is None:
            continue
        windows, _problem = limits_in_force(plan.limits.windows, fields)
        readers: list[tuple[str, list[tuple[Any, int]]]] = [
            ("", [(w, p) for w, p in windows if w.scope is Scope.TENANT])
        ]
        senders = [s for t, s in top_model.busiest_senders(frame) if t == tenant]
        per_sender = [(w, p) for w, p in windows if w.scope is Scope.SENDER]
        readers += [(s, per_sender) for s in senders[:SENDERS_PER_TENANT]]
        for sender, pairs in readers:
            if not pairs:
                continue
            fills = inspection.fills(tenant, [w for w, _ in pairs], sender, now_ms)
            for (window, plan_limit), fill in zip(pairs, fills, strict=True):
                status = window_status(window, plan_limit, fill, now_ms, sender or None)
                found.append((tenant, status))
    return found


# --- drawing --------------------------------------------------------------------------


def render(frame: Frame, source: str = "") -> RenderableType:
    """The frame as rich renderables: a header line and the tables."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    minutes = frame.span_s // 60
    when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(frame.now))
    head = Text(f"aup-milter top  {when}", style="bold")
    head.append(f"  {frame.events} events in the last {minutes} min")
    if not frame.complete:
        head.append(f" (read the newest {EVENT_BOUND} only)", style="yellow")
    head.append(f"  held: {frame.held}", style="bold red" if frame.held else "")
    if source:
        head.append(f"  {source}", style="dim")

    def table(title: str, *columns: str) -> Table:
        made = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, min_width=len(title))
        for column in columns:
            made.add_column(column)
        return made

    tenants = table("Busiest tenants (last minute)", "TENANT", "RCPT/MIN", "MSGS/MIN")
    for rate in frame.tenants:
        tenants.add_row(rate.tenant, str(rate.recipients), str(rate.messages))
    senders = table("Busiest senders (last minute)", "TENANT", "SENDER", "RCPT/MIN", "MSGS/MIN")
    for rate in frame.senders:
        senders.add_row(rate.tenant, rate.sender or "-", str(rate.recipients), str(rate.messages))
    refusals = table(f"Refusals by rule (last {minutes} min)", "RULE", "COUNT")
    for rule, count in frame.refusals:
        refusals.add_row(rule, str(count))
    held = table(f"Held in the hold queue (last {minutes} min)", "TENANT", "MESSAGES")
    for tenant, count in frame.held_by_tenant:
        held.add_row(tenant, str(count))
    windows = table("Window fill", "TENANT", "WINDOW", "SENDER", "FILL", "USED/LIMIT", "ROOM IN")
    for tenant, status in frame.windows:
        style = "red" if status.fraction >= 1 else "yellow" if status.fraction >= 0.8 else "green"
        windows.add_row(
            tenant,
            status.window.name,
            status.sender or "-",
            Text(bar(status.fraction, BAR_WIDTH), style=style),
            f"{status.used}/{status.window.limit}",
            duration(status.room_in_s),
        )
    actions = table(
        f"Automatic actions (last {minutes} min)", "TIME", "EVENT", "TENANT", "SUBJECT", "DETAIL"
    )
    for action in frame.actions:
        actions.add_row(
            time.strftime("%H:%M:%S", time.gmtime(action.at)),
            action.event,
            action.tenant,
            action.subject or "-",
            action.detail or "-",
        )
    grid = Table.grid(padding=(0, 2))
    grid.add_row(tenants, senders)
    grid.add_row(refusals, held)
    parts: list[RenderableType] = [head, grid]
    if frame.windows:
        parts.append(windows)
    parts.append(actions)
    return Group(*parts)


# --- the live loop --------------------------------------------------------------------


@contextlib.contextmanager
def cbreak(stream: Any) -> Iterator[int | None]:
    """The terminal in cbreak mode (keys arrive one by one, unechoed), restored after;
    None when `stream` is not a terminal."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        yield None
        return
    if not os.isatty(fd):
        yield None
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def quit_pressed(fd: int | None, timeout: float) -> bool:
    """Wait up to `timeout` seconds for a key; True when it was `q`."""
    if fd is None:
        time.sleep(timeout)
        return False
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return False
        typed = os.read(fd, 64)
        if not typed:  # end of input: no more keys will come
            time.sleep(max(0.0, deadline - time.monotonic()))
            return False
        if b"q" in typed.lower():
            return True
    return False


def _live(
    client: Any, config: Config | None, args: argparse.Namespace, url: str, first: Frame
) -> int:
    import redis
    from rich.live import Live
    from rich.text import Text

    span_s = args.minutes * 60
    with (
        cbreak(sys.stdin) as fd,
        Live(render(first, url + "  (q quits)"), auto_refresh=False, screen=True) as live,
    ):
        while not quit_pressed(fd, args.interval):
            try:
                shown: RenderableType = render(
                    collect(client, config, time.time(), span_s, args.top), url + "  (q quits)"
                )
            except (redis.RedisError, OSError) as exc:
                shown = Text(f"aup-milter top: cannot use Redis at {url}: {exc}; retrying")
            live.update(shown, refresh=True)
    return EX_OK

"""`aup-milter windows show` and `windows reset`: a tenant's rate windows, read and emptied.

The plan comes from the tenant hash and its windows from the configuration
(as the milter reads them), with the tenant's `window.<name>` overrides. The
fills are computed as the MAIL FROM script computes them
(policy.window_view), so `show` says what the next transaction will see.
`reset` deletes the window keys and writes a `window-reset` audit event in
the same pipeline (store.inspection).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from aupmilter.exitcodes import EX_CONFIG, EX_FAILURE, EX_OK, EX_UNAVAILABLE
from aupmilter.policy.window_view import WindowStatus, duration

if TYPE_CHECKING:
    from aupmilter.config import Config
    from aupmilter.policy.limits import Window

RedisFor = Callable[[], "tuple[str, Config | None]"]
HEADERS = ("WINDOW", "PER", "SENDER", "USED", "LIMIT", "FREE", "ROOM IN", "OLDEST EXPIRES IN")


def add_parser(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    windows = commands.add_parser("windows", help="show or empty a tenant's rate windows")
    config_option(windows)
    windows.add_argument("--redis", metavar="URL", help="Redis URL (default: from the config)")
    actions = windows.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="every window's fill, limit and when room comes back")
    show.add_argument("tenant_id", metavar="TENANT")
    show.add_argument("sender", metavar="SENDER", nargs="?", help="login or envelope sender")
    show.add_argument("--json", action="store_true")
    reset = actions.add_parser("reset", help="empty one window, or all (audited: window-reset)")
    reset.add_argument("tenant_id", metavar="TENANT")
    reset.add_argument(
        "sender", metavar="SENDER", nargs="?", help="only this sender's per-sender windows"
    )
    which = reset.add_mutually_exclusive_group(required=True)
    which.add_argument("--window", metavar="NAME", help="the plan's window name")
    which.add_argument("--all", action="store_true", help="every window of the plan")
    for action in (show, reset):  # also after the action: `windows show acme -c FILE`
        action.add_argument(
            "-c", "--config", type=Path, default=argparse.SUPPRESS, help="as before the action"
        )
        action.add_argument("--redis", metavar="URL", default=argparse.SUPPRESS)


def run(args: argparse.Namespace, redis_for: RedisFor) -> int:
    import redis

    from aupmilter.store.client import command_settings, connect
    from aupmilter.store.tenants import TenantAdmin, TenantError

    prog = f"aup-milter windows {args.action}"
    url, config = redis_for()
    if config is None:
        print(f"{prog}: {config_problem(args.config)}", file=sys.stderr)
        return EX_CONFIG
    client = connect(command_settings(url, config.redis, 5.0))
    try:
        info = TenantAdmin(client).show(args.tenant_id)
        plan = config.plans.get(info.plan or "")
        if plan is None:
            known = ", ".join(sorted(config.plans)) or "none"
            print(
                f"{prog}: tenant {info.tenant_id} has plan {info.plan!r}, which is not in"
                f" {config.path} (plans: {known})",
                file=sys.stderr,
            )
            return EX_CONFIG
        windows, problem = limits_in_force(plan.limits.windows, info.fields)
        if args.action == "show":
            return _show(client, info.tenant_id, info.plan or "", windows, problem, args)
        return _reset(client, info.tenant_id, windows, args)
    except TenantError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EX_FAILURE
    except (redis.RedisError, OSError) as exc:
        print(f"{prog}: cannot use Redis at {url}: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    finally:
        client.close()


def config_problem(path: object) -> str:
    """Why there is no configuration: the plans' windows live in it."""
    from aupmilter.config import ConfigError, load_config

    config_path = Path(str(path))
    if not config_path.exists():
        return f"cannot read the configuration {config_path} (the plans are in it): no such file"
    try:
        load_config(config_path)
    except ConfigError as exc:
        return "the configuration does not load: " + "; ".join(exc.problems[:3])
    except OSError as exc:
        return f"cannot read the configuration {config_path}: {exc}"
    return f"cannot read the configuration {config_path}"


def limits_in_force(
    windows: Sequence[Window], fields: dict[str, str]
) -> tuple[list[tuple[Window, int]], str | None]:
    """(window with the tenant's limit, the plan's limit) pairs, and the override problem
    that keeps the tenant's mail waiting (451), if any: then the plan's limits are shown."""
    from aupmilter.policy.limits import Limits, OverrideError, with_overrides
    from aupmilter.store.tenants import limit_overrides

    try:
        limits = with_overrides(Limits(1, tuple(windows)), limit_overrides(fields))
    except OverrideError as exc:
        return [(w, w.limit) for w in windows], str(exc)
    return [(w, p.limit) for w, p in zip(limits.windows, windows, strict=True)], None


def _show(
    client: object,
    tenant_id: str,
    plan: str,
    windows: list[tuple[Window, int]],
    problem: str | None,
    args: argparse.Namespace,
) -> int:
    from aupmilter.policy.limits import Scope
    from aupmilter.policy.window_view import window_status
    from aupmilter.store.inspection import Inspection

    inspection = Inspection(client)  # type: ignore[arg-type]
    now_ms = int(time.time() * 1000)
    plain = [w for w, _ in windows]
    sender = None
    if args.sender is not None:
        sender = inspection.sender_form(tenant_id, plain, args.sender)
    shown = [(w, p) for w, p in windows if sender is not None or w.scope is Scope.TENANT]
    fills = inspection.fills(tenant_id, [w for w, _ in shown], sender or "", now_ms)
    statuses = [
        window_status(w, p, fill, now_ms, sender) for (w, p), fill in zip(shown, fills, strict=True)
    ]
    scan = None
    if sender is None and any(w.scope is Scope.SENDER for w in plain):
        scan = inspection.senders(tenant_id, plain)
    if args.json:
        payload: dict[str, object] = {
            "tenant": tenant_id,
            "plan": plan,
            "now": now_ms / 1000,
            "override_problem": problem,
            "windows": [s.as_json() for s in statuses],
        }
        if scan is not None:
            payload["senders"] = list(scan.senders)
            payload["senders_complete"] = scan.complete
        print(json.dumps(payload, indent=2, sort_keys=True))
        return EX_OK
    for line in show_lines(tenant_id, plan, statuses, problem):
        print(line)
    if scan is not None:
        per_sender = ", ".join(w.name for w in plain if w.scope is Scope.SENDER)
        if scan.senders:
            more = "" if scan.complete else " (and more: the scan stopped at its bound)"
            listed = ", ".join(scan.senders)
            print(f"senders counted in per-sender windows ({per_sender}): {listed}{more}")
            print(f"  their fills: aup-milter windows show {tenant_id} SENDER")
        else:
            print(f"no sender has counts in the per-sender windows ({per_sender})")
    return EX_OK


def show_lines(
    tenant_id: str, plan: str, statuses: Sequence[WindowStatus], problem: str | None
) -> list[str]:
    """The table `windows show` prints: pure, for the tests."""
    lines = [f"tenant {tenant_id}, plan {plan}"]
    if problem:
        lines.append(
            f"override problem (its mail gets 451 until fixed; plan limits shown): {problem}"
        )
    rows = [table_row(s) for s in statuses]
    if not rows:
        return lines
    widths = [max(len(r[i]) for r in [HEADERS, *rows]) for i in range(len(HEADERS))]
    for row in [HEADERS, *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


def table_row(status: WindowStatus) -> tuple[str, ...]:
    window = status.window
    limit = str(window.limit)
    if status.overridden:
        limit += f" (plan {status.plan_limit})"
    return (
        window.name,
        window.scope.value,
        status.sender if status.sender is not None else "-",
        f"{status.used} {window.unit.value}",
        limit,
        str(status.free),
        duration(status.room_in_s),
        duration(status.oldest_expires_in_s),
    )


def _reset(
    client: object, tenant_id: str, windows: list[tuple[Window, int]], args: argparse.Namespace
) -> int:
    from aupmilter.policy.limits import Scope
    from aupmilter.policy.window_view import UnknownWindow, chosen_windows
    from aupmilter.store.inspection import Inspection

    plain = [w for w, _ in windows]
    try:
        chosen = chosen_windows(plain, None if args.all else args.window)
    except UnknownWindow as exc:
        print(f"aup-milter windows reset: tenant {tenant_id}: {exc}", file=sys.stderr)
        return EX_FAILURE
    inspection = Inspection(client)  # type: ignore[arg-type]
    sender = None
    if args.sender is not None:
        sender = inspection.sender_form(tenant_id, plain, args.sender)
        chosen = tuple(w for w in chosen if w.scope is Scope.SENDER)
        if not chosen:
            print(
                f"aup-milter windows reset: {args.window} is a per-tenant window: give no SENDER",
                file=sys.stderr,
            )
            return EX_FAILURE
    label = "all" if args.all else args.window
    deleted, event = inspection.reset_windows(tenant_id, chosen, sender, time.time(), label)
    whose = f"sender {sender}" if sender is not None else f"tenant {tenant_id}"
    if event is None:
        print(f"window {label} of {whose} was already empty: nothing reset")
        return EX_OK
    print(f"emptied window {label} of {whose} ({deleted} keys); audited as window-reset")
    return EX_OK

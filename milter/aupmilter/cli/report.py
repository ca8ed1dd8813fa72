"""`aup-milter report classify FILE...`: what the intake would make of each report; changes nothing.

One JSON line per file: kind, recipients, suppress, tenant, feedback_type,
reason (reports/classify.py). Without `-c` the classification is pure: the
tenant comes only from a Feedback-ID of our form. With `-c CONFIG` that form
must end in the configuration's `[feedback_id] relay_id` (when set), and it
also verifies our
unsubscribe tokens with the configuration's secrets and reads (never writes)
Redis: a token's reference (tenant, and the recipient a recipient token
names) and the domain -> tenant map for DKIM d= and sender domains, the
relay's default signing domain excepted. If Redis cannot be reached it says
so once on standard error and goes on without it.

Exit status: 0 when every file was read (whatever its kind, `unparseable`
included); EX_NOINPUT (66) when a file could not be read, after the others
were printed; EX_CONFIG (78) when the configuration given does not load.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aupmilter.exitcodes import EX_CONFIG, EX_NOINPUT, EX_OK
from aupmilter.reports.mime import MAX_REPORT_BYTES
from aupmilter.reports.model import TenantLookup

if TYPE_CHECKING:
    pass

STDIN = "-"


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    report = commands.add_parser("report", help="inspect complaint and bounce reports")
    actions = report.add_subparsers(dest="action", required=True, metavar="ACTION")
    classify = actions.add_parser(
        "classify", help="classify report messages, one JSON line per file; changes nothing"
    )
    classify.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="read our unsubscribe tokens with its secrets and look tenants up in its Redis",
    )
    classify.add_argument("--redis", metavar="URL", help="Redis URL (default: from the config)")
    classify.add_argument("files", nargs="+", metavar="FILE", help="message files; - for stdin")


def run(args: argparse.Namespace) -> int:
    from aupmilter.reports.classify import classify_bytes
    from aupmilter.reports.tenant import store_lookup

    lookup: TenantLookup = store_lookup()
    if args.config is not None:
        built = _store_lookup(args.config, args.redis)
        if built is None:
            return EX_CONFIG
        lookup = built
    status = EX_OK
    for name in args.files:
        try:
            raw = _read(name)
        except OSError as exc:
            print(f"aup-milter report: {name}: {exc.strerror or exc}", file=sys.stderr)
            status = EX_NOINPUT
            continue
        report = classify_bytes(raw, lookup)
        print(json.dumps(report.as_json(name)), flush=True)
    return status


def _read(name: str) -> bytes:
    """At most one byte past the bound, so a huge file costs no more than the bound."""
    if name == STDIN:
        return sys.stdin.buffer.read(MAX_REPORT_BYTES + 1)
    with Path(name).open("rb") as handle:
        return handle.read(MAX_REPORT_BYTES + 1)


def _store_lookup(path: Path, redis_url: str | None) -> TenantLookup | None:
    """The lookup over tokens, Feedback-ID and domains; None (reported) if the config fails."""
    from aupmilter.config import ConfigError, RedisSettings, load_config
    from aupmilter.store.client import connect
    from aupmilter.store.report_lookup import StoreReader, lookup_for

    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None
    settings = config.redis
    if redis_url:
        settings = RedisSettings(redis_url, settings.connect_timeout, settings.timeout)
    reader = StoreReader(connect(settings), settings.url, warn=_warn)
    return lookup_for(config, reader)


def _warn(text: str) -> None:
    print(f"aup-milter report: {text}", file=sys.stderr)

"""`aup-milter suppress add|remove|list|import|export`: a tenant's suppression list.

Imports stream the file in pipelined batches (two round trips per
BATCH_SIZE lines), so 100k lines take seconds; a line that cannot be used is
reported with its file and line number and skipped, never fatal. The exit
status is 0 when every line was used, 65 (EX_DATAERR) when some were refused
(cli/csvimport.py, shared with `consent import`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, TextIO

from aupmilter.cli.csvimport import (
    ImportReport,
    add_import_parser,
    rows,
    run_import,
    tenant_option,
)
from aupmilter.config import RedisSettings
from aupmilter.exitcodes import EX_DATAERR, EX_FAILURE, EX_OK, EX_UNAVAILABLE
from aupmilter.store.suppression import (
    BATCH_SIZE,
    AddressError,
    Source,
    Suppression,
    SuppressionStore,
    validate_address,
)

HEADER_NAMES = frozenset({"address", "email", "e-mail", "recipient", "mail"})


def add_parser(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    suppress = commands.add_parser("suppress", help="manage a tenant's suppression list")
    config_option(suppress)
    suppress.add_argument("--redis", metavar="URL", help="Redis URL (default: from the config)")
    actions = suppress.add_subparsers(dest="action", required=True, metavar="ACTION")
    sources = ", ".join(s.value for s in Source)

    add = actions.add_parser("add", help="suppress addresses")
    tenant_option(add)
    add.add_argument("addresses", nargs="+", metavar="ADDRESS")
    add.add_argument("--source", default="manual", help=f"one of {sources} (default manual)")
    remove = actions.add_parser("remove", help="lift the suppression of addresses")
    tenant_option(remove)
    remove.add_argument("addresses", nargs="+", metavar="ADDRESS")
    listing = actions.add_parser("list", help="show the suppressed addresses")
    tenant_option(listing)
    listing.add_argument("--json", action="store_true")
    add_import_parser(
        actions, "suppress every address of a CSV file (address[,source] per line)", "manual"
    )
    export = actions.add_parser("export", help="write the list as CSV (address,source,since)")
    tenant_option(export)


def run(args: argparse.Namespace, settings: RedisSettings) -> int:
    """Run one `suppress` action against the Redis `settings` name."""
    import redis

    from aupmilter.store import keys
    from aupmilter.store.client import connect

    if not keys.TENANT_ID.match(args.tenant):
        print(
            f"aup-milter suppress: invalid tenant id {args.tenant!r}: use 1-64 lower-case"
            " letters, digits, '.', '-', '_'",
            file=sys.stderr,
        )
        return EX_FAILURE
    client = connect(settings)
    store = SuppressionStore(client)
    try:
        if args.action in ("add", "import"):
            source = _source(args.source)
            if source is None:
                return EX_FAILURE
            if not client.exists(keys.tenant(args.tenant)):
                print(
                    f"aup-milter suppress: no tenant {args.tenant!r}"
                    " (create it with `aup-milter tenant add` first)",
                    file=sys.stderr,
                )
                return EX_FAILURE
            if args.action == "add":
                return _add(store, args.tenant, args.addresses, source)
            return _import(store, args.tenant, args.file, source, args.progress)
        if args.action == "remove":
            return _remove(store, args.tenant, args.addresses)
        if args.action == "list":
            return _list(store, args.tenant, args.json)
        return _export(store, args.tenant, sys.stdout)
    except (redis.RedisError, OSError) as exc:
        print(f"aup-milter suppress: cannot use Redis at {settings.url}: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    finally:
        client.close()


def _source(text: str) -> Source | None:
    try:
        return Source(text)
    except ValueError:
        allowed = ", ".join(s.value for s in Source)
        print(f"aup-milter suppress: invalid source {text!r}: one of {allowed}", file=sys.stderr)
        return None


def _add(store: SuppressionStore, tenant: str, raw: list[str], source: Source) -> int:
    addresses, status = [], EX_OK
    for item in raw:
        try:
            addresses.append(validate_address(item))
        except AddressError as exc:
            print(f"aup-milter suppress: {item!r}: {exc}", file=sys.stderr)
            status = EX_DATAERR
    for outcome in store.add_many(tenant, addresses, source, time.time(), detail="cli"):
        state = "suppressed" if outcome.added else "already suppressed"
        print(f"{outcome.suppression.address}: {state} ({_describe(outcome.suppression)})")
    return status


def _remove(store: SuppressionStore, tenant: str, raw: list[str]) -> int:
    status = EX_OK
    for item in raw:
        try:
            address = validate_address(item)
        except AddressError as exc:
            print(f"aup-milter suppress: {item!r}: {exc}", file=sys.stderr)
            status = EX_DATAERR
            continue
        removed = store.remove(tenant, address, time.time(), detail="cli")
        print(f"{address}: {'removed' if removed else 'was not suppressed'}")
    return status


def _list(store: SuppressionStore, tenant: str, as_json: bool) -> int:
    entries = sorted(store.scan(tenant), key=lambda s: (s.since, s.address))
    if as_json:
        payload = [
            {"address": s.address, "source": s.source.value, "since": s.since} for s in entries
        ]
        print(json.dumps(payload, indent=2))
        return EX_OK
    for entry in entries:
        print(f"{entry.address}  {_describe(entry)}")
    print(f"{len(entries)} suppressed address(es) for tenant {tenant}", file=sys.stderr)
    return EX_OK


def _export(store: SuppressionStore, tenant: str, out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["address", "source", "since"])
    for entry in store.scan(tenant):
        writer.writerow([entry.address, entry.source.value, entry.since])
    return EX_OK


def _describe(entry: Suppression) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(entry.since)) if entry.since else "?"
    return f"{entry.source.value}, {when}"


# --- import ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportLine:
    number: int
    address: str
    source: Source


def parse_import(
    handle: IO[str], name: str, default_source: Source, report: ImportReport
) -> Iterator[ImportLine]:
    """Usable lines of a CSV (address[,source]); refused ones go to the report."""
    for where, number, cells in rows(handle, name, report, HEADER_NAMES):
        try:
            address = validate_address(cells[0])
        except AddressError as exc:
            report.refuse(where, f"{exc}: {cells[0][:80]!r}")
            continue
        source = default_source
        if len(cells) > 1 and cells[1]:
            try:
                source = Source(cells[1])
            except ValueError:
                report.refuse(where, f"unknown source {cells[1][:40]!r}")
                continue
        yield ImportLine(number, address, source)


def _import(store: SuppressionStore, tenant: str, file: str, source: Source, mode: str) -> int:
    return run_import(
        "aup-milter suppress",
        file,
        lambda handle, name, report: parse_import(handle, name, source, report),
        lambda batch, report: _flush(store, tenant, batch, report),
        batch_size=BATCH_SIZE,
        progress=mode,
        summary=lambda name, report: (
            f"{name}: {report.added} suppressed, {report.already} already suppressed,"
            f" {report.errors} refused, for tenant {tenant}"
        ),
    )


def _flush(
    store: SuppressionStore, tenant: str, batch: list[ImportLine], report: ImportReport
) -> None:
    now = time.time()
    by_source: dict[Source, list[str]] = {}
    for line in batch:
        by_source.setdefault(line.source, []).append(line.address)
    for source, addresses in by_source.items():
        outcomes = store.add_many(tenant, addresses, source, now, detail="import", audit_log=False)
        added = sum(1 for o in outcomes if o.added)
        report.added += added
        report.already += len(outcomes) - added

"""`aup-milter consent import|show|remove|export|prune`: a tenant's consent ledger.

`import` reads a CSV of `address,consented_at[,source]` (the time as epoch
seconds or ISO 8601) in pipelined batches, exactly as `suppress import` does
(cli/csvimport.py: progress bar, per-line errors, summary, exit 0 or 65); an
address keeps its latest consent. `show` tells one address's consent, source,
last bulk mail and, with the configuration, whether it is current or lapsed
under the tenant's plan. `remove` forgets addresses (ledger and last bulk).
`export` writes the ledger as CSV that `import` reads back. `prune` drops the
last-bulk entries older than the plan's lapse plus a margin (or
`--older-than`): the bound on that hash's growth (Redis 7.0 has no
per-field expiry).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, TextIO

from aupmilter.cli.csvimport import (
    ImportReport,
    add_import_parser,
    rows,
    run_import,
    tenant_option,
)
from aupmilter.exitcodes import EX_CONFIG, EX_DATAERR, EX_FAILURE, EX_OK, EX_UNAVAILABLE
from aupmilter.policy.consent import DAY, ConsentPlan, Standing, lapses_at, standing
from aupmilter.store.consent import (
    BATCH_SIZE,
    ConsentEntry,
    ConsentError,
    ConsentRecord,
    ConsentStore,
    parse_consent_time,
    validate_source,
)
from aupmilter.store.suppression import AddressError, validate_address

if TYPE_CHECKING:
    from aupmilter.config import Config

RedisFor = Callable[[], "tuple[str, Config | None]"]
PROG = "aup-milter consent"
HEADER_NAMES = frozenset({"address", "email", "e-mail", "recipient", "mail"})
PRUNE_MARGIN_DAYS = 30
"""`prune` without --older-than keeps last-bulk entries up to the lapse plus this margin."""


def add_parser(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    consent = commands.add_parser("consent", help="manage a tenant's consent ledger")
    config_option(consent)
    consent.add_argument("--redis", metavar="URL", help="Redis URL (default: from the config)")
    actions = consent.add_subparsers(dest="action", required=True, metavar="ACTION")

    add_import_parser(
        actions,
        "record consents from a CSV file (address,consented_at[,source] per line)",
        "import",
    )
    show = actions.add_parser("show", help="one address: consent, source, last bulk, standing")
    tenant_option(show)
    show.add_argument("address", metavar="ADDRESS")
    show.add_argument("--json", action="store_true")
    remove = actions.add_parser("remove", help="forget addresses (consent and last bulk)")
    tenant_option(remove)
    remove.add_argument("addresses", nargs="+", metavar="ADDRESS")
    export = actions.add_parser(
        "export", help="write the ledger as CSV (address,consented_at,source,last_bulk)"
    )
    tenant_option(export)
    prune = actions.add_parser(
        "prune", help="drop old last-bulk entries (default: older than the lapse + 30 days)"
    )
    tenant_option(prune)
    prune.add_argument(
        "--older-than", metavar="DAYS", type=int, help="in days (default: the plan's lapse + 30)"
    )


def run(args: argparse.Namespace, redis_for: RedisFor) -> int:
    import redis

    from aupmilter.store import keys
    from aupmilter.store.client import command_settings, connect

    if not keys.TENANT_ID.match(args.tenant):
        print(
            f"{PROG}: invalid tenant id {args.tenant!r}: use 1-64 lower-case"
            " letters, digits, '.', '-', '_'",
            file=sys.stderr,
        )
        return EX_FAILURE
    url, config = redis_for()
    client = connect(command_settings(url, config.redis if config else None, 10.0))
    store = ConsentStore(client)
    try:
        if args.action == "import":
            try:
                source = validate_source(args.source)
            except ConsentError as exc:
                print(f"{PROG}: --source {args.source!r}: {exc}", file=sys.stderr)
                return EX_FAILURE
            if not client.exists(keys.tenant(args.tenant)):
                print(
                    f"{PROG}: no tenant {args.tenant!r}"
                    " (create it with `aup-milter tenant add` first)",
                    file=sys.stderr,
                )
                return EX_FAILURE
            return _import(store, args.tenant, args.file, source, args.progress)
        if args.action == "show":
            return _show(store, client, config, args)
        if args.action == "remove":
            return _remove(store, args.tenant, args.addresses)
        if args.action == "export":
            return _export(store, args.tenant, sys.stdout)
        return _prune(store, client, config, args)
    except (redis.RedisError, OSError) as exc:
        print(f"{PROG}: cannot use Redis at {url}: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    finally:
        client.close()


def _plan_consent(client: object, config: Config | None, tenant: str) -> ConsentPlan | None:
    """The tenant's plan's consent settings, when the configuration and the tenant say."""
    from aupmilter.store.tenants import TenantAdmin, TenantError

    if config is None:
        return None
    try:
        info = TenantAdmin(client).show(tenant)  # type: ignore[arg-type]
    except TenantError:
        return None
    plan = config.plans.get(info.plan or "")
    return plan.consent if plan is not None else None


# --- import ------------------------------------------------------------------


def parse_import(
    handle: IO[str], name: str, default_source: str, report: ImportReport, now: float
) -> Iterator[ConsentEntry]:
    """Usable lines of a CSV (address,consented_at[,source]); refused ones go to the report."""
    for where, _number, cells in rows(handle, name, report, HEADER_NAMES):
        try:
            address = validate_address(cells[0])
        except AddressError as exc:
            report.refuse(where, f"{exc}: {cells[0][:80]!r}")
            continue
        if len(cells) < 2 or not cells[1]:
            report.refuse(where, "no time of consent (address,consented_at[,source])")
            continue
        try:
            consented_at = parse_consent_time(cells[1], now)
            source = validate_source(cells[2]) if len(cells) > 2 and cells[2] else default_source
        except ConsentError as exc:
            report.refuse(where, str(exc))
            continue
        yield ConsentEntry(address, consented_at, source)


def _import(store: ConsentStore, tenant: str, file: str, source: str, mode: str) -> int:
    now = time.time()

    def flush(batch: list[ConsentEntry], report: ImportReport) -> None:
        outcome = store.import_batch(tenant, batch)
        report.added += outcome.added
        report.updated += outcome.updated
        report.already += outcome.kept

    return run_import(
        PROG,
        file,
        lambda handle, name, report: parse_import(handle, name, source, report, now),
        flush,
        batch_size=BATCH_SIZE,
        progress=mode,
        summary=lambda name, report: _audited_summary(store, tenant, name, report),
    )


def _audited_summary(store: ConsentStore, tenant: str, name: str, report: ImportReport) -> str:
    """The import's one audit event (its counts), and its summary line."""
    store.audit_import(tenant, name, report.added, report.updated, report.already, report.errors)
    return (
        f"{name}: {report.added} recorded, {report.updated} updated to a later consent,"
        f" {report.already} kept (not later than the one recorded), {report.errors} refused,"
        f" for tenant {tenant}"
    )


# --- show, remove, export, prune ----------------------------------------------


def _when(seconds: int | None) -> str:
    return "-" if seconds is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(seconds))


def _iso(seconds: int | None) -> str:
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _show(
    store: ConsentStore, client: object, config: Config | None, args: argparse.Namespace
) -> int:
    try:
        address = validate_address(args.address)
    except AddressError as exc:
        print(f"{PROG}: {args.address!r}: {exc}", file=sys.stderr)
        return EX_DATAERR
    record = store.get(args.tenant, address)
    plan = _plan_consent(client, config, args.tenant)
    judged = _judge(record, plan, store.has_ledger(args.tenant))
    if args.json:
        payload: dict[str, object] = {
            "tenant": record.tenant,
            "address": record.address,
            "consented_at": record.consented_at,
            "source": record.source,
            "last_bulk": record.last_bulk,
            **judged,
        }
        print(json.dumps(payload, indent=2))
        return EX_OK
    print(f"address:      {record.address} (tenant {record.tenant})")
    print(f"consented at: {_when(record.consented_at)}")
    print(f"source:       {record.source or '-'}")
    print(f"last bulk:    {_when(record.last_bulk)}")
    if "standing" in judged:
        lapse = f"{judged['lapses_at_text']}" if judged.get("lapses_at") else "-"
        print(f"standing:     {judged['standing']} ({judged['rule']})")
        print(f"lapses at:    {lapse}")
    else:
        print(f"standing:     {judged['rule']}")
    return EX_OK


def _judge(record: ConsentRecord, plan: ConsentPlan | None, has_ledger: bool) -> dict[str, object]:
    if plan is None:
        return {"rule": "unknown: no configuration, or the tenant's plan is not in it"}
    if not plan.enabled:
        return {"rule": "the tenant's plan has consent off"}
    now = int(time.time())
    state = standing(record.consented_at, record.last_bulk, now, plan, has_ledger=has_ledger)
    at = lapses_at(record.consented_at, record.last_bulk, plan) if has_ledger else None
    rule = f"{plan.mode} mode, lapse {plan.lapse_days} days, " + (
        "the tenant has a ledger" if has_ledger else "no ledger: never-mailed addresses are new"
    )
    judged: dict[str, object] = {"standing": str(state), "rule": rule, "lapses_at": at}
    if at is not None:
        judged["lapses_at_text"] = _when(at) + (" (past)" if state is Standing.LAPSED else "")
    return judged


def _remove(store: ConsentStore, tenant: str, raw: list[str]) -> int:
    status = EX_OK
    for item in raw:
        try:
            address = validate_address(item)
        except AddressError as exc:
            print(f"{PROG}: {item!r}: {exc}", file=sys.stderr)
            status = EX_DATAERR
            continue
        removed = store.remove(tenant, address, detail="cli")
        print(f"{address}: {'removed' if removed else 'was not recorded'}")
    return status


def _export(store: ConsentStore, tenant: str, out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["address", "consented_at", "source", "last_bulk"])
    count = 0
    for record in store.scan(tenant):
        writer.writerow(
            [record.address, _iso(record.consented_at), record.source or "", _iso(record.last_bulk)]
        )
        count += 1
    print(f"{count} consent record(s) for tenant {tenant}", file=sys.stderr)
    return EX_OK


def _prune(
    store: ConsentStore, client: object, config: Config | None, args: argparse.Namespace
) -> int:
    days = args.older_than
    if days is None:
        plan = _plan_consent(client, config, args.tenant)
        if plan is None:
            print(
                f"{PROG} prune: the tenant's plan and its lapse are not known (no configuration,"
                " or the tenant's plan is not in it): give --older-than DAYS",
                file=sys.stderr,
            )
            return EX_CONFIG
        days = plan.lapse_days + PRUNE_MARGIN_DAYS
    if days < 1:
        print(f"{PROG} prune: --older-than must be at least 1 day", file=sys.stderr)
        return EX_FAILURE
    before = int(time.time()) - days * DAY
    dropped = store.prune(args.tenant, before)
    ledger, last = store.counts(args.tenant)
    print(
        f"tenant {args.tenant}: {dropped} last-bulk entries older than {days} days dropped;"
        f" {last} left, {ledger} consent record(s)"
    )
    return EX_OK

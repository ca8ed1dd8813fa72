"""The `aup-milter` command line: run, check, tenant, and the wiring of the other commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from aupmilter import __version__
from aupmilter.config import DEFAULT_CONFIG_PATH, Config, ConfigError, RedisSettings, load_config
from aupmilter.exitcodes import EX_CONFIG, EX_FAILURE, EX_OK, EX_UNAVAILABLE, EX_USAGE
from aupmilter.store.tenants import TenantInfo

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with usage errors exiting EX_USAGE instead of its own 2.

    2 means nothing to sysexits readers: Postfix's pipe would report "Command
    died with status 2". Subcommand parsers inherit the class.
    """

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="aup-milter",
        description="Milter enforcing a bulk-email Acceptable Use Policy on a shared relay.",
    )
    parser.add_argument("--version", action="version", version=f"aup-milter {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c",
            "--config",
            type=Path,
            default=DEFAULT_CONFIG_PATH,
            help=f"configuration file (default {DEFAULT_CONFIG_PATH})",
        )

    run = commands.add_parser("run", help="run the milter in the foreground")
    config_option(run)
    check = commands.add_parser("check", help="validate the configuration and plan files")
    config_option(check)

    tenant = commands.add_parser("tenant", help="manage tenants in Redis")
    config_option(tenant)
    tenant.add_argument("--redis", metavar="URL", help="Redis URL (default: from the config)")
    actions = tenant.add_subparsers(dest="action", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="create a tenant with its logins and domains")
    add.add_argument("tenant_id", metavar="ID")
    add.add_argument("--plan", required=True)
    add.add_argument(
        "--login",
        action="append",
        default=[],
        help="exact {auth_authen} value (login, or login@realm); repeatable",
    )
    add.add_argument("--domain", action="append", default=[], help="sender domain; repeatable")
    add.add_argument("--status", default="active", help="active | suspended | terminated")
    add.add_argument("--reason", default="")
    add.add_argument("--json", action="store_true")

    show = actions.add_parser("show", help="show one tenant")
    show.add_argument("tenant_id", metavar="ID")
    show.add_argument("--json", action="store_true")

    listing = actions.add_parser("list", help="list all tenants")
    listing.add_argument("--json", action="store_true")

    status = actions.add_parser("set-status", help="activate, suspend or terminate a tenant")
    status.add_argument("tenant_id", metavar="ID")
    status.add_argument("status", metavar="STATUS", help="active | suspended | terminated")
    status.add_argument("--reason", default="", help="why (shown in logs and quarantine reason)")
    status.add_argument("--json", action="store_true")

    identity = actions.add_parser(
        "set-identity",
        help="set the sender identity (name, postal address, contact) bulk mail's footer shows",
    )
    identity.add_argument("tenant_id", metavar="ID")
    identity.add_argument("--name", required=True, help="the sender's legal name")
    identity.add_argument(
        "--address",
        action="append",
        required=True,
        metavar="LINE",
        help="one line of the postal address; repeatable, in order",
    )
    identity.add_argument(
        "--contact", required=True, help="a contact URL (https://...) or mailbox address"
    )
    identity.add_argument("--json", action="store_true")

    remove = actions.add_parser("remove", help="delete a tenant and its mappings")
    remove.add_argument("tenant_id", metavar="ID")

    lift = actions.add_parser(
        "lift", help="lift the ladder's suspension of one sender or domain (audited: lifted)"
    )
    lift.add_argument("tenant_id", metavar="ID")
    subject = lift.add_mutually_exclusive_group(required=True)
    subject.add_argument("--sender", help="the SASL login or envelope mailbox suspended")
    subject.add_argument("--domain", help="the envelope sender domain suspended")

    from aupmilter.cli import warmup as warmupcli

    warmupcli.add_parser(actions)

    from aupmilter.cli import verify_domain as verifycli

    verifycli.add_parser(actions)

    from aupmilter.cli import auditlog as auditcli
    from aupmilter.cli import consent as consentcli
    from aupmilter.cli import report as reportcli
    from aupmilter.cli import status as statuscli
    from aupmilter.cli import top as topcli
    from aupmilter.cli import unsubscribe as unsubcli
    from aupmilter.cli import windows as windowscli

    unsubcli.add_parsers(commands, config_option)
    reportcli.add_parser(commands)
    auditcli.add_parser(commands, config_option)
    windowscli.add_parser(commands, config_option)
    topcli.add_parser(commands, config_option)
    statuscli.add_parser(commands, config_option)
    consentcli.add_parser(commands, config_option)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return cmd_check(args.config)
    if args.command == "run":
        return cmd_run(args.config)
    if args.command in ("suppress", "web", "intake"):
        from aupmilter.cli import unsubscribe as unsubcli

        return unsubcli.run(args, lambda: _command_settings(args, 10.0))
    if args.command == "report":
        from aupmilter.cli import report as reportcli

        return reportcli.run(args)
    if args.command in ("log", "explain"):
        from aupmilter.cli import auditlog as auditcli

        return auditcli.run(args, lambda: _tenant_redis(args))
    if args.command == "status":
        from aupmilter.cli import status as statuscli

        return statuscli.run(args)
    if args.command == "consent":
        from aupmilter.cli import consent as consentcli

        return consentcli.run(args, lambda: _tenant_redis(args))
    if args.command in ("windows", "top"):
        from aupmilter.cli import top as topcli
        from aupmilter.cli import windows as windowscli

        command = windowscli.run if args.command == "windows" else topcli.run
        return command(args, lambda: _tenant_redis(args))
    return cmd_tenant(args)


def _load_or_report(path: Path) -> Config | None:
    """The config, or None after printing one line per problem to stderr."""
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def cmd_check(path: Path) -> int:
    config = _load_or_report(path)
    if config is None:
        return EX_FAILURE
    plans = ", ".join(sorted(config.plans)) or "none"
    print(f"{config.path}: OK (listen {config.milter.listen}; plans: {plans})")
    print(f"  redis: {_describe_redis(config.redis)}")
    for name, plan in sorted(config.plans.items()):
        limits = plan.limits
        print(f"  plan {name}: at most {limits.max_recipients} recipients per message")
        for window in limits.windows:
            print(f"    window {window.name}: {window.rule}")
        print(f"    ladder: {plan.ladder.describe(limits.max_recipients)}")
        if plan.warmup.enabled:
            print(f"    warm-up: {plan.warmup.describe()}")
        if plan.consent.enabled:
            print(f"    consent: {plan.consent.describe()}")
        if plan.footer.enabled:
            footer = plan.footer
            print(
                f"    footer: {footer.mode} on bulk mail (text parts up to"
                f" {footer.max_part_bytes} bytes rewritten; larger: {footer.oversize})"
            )
        if plan.onboarding.enabled:
            onboarding = plan.onboarding
            print(
                f"    onboarding: {onboarding.mode} (bulk mail needs a domain verified within"
                f" {onboarding.max_age // 86_400} days: {', '.join(sorted(onboarding.required))})"
            )
    _print_unsubscribe(config)
    _warn_identities(config)
    return EX_OK


def _warn_identities(config: Config) -> None:
    """Warn about tenants on a footer plan without a complete identity (their bulk mail 451s).

    A warning, not a failure: the files are fine; the tenants live in Redis,
    which `check` reads only when it can.
    """
    footer_plans = {name for name, plan in config.plans.items() if plan.footer.enabled}
    if not footer_plans:
        return
    import redis

    from aupmilter.store.client import command_settings, connect
    from aupmilter.store.tenants import TenantAdmin, tenant_identity

    client = connect(command_settings(config.redis.url, config.redis, 5.0))
    try:
        tenants = TenantAdmin(client).list()
    except (redis.RedisError, OSError) as exc:
        print(f"  footer: tenants' identities not checked (Redis at {config.redis.url}: {exc})")
        return
    finally:
        client.close()
    for info in tenants:
        if info.plan not in footer_plans:
            continue
        identity = tenant_identity(info.fields)
        missing = identity.missing if identity is not None else ("name", "address", "contact")
        if missing:
            print(
                f"warning: tenant {info.tenant_id} is on plan {info.plan} (footer"
                f" {config.plans[info.plan].footer.mode}) and has no identity"
                f" {', '.join(missing)}: its bulk mail gets 451 4.7.0 until"
                f" `aup-milter tenant set-identity {info.tenant_id} ...`",
                file=sys.stderr,
            )


def _describe_redis(settings: RedisSettings) -> str:
    """The deployment in words (no password); `aup-milter status` checks it answers and
    holds the tenant registry."""
    nodes = ", ".join(
        f"{host}:{port}" for host, port in settings.sentinels or settings.cluster_nodes
    )
    if settings.mode == "sentinel":
        return f"Sentinel ({nodes}), master {settings.service_name!r}"
    if settings.mode == "cluster":
        return f"Cluster ({nodes}), mapping cache {settings.mapping_cache_seconds:g} s"
    from aupmilter.cli.status import redact

    return f"one server, {redact(settings.url)}"


def _print_unsubscribe(config: Config) -> None:
    unsubscribe = config.unsubscribe
    if unsubscribe is not None:
        print(
            f"  unsubscribe: {unsubscribe.url('TOKEN')}, {unsubscribe.mailto('TOKEN')};"
            f" {len(unsubscribe.secrets)} secret(s), links live {unsubscribe.token_lifetime_days}"
            f" days; web service on {config.web.listen}"
        )
    identities = sorted(config.dkim.tenants.items())
    if config.dkim.default is not None:
        identities.append(("(default)", config.dkim.default))
    for tenant, identity in identities:
        key = identity.key
        print(
            f"  dkim {tenant}: d={identity.domain} s={identity.selector}"
            f" ({key.algorithm}, {key.bits} bits, {key.path})"
        )


def cmd_run(path: Path) -> int:
    from aupmilter import daemon

    config = _load_or_report(path)
    if config is None:
        return EX_CONFIG
    daemon.configure_logging(config)
    try:
        return daemon.serve(config)
    except daemon.StartupError as exc:
        print(f"aup-milter: {exc}", file=sys.stderr)
        return EX_CONFIG


def _tenant_redis(args: argparse.Namespace) -> tuple[str, Config | None]:
    """Redis URL: --redis, else the config file's, else AUP_REDIS_URL, else the default."""
    config = None
    if args.config.exists():
        try:
            config = load_config(args.config)
        except ConfigError:
            config = None  # `check` reports config problems; tenants can still be managed
    if args.redis:
        return args.redis, config
    if config is not None:
        return config.redis.url, config
    return os.environ.get("AUP_REDIS_URL", DEFAULT_REDIS_URL), config


def _command_settings(args: argparse.Namespace, timeout: float) -> RedisSettings:
    from aupmilter.store.client import command_settings

    url, config = _tenant_redis(args)
    return command_settings(url, config.redis if config else None, timeout)


def cmd_tenant(args: argparse.Namespace) -> int:
    import redis

    from aupmilter.store.client import command_settings, connect
    from aupmilter.store.tenants import TenantAdmin, TenantError, validate_identity

    url, config = _tenant_redis(args)
    client = connect(command_settings(url, config.redis if config else None, 5.0))
    admin = TenantAdmin(client)
    try:
        if args.action == "add":
            if config is not None and args.plan not in config.plans:
                known = ", ".join(sorted(config.plans))
                raise TenantError(f"unknown plan {args.plan!r} (plans in {config.path}: {known})")
            plan = config.plans.get(args.plan) if config is not None else None
            info = admin.add(
                args.tenant_id,
                args.plan,
                args.login,
                args.domain,
                args.status,
                args.reason,
                warmup=plan is not None and plan.warmup.enabled,
            )
            _print_tenants([info], args.json, single=True)
        elif args.action == "show":
            info = admin.show(args.tenant_id)
            _show(client, info, config, args.json)
        elif args.action == "list":
            _print_tenants(admin.list(), args.json, single=False)
        elif args.action == "set-status":
            info = admin.set_status(args.tenant_id, args.status, args.reason)
            _print_tenants([info], args.json, single=True)
        elif args.action == "set-identity":
            identity = validate_identity(args.name, args.address, args.contact)
            info = admin.set_identity(args.tenant_id, identity)
            _print_tenants([info], args.json, single=True)
        elif args.action == "remove":
            admin.remove(args.tenant_id)
            print(f"removed tenant {args.tenant_id}")
        elif args.action == "lift":
            return _lift(client, admin, args)
        elif args.action == "warmup":
            from aupmilter.cli import warmup as warmupcli

            return warmupcli.run(admin, args, config)
        elif args.action == "verify-domain":
            from aupmilter.cli import verify_domain as verifycli

            return verifycli.run(client, admin, config, args)
    except TenantError as exc:
        print(f"aup-milter tenant: {exc}", file=sys.stderr)
        return EX_FAILURE
    except (redis.RedisError, OSError) as exc:
        print(f"aup-milter tenant: cannot use Redis at {url}: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    finally:
        client.close()
    return EX_OK


def _print_tenants(tenants: Sequence[TenantInfo], as_json: bool, single: bool) -> None:
    if as_json:
        payload: object = tenants[0].as_json() if single else [t.as_json() for t in tenants]
        print(json.dumps(payload, indent=2, sort_keys=True))
        return
    header = ("ID", "STATUS", "PLAN", "LOGINS", "DOMAINS", "UPDATED", "REASON")
    rows = [
        (
            t.tenant_id,
            "?" if t.status is None else t.status,
            "?" if t.plan is None else t.plan,
            ",".join(t.logins) or "-",
            ",".join(t.domains) or "-",
            _timestamp(t.updated_at),
            t.reason or "-",
        )
        for t in tenants
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


def _print_rates(client: Any, info: TenantInfo, config: Config | None) -> None:
    """The complaint and bounce rates with their thresholds: two reads, nothing counted."""
    from aupmilter.policy.reputation import Measure, ReputationPlan, decide
    from aupmilter.store.reputation import ReputationCounters

    plan = config.plans.get(info.plan or "") if config is not None else None
    reputation = plan.reputation if plan is not None else ReputationPlan()
    counters = ReputationCounters(client)
    now = time.time()
    for measure in Measure:
        counts = counters.count(info.tenant_id, measure, 0, reputation, now)
        decision = decide(measure, counts.events, counts.delivered, reputation, "active")
        print(decision.figures)


def _lift(client: Any, admin: Any, args: argparse.Namespace) -> int:
    """One suspension lifted (HDEL) and audited; EX_FAILURE when there was none."""
    from aupmilter.store.ladder import LadderStore, Subject

    tenant_id = admin.show(args.tenant_id).tenant_id  # TenantError for an unknown tenant
    kind = Subject.SENDER if args.sender is not None else Subject.DOMAIN
    subject = args.sender if args.sender is not None else args.domain
    lifted = LadderStore(client).lift(tenant_id, kind, subject, time.time(), by="cli")
    if lifted is None:
        print(
            f"aup-milter tenant: {kind.value} {subject} of tenant {tenant_id} is not suspended",
            file=sys.stderr,
        )
        return EX_FAILURE
    print(f"lifted {kind.value} {lifted.subject} of tenant {tenant_id} (was: {lifted.reason})")
    return EX_OK


def _show(client: Any, info: TenantInfo, config: Config | None, as_json: bool) -> None:
    """The tenant, its rates, and the automatic actions in force with their evidence."""
    from aupmilter.cli import actions
    from aupmilter.cli import verify_domain as verifycli
    from aupmilter.cli import warmup as warmupcli

    in_force = actions.gather(client, info.tenant_id, info.fields)
    plan = config.plans.get(info.plan or "") if config is not None else None
    ramp = warmupcli.current(client, info, plan, time.time())
    if as_json:
        payload = {**info.as_json(), **actions.as_json(in_force), **verifycli.show_json(info)}
        payload |= warmupcli.as_json(ramp, info, plan)
        print(json.dumps(payload, indent=2, sort_keys=True))
        return
    _print_tenants([info], False, single=True)
    _print_rates(client, info, config)
    for line in warmupcli.lines(ramp, info, plan):
        print(line)
    for line in [*actions.lines(info.tenant_id, in_force), *verifycli.show_lines(info)]:
        print(line)


def _timestamp(value: str) -> str:
    if not value.isdigit():
        return value or "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(int(value)))

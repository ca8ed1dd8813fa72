"""``python -m testbed demo-up|demo-down|demo-status``: the demo behind ``make demo``.

The demo is the same :class:`testbed.stack.Stack` the end-to-end tests use,
left running under ``run/demo/`` so a person can send mail through it; with
the RDAP server of domain onboarding, so ``tenant verify-domain`` works
offline. ``AUP_TESTBED_PORT_OFFSET`` shifts its default ports, as the tests'.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from testbed.client import CLIENT_ADDRESS
from testbed.proc import TestbedError
from testbed.stack import REPO_ROOT, Stack, port_offset
from testbed.tenants import DEMO_ACCOUNTS, DEMO_ONBOARDING

DEFAULT_RUN_DIR = REPO_ROOT / "run" / "demo"
DEFAULT_PORTS = {
    "redis": 6390, "smtp": 2525, "sink": 2526, "web": 8895, "metrics": 8896, "rdap": 8897,
}  # fmt: skip
"""Before ``AUP_TESTBED_PORT_OFFSET``; the DNS server and the mailto intake follow the sink's."""
# Like the tests' clients (testbed.client): a tenant connects from an address not Postfix's own.
REMOTE = f"--local-interface {CLIENT_ADDRESS}"


def build_stack(args: argparse.Namespace) -> Stack:
    return Stack(
        args.run_dir,
        redis_port=args.redis_port,
        smtp_port=args.smtp_port,
        sink_port=args.sink_port,
        with_milter=not args.without_milter,
        unsubscribe=True,
        web_port=args.web_port,
        metrics_port=args.metrics_port,
        onboarding=True,
        rdap_port=args.rdap_port,
    )


def _rel(path: Path) -> str:
    # Commands printed for copy-and-paste read better relative to the repo.
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def try_it(stack: Stack) -> str:
    smtp = f"{stack.host}:{stack.smtp_port}"
    acme, globex, initech = DEMO_ACCOUNTS
    # postsuper insists on an absolute -c path.
    config = stack.postfix.config_dir
    lines = [
        f"Demo relay ready: SMTP on {smtp} (AUTH PLAIN/LOGIN), Redis on port {stack.redis_port},",
        f"delivered mail lands in {_rel(stack.mail_dir)}/ (the sink on port {stack.sink_port}).",
        "",
        "Send as tenant acme (delivered):",
        f"  swaks --server {smtp} {REMOTE} --auth-user {acme.tenant.logins[0]} "
        f"--auth-password {acme.password} --from a@{acme.tenant.domains[0]} --to x@example.net",
        "Send as tenant globex:",
        f"  swaks --server {smtp} {REMOTE} --auth-user {globex.tenant.logins[0]} "
        f"--auth-password {globex.password} --from b@{globex.tenant.domains[0]} --to y@example.net",
        "Send a newsletter as tenant initech (plan newsletter: the relay adds its sender footer,",
        "identity, postal address and unsubscribe link, to every text part, then DKIM-signs):",
        f"  swaks --server {smtp} {REMOTE} --auth-user {initech.tenant.logins[0]} "
        f"--auth-password {initech.password} --from news@{initech.tenant.domains[0]} "
        "--to z@example.net --add-header 'Precedence: bulk' --body 'Our autumn news.'",
        f'  tail -n 12 "$(ls -t {_rel(stack.mail_dir)}/*.eml | head -1)"',
        "Unknown sender (rejected with 550 5.7.1):",
        f"  swaks --server {smtp} {REMOTE} --from someone@unknown.example --to x@example.net",
        "Suspend acme (its next mail goes to the hold queue), then lift it again:",
        f"  redis-cli -p {stack.redis_port} HSET aup:tenant:acme status suspended",
        f"  redis-cli -p {stack.redis_port} HSET aup:tenant:acme status active",
        "See the queue (held mail is marked !), release the hold and deliver now, or delete it:",
        f"  postqueue -c {config} -p",
        f"  postsuper -c {config} -H ALL && postqueue -c {config} -f",
        f"  postsuper -c {config} -d ALL hold",
        *unsubscribe_lines(stack),
        *onboarding_lines(stack),
        "The milter's Prometheus metrics (aup-milter(8) lists them):",
        f"  curl -s {stack.metrics_url} | grep '^aup_transactions_total'",
        "Every decision is in the audit trail (the queue id is in Postfix's 250 reply):",
        f"  {_rel(Path(sys.executable).parent / 'aup-milter')} log --redis {stack.redis_url}",
        f"  {_rel(Path(sys.executable).parent / 'aup-milter')} explain QUEUE_ID"
        f" --redis {stack.redis_url}",
        "Health check (Nagios exit codes: 0 OK, 1 WARNING, 2 CRITICAL):",
        f"  {_rel(Path(sys.executable).parent / 'aup-milter')} status"
        f" -c {_rel(stack.milter_config)}",
        "Logs:",
        f"  {_rel(stack.milter_log)}  {_rel(stack.postfix.log_file)}  {_rel(stack.sink_log)}",
        f"Stop it all:  {_rel(Path(sys.executable))} -m testbed demo-down",
    ]
    return "\n".join(lines)


def unsubscribe_lines(stack: Stack) -> list[str]:
    if not stack.unsubscribe:
        return []
    smtp = f"{stack.host}:{stack.smtp_port}"
    acme = DEMO_ACCOUNTS[0]
    python = _rel(Path(sys.executable))
    return [
        f"Bulk mail gets a one-click unsubscribe served on {stack.web_url}, DKIM-signed:",
        f"  swaks --server {smtp} {REMOTE} --auth-user {acme.tenant.logins[0]} "
        f"--auth-password {acme.password} --from news@{acme.tenant.domains[0]} "
        "--to x@example.net --add-header 'Precedence: bulk'",
        f"  grep -h '^List-Unsubscribe' {_rel(stack.mail_dir)}/*.eml | tail -2",
        "  curl -i -d List-Unsubscribe=One-Click URL   # the http:// link: x@example.net leaves",
        f"  {python} -m aupmilter suppress -c {_rel(stack.milter_config)} list --tenant acme",
        "  (the next mail from acme to x@example.net gets 550 5.7.1)",
    ]


def onboarding_lines(stack: Stack) -> list[str]:
    if not stack.onboarding:
        return []
    tenant_id, domain, _ = DEMO_ONBOARDING
    aup = _rel(Path(sys.executable).parent / "aup-milter")
    config = _rel(stack.milter_config)
    return [
        f"Verify {tenant_id}'s domain for bulk mail (ownership TXT, SPF, DKIM, DMARC from the",
        f"test DNS; the registrant from the RDAP server on {stack.rdap.base_url}), then see it",
        "recorded (every check passes; plan standard does not require it, see README):",
        f"  {aup} tenant -c {config} verify-domain {tenant_id} {domain}",
        f"  {aup} tenant -c {config} show {tenant_id}",
    ]


def demo_up(stack: Stack) -> int:
    stack.start()
    try:
        stack.add_demo_tenants()
        if stack.onboarding:
            stack.tenants.prepare_demo_onboarding()
    except BaseException:
        stack.stop()
        raise
    print(try_it(stack))
    return 0


def demo_down(stack: Stack) -> int:
    stack.stop()
    print(f"demo stopped (run folder {_rel(stack.run_dir)} kept for its logs and mail)")
    return 0


def demo_status(stack: Stack) -> int:
    status = stack.status()
    for name, pid in status.items():
        print(f"{name:<8} {'running, pid ' + str(pid) if pid else 'stopped'}")
    if status["postfix"]:
        queues = Counter(entry.get("queue_name", "?") for entry in stack.queue())
        summary = ", ".join(f"{n} {q}" for q, n in sorted(queues.items())) or "empty"
        print(f"queue    {summary}")
    if stack.mail_dir.exists():
        print(f"sink     {len(stack.sink_messages())} message(s) in {_rel(stack.mail_dir)}/")
    # Exit status for scripts: 0 only when everything runs.
    return 0 if all(status.values()) else 3


COMMANDS = {"demo-up": demo_up, "demo-down": demo_down, "demo-status": demo_status}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    ports = {name: port + port_offset() for name, port in DEFAULT_PORTS.items()}
    parser.add_argument("--redis-port", type=int, default=ports["redis"])
    parser.add_argument("--smtp-port", type=int, default=ports["smtp"])
    parser.add_argument("--sink-port", type=int, default=ports["sink"])
    parser.add_argument(
        "--web-port",
        type=int,
        default=ports["web"],
        help="the one-click unsubscribe service (links in the demo's mail point there)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=ports["metrics"],
        help="the milter's Prometheus metrics endpoint",
    )
    parser.add_argument(
        "--rdap-port",
        type=int,
        default=ports["rdap"],
        help="the RDAP server tenant verify-domain asks (recorded answers, tests/corpus/rdap/)",
    )
    parser.add_argument(
        "--without-milter",
        action="store_true",
        help="run Postfix with no milter (to check the relay itself)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stack = build_stack(args)
    try:
        return COMMANDS[args.command](stack)
    except TestbedError as exc:
        print(f"testbed {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

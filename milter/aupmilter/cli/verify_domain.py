"""`aup-milter tenant verify-domain TENANT DOMAIN [--json]`, and the verification lines of
`tenant show`.

Checks the domain (mailauth/onboarding.py: ownership token, SPF for the
relay's addresses, the relay's DKIM selector, DMARC, the RDAP registrant),
records the result in the tenant's state (store/verification.py) and prints
each finding with what to fix. The DNS servers, relay addresses, DKIM
identity and RDAP bootstrap come from the config file (`-c`), so the command
sees what the milter sees.

Exit status (exitcodes.py): EX_OK when every check passes, EX_FAILURE when
one fails, EX_TEMPFAIL when none fails but some could not be learnt (DNS or
RDAP failure: run it again later), EX_CONFIG without a readable config file,
EX_UNAVAILABLE without Redis (cli/main.py), EX_FAILURE for a tenant or
domain that is not there.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any

from aupmilter.config import Config
from aupmilter.exitcodes import EX_CONFIG, EX_FAILURE, EX_OK, EX_TEMPFAIL
from aupmilter.mailauth.onboarding import Probe, Signing, verify
from aupmilter.mailauth.rdap import RdapClient
from aupmilter.mailauth.resolver import Resolver
from aupmilter.policy.onboarding import (
    Standing,
    Status,
    standing_of,
    token_record,
)
from aupmilter.policy.tenancy import normalize_domain, parent_domains
from aupmilter.store.tenants import TenantAdmin, TenantError, TenantInfo, verifications
from aupmilter.store.verification import VerificationStore

EXIT_FOR = {Status.PASS: EX_OK, Status.FAIL: EX_FAILURE, Status.UNKNOWN: EX_TEMPFAIL}


def add_parser(actions: Any) -> None:
    """The `verify-domain` action of `aup-milter tenant`."""
    verify_parser = actions.add_parser(
        "verify-domain",
        help="check a tenant's domain (ownership TXT, SPF, DKIM, DMARC, RDAP registrant)"
        " and record the result for its bulk mail",
    )
    verify_parser.add_argument("tenant_id", metavar="TENANT")
    verify_parser.add_argument("domain", metavar="DOMAIN")
    verify_parser.add_argument("--json", action="store_true")


def run(client: Any, admin: TenantAdmin, config: Config | None, args: argparse.Namespace) -> int:
    """Verify, record, print; TenantError and Redis errors are the caller's (cli/main.py)."""
    if config is None:
        print(
            "aup-milter tenant verify-domain: needs a readable config file (-c PATH): its"
            " [dns], [messages] relay_ips, [dkim] and [onboarding] say what to check with",
            file=sys.stderr,
        )
        return EX_CONFIG
    info = admin.show(args.tenant_id)
    domain = _tenant_domain(info, args.domain)
    store = VerificationStore(client)
    token = store.token(info.tenant_id)
    identity = config.dkim.identity_for(info.tenant_id)
    probe = Probe(
        token=token,
        relay_ips=config.messages.relay_ips,
        helo=config.messages.message_id_domain or socket.gethostname(),
        signing=Signing(identity.domain, identity.selector, identity.key) if identity else None,
        resolver=Resolver(config.dns),
        rdap=RdapClient(config.onboarding),
    )
    findings = verify(domain, probe)
    now = time.time()
    recorded = store.record(info.tenant_id, domain, findings, now)
    status = recorded.verification.status
    plan = config.plans.get(info.plan or "")
    # The rule: a newly verified domain starts the tenant's ramp again, so the
    # first bulk mail it may send now ramps up as a new tenant's would.
    ramp_restarted = bool(recorded.newly_verified and plan is not None and plan.warmup.enabled)
    if ramp_restarted:
        admin.restart_warmup(
            info.tenant_id, f"domain {domain} newly verified", by="tenant verify-domain"
        )
    standing = None
    if plan is not None and plan.onboarding.enabled:
        known = {domain: recorded.verification}
        standing = standing_of(domain, known, plan.onboarding, now).standing
    if args.json:
        payload = {
            "tenant": info.tenant_id,
            "domain": domain,
            "status": status.value,
            "checked_at": recorded.verification.checked_at,
            "token_record": {"name": domain, "type": "TXT", "value": token_record(token)},
            "newly_verified": recorded.newly_verified,
            "warmup_restarted": ramp_restarted,
            "plan": info.plan,
            "onboarding": plan.onboarding.mode.value if plan is not None else None,
            "bulk_mail": standing.value if standing is not None else None,
            "findings": [f.as_json() for f in findings],
        }
        print(json.dumps(payload, indent=2, sort_keys=True))
        return EXIT_FOR[status]
    mode = f"onboarding {plan.onboarding.mode}" if plan is not None else "plan unknown"
    print(f"tenant {info.tenant_id}, domain {domain} (plan {info.plan}, {mode})")
    width = max(len(f.check.value) for f in findings)
    for finding in findings:
        print(f"  {finding.check.value.ljust(width)}  {finding.status.value.ljust(7)}  "
              f"{finding.reason}")  # fmt: skip
        if finding.status is not Status.PASS and finding.fix:
            print(f"  {''.ljust(width)}  {'fix:'.ljust(7)}  {finding.fix}")
    failing = ", ".join(f"{c} {s}" for c, s in sorted(recorded.verification.failing.items()))
    print(f"result: {status.value}" + (f" ({failing})" if failing else "")
          + f", recorded at {_timestamp(recorded.verification.checked_at)}")  # fmt: skip
    print(f'ownership token: a TXT record at {domain} with the value "{token_record(token)}"')
    if standing is not None:
        words = "accepted" if standing is Standing.VERIFIED else f"not accepted ({standing})"
        print(f"bulk mail from {domain} on plan {info.plan}: {words}")
    if ramp_restarted and plan is not None:
        print(
            f"warm-up: {domain} is newly verified, so the ramp starts again at"
            f" {plan.warmup.start_percent} percent of plan {info.plan}'s limits"
        )
    if status is Status.UNKNOWN:
        print("some answers could not be learnt (DNS or RDAP): run the command again later")
    return EXIT_FOR[status]


def _tenant_domain(info: TenantInfo, raw: str) -> str:
    """The domain, normalized; it must be one of the tenant's domains or under one."""
    domain = normalize_domain(raw)
    if domain is None:
        raise TenantError(f"invalid domain {raw!r}: expected a domain name like example.com")
    if not set(parent_domains(domain)) & set(info.domains):
        owned = ", ".join(info.domains) or "none"
        raise TenantError(
            f"{domain} is not a domain of tenant {info.tenant_id} (its domains: {owned});"
            " add it to the tenant first"
        )
    return domain


def show_lines(info: TenantInfo) -> list[str]:
    """`tenant show`: each verified domain's time and result, oldest record first."""
    found = verifications(info.fields)
    lines = []
    for domain, verification in sorted(found.items(), key=lambda item: item[1].checked_at):
        failing = ", ".join(f"{c} {s}" for c, s in sorted(verification.failing.items()))
        lines.append(
            f"domain {domain}: verification {verification.status}"
            + (f" ({failing})" if failing else "")
            + f" at {_timestamp(verification.checked_at)}"
        )
    return lines


def show_json(info: TenantInfo) -> dict[str, object]:
    return {
        "verifications": {
            domain: {
                "checked_at": v.checked_at,
                "status": v.status.value,
                "failing": {c.value: s.value for c, s in v.failing.items()},
            }
            for domain, v in verifications(info.fields).items()
        }
    }


def _timestamp(unix: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(unix))

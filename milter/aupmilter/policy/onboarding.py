"""Domain onboarding: what `tenant verify-domain` found, how it is kept, and what bulk mail gets.

`aup-milter tenant verify-domain TENANT DOMAIN` (cli/verify_domain.py) asks
DNS and RDAP (mailauth/onboarding.py, mailauth/rdap.py) and this module
judges each answer into a `Finding`: pass, fail or unknown with the reason
and what to fix. Five checks (`CheckName`):

- ownership: a TXT record at DOMAIN holding `aup-milter-verification=<token>`,
  the tenant's token (stored once per tenant, printed by the command);
- spf: the domain's SPF record authorizes every relay address
  (`[messages] relay_ips`); none configured is unknown, not fail;
- dkim: when the relay signs this tenant's mail with d= in DOMAIN's
  organizational domain, the selector's key record is published and is the
  relay's public key; when the relay does not sign with the domain, pass (not
  needed: DMARC then rests on SPF alignment);
- dmarc: a `v=DMARC1` record at `_dmarc.DOMAIN` (or at the organizational
  domain's, RFC 7489 6.6.3) with a valid policy; `p=none` passes (a record is
  what the mailbox providers require), the policy is in the reason;
- rdap: the registrant is not a privacy/proxy service (policy/registration.py).

A DNS or RDAP failure is `unknown`, never `fail`, and at end of message an
unknown-only verification answers 451, never 5xx.

The result is kept in the tenant hash, one field per domain (store.keys
`verified:<domain>`), compactly: `"<unix time> <status> <failing>"` where
failing is `-` or `check=status,...` (e.g. `1764650000 fail spf=fail,rdap=unknown`),
at most `MAX_VALUE_LENGTH` characters; the MAIL FROM read (HGETALL) brings it
with the tenant, so end of message needs no Redis call for it. The full
answers go to a report kept beside the tenant (not read by the milter).

At end of message (`decide_onboarding`), bulk mail whose From domain (and,
with `check_envelope`, the MAIL FROM domain) is not verified, failed a
required check, or was verified longer ago than the plan's `max_age`, is
refused 550 5.7.1 with what to fix; a verification whose required checks
failed only with `unknown` answers 451 4.7.0. `warn` mode adds the finding to
the verdict's warnings instead.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from aupmilter import replies
from aupmilter.policy.evidence import Status as DnsStatus
from aupmilter.policy.verdict import Verdict

TOKEN_PREFIX = "aup-milter-verification="
TOKEN_FORM = re.compile(r"^[a-z0-9]{16,64}$")
MAX_VALUE_LENGTH = 200
"""A stored verification value (time, status, failing checks) is far shorter; a longer one is
not ours and is ignored."""
MAX_VERIFIED_DOMAINS = 50
"""Verification fields per tenant: each is at most ~260 bytes (name + value), so the MAIL FROM
HGETALL carries at most ~13 KB of them; `verify-domain` refuses a 51st domain."""
MAX_DOMAIN_LABELS = 16


class CheckName(StrEnum):
    OWNERSHIP = "ownership"
    SPF = "spf"
    DKIM = "dkim"
    DMARC = "dmarc"
    RDAP = "rdap"


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    UNKNOWN = "unknown"
    """The answer could not be learnt (DNS or RDAP failure, nothing configured to check with)."""


@dataclass(frozen=True, slots=True)
class Finding:
    check: CheckName
    status: Status
    reason: str
    fix: str = ""
    """What to do about a fail or unknown, in words for the tenant or the relay's operator."""
    evidence: Mapping[str, object] = field(default_factory=dict)
    """The answers behind the finding (records, policy, registrant), JSON-ready."""

    def as_json(self) -> dict[str, object]:
        return {
            "check": self.check.value,
            "status": self.status.value,
            "reason": self.reason,
            "fix": self.fix,
            "evidence": dict(self.evidence),
        }


def overall(findings: Iterable[Finding]) -> Status:
    """fail if any check failed, else unknown if any is unknown, else pass."""
    statuses = {f.status for f in findings}
    if Status.FAIL in statuses:
        return Status.FAIL
    if Status.UNKNOWN in statuses:
        return Status.UNKNOWN
    return Status.PASS


# --- judging the answers ------------------------------------------------------------------


def token_record(token: str) -> str:
    return f"{TOKEN_PREFIX}{token}"


def judge_ownership(domain: str, token: str, status: DnsStatus, texts: Sequence[str]) -> Finding:
    """The tenant's token in a TXT record at the domain itself."""
    wanted = token_record(token)
    fix = f'publish a TXT record at {domain}: "{wanted}"'
    evidence: dict[str, object] = {"name": domain, "wanted": wanted}
    if status is DnsStatus.TEMPFAIL:
        return Finding(CheckName.OWNERSHIP, Status.UNKNOWN, f"TXT {domain}: lookup failed",
                       "try again later (DNS did not answer)", evidence)  # fmt: skip
    if any(text.strip() == wanted for text in texts):
        return Finding(CheckName.OWNERSHIP, Status.PASS, f"TXT {domain} holds the token",
                       evidence=evidence)  # fmt: skip
    others = [t for t in texts if t.startswith(TOKEN_PREFIX)]
    reason = f"no TXT record at {domain} holds {wanted}"
    if others:
        reason += f" (found another token: {others[0][:80]})"
    return Finding(CheckName.OWNERSHIP, Status.FAIL, reason, fix, evidence)


SPF_PASS = "pass"
SPF_TEMPERROR = "temperror"


def judge_spf(domain: str, results: Sequence[tuple[str, str, str]]) -> Finding:
    """(relay address, pyspf result, explanation) for every relay address; none: unknown."""
    evidence: dict[str, object] = {"results": {ip: result for ip, result, _ in results}}
    if not results:
        return Finding(CheckName.SPF, Status.UNKNOWN,
                       "the relay's outbound addresses are not configured ([messages] relay_ips)",
                       "the relay's operator sets [messages] relay_ips", evidence)  # fmt: skip
    bad = [(ip, r, why) for ip, r, why in results if r != SPF_PASS]
    if not bad:
        ips = ", ".join(ip for ip, _, _ in results)
        return Finding(CheckName.SPF, Status.PASS, f"SPF of {domain} authorizes {ips}",
                       evidence=evidence)  # fmt: skip
    permanent = [(ip, r, why) for ip, r, why in bad if r != SPF_TEMPERROR]
    ip, result, why = (permanent or bad)[0]
    if not permanent:
        return Finding(CheckName.SPF, Status.UNKNOWN, f"SPF of {domain} for {ip}: {why or result}",
                       "try again later (DNS did not answer)", evidence)  # fmt: skip
    ips = " ".join(f"ip{'6' if ':' in addr else '4'}:{addr}" for addr, _, _ in results)
    return Finding(CheckName.SPF, Status.FAIL,
                   f"SPF of {domain} gives {result} for the relay's address {ip}",
                   f"add {ips} (or the relay's include) to the SPF record of {domain}",
                   evidence)  # fmt: skip


@dataclass(frozen=True, slots=True)
class DkimFacts:
    """The relay's signing identity for the tenant and what DNS publishes for its selector."""

    signing_domain: str | None
    """d= the relay signs this tenant's mail with; None: it does not sign it."""
    selector: str = ""
    aligned: bool = False
    """d= is in DOMAIN's organizational domain (relaxed DMARC alignment)."""
    status: DnsStatus = DnsStatus.FOUND
    records: tuple[tuple[str, bool], ...] = ()
    """Each DKIM key record's text, and whether its p= is the relay's public key."""


def judge_dkim(domain: str, facts: DkimFacts) -> Finding:
    if facts.signing_domain is None:
        return Finding(CheckName.DKIM, Status.PASS,
                       "not needed: the relay does not sign this tenant's mail")  # fmt: skip
    if not facts.aligned:
        return Finding(CheckName.DKIM, Status.PASS,
                       f"not needed: the relay signs with d={facts.signing_domain},"
                       f" not aligned with {domain}",
                       evidence={"d": facts.signing_domain})  # fmt: skip
    name = f"{facts.selector}._domainkey.{facts.signing_domain}"
    evidence: dict[str, object] = {"name": name, "records": [t for t, _ in facts.records]}
    fix = f"publish the relay's DKIM public key at {name} (ask the relay's operator for it)"
    if facts.status is DnsStatus.TEMPFAIL:
        return Finding(CheckName.DKIM, Status.UNKNOWN, f"TXT {name}: lookup failed",
                       "try again later (DNS did not answer)", evidence)  # fmt: skip
    keys = [(text, match) for text, match in facts.records if "p=" in text]
    if any(match for _, match in keys):
        return Finding(CheckName.DKIM, Status.PASS, f"{name} publishes the relay's key",
                       evidence=evidence)  # fmt: skip
    if keys:
        return Finding(CheckName.DKIM, Status.FAIL,
                       f"{name} publishes a key that is not the relay's (or a revoked one)",
                       fix, evidence)  # fmt: skip
    return Finding(CheckName.DKIM, Status.FAIL, f"no DKIM key record at {name}", fix, evidence)


DMARC_POLICIES = ("none", "quarantine", "reject")


def dmarc_tags(text: str) -> dict[str, str] | None:
    """The tags of a DMARC record (RFC 7489 6.3); None when it is not one."""
    if not re.match(r"^\s*v\s*=\s*DMARC1\s*(;|$)", text, re.IGNORECASE):
        return None
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    return tags


def judge_dmarc(
    domain: str,
    lookups: Sequence[tuple[str, DnsStatus, Sequence[str]]],
) -> Finding:
    """`lookups`: (name, status, TXT texts) of `_dmarc.DOMAIN`, then, when that has no
    record, of the organizational domain's `_dmarc` (whose `sp=` applies to subdomains)."""
    fix = (f'publish a TXT record at _dmarc.{domain}, e.g. "v=DMARC1; p=none;'
           f' rua=mailto:dmarc@{domain}"')  # fmt: skip
    for index, (name, status, texts) in enumerate(lookups):
        if status is DnsStatus.TEMPFAIL:
            return Finding(CheckName.DMARC, Status.UNKNOWN, f"TXT {name}: lookup failed",
                           "try again later (DNS did not answer)", {"name": name})  # fmt: skip
        records = [(text, tags) for text in texts if (tags := dmarc_tags(text)) is not None]
        if not records:
            continue
        evidence: dict[str, object] = {"name": name, "record": records[0][0]}
        if len(records) > 1:
            return Finding(CheckName.DMARC, Status.FAIL,
                           f"{name} has {len(records)} DMARC records (receivers ignore all)",
                           f"keep one v=DMARC1 record at {name}", evidence)  # fmt: skip
        tags = records[0][1]
        policy = tags.get("sp", tags.get("p", "")) if index else tags.get("p", "")
        policy = policy.lower()
        evidence["policy"] = policy
        if policy not in DMARC_POLICIES:
            return Finding(CheckName.DMARC, Status.FAIL,
                           f"{name} has no valid policy (p={policy or 'missing'})",
                           f"set p=none, quarantine or reject in {name}", evidence)  # fmt: skip
        where = name if index == 0 else f"{name} (organizational domain)"
        return Finding(CheckName.DMARC, Status.PASS, f"{where}: p={policy}",
                       evidence=evidence)  # fmt: skip
    return Finding(CheckName.DMARC, Status.FAIL, f"no DMARC record at _dmarc.{domain}", fix,
                   {"names": [name for name, _, _ in lookups]})  # fmt: skip


# --- the stored value -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DomainVerification:
    """One domain's last verification as kept in the tenant hash."""

    checked_at: int
    """Unix seconds of the check."""
    status: Status
    """Over every check (what `tenant show` says)."""
    failing: Mapping[CheckName, Status] = field(default_factory=dict)
    """The checks that did not pass, with fail or unknown."""

    def encode(self) -> str:
        failing = ",".join(f"{c.value}={s.value}" for c, s in sorted(self.failing.items()))
        return f"{self.checked_at} {self.status.value} {failing or '-'}"

    def failing_of(self, required: Iterable[CheckName]) -> dict[CheckName, Status]:
        wanted = set(required)
        return {c: s for c, s in self.failing.items() if c in wanted}


def verification_of(findings: Sequence[Finding], now: float) -> DomainVerification:
    failing = {f.check: f.status for f in findings if f.status is not Status.PASS}
    return DomainVerification(int(now), overall(findings), failing)


def parse_verification(value: str) -> DomainVerification | None:
    """The stored value; None when it is not one (a hand-edited field: counts as never
    verified, and `verify-domain` writes it again)."""
    if len(value) > MAX_VALUE_LENGTH:
        return None
    parts = value.split()
    if len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 12:
        return None
    try:
        status = Status(parts[1])
        failing: dict[CheckName, Status] = {}
        if parts[2] != "-":
            for item in parts[2].split(","):
                name, _, result = item.partition("=")
                failing[CheckName(name)] = Status(result)
    except ValueError:
        return None
    if Status.PASS in failing.values() or (status is Status.PASS) != (not failing):
        return None
    return DomainVerification(int(parts[0]), status, failing)


def newly_verified(before: DomainVerification | None, after: DomainVerification) -> bool:
    """The domain passes now and did not before (never checked, or last check not a pass):
    where the warm-up ramp of a newly verified domain starts."""
    return after.status is Status.PASS and (before is None or before.status is not Status.PASS)


# --- the plan -----------------------------------------------------------------------------


class OnboardingMode(StrEnum):
    OFF = "off"
    WARN = "warn"
    ENFORCE = "enforce"


@dataclass(frozen=True, slots=True)
class OnboardingPlan:
    """`[plan.NAME.onboarding]`: whether bulk mail needs a verified domain (config/onboarding)."""

    mode: OnboardingMode = OnboardingMode.OFF
    max_age: int = 30 * 86_400
    """Seconds a verification counts (the plan period): older is not verified."""
    required: frozenset[CheckName] = frozenset(CheckName)
    """Checks that must pass; the others are recorded and shown, never refuse."""
    check_envelope: bool = False
    """The MAIL FROM domain must be verified too, not only the From domain."""

    @property
    def enabled(self) -> bool:
        return self.mode is not OnboardingMode.OFF


# --- end of message -------------------------------------------------------------------------


class Standing(StrEnum):
    VERIFIED = "verified"
    NEVER = "never-verified"
    FAILED = "failed"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


RULES = {
    Standing.NEVER: "domain-unverified",
    Standing.FAILED: "domain-unverified",
    Standing.EXPIRED: "domain-verification-expired",
    Standing.UNKNOWN: "domain-verification-unknown",
}
"""The verdict's rule (`aup-milter log --rule ...`) for each standing that refuses or warns."""


@dataclass(frozen=True, slots=True)
class DomainStanding:
    domain: str
    standing: Standing
    record_domain: str | None = None
    """The domain whose record decided (the domain itself or a parent); None: none found."""
    verification: DomainVerification | None = None
    failing: Mapping[CheckName, Status] = field(default_factory=dict)

    def detail(self, max_age: int) -> str:
        """What is wrong, in words for the reply."""
        when = _day(self.verification.checked_at) if self.verification else ""
        checks = ", ".join(f"{c.value} {s.value}" for c, s in sorted(self.failing.items()))
        if self.standing is Standing.NEVER:
            return "it was never verified"
        if self.standing is Standing.FAILED:
            return f"its verification of {when} failed: {checks}"
        if self.standing is Standing.EXPIRED:
            return f"its verification of {when} is older than {max_age // 86_400} days"
        if self.standing is Standing.UNKNOWN:
            return f"its verification of {when} could not complete: {checks}"
        return "verified"


def standing_of(
    domain: str,
    verifications: Mapping[str, DomainVerification],
    plan: OnboardingPlan,
    now: float,
) -> DomainStanding:
    """The domain's standing from its own record or its nearest parent's.

    Verifying `acme.example` covers `news.acme.example` (the ownership record
    proves control of the zone, DMARC falls back to the organizational domain);
    a subdomain with a record of its own is judged by that record.
    """
    labels = domain.split(".")[-MAX_DOMAIN_LABELS:]
    for i in range(len(labels)):
        name = ".".join(labels[i:])
        found = verifications.get(name)
        if found is None:
            continue
        failing = found.failing_of(plan.required)
        if Status.FAIL in failing.values():
            return DomainStanding(domain, Standing.FAILED, name, found, failing)
        if now - found.checked_at > plan.max_age:
            return DomainStanding(domain, Standing.EXPIRED, name, found)
        if failing:
            return DomainStanding(domain, Standing.UNKNOWN, name, found, failing)
        return DomainStanding(domain, Standing.VERIFIED, name, found)
    return DomainStanding(domain, Standing.NEVER)


def decide_onboarding(
    plan: OnboardingPlan,
    verifications: Mapping[str, DomainVerification],
    domains: Sequence[str],
    tenant: str,
    now: float,
    passed: Verdict,
) -> Verdict:
    """The verdict for bulk mail from `domains` (From, and MAIL FROM with check_envelope).

    The first domain that is not verified for good decides (550); else the first
    whose required checks are only unknown (451); in warn mode the message
    goes on with the finding among the verdict's warnings.
    """
    if not plan.enabled:
        return passed
    standings = [standing_of(d, verifications, plan, now) for d in dict.fromkeys(domains)]
    bad = [s for s in standings if s.standing not in (Standing.VERIFIED, Standing.UNKNOWN)]
    unknown = [s for s in standings if s.standing is Standing.UNKNOWN]
    if not (bad or unknown):
        return passed
    chosen = (bad or unknown)[0]
    detail = chosen.detail(plan.max_age)
    reason = f"bulk mail from {chosen.domain}: {detail}"
    if plan.mode is OnboardingMode.WARN:
        return replace(passed, warnings=(*passed.warnings, f"onboarding: {reason}"))
    evidence: dict[str, object] = {
        "domain": chosen.domain,
        "standing": chosen.standing.value,
        "record": chosen.record_domain,
        "failing": {c.value: s.value for c, s in chosen.failing.items()},
    }
    if chosen.verification is not None:
        evidence["checked_at"] = chosen.verification.checked_at
    if chosen.standing is Standing.UNKNOWN:
        reply = replies.domain_verification_unknown(chosen.domain, tenant, detail)
    else:
        reply = replies.domain_unverified(chosen.domain, tenant, detail)
    return replace(
        Verdict.refuse(reply, reason, tenant, rule=RULES[chosen.standing], evidence=evidence),
        warnings=passed.warnings,
    )


def _day(unix: int) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(unix))

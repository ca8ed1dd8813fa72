"""The report half of `aup-milter intake --reports`: a classified report acted on.

A message delivered to the relay's report addresses (the `aup-reports` pipe
service of postfix-sample/master.cf.intake: feedback-loop reports and the
copies of the bounces Postfix returns to tenants) is classified by
`reports.classify_bytes`, with the tenant looked up in Redis as `report
classify -c` does, and then:

  complaint      each address in `suppress` suppressed for the tenant, source complaint
  hard-bounce    each address in `suppress` suppressed, source bounce
  soft-bounce,   the temporary failures and the delays counted per tenant and address
  delayed        (store/bounces.py); the plan's `soft_bounces_to_suppress` soft bounces
                 of one address within its `soft_bounce_window` suppress it, source bounce
  complaint,     then counted into the tenant's rolling complaint or bounce rate
  hard-bounce    (store/reputation.py, policy/reputation.py): past the plan's review
                 threshold a log warning and an audit event (auto-review), past its
                 suspend threshold the tenant suspended with the figures as its reason
                 (auto-suspend); only while the tenant is active
  not-a-report   nothing changed
  unparseable    nothing changed
  tenant unknown nothing changed (also when the evidence names no tenant of this relay)

The same report delivered twice (a feedback loop sending again, Postfix
retrying the pipe) is acted on once: after acting, its identity (a digest of the
report's Message-ID and body) is remembered for the plan's
rate period under the tenant (keys.report_seen), and a report already seen
changes and counts nothing.

Every outcome is one log line (logger `aupmilter.reports.intake`); each
suppression is also an audit event (store/suppression.py). The exit codes
are the intake's (unsubscribe/intake.py has the table). Redis failing at any
step defers the whole report (StoreDown); a report that needs no Redis at
all (an auto-reply with no clue to look up, an unparseable message) is
judged without it, since there is nothing to lose.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32

import redis

from aupmilter.config import Config
from aupmilter.policy.plans import BouncePlan
from aupmilter.policy.reputation import Action, Measure, ReputationPlan, decide
from aupmilter.policy.tenancy import TenantStatus
from aupmilter.reports.model import Kind, Report
from aupmilter.store import keys
from aupmilter.store.bounces import BounceCounters
from aupmilter.store.reputation import ReputationCounters
from aupmilter.store.suppression import Source, SuppressionStore

log = logging.getLogger("aupmilter.reports.intake")

SOURCES = {Kind.COMPLAINT: Source.COMPLAINT, Kind.HARD_BOUNCE: Source.BOUNCE}
MEASURES = {Kind.COMPLAINT: Measure.COMPLAINTS, Kind.HARD_BOUNCE: Measure.BOUNCES}
MAX_HEADER_BYTES = 64 * 1024
"""Of the report read for its Message-ID: the header section, bounded."""
MAX_DETAIL = 200
"""Of the report's reason, kept with each suppression's audit event."""


class StoreDown(Exception):
    """Redis failed while the report was looked up or acted on: the message is deferred."""


@dataclass(frozen=True, slots=True)
class Acted:
    report: Report
    suppressed: tuple[str, ...] = ()
    """Addresses newly suppressed (already suppressed ones are not repeated)."""
    counted: tuple[str, ...] = ()
    """`address soft N/LIMIT` or `address delayed N`, for the log line."""
    note: str = ""
    """Why nothing was done, when nothing was."""
    rate: str = ""
    """The rate counted and what it led to, when the report counts towards one."""


def process_report(
    raw: bytes, config: Config, client: redis.Redis, now: float, report_sender: str | None = None
) -> Acted:
    """Classify and act; StoreDown when Redis fails.

    A report already acted on counts nothing again. A retry after a failure
    half way repeats no harm: suppressions are idempotent (the first record is
    kept); only a failure between the counting and the remembering can count
    one report twice, which errs towards review.
    """
    from aupmilter.reports.classify import classify_bytes
    from aupmilter.store.report_lookup import StoreReader, lookup_for

    reader = StoreReader(client, config.redis.url)
    report = classify_bytes(raw, lookup_for(config, reader), report_sender)
    if reader.failure is not None:
        raise StoreDown(str(reader.failure))
    try:
        acted = _act(report, config, client, now, report_identity(raw))
    except (redis.RedisError, OSError) as exc:
        raise StoreDown(str(exc)) from exc
    _log(acted)
    return acted


def report_identity(raw: bytes) -> str:
    """What stays the same when a report is sent again: its Message-ID and its body.

    The header section around them changes on the way (Received, a new Date from
    a resending feedback loop); two reports that merely share a careless
    Message-ID still differ in their bodies.
    """
    headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:MAX_HEADER_BYTES])
    message_id = " ".join(str(headers.get("Message-ID", "")).split())
    separator = b"\r\n\r\n" if b"\r\n\r\n" in raw else b"\n\n"
    body = raw.partition(separator)[2]
    digest = hashlib.sha256(message_id.encode("utf-8", "replace") + b"\0" + body)
    return digest.hexdigest()[:32]


def _act(report: Report, config: Config, client: redis.Redis, now: float, identity: str) -> Acted:
    if report.kind is Kind.UNPARSEABLE:
        return Acted(report, note="not readable as a report; discarded")
    if not (report.suppress or report.soft or report.delayed):
        return Acted(report, note="names no one to suppress or count")
    if report.tenant is None:
        return Acted(report, note="tenant unknown: nothing suppressed")
    plan_name, status = client.hmget(
        keys.tenant(report.tenant), [keys.FIELD_PLAN, keys.FIELD_STATUS]
    )
    if plan_name is None:
        return Acted(report, note=f"{report.tenant} is not a tenant here: nothing suppressed")
    plan = config.plans.get(str(plan_name))
    bounces = plan.bounces if plan is not None else BouncePlan()
    reputation = plan.reputation if plan is not None else ReputationPlan()
    seen = keys.report_seen(report.tenant, identity)
    if client.exists(seen):
        return Acted(report, note="the same report was acted on before: nothing counted again")
    detail = report.reason[:MAX_DETAIL]
    store = SuppressionStore(client)
    suppressed: list[str] = []
    source = SOURCES.get(report.kind, Source.BOUNCE)
    if report.suppress:
        outcomes = store.add_many(report.tenant, report.suppress, source, now, detail)
        suppressed += [o.suppression.address for o in outcomes if o.added]
    counters = BounceCounters(client)
    soft, delayed = counters.count(
        report.tenant, report.soft, report.delayed, bounces.soft_bounce_window
    )
    limit = bounces.soft_bounces_to_suppress
    counted = [f"{a} soft {n}/{limit}" for a, n in zip(report.soft, soft, strict=True)]
    counted += [f"{a} delayed {n}" for a, n in zip(report.delayed, delayed, strict=True)]
    hardened = [a for a, n in zip(report.soft, soft, strict=True) if n >= limit]
    if hardened:
        why = f"{limit} soft bounces within {bounces.soft_bounce_window}s; last: {detail}"
        outcomes = store.add_many(report.tenant, hardened, Source.BOUNCE, now, why[:MAX_DETAIL])
        suppressed += [o.suppression.address for o in outcomes if o.added]
        counters.forget(report.tenant, hardened)
    note = "" if suppressed else "nothing new suppressed"
    rate = _rate(report, str(status), reputation, client, now)
    client.set(seen, str(int(now)), ex=reputation.period + 86_400)
    return Acted(report, tuple(suppressed), tuple(counted), note, rate)


def _rate(
    report: Report, status: str, plan: ReputationPlan, client: redis.Redis, now: float
) -> str:
    """Count the report into its rate and take the action the plan's thresholds call for.

    Only an active tenant's reports are counted: those received while it is
    suspended concern mail sent before, the evidence ops are looking at, and
    the counters are reset at the suspension; so after a lift the rate counts
    only what came in since, and the same evidence cannot suspend it again.
    """
    measure = MEASURES.get(report.kind)
    if measure is None or not report.suppress or report.tenant is None:
        return ""
    if status != TenantStatus.ACTIVE.value:
        return f"{measure.value} not counted: tenant is {status}"
    tenant = report.tenant
    counters = ReputationCounters(client)
    counts = counters.count(tenant, measure, len(report.suppress), plan, now)
    decision = decide(measure, counts.events, counts.delivered, plan, status)
    if decision.action is Action.SUSPEND:
        if counters.suspend(tenant, decision, plan, now):
            fields = counters.audit(tenant, "auto-suspend", decision, now)
            log.warning(
                "tenant %s suspended automatically: %s",
                tenant,
                decision.figures,
                extra={"event": fields},
            )
            return f"{decision.figures}: suspended"
        return f"{decision.figures}: not suspended, the tenant is no longer active"
    if decision.action is Action.REVIEW:
        fields = counters.audit(tenant, "auto-review", decision, now)
        log.warning("tenant %s needs review: %s", tenant, decision.figures, extra={"event": fields})
        return f"{decision.figures}: review"
    return f"{decision.figures}: {decision.why}"


def _log(acted: Acted) -> None:
    report = acted.report
    parts = [f"report {report.kind}", f"tenant {report.tenant or 'unknown'}"]
    if acted.suppressed:
        parts.append("suppressed " + ", ".join(acted.suppressed))
    if acted.counted:
        parts.append("counted " + ", ".join(acted.counted))
    if acted.note:
        parts.append(acted.note)
    if acted.rate:
        parts.append(acted.rate)
    parts.append(f"({report.reason})")
    level = logging.WARNING if report.kind is Kind.UNPARSEABLE else logging.INFO
    log.log(level, "; ".join(parts[:-1]) + " " + parts[-1], extra={"event": report.as_json("-")})

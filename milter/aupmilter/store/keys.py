"""Every Redis key name and every tenant-hash field name, in one place.

Documented for operators in README ("Redis keys"). Nothing else in the package
spells a key or a field: the store builds keys here and parses the tenant hash
into a `TenantRecord` (store.tenants), so the policy reads named attributes.

aup:tenant:<id>           hash: the tenant (fields below)
aup:tenant:<id>:logins    set: SASL logins mapped to the tenant (reverse index)
aup:tenant:<id>:domains   set: sender domains mapped to the tenant (reverse index)
aup:login:<login>         string: tenant id for an exact {auth_authen} value
aup:domain:<domain>       string: tenant id for a sender domain (and its subdomains)
aup:tenants               set: all tenant ids
aup:registry              string: the tenant registry's marker, "<unix time> <writer>",
                          written by tenant administration (`aup-milter tenant`). A
                          store that holds neither it nor aup:tenants has lost its
                          state (restart without persistence, failover to an empty
                          replica, a flush): the milter tempfails instead of refusing
                          every sender as unknown. After creating tenants by hand:
                          redis-cli SET aup:registry "$(date +%s) by-hand"
aup:tenant:<id>:streams   hash: SASL login or envelope sender -> "bulk" | "transactional"
aup:tenant:<id>:verifications  hash: domain -> the last `verify-domain` report (JSON: every
                          finding with its reason and answers); never read by the milter

Fields of aup:tenant:<id> (FIELD_* below):

status                      active | suspended | terminated
plan                        the plan's name; also read by name in
                            scripts/sender_state.lua, to choose the windows to fill
reason                      the operators' free text for the status
created_at, updated_at      Unix seconds, written by `aup-milter tenant`
allowed_domains             extra Reply-To/Sender domains, separated by spaces or commas
max_recipients_per_message  the tenant's own recipient cap, in place of the plan's
window.<name>               the tenant's own limit for the plan's window <name>
mode                        enforce | shadow: the tenant's own mode (shadow: every check
                            runs, the audit trail says what it would have done, the
                            mail passes); absent: the plan's `mode`
auto_suspended_at           Unix seconds of the last automatic suspension (complaint or
                            bounce rate); kept when ops lift it, for the record
auto_terminated_at          Unix seconds of the ladder's termination of the tenant (third
                            near-cap-repeat offence of one sender); kept for the record
identity_name               the sender's legal name, shown in the footer of bulk mail
identity_address            its postal address, lines separated by a line feed; on plans
                            with `footer = "check"` it must appear in every text part
identity_contact            a contact URL or mailbox address, shown in the footer
                            (all three: `aup-milter tenant set-identity`; read with the
                            tenant by the MAIL FROM script's HGETALL)
warmup_started_at           Unix seconds the warm-up ramp (re)started (policy.warmup):
                            `tenant add` on a plan with [plan.NAME.warmup], or
                            `aup-milter tenant warmup ID --restart`; absent: no ramp
                            (fully warmed). Its name and warmup_finished_at's are
                            passed to scripts/sender_state.lua, which reads the rate
                            counters only for a tenant with the one and not the other
warmup_reason               why the ramp (re)started or was finished, as the admin said
warmup_paused_at            Unix seconds the pause in force began (a rate above review,
                            found at MAIL FROM); absent: not paused
warmup_pause_reason         the rate's figures that paused it
warmup_paused_seconds       seconds of the ramp's pauses that ended (not good standing)
warmup_scale                the scale (percent) last audited: a change is written and
                            audited once (scripts/warmup_mark.lua compares it)
warmup_finished_at          Unix seconds the ramp reached 100 % or was finished by ops
verification_token          the tenant's domain-ownership token (random, made by the first
                            `aup-milter tenant verify-domain`; a TXT record
                            "aup-milter-verification=<token>" at a domain proves it)
verified:<domain>           the domain's last verification, "<unix time> <status> <failing>"
                            (policy.onboarding: e.g. "1764650000 fail spf=fail,rdap=unknown";
                            at most 50 domains per tenant, 200 characters each), read with
                            the tenant by the MAIL FROM script's HGETALL

On Redis Cluster (`[redis] cluster_nodes`) the tenant's own keys carry its id
as a hash tag too, so the MAIL FROM script reads them on the slot of its
windows: aup:tenant:{<id>}, aup:tenant:{<id>}:logins, ...:domains, ...:streams
(`use_cluster_layout`; standalone and Sentinel keep the names above).

Keys written per transaction carry the tenant id as a Redis Cluster hash tag,
so one script's keys always live on one slot:

aup:{<id>}:w:<unit>:<period_ms>              hash: per-tenant window buckets
aup:{<id>}:w:<unit>:<period_ms>:s:<sender>   hash: per-sender window buckets
                                             (bucket index -> count; expires by itself)
aup:{<id>}:suppressed                        hash: address -> "<source> <unix time>"
aup:{<id>}:consent                           hash: the consent ledger: address (normalised
                                             as the suppression hash) -> Unix seconds of the
                                             consent (`aup-milter consent import`); read by the
                                             end-of-message script on consent plans
aup:{<id>}:consent:src                       hash: address -> where the consent came from (the
                                             import's source column); never read on the hot path
aup:{<id>}:lastbulk                          hash: address -> Unix seconds of the last bulk mail
                                             of the tenant delivered to it (written by the
                                             end-of-message script on consent plans; no expiry:
                                             `aup-milter consent prune` drops old entries)
aup:{<id>}:fp:<period_ms>:<fingerprint>      hash: recipients a content fingerprint
                                             reached (bucket index -> count; as windows)
aup:{<id>}:soft:<address>                    string: soft bounces of the address counted
                                             by the report intake; expires the plan's
                                             soft_bounce_window after the first
aup:{<id>}:delayed:<address>                 string: delay notices of the address, the same way
aup:{<id>}:report:<identity>                 string: a report the intake acted on (its
                                             Message-ID's or content's digest), so the
                                             same report sent again counts nothing;
                                             expires after the plan's rate period + 1 day
aup:{<id>}:rate:<measure>:<period_ms>        hash: the plan's rolling rate counters, bucketed
                                             as windows: delivered recipients (charged at end
                                             of message), complaints and bounces (counted by
                                             the report intake; reset at an automatic suspension)
aup:{<id>}:nearcap:<period_ms>:<fingerprint>:s:<sender>
                                             hash: one sender's near-cap transactions with one
                                             content (policy.ladder; bucketed as windows),
                                             deleted when it makes an offence
aup:{<id>}:offences                          hash: sender identity -> its near-cap-repeat
                                             offences over the tenant's history (no expiry;
                                             `HDEL aup:{<id>}:offences <sender>` forgets them)
aup:{<id>}:suspended                         hash: sender:<identity> | domain:<domain> ->
                                             "<unix time> <reason>"; their mail is quarantined
                                             from MAIL FROM on. One command lifts one:

    redis-cli HDEL 'aup:{acme}:suspended' sender:bob@acme.example
    redis-cli HDEL 'aup:{acme}:suspended' domain:acme.example
    aup-milter tenant lift acme --sender bob@acme.example    (the same, audited: `lifted`)

Not per tenant (the unsubscribe service learns the tenant from it):

aup:unsubref:<ref>        string: "<tenant>\n<address>" behind a recipient token, or
                          "<tenant>\n\n<hashes>" behind a message token (its recipients'
                          keyed hashes, at most 1000); expires with the tokens
                          (aupmilter.policy.tokens, store.suppression)
aup:audit                 stream: the audit trail (aupmilter.audit): one entry per verdict,
                          refused or suppressed recipient, suppression change and automatic
                          action, flat string fields; trimmed by MINID to [audit] retention_days
aup:metrics:counts        hash: relay-wide counters for Prometheus (store.shared_counts):
                          report:<kind>, unsubscribe:<outcome>, suppression:<source>,
                          action:<automatic action> -> count; written with HINCRBY by the
                          intake, the web service, `aup-milter suppress` and the ladder,
                          read by the daemon's metrics at scrape time; DEL resets them

The Lua scripts get every key name through KEYS or ARGV (their headers say
which); the one name a script spells itself is the `plan` field (the warm-up
fields sender_state.lua and warmup_mark.lua look at come in ARGV).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from aupmilter.policy.limits import Scope, Window
from aupmilter.policy.tenancy import LookupKind

PREFIX = "aup:"
TENANT_PREFIX = f"{PREFIX}tenant:"
TENANTS = f"{PREFIX}tenants"
REGISTRY = f"{PREFIX}registry"
AUDIT_STREAM = f"{PREFIX}audit"
SHARED_COUNTS = f"{PREFIX}metrics:counts"
TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

FIELD_STATUS = "status"
FIELD_PLAN = "plan"
"""Spelled in scripts/sender_state.lua too: keep the two equal."""
FIELD_REASON = "reason"
FIELD_CREATED_AT = "created_at"
FIELD_UPDATED_AT = "updated_at"
FIELD_ALLOWED_DOMAINS = "allowed_domains"
FIELD_MAX_RECIPIENTS = "max_recipients_per_message"
FIELD_AUTO_TERMINATED_AT = "auto_terminated_at"
FIELD_AUTO_SUSPENDED_AT = "auto_suspended_at"
FIELD_MODE = "mode"
FIELD_IDENTITY_NAME = "identity_name"
FIELD_IDENTITY_ADDRESS = "identity_address"
FIELD_IDENTITY_CONTACT = "identity_contact"
FIELD_WARMUP_STARTED_AT = "warmup_started_at"
FIELD_WARMUP_REASON = "warmup_reason"
FIELD_WARMUP_PAUSED_AT = "warmup_paused_at"
FIELD_WARMUP_PAUSE_REASON = "warmup_pause_reason"
FIELD_WARMUP_PAUSED_SECONDS = "warmup_paused_seconds"
FIELD_WARMUP_SCALE = "warmup_scale"
FIELD_WARMUP_FINISHED_AT = "warmup_finished_at"
WARMUP_FIELDS = (
    FIELD_WARMUP_STARTED_AT,
    FIELD_WARMUP_REASON,
    FIELD_WARMUP_PAUSED_AT,
    FIELD_WARMUP_PAUSE_REASON,
    FIELD_WARMUP_PAUSED_SECONDS,
    FIELD_WARMUP_SCALE,
    FIELD_WARMUP_FINISHED_AT,
)
FIELD_VERIFICATION_TOKEN = "verification_token"
FIELD_VERIFIED_PREFIX = "verified:"
"""``verified:<domain>``: the domain's last verification (policy.onboarding)."""
FIELD_WINDOW_PREFIX = "window."
"""``window.<name>`` overrides the limit of the plan's window ``<name>``."""


_cluster_layout = False


def use_cluster_layout(enabled: bool) -> None:
    """Name the tenant's own keys with its hash tag (Redis Cluster) or not (the default).

    Set by `store.client.connect` from the `[redis]` settings, before any key is
    built: one process talks to one deployment, and every tool connects there.
    """
    global _cluster_layout
    _cluster_layout = enabled


def cluster_layout() -> bool:
    return _cluster_layout


def tenant(tenant_id: str) -> str:
    if _cluster_layout:
        return f"{TENANT_PREFIX}{{{tenant_id}}}"
    return f"{TENANT_PREFIX}{tenant_id}"


def tenant_id_of(tenant_key_rest: str) -> str | None:
    """The id in what follows TENANT_PREFIX in a tenant hash's key; None for its other keys."""
    if _cluster_layout:
        inner = tenant_key_rest.removeprefix("{").removesuffix("}")
        return inner if tenant_key_rest == f"{{{inner}}}" and "}" not in inner else None
    return None if ":" in tenant_key_rest else tenant_key_rest


LOGINS_SUFFIX = ":logins"


def tenant_logins(tenant_id: str) -> str:
    return f"{tenant(tenant_id)}{LOGINS_SUFFIX}"


DOMAINS_SUFFIX = ":domains"


def tenant_domains(tenant_id: str) -> str:
    return f"{tenant(tenant_id)}{DOMAINS_SUFFIX}"


def reverse_index(kind: LookupKind, tenant_id: str) -> str:
    """The tenant's set of the names a lookup of this kind maps to it."""
    return tenant_logins(tenant_id) if kind is LookupKind.LOGIN else tenant_domains(tenant_id)


def login(name: str) -> str:
    return f"{PREFIX}login:{name}"


def domain(name: str) -> str:
    return f"{PREFIX}domain:{name}"


def mapping(kind: LookupKind, name: str) -> str:
    return login(name) if kind is LookupKind.LOGIN else domain(name)


STREAMS_SUFFIX = ":streams"


def tenant_streams(tenant_id: str) -> str:
    return f"{tenant(tenant_id)}{STREAMS_SUFFIX}"


VERIFICATIONS_SUFFIX = ":verifications"


def tenant_verifications(tenant_id: str) -> str:
    return f"{tenant(tenant_id)}{VERIFICATIONS_SUFFIX}"


def verified_field(domain: str) -> str:
    return f"{FIELD_VERIFIED_PREFIX}{domain}"


def tagged(tenant_id: str) -> str:
    """The per-tenant prefix with the Cluster hash tag: ``aup:{<id>}:``."""
    return f"{PREFIX}{{{tenant_id}}}:"


def window_suffix(window: Window, sender: str) -> str:
    """The window key after the tagged tenant prefix (counts are shared by equal counters)."""
    scope, unit, period_ms = window.counter
    suffix = f"w:{unit[0]}:{period_ms}"
    return f"{suffix}:s:{sender}" if scope is Scope.SENDER else suffix


def window_key(tenant_id: str, window: Window, sender: str) -> str:
    return tagged(tenant_id) + window_suffix(window, sender)


def split_at_tenant(key_for: Callable[[str], str]) -> tuple[str, str]:
    """(head, tail) around the tenant id, for scripts that learn the id themselves."""
    head, tail = key_for("\0").split("\0")
    return head, tail


def suppressed(tenant_id: str) -> str:
    return tagged(tenant_id) + "suppressed"


def consent(tenant_id: str) -> str:
    return tagged(tenant_id) + "consent"


def consent_sources(tenant_id: str) -> str:
    return tagged(tenant_id) + "consent:src"


def last_bulk(tenant_id: str) -> str:
    return tagged(tenant_id) + "lastbulk"


def fingerprint_counter(tenant_id: str, fingerprint: str, period_ms: int) -> str:
    return tagged(tenant_id) + f"fp:{period_ms}:{fingerprint}"


def unsubscribe_ref(ref_text: str) -> str:
    return f"{PREFIX}unsubref:{ref_text}"


def soft_bounces(tenant_id: str, address: str) -> str:
    return tagged(tenant_id) + f"soft:{address}"


def delays(tenant_id: str, address: str) -> str:
    return tagged(tenant_id) + f"delayed:{address}"


RATE_DELIVERED = "delivered"
"""The rate counters' denominator; the numerators are named by policy.reputation.Measure."""


def rate_counter(tenant_id: str, measure: str, period_ms: int) -> str:
    return tagged(tenant_id) + rate_suffix(measure, period_ms)


def rate_suffix(measure: str, period_ms: int) -> str:
    """A rate counter's key after the tagged tenant prefix (sender_state.lua builds it)."""
    return f"rate:{measure}:{period_ms}"


def near_cap_counter(tenant_id: str, fingerprint: str, sender: str, period_ms: int) -> str:
    return tagged(tenant_id) + f"nearcap:{period_ms}:{fingerprint}:s:{sender}"


OFFENCES_SUFFIX = "offences"
SUSPENDED_SUFFIX = "suspended"
"""After the tagged tenant prefix; sender_state.lua builds the two keys from them."""
SUSPENDED_SENDER = "sender:"
SUSPENDED_DOMAIN = "domain:"
"""The suspended hash's field prefixes: ``sender:<identity>`` and ``domain:<domain>``."""


def offences(tenant_id: str) -> str:
    return tagged(tenant_id) + OFFENCES_SUFFIX


def suspended_subjects(tenant_id: str) -> str:
    return tagged(tenant_id) + SUSPENDED_SUFFIX


def suspended_sender(identity: str) -> str:
    return SUSPENDED_SENDER + identity


def suspended_domain(domain: str) -> str:
    return SUSPENDED_DOMAIN + domain


def report_seen(tenant_id: str, identity: str) -> str:
    return tagged(tenant_id) + f"report:{identity}"

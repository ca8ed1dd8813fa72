"""The tenant hash: read into a `TenantRecord`, and administered (`aup-milter tenant`).

`tenant_record` is the one reader of the hash's fields for the milter, so the
policy sees named attributes and the names stay in `store.keys`.

Writes go through MULTI/EXEC with WATCH on the mapping keys, so two admins
adding the same login at once cannot both win. Redis Cluster has no MULTI
across slots: there the tenant's own keys (one slot) are written first, then
each mapping is claimed with SET NX, and a mapping another tenant holds
undoes the claims made; the milter, which checks a mapping against the
tenant's logins or domains set, never sees a half-made tenant as valid.

Every add also writes the registry marker (keys.REGISTRY): a store found
without it and without the tenant index has lost its state, and the milter
tempfails rather than refusing every tenant as an unknown sender.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from aupmilter.policy.footer import MAX_IDENTITY_LINES, MAX_IDENTITY_TEXT, TenantIdentity
from aupmilter.policy.limits import LimitOverrides
from aupmilter.policy.onboarding import DomainVerification, parse_verification
from aupmilter.policy.tenancy import TenantRecord, TenantStatus, normalize_domain
from aupmilter.policy.warmup import WarmupState
from aupmilter.store import keys
from aupmilter.store.suppression import queue_audit
from aupmilter.store.warmup import EVENT_PREFIX, finish_fields, queue_fields, restart_fields

_DOMAIN_SEPARATORS = re.compile(r"[\s,]+")
_CONTACT_URL = re.compile(r"^https?://[^\s/]+\S*$")
_CONTACT_MAILBOX = re.compile(r"^(mailto:)?[^\s@]+@[^\s@]+\.[^\s@]+$")
MAX_LIMIT_DIGITS = 12
"""A stored limit longer than this is a typo, not a limit."""


class TenantError(Exception):
    """A refused administrative change; the text says what to do instead."""


def tenant_record(
    tenant_id: str, fields: Mapping[str, str], domains: Iterable[str] = ()
) -> TenantRecord:
    """The tenant as the policy reads it, from its hash (empty: missing) and its domains set."""
    allowed_text = fields.get(keys.FIELD_ALLOWED_DOMAINS, "")
    allowed = (normalize_domain(x) for x in _DOMAIN_SEPARATORS.split(allowed_text) if x)
    return TenantRecord(
        tenant_id=tenant_id,
        exists=bool(fields),
        status=fields.get(keys.FIELD_STATUS, ""),
        plan=fields.get(keys.FIELD_PLAN, ""),
        reason=fields.get(keys.FIELD_REASON, ""),
        domains=frozenset(domains),
        allowed_domains=frozenset(d for d in allowed if d),
        overrides=limit_overrides(fields),
        mode=fields.get(keys.FIELD_MODE, ""),
        identity=tenant_identity(fields),
        warmup=warmup_state(fields),
        verifications=verifications(fields),
    )


def warmup_state(fields: Mapping[str, str]) -> WarmupState | None:
    """The ramp's fields (policy.warmup); None without a start: no ramp, fully warmed.

    A value that is no number is kept as a problem and read as absent: the
    ramp then errs towards its start (a broken start time: no ramp at all).
    """
    problems: list[str] = []

    def number(name: str) -> float | None:
        raw = fields.get(name)
        if raw is None or raw == "":
            return None
        try:
            value = float(raw)
        except ValueError:
            value = None
        if value is None or value != value or value < 0:
            problems.append(f"field {name!r} must be a number of seconds, got {raw!r}")
            return None
        return value

    started = number(keys.FIELD_WARMUP_STARTED_AT)
    if started is None:
        return None
    scale = fields.get(keys.FIELD_WARMUP_SCALE, "")
    return WarmupState(
        started_at=started,
        paused_seconds=number(keys.FIELD_WARMUP_PAUSED_SECONDS) or 0.0,
        paused_at=number(keys.FIELD_WARMUP_PAUSED_AT),
        pause_reason=fields.get(keys.FIELD_WARMUP_PAUSE_REASON, ""),
        finished_at=number(keys.FIELD_WARMUP_FINISHED_AT),
        audited_percent=int(scale) if scale.isdigit() and len(scale) <= 3 else None,
        reason=fields.get(keys.FIELD_WARMUP_REASON, ""),
        problems=tuple(problems),
    )


def verifications(fields: Mapping[str, str]) -> dict[str, DomainVerification]:
    """The `verified:<domain>` fields, parsed; an unreadable one is left out (not verified)."""
    found: dict[str, DomainVerification] = {}
    for name, value in fields.items():
        if name.startswith(keys.FIELD_VERIFIED_PREFIX):
            parsed = parse_verification(value)
            if parsed is not None:
                found[name[len(keys.FIELD_VERIFIED_PREFIX) :]] = parsed
    return found


def tenant_identity(fields: Mapping[str, str]) -> TenantIdentity | None:
    """The identity fields; None when none is set (an incomplete one says what is missing)."""
    name = fields.get(keys.FIELD_IDENTITY_NAME, "").strip()
    address_text = fields.get(keys.FIELD_IDENTITY_ADDRESS, "")
    contact = fields.get(keys.FIELD_IDENTITY_CONTACT, "").strip()
    address = tuple(line.strip() for line in address_text.splitlines() if line.strip())
    if not (name or address or contact):
        return None
    return TenantIdentity(name=name, address=address, contact=contact)


def validate_identity(name: str, address: Sequence[str], contact: str) -> TenantIdentity:
    """The identity `tenant set-identity` stores; TenantError says what to change."""

    def printable(label: str, text: str) -> str:
        text = text.strip()
        if not text or len(text) > MAX_IDENTITY_TEXT or not text.isprintable():
            raise TenantError(
                f"invalid {label} {text!r}: 1-{MAX_IDENTITY_TEXT} printable characters"
            )
        return text

    lines = [line for part in address for line in part.splitlines() if line.strip()]
    if not 1 <= len(lines) <= MAX_IDENTITY_LINES:
        raise TenantError(
            f"a postal address needs 1-{MAX_IDENTITY_LINES} lines (--address, repeatable),"
            f" got {len(lines)}"
        )
    checked = printable("contact", contact)
    if not (_CONTACT_URL.match(checked) or _CONTACT_MAILBOX.match(checked)):
        raise TenantError(
            f"invalid contact {checked!r}: expected an http(s) URL or a mailbox address"
            " (name@example.com)"
        )
    return TenantIdentity(
        name=printable("name", name),
        address=tuple(printable("address line", line) for line in lines),
        contact=checked,
    )


def limit_overrides(fields: Mapping[str, str]) -> LimitOverrides:
    """The hash's limit fields; a value that is no whole number is kept as a problem."""
    cap: int | None = None
    windows: dict[str, int] = {}
    problems: list[str] = []
    for name, raw in sorted(fields.items()):
        if name == keys.FIELD_MAX_RECIPIENTS:
            target = None
        elif name.startswith(keys.FIELD_WINDOW_PREFIX):
            target = name[len(keys.FIELD_WINDOW_PREFIX) :]
        else:
            continue
        if not raw.isdigit() or len(raw) > MAX_LIMIT_DIGITS:
            problems.append(f"field {name!r} must be a whole number, got {raw!r}")
        elif target is None:
            cap = int(raw)
        else:
            windows[target] = int(raw)
    return LimitOverrides(cap, windows, tuple(problems))


@dataclass(frozen=True, slots=True)
class TenantInfo:
    """A tenant as `aup-milter tenant` shows it: the whole hash, logins and domains."""

    tenant_id: str
    fields: dict[str, str]
    """The hash as stored, every field (JSON output shows them all)."""
    logins: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)

    @property
    def status(self) -> str | None:
        return self.fields.get(keys.FIELD_STATUS)

    @property
    def plan(self) -> str | None:
        return self.fields.get(keys.FIELD_PLAN)

    @property
    def reason(self) -> str:
        return self.fields.get(keys.FIELD_REASON, "")

    @property
    def updated_at(self) -> str:
        return self.fields.get(keys.FIELD_UPDATED_AT, "")

    def as_json(self) -> dict[str, object]:
        return {"id": self.tenant_id, **self.fields, "logins": self.logins, "domains": self.domains}


def validate_tenant_id(tenant_id: str) -> str:
    if not keys.TENANT_ID.match(tenant_id):
        raise TenantError(
            f"invalid tenant id {tenant_id!r}: use 1-64 lower-case letters, digits, '.', '-', '_'"
        )
    return tenant_id


def validate_login(login: str) -> str:
    if not login or len(login) > 256 or any(c.isspace() or ord(c) < 32 for c in login):
        raise TenantError(f"invalid login {login!r}: 1-256 characters, no spaces or controls")
    return login


def validate_domain(domain: str) -> str:
    normalized = normalize_domain(domain)
    if normalized is None:
        raise TenantError(f"invalid domain {domain!r}: expected a domain name like example.com")
    return normalized


def validate_status(status: str) -> TenantStatus:
    try:
        return TenantStatus(status)
    except ValueError:
        allowed = ", ".join(s.value for s in TenantStatus)
        raise TenantError(f"invalid status {status!r}: expected one of {allowed}") from None


def registry_marker(now: str, writer: str) -> str:
    return f"{now} {writer}"


class TenantAdmin:
    def __init__(self, client: redis.Redis, clock: object = time.time) -> None:
        self.client = client
        self._clock = clock
        from aupmilter.store.client import is_cluster  # client imports this module

        self.cluster = is_cluster(client)

    def _now(self) -> str:
        return str(int(self._clock()))  # type: ignore[operator]

    def mark_registry(self, writer: str = "aup-milter tenant") -> None:
        """Say the store holds the tenant registry (after tenants were made by hand)."""
        self.client.set(keys.REGISTRY, registry_marker(self._now(), writer))

    def registry_present(self) -> bool:
        """What the MAIL FROM script asks before calling a sender unknown."""
        return bool(self.client.exists(keys.REGISTRY) or self.client.exists(keys.TENANTS))

    def add(
        self,
        tenant_id: str,
        plan: str,
        logins: Iterable[str],
        domains: Iterable[str],
        status: str = TenantStatus.ACTIVE,
        reason: str = "",
        warmup: bool = False,
    ) -> TenantInfo:
        """A new tenant; `warmup` (its plan has a [plan.NAME.warmup]) starts its ramp now."""
        tenant_id = validate_tenant_id(tenant_id)
        login_list = sorted({validate_login(x) for x in logins})
        domain_list = sorted({validate_domain(x) for x in domains})
        state = validate_status(status)
        if not plan:
            raise TenantError("a tenant needs a plan (--plan NAME)")
        mapping_keys = [keys.login(x) for x in login_list] + [keys.domain(x) for x in domain_list]
        now = self._now()
        fields: dict[str, str] = {
            keys.FIELD_STATUS: state.value,
            keys.FIELD_PLAN: plan,
            keys.FIELD_REASON: reason,
            keys.FIELD_CREATED_AT: now,
            keys.FIELD_UPDATED_AT: now,
        }
        if warmup:
            fields.update(restart_fields(now, "tenant add")[0])
        if self.cluster:
            self._add_on_cluster(tenant_id, fields, login_list, domain_list, mapping_keys)
            return self.show(tenant_id)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.watch(keys.tenant(tenant_id), *mapping_keys)  # type: ignore[no-untyped-call]
            if pipe.exists(keys.tenant(tenant_id)):
                raise TenantError(f"tenant {tenant_id!r} already exists (remove it first)")
            for key in mapping_keys:
                owner = cast(str | None, pipe.get(key))
                if owner is not None:
                    raise TenantError(f"{key} is already mapped to tenant {owner!r}")
            pipe.multi()
            pipe.hset(keys.tenant(tenant_id), mapping=cast(Any, fields))
            for key in mapping_keys:
                pipe.set(key, tenant_id)
            if login_list:
                pipe.sadd(keys.tenant_logins(tenant_id), *login_list)
            if domain_list:
                pipe.sadd(keys.tenant_domains(tenant_id), *domain_list)
            pipe.sadd(keys.TENANTS, tenant_id)
            pipe.set(keys.REGISTRY, registry_marker(now, "aup-milter tenant add"))
            pipe.execute()
        return self.show(tenant_id)

    def _add_on_cluster(
        self,
        tenant_id: str,
        fields: dict[str, str],
        login_list: list[str],
        domain_list: list[str],
        mapping_keys: list[str],
    ) -> None:
        """The tenant's slot first, then each mapping claimed with SET NX (see the module)."""
        if not self.client.hsetnx(
            keys.tenant(tenant_id), keys.FIELD_CREATED_AT, fields[keys.FIELD_CREATED_AT]
        ):
            raise TenantError(f"tenant {tenant_id!r} already exists (remove it first)")
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(keys.tenant(tenant_id), mapping=cast(Any, fields))
            if login_list:
                pipe.sadd(keys.tenant_logins(tenant_id), *login_list)
            if domain_list:
                pipe.sadd(keys.tenant_domains(tenant_id), *domain_list)
            pipe.execute()
        claimed: list[str] = []
        for key in mapping_keys:
            if self.client.set(key, tenant_id, nx=True):
                claimed.append(key)
                continue
            owner = self.client.get(key)
            for claim in claimed:
                self.client.delete(claim)
            for key in (keys.tenant(tenant_id), keys.tenant_logins(tenant_id)):
                self.client.delete(key)
            self.client.delete(keys.tenant_domains(tenant_id))
            raise TenantError(f"{key} is already mapped to tenant {owner!r}")
        with self.client.pipeline(transaction=False) as pipe:
            pipe.sadd(keys.TENANTS, tenant_id)
            pipe.set(
                keys.REGISTRY,
                registry_marker(fields[keys.FIELD_CREATED_AT], "aup-milter tenant add"),
            )
            pipe.execute()

    def set_status(
        self, tenant_id: str, status: str, reason: str = "", by: str = "cli"
    ) -> TenantInfo:
        """Set the status, and audit the change in the same MULTI.

        Back to `active` from `suspended` or `terminated` (also an automatic
        suspension by the rates or the ladder) is a `lifted` event; any other
        change a `status-changed` event; both name the old and the new status.
        """
        state = validate_status(status)
        tenant_key = keys.tenant(validate_tenant_id(tenant_id))
        # On a cluster the event goes to another slot: no MULTI, no WATCH.
        with self._existing(tenant_id, tenant_key) as pipe:
            old_status, old_reason = cast(
                list[str | None],
                self._read(pipe).hmget(tenant_key, [keys.FIELD_STATUS, keys.FIELD_REASON]),
            )
            now = self._now()
            self._queue_writes(pipe)
            pipe.hset(
                tenant_key,
                mapping={
                    keys.FIELD_STATUS: state.value,
                    keys.FIELD_REASON: reason,
                    keys.FIELD_UPDATED_AT: now,
                },
            )
            lifted = state is TenantStatus.ACTIVE and old_status in (
                TenantStatus.SUSPENDED.value,
                TenantStatus.TERMINATED.value,
            )
            event = {
                "event": "lifted" if lifted else "status-changed",
                "tenant": tenant_id,
                "subject": tenant_id,
                "kind": "tenant",
                "by": by,
                "detail": f"tenant {tenant_id}: {old_status or '?'} -> {state.value}"
                + (f" ({reason})" if reason else "")
                + (f"; was: {old_reason}" if old_reason else ""),
                "ts": now,
            }
            queue_audit(pipe, event, float(now))
            pipe.execute()
        return self.show(tenant_id)

    def restart_warmup(self, tenant_id: str, reason: str, by: str = "cli") -> TenantInfo:
        """Start the tenant's warm-up ramp again from day 1 (e.g. a newly verified domain).

        Pause, scale and end are forgotten; the MAIL FROM computes the scale from
        the new start on. Audited (`warmup-restarted`) in the same MULTI. A tenant
        whose plan has no warm-up keeps its full limits (policy.warmup).
        """
        now = self._now()
        sets, deletes = restart_fields(now, reason or "restarted")
        return self._warmup_write(tenant_id, sets, deletes, "restarted", reason, by, now)

    def finish_warmup(self, tenant_id: str, reason: str, by: str = "cli") -> TenantInfo:
        """End the tenant's ramp now: full limits from the next transaction on. Audited."""
        now = self._now()
        sets, deletes = finish_fields(now, reason or "finished")
        return self._warmup_write(tenant_id, sets, deletes, "finished", reason, by, now)

    def _warmup_write(
        self,
        tenant_id: str,
        sets: dict[str, str],
        deletes: list[str],
        change: str,
        reason: str,
        by: str,
        now: str,
    ) -> TenantInfo:
        tenant_key = keys.tenant(validate_tenant_id(tenant_id))
        with self._existing(tenant_id, tenant_key) as pipe:
            self._queue_writes(pipe)
            queue_fields(pipe, tenant_key, {**sets, keys.FIELD_UPDATED_AT: now}, deletes)
            detail = f"tenant {tenant_id}: warm-up {change}" + (f" ({reason})" if reason else "")
            event = {
                "event": EVENT_PREFIX + change,
                "tenant": tenant_id,
                "subject": tenant_id,
                "kind": "tenant",
                "by": by,
                "detail": detail,
                "ts": now,
            }
            if change == "finished":
                event["percent"] = "100"
            queue_audit(pipe, event, float(now))
            pipe.execute()
        return self.show(tenant_id)

    @contextlib.contextmanager
    def _existing(self, tenant_id: str, tenant_key: str) -> Iterator[Any]:
        """A pipeline for one tenant's hash, which must exist: WATCHed on one server, so a
        concurrent `tenant remove` cannot leave half a tenant; a cluster's pipeline has no
        WATCH (the hash is one slot). Reads go through `_read`, then `_queue_writes`."""
        with self.client.pipeline(transaction=not self.cluster) as pipe:
            if not self.cluster:
                pipe.watch(tenant_key)  # type: ignore[no-untyped-call]
            if not self._read(pipe).exists(tenant_key):
                raise TenantError(f"no tenant {tenant_id!r}")
            yield pipe

    def _queue_writes(self, pipe: Any) -> None:
        """From here on the pipeline queues (MULTI on one server; a cluster has none)."""
        if not self.cluster:
            pipe.multi()

    def _read(self, pipe: Any) -> Any:
        """Where a read inside a write answers at once: the WATCHing pipeline, or the cluster."""
        return self.client if self.cluster else pipe

    def set_identity(self, tenant_id: str, identity: TenantIdentity) -> TenantInfo:
        """Store the identity the footer of bulk mail shows (validated by `validate_identity`)."""
        tenant_key = keys.tenant(validate_tenant_id(tenant_id))
        with self._existing(tenant_id, tenant_key) as pipe:
            self._queue_writes(pipe)
            pipe.hset(
                tenant_key,
                mapping={
                    keys.FIELD_IDENTITY_NAME: identity.name,
                    keys.FIELD_IDENTITY_ADDRESS: "\n".join(identity.address),
                    keys.FIELD_IDENTITY_CONTACT: identity.contact,
                    keys.FIELD_UPDATED_AT: self._now(),
                },
            )
            pipe.execute()
        return self.show(tenant_id)

    def show(self, tenant_id: str) -> TenantInfo:
        tenant_id = validate_tenant_id(tenant_id)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.tenant(tenant_id))
            pipe.smembers(keys.tenant_logins(tenant_id))
            pipe.smembers(keys.tenant_domains(tenant_id))
            fields, logins, domains = pipe.execute()
        if not fields:
            raise TenantError(f"no tenant {tenant_id!r}")
        return TenantInfo(tenant_id, dict(fields), sorted(logins), sorted(domains))

    def list(self) -> list[TenantInfo]:
        ids = {str(x) for x in self.client.smembers(keys.TENANTS)}
        # Tenants made by hand with redis-cli have no entry in the index set.
        for key in self.client.scan_iter(match=f"{keys.TENANT_PREFIX}*", count=500):
            found = keys.tenant_id_of(str(key)[len(keys.TENANT_PREFIX) :])
            if found is not None:
                ids.add(found)
        infos = []
        for tenant_id in sorted(ids):
            try:
                infos.append(self.show(tenant_id))
            except TenantError:
                continue  # listed in the index but removed meanwhile
        return infos

    def remove(self, tenant_id: str) -> None:
        tenant_id = validate_tenant_id(tenant_id)
        info = self.show(tenant_id)
        mapping_keys = [keys.login(x) for x in info.logins] + [keys.domain(x) for x in info.domains]
        with self.client.pipeline(transaction=not self.cluster) as pipe:
            if mapping_keys and not self.cluster:
                pipe.watch(*mapping_keys)  # type: ignore[no-untyped-call]
            # In WATCH mode the pipeline executes reads at once.
            reader = self._read(pipe)
            owned = [key for key in mapping_keys if cast(str | None, reader.get(key)) == tenant_id]
            self._queue_writes(pipe)
            # One key per DEL: a cluster pipeline routes each command to one slot.
            for key in [
                *owned,
                keys.tenant(tenant_id),
                keys.tenant_logins(tenant_id),
                keys.tenant_domains(tenant_id),
                keys.tenant_verifications(tenant_id),
            ]:
                pipe.delete(key)
            pipe.srem(keys.TENANTS, tenant_id)
            pipe.execute()

"""The Redis client used by the milter: one script call per decision point.

A Redis outage is logged once when it starts and once when it ends, never once
per message; the connection pool reconnects by itself on the next call.

Audit events waiting in the process's `AuditTrail` ride on these calls: the
script call becomes one pipeline (the XADDs, then EVALSHA), still one round
trip. `flush_audit` writes them alone when no call came for a while. On one
server or Sentinel these two calls a transaction makes go by `LeanCalls`: the
same commands packed once and sent in one write, the replies read by redis-py's
own connection, without its per-command machinery (issue 12).

The `[redis]` settings choose the deployment (`connect`): one server, a
Sentinel-managed master, or a Cluster. On a Cluster the MAIL FROM script runs
in its resolved form on the tenant's slot, the tenant found by `MappingCache`
(a miss costs one more pipelined read of the mapping keys), and the audit
events do not ride (the stream is on another slot): the daemon's flusher
writes them once a second, whatever the number of transactions.
"""

from __future__ import annotations

import inspect
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.connection import Connection, SSLConnection, parse_url
from redis.exceptions import NoScriptError, RedisClusterException, ResponseError
from redis.retry import Retry
from redis.sentinel import Sentinel

from aupmilter.audit import AuditTrail, StreamFields, events_log
from aupmilter.config import RedisSettings
from aupmilter.policy.consent import ConsentMode, ConsentPlan, Unrecorded
from aupmilter.policy.limits import Scope, Unit, Window, WindowFill
from aupmilter.policy.plans import Plan
from aupmilter.policy.reputation import Measure
from aupmilter.policy.tenancy import Lookup, TenantRecord, sender_domain
from aupmilter.policy.tokens import Reference
from aupmilter.policy.warmup import RateCounts
from aupmilter.store import keys
from aupmilter.store.tenants import tenant_record
from aupmilter.store.warmup import Mark

if TYPE_CHECKING:
    from aupmilter.metrics import Metrics

log = logging.getLogger("aupmilter.store")


def metrics() -> Metrics:
    """The process's metrics, imported at first use: the intake and the command line,
    which import this module but never count, skip prometheus_client's import."""
    from aupmilter.metrics import METRICS

    return METRICS


STORE_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, OSError, RedisClusterException)
"""What a Redis call may raise when the store cannot answer (redis-py's cluster errors are
not RedisErrors: "cannot be connected", a slot map that cannot be refreshed)."""


class StoreUnavailable(Exception):
    """Redis could not answer; the text says why, for logs and verdict reasons."""


class RegistryMissing(StoreUnavailable):
    """Redis answers but holds no tenant registry: it lost its state, so no sender is unknown.

    Neither the marker tenant administration writes (keys.REGISTRY) nor the
    tenant index exists: a restart without persistence, a failover to an empty
    replica, a flush. Refusing senders as unknown then would bounce every
    tenant's mail for good; the caller follows on_store_error instead (a
    tempfail by default) until the registry is back.
    """


def load_script(name: str) -> str:
    return (resources.files("aupmilter.store") / "scripts" / name).read_text("utf-8")


ON_DEMAND_SCRIPTS = ("warmup_mark.lua",)
"""Scripts only a rare event runs (a warm-up change): `aup-milter status` does not expect
them loaded; the call loads one when Redis does not know it."""

URL_OPTIONS_DROPPED = ("host", "port", "path", "unix_socket_path", "connection_class", "db")
"""What a Sentinel's or Cluster's nodes take from `url`: everything but the address."""


def node_options(url: str) -> dict[str, Any]:
    """The data nodes' credentials, TLS and options from an address-less URL."""
    parsed: dict[str, Any] = dict(parse_url(url))  # type: ignore[no-untyped-call]
    tls = issubclass(parsed.get("connection_class", Connection), SSLConnection)
    options = {k: v for k, v in parsed.items() if k not in URL_OPTIONS_DROPPED}
    if tls:
        options["ssl"] = True
    return options


def connect(settings: RedisSettings) -> redis.Redis:
    """A client that fails fast: one immediate retry covers a stale pooled connection.

    The `[redis]` settings choose one server, the master a Sentinel names, or
    a Cluster (a `RedisCluster`, which has the same commands for one key or
    one slot); the key layout follows (`keys.use_cluster_layout`).
    """
    keys.use_cluster_layout(settings.mode == "cluster")
    timeouts: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.timeout,
    }
    common: dict[str, Any] = {
        **timeouts,
        "decode_responses": True,
        "health_check_interval": 0,
        "client_name": "aup-milter",
    }
    if settings.mode == "cluster":
        nodes = [
            ClusterNode(host, port)  # type: ignore[no-untyped-call]
            for host, port in settings.cluster_nodes
        ]
        # The cluster's own retries (redis-py's default) follow MOVED and a
        # promoted replica, and cover a stale pooled connection.
        options = {**common, **node_options(settings.url)}
        return cast(redis.Redis, LazyCluster(lambda: RedisCluster(startup_nodes=nodes, **options)))
    if settings.mode == "sentinel":
        data = node_options(settings.url)
        db = parse_url(settings.url).get("db", 0)  # type: ignore[no-untyped-call]
        sentinel_options: dict[str, Any] = {**timeouts, "decode_responses": True}
        if settings.sentinel_username:
            sentinel_options["username"] = settings.sentinel_username
        if settings.sentinel_password:
            sentinel_options["password"] = settings.sentinel_password
        if settings.sentinel_tls:
            sentinel_options.update(
                {k: v for k, v in data.items() if k.startswith("ssl")}, ssl=True
            )
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(settings.sentinels),
            sentinel_kwargs=sentinel_options,
            retry=Retry(NoBackoff(), 1),
            db=db,
            **common,
            **data,
        )
        master: redis.Redis = sentinel.master_for(settings.service_name)  # type: ignore[no-untyped-call]
        return master
    if settings.url.startswith("unix:") and not _UNIX_TAKES_CONNECT_TIMEOUT:
        # redis-py before 4.5 (Debian 12's 4.3) refuses this argument for a unix socket,
        # whose connect does not wait on a network anyway.
        common.pop("socket_connect_timeout")
    return redis.Redis.from_url(settings.url, retry=Retry(NoBackoff(), 1), **common)


_UNIX_TAKES_CONNECT_TIMEOUT = (
    "socket_connect_timeout"
    in inspect.signature(redis.UnixDomainSocketConnection.__init__).parameters
)


def command_settings(
    url: str, configured: RedisSettings | None, timeout: float, connect_timeout: float = 2.0
) -> RedisSettings:
    """A command's Redis: the configured deployment (one server, Sentinel or Cluster), or
    the one `--redis URL` names instead, with the command's own timeouts."""
    if configured is not None and url == configured.url:
        return replace(configured, connect_timeout=connect_timeout, timeout=timeout)
    return RedisSettings(url=url, connect_timeout=connect_timeout, timeout=timeout)


class LazyCluster:
    """A `RedisCluster` made at its first use, not at construction.

    redis-py's cluster client asks the startup nodes for the slot map as it is
    made: a daemon started (or reloaded) while the cluster is unreachable
    would fail instead of tempfailing. Here the first command makes it, a
    failure is the command's RedisError (`on_store_error` follows) and the
    next command tries again.
    """

    def __init__(self, factory: Callable[[], RedisCluster]) -> None:
        self._factory = factory
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    def _real(self) -> RedisCluster:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    try:
                        self._client = self._factory()
                    except RedisClusterException as exc:
                        # As a RedisError, for every caller's usual handling.
                        raise redis.ConnectionError(str(exc)) from exc
                client = self._client
        return client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> LazyCluster:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster | LazyCluster)


def connect_async(settings: RedisSettings, client_name: str) -> Any:
    """The asyncio client of the same deployment (the unsubscribe web service)."""
    import redis.asyncio
    from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.asyncio.sentinel import Sentinel as AsyncSentinel

    keys.use_cluster_layout(settings.mode == "cluster")
    common: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.timeout,
        "decode_responses": True,
        "client_name": client_name,
    }
    if settings.mode == "cluster":
        nodes = [AsyncClusterNode(host, port) for host, port in settings.cluster_nodes]
        return AsyncRedisCluster(startup_nodes=nodes, **common, **node_options(settings.url))
    if settings.mode == "sentinel":
        sentinel_options: dict[str, Any] = {"socket_timeout": settings.timeout}
        if settings.sentinel_username:
            sentinel_options["username"] = settings.sentinel_username
        if settings.sentinel_password:
            sentinel_options["password"] = settings.sentinel_password
        if settings.sentinel_tls:
            sentinel_options["ssl"] = True
        db = parse_url(settings.url).get("db", 0)  # type: ignore[no-untyped-call]
        sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
            list(settings.sentinels),
            sentinel_kwargs=sentinel_options,
            db=db,
            **common,
            **node_options(settings.url),
        )
        return sentinel.master_for(settings.service_name)
    return redis.asyncio.Redis.from_url(settings.url, **common)


def _hiredis_packer() -> Callable[[tuple[Any, ...]], bytes] | None:
    """hiredis's C packer of one command, where the installed hiredis has one (2.1 on;
    Debian 12's 1.0 has none: the connection's own packer then)."""
    try:
        import hiredis
    except ImportError:
        return None
    return cast(Callable[[tuple[Any, ...]], bytes] | None, getattr(hiredis, "pack_command", None))


PACK_COMMAND = _hiredis_packer()


def _pool_wants_a_command_name() -> bool:
    """redis-py 4.3's `get_connection(command_name, ...)` requires a command name, 8.x's
    warns when given one (`deprecated_args`): the form is chosen once, here."""
    parameter = inspect.signature(redis.ConnectionPool.get_connection).parameters.get(
        "command_name"
    )
    return parameter is not None and parameter.default is inspect.Parameter.empty


if _pool_wants_a_command_name():

    def _borrow(pool: redis.ConnectionPool) -> Any:
        return pool.get_connection("EVALSHA")

else:

    def _borrow(pool: redis.ConnectionPool) -> Any:
        return pool.get_connection()


RETRIED_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    socket.timeout,
)
"""What `connect`'s Retry(NoBackoff(), 1) retries: a stale pooled connection, a timeout."""


def _exchange(conn: Any, packed: list[bytes], count: int) -> list[Any]:
    """One write, then `count` replies read in order; an error reply as its exception."""
    conn.send_packed_command(packed)
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(conn.read_response())
        except ResponseError as error:
            replies.append(error)
    return replies


class LeanCalls:
    """The per-transaction script calls without redis-py's per-command machinery, on one
    server or a Sentinel-managed master (a Cluster keeps redis-py's own path).

    redis-py's Script -> evalsha -> execute_command -> Retry, its packer's pass
    over every argument, and its Pipeline for a ride, were about a fifth of the
    milter's Python CPU per message (issue 12). Here the request is packed once
    (hiredis's packer where it has one, else the connection's own) and sent in
    one write, on a connection from the client's own pool; the replies are read
    with the connection's own `read_response`, so they decode exactly as
    redis-py decodes them (an error reply as its ResponseError or NoScriptError,
    in its place, as a pipeline with raise_on_error=False gives it). Every reply
    is read before the connection goes back, so an error reply never leaves
    another one behind on the pooled connection.
    """

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool

    def round_trip(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """The commands' replies, in order, each error reply as its exception object.

        A stale pooled connection (the server closed it, restarted) or a timeout
        costs one immediate retry of the whole request on a fresh connection, as
        `connect`'s Retry(NoBackoff(), 1) and redis-py's pipeline do; the failed
        connection is disconnected. Any other failure disconnects too (nothing
        half-read goes back to the pool) and is raised.
        """
        pool = self._pool
        conn = _borrow(pool)
        try:
            if PACK_COMMAND is None:
                packed: list[bytes] = conn.pack_commands(commands)
            else:
                try:
                    packed = [b"".join([PACK_COMMAND(command) for command in commands])]
                except TypeError as exc:  # as redis-py's hiredis packer says it
                    raise redis.DataError(exc) from exc
            try:
                return _exchange(conn, packed, len(commands))
            except RETRIED_ERRORS:
                conn.disconnect()
                return _exchange(conn, packed, len(commands))
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def script(self, script: Script, script_keys: Sequence[str], args: Sequence[str]) -> Any:
        """The script's reply, as `script(keys=..., args=...)` gives it; errors raised."""
        command = evalsha(script, script_keys, args)
        (reply,) = self.round_trip([command])
        if isinstance(reply, NoScriptError):
            return self.load_and_call(script, command)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def load_and_call(self, script: Script, command: tuple[Any, ...]) -> Any:
        """After NOSCRIPT (a restart, SCRIPT FLUSH): SCRIPT LOAD, then the call again, in
        one write (redis-py's Script does the same in two)."""
        sha, reply = self.round_trip([("SCRIPT", "LOAD", script.script), command])
        if isinstance(sha, Exception):
            raise sha
        script.sha = sha
        if isinstance(reply, Exception):
            raise reply
        return reply


def evalsha(script: Script, script_keys: Sequence[str], args: Sequence[str]) -> tuple[Any, ...]:
    """The EVALSHA redis-py's Script sends for these keys and args."""
    return ("EVALSHA", script.sha, len(script_keys), *script_keys, *args)


class OutageLog:
    """Turns a stream of failures and successes into two log lines per outage."""

    def __init__(
        self,
        clock: Any = time.monotonic,
        *,
        what: str = "redis unavailable",
        back: str = "redis available again",
    ) -> None:
        self._clock = clock
        self._what, self._back = what, back
        self._lock = threading.Lock()
        self._since: float | None = None
        self._failures = 0

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, error: str) -> None:
        with self._lock:
            self._failures += 1
            if self._since is not None:
                return
            self._since = self._clock()
        log.error("%s: %s; following on_store_error until it is back", self._what, error)

    def succeeded(self) -> None:
        if self._since is None:
            return
        with self._lock:
            if self._since is None:
                return
            duration, failures = self._clock() - self._since, self._failures
            self._since, self._failures = None, 0
        log.warning("%s after %.1f s; %d lookups failed meanwhile", self._back, duration, failures)


TAG_HEAD, TAG_TAIL = keys.split_at_tenant(keys.tagged)
REGISTRY_MISSING_TEXT = (
    f"Redis holds no tenant registry (neither {keys.REGISTRY} nor {keys.TENANTS}): it lost"
    " its state; restore it or add the tenants again"
)


class MappingCache:
    """Cluster mode: which tenant a lookup found, reused for `ttl` seconds, bounded.

    The mapping keys live on other slots than the tenant's, so on a cluster
    they cost a read of their own; a hit skips it. A hit is never trusted
    blindly: the MAIL FROM script checks that the tenant still holds the name
    (its logins or domains set), so a removed or moved login is seen at once,
    and only a more specific domain mapped meanwhile waits for `ttl`.
    Unknown senders are not cached, so a new tenant works from its first mail.
    """

    MAX_ENTRIES = 100_000

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[tuple[str, ...], tuple[float, int, str]] = {}

    def get(self, lookup: Lookup) -> tuple[int, str] | None:
        entry = self._entries.get(lookup.names)
        if entry is None or entry[0] < self._clock():
            return None
        return entry[1], entry[2]

    def put(self, lookup: Lookup, index: int, tenant_id: str) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()  # a flood of distinct senders costs a re-read, not memory
        self._entries[lookup.names] = (self._clock() + self.ttl, index, tenant_id)

    def forget(self, lookup: Lookup) -> None:
        self._entries.pop(lookup.names, None)


class WindowCatalog:
    """Every plan's windows, as the MAIL FROM script wants them; built once per config.

    Then the warm-up section: the ramp's field names and, per plan with a
    warm-up, its rate counters (read only for a tenant in warm-up).
    """

    def __init__(self, plans: Mapping[str, Plan]) -> None:
        self._static: list[str] = [str(len(plans))]
        self._sender_slots: list[tuple[int, Window]] = []
        for name, plan in plans.items():
            self._static += [name, str(len(plan.limits.windows))]
            for window in plan.limits.windows:
                if window.scope is Scope.SENDER:
                    self._sender_slots.append((len(self._static), window))
                self._static += [
                    keys.window_suffix(window, ""),
                    str(window.bucket_ms),
                    str(window.buckets),
                ]
        self._static += warmup_section(plans)

    def script_args(self, sender: str) -> list[str]:
        args = list(self._static)
        for slot, window in self._sender_slots:
            args[slot] = keys.window_suffix(window, sender)
        return args


def log_mark(mark: Mark) -> None:
    """The log line of a warm-up change this process recorded (logger aupmilter.audit)."""
    events_log.info("%s %s", mark.event["event"], mark.tenant_id, extra={"event": mark.event})


def warmup_section(plans: Mapping[str, Plan]) -> list[str]:
    """sender_state.lua's warm-up section: field names, then each ramp plan's rate counters."""
    ramps = [(name, plan) for name, plan in plans.items() if plan.warmup.enabled]
    section = [keys.FIELD_WARMUP_STARTED_AT, keys.FIELD_WARMUP_FINISHED_AT, str(len(ramps))]
    for name, plan in ramps:
        counter = plan.reputation.counter(keys.RATE_DELIVERED)
        period_ms = counter.period_ms
        section += [
            name,
            str(counter.bucket_ms),
            str(counter.buckets),
            keys.rate_suffix(Measure.COMPLAINTS.value, period_ms),
            keys.rate_suffix(Measure.BOUNCES.value, period_ms),
            keys.rate_suffix(keys.RATE_DELIVERED, period_ms),
        ]
    return section


NO_WINDOWS = ["0", *warmup_section({})]
"""The script's plan and warm-up sections when no catalog is given."""


@dataclass(frozen=True, slots=True)
class SenderState:
    """What the MAIL FROM read found: the tenant, its sender stream and its windows' fills."""

    record: TenantRecord
    stream: str | None
    fills: tuple[WindowFill, ...]
    suspended_sender: str | None = None
    """This sender's entry in the tenant's suspended hash ("<unix time> <reason>"), if any."""
    suspended_domain: str | None = None
    """The same for the envelope sender's domain."""
    offences: int = 0
    """This sender's near-cap-repeat offences so far (policy.ladder)."""
    rates: RateCounts | None = None
    """The tenant's complaint, bounce and delivered counts, for a tenant in warm-up only."""


@dataclass(frozen=True, slots=True)
class ConsentFinding:
    """What the charge script's consent rules found (policy.consent); not judged: all empty."""

    judged: bool = False
    """The rules ran: a bulk message on a consent plan."""
    lapsed: tuple[str, ...] = ()
    """Lapsed recipients (normalised): removed in enforce mode, only reported in warn."""
    new: int = 0
    """Recipients the tenant's bulk mail never reached (no ledger, or unrecorded ones)."""
    considered: int = 0
    """The bulk recipients judged: those left after suppression."""


NOT_JUDGED = ConsentFinding()


@dataclass(frozen=True, slots=True)
class Charged:
    suppressed: tuple[str, ...]
    fills: tuple[int, ...]
    """Each window's count after this message."""
    consent: ConsentFinding = NOT_JUDGED


@dataclass(frozen=True, slots=True)
class AllSuppressed:
    suppressed: tuple[str, ...]
    consent: ConsentFinding = NOT_JUDGED
    """Enforce mode: the lapsed recipients, who with the suppressed ones are all."""


@dataclass(frozen=True, slots=True)
class NoRoom:
    window_index: int
    fill: WindowFill


@dataclass(frozen=True, slots=True)
class TooManyNew:
    """Enforce mode: more than the plan's share of the bulk recipients never got its mail."""

    suppressed: tuple[str, ...]
    consent: ConsentFinding


ChargeResult = Charged | AllSuppressed | NoRoom | TooManyNew


@dataclass(frozen=True, slots=True)
class ConsentCheck:
    """The consent block of the charge call: the plan's rules and how bulk is known.

    ``known_bulk``: bulk before the charge (stream, headers, recipient count);
    otherwise bulk once the last counter (the content fingerprint's) with this
    message's recipients reaches ``bulk_from_counter`` (None: never).
    """

    plan: ConsentPlan
    known_bulk: bool
    bulk_from_counter: int | None = None

    def script_args(self) -> list[str]:
        plan = self.plan
        share = plan.new_recipient_share_ppm
        return [
            "2" if plan.mode is ConsentMode.ENFORCE else "1",
            str(plan.lapse),
            "1" if plan.unrecorded is Unrecorded.LAPSED else "0",
            "-1" if share is None else str(share),
            str(plan.new_recipient_min),
        ]


CONSENT_OFF = ["0", "0", "0", "-1", "0"]


@dataclass(frozen=True, slots=True)
class ReferenceWrite:
    """Unsubscribe references to store in the charge call, if the message is bulk.

    ``known_bulk``: bulk whatever the counts; otherwise bulk once the last
    counter (the content fingerprint's) reaches ``bulk_from_counter``.
    """

    references: Sequence[Reference]
    ttl_seconds: int
    known_bulk: bool
    bulk_from_counter: int | None = None


def _bulk_flags(flags: ReferenceWrite | ConsentCheck | None) -> list[str]:
    """The charge script's bulk flag and content threshold (its references block)."""
    if flags is None:
        return ["0", "-1"]
    threshold = flags.bulk_from_counter
    return ["1" if flags.known_bulk else "0", "-1" if threshold is None else str(threshold)]


def _consent_finding(more: Sequence[Any], considered: int) -> ConsentFinding:
    if not more or not int(more[0][0]):
        return NOT_JUDGED
    judged, lapsed, new = more[0]
    return ConsentFinding(bool(int(judged)), tuple(map(str, lapsed)), int(new), considered)


def parse_fill(flat: Sequence[Any]) -> WindowFill:
    used, *pairs = flat
    return WindowFill(
        int(used), tuple(zip(map(int, pairs[::2]), map(int, pairs[1::2]), strict=True))
    )


class Store:
    def __init__(self, settings: RedisSettings, audit: AuditTrail | None = None) -> None:
        self.settings = settings
        self.client = connect(settings)
        self.cluster = settings.mode == "cluster"
        self.mappings = MappingCache(settings.mapping_cache_seconds)
        self.outage = OutageLog()
        self.registry_outage = OutageLog(
            what="tenant registry missing", back="tenant registry back"
        )
        self.audit = audit
        # Bytes: Script then needs no encoder from the client, which a cluster's
        # makes only at its first command (LazyCluster).
        self._sender_state = Script(self.client, load_script("sender_state.lua").encode())
        self._charge = Script(self.client, load_script("charge.lua").encode())
        self._warmup_mark = Script(self.client, load_script("warmup_mark.lua").encode())
        self._lean = None if self.cluster else LeanCalls(self.client.connection_pool)
        self._marks: dict[str, Mark] = {}
        """Warm-up changes waiting for a ride, one per tenant (the newest wins)."""
        self._marks_lock = threading.Lock()

    def queue_mark(self, mark: Mark) -> None:
        """A warm-up change to write once (store.warmup): it rides the next script call.

        One waits per tenant: a newer change of the same tenant replaces it (the
        newer was computed from the same stored state, since the older is not
        written yet). Lost at a reload or a crash, it is seen again at the
        tenant's next MAIL FROM, which compares with the stored state.
        """
        with self._marks_lock:
            self._marks[mark.tenant_id] = mark

    def _take_marks(self) -> list[Mark]:
        if not self._marks:
            return []
        with self._marks_lock:
            marks = list(self._marks.values())
            self._marks.clear()
            return marks

    def sender_state(
        self,
        lookup: Lookup,
        *,
        catalog: WindowCatalog | None = None,
        sender_id: str = "",
        auth_login: str | None = None,
        sender: str = "",
        now_ms: int = 0,
    ) -> SenderState | None:
        """The tenant the lookup names, with its hash, stream and window fills; None if unmapped.

        ``sender_id`` is whom per-sender windows count and the ladder's sender;
        ``auth_login`` and ``sender`` find the stream; the sender's domain is
        the ladder's domain. The same call reads whether the sender or its
        domain is suspended, and the sender's offence count (policy.ladder).
        """
        if lookup.kind is None or not lookup.names:
            return None
        common = [
            TAG_HEAD,
            TAG_TAIL,
            str(now_ms),
            auth_login or "",
            sender,
            keys.SUSPENDED_SUFFIX,
            keys.OFFENCES_SUFFIX,
            keys.suspended_sender(sender_id),
            keys.suspended_domain(domain) if (domain := sender_domain(sender)) else "",
            sender_id,
            *(catalog.script_args(sender_id) if catalog else NO_WINDOWS),
        ]
        if self.cluster:
            reply = self._resolved_state(lookup, common)
        else:
            script_keys = [
                keys.REGISTRY,
                keys.TENANTS,
                *(keys.mapping(lookup.kind, name) for name in lookup.names),
            ]
            head, tail = keys.split_at_tenant(keys.tenant)
            args = ["", head + tail, keys.STREAMS_SUFFIX, *common, keys.DOMAINS_SUFFIX]
            reply = self._call("sender_state", self._sender_state, script_keys, args)
            if reply == [0]:
                self._registry_missing()
        if not reply:
            return None
        self.registry_outage.succeeded()
        _index, tenant_id, stream, fills, flat, domains, ladder, *rest = reply
        rates = rest[0] if rest else []
        fields = dict(zip(map(str, flat[::2]), map(str, flat[1::2]), strict=True))
        sender_entry, domain_entry, offences = ladder
        return SenderState(
            record=tenant_record(str(tenant_id), fields, map(str, domains)),
            stream=str(stream) or None,
            fills=tuple(parse_fill(fill) for fill in fills),
            suspended_sender=None if sender_entry is None else str(sender_entry),
            suspended_domain=None if domain_entry is None else str(domain_entry),
            offences=int(offences),
            rates=RateCounts(*map(int, rates)) if len(rates) == 3 else None,
        )

    def _registry_missing(self) -> None:
        self.registry_outage.failed(REGISTRY_MISSING_TEXT)
        raise RegistryMissing(REGISTRY_MISSING_TEXT)

    def _resolved_state(self, lookup: Lookup, common: list[str]) -> list[Any]:
        """Cluster: the tenant from the cache, or from one mapping read; then its slot's script.

        Steady state (a cache hit) is the one script call; a miss adds the
        mapping read. A hit the script finds stale (the tenant no longer holds
        the name) is read again once; stale twice means the tenant's reverse
        index lacks a name its mapping key gives it, which only a hand-made
        tenant can do: that tempfails and says what to add.
        """
        assert lookup.kind is not None
        cached = self.mappings.get(lookup)
        for attempt in range(2):
            if cached is None:
                cached = self._read_mapping(lookup)
                if cached is None:
                    return []
            index, tenant_id = cached
            script_keys = [
                keys.tenant(tenant_id),
                keys.tenant_streams(tenant_id),
                keys.tenant_domains(tenant_id),
                keys.reverse_index(lookup.kind, tenant_id),
                keys.suspended_subjects(tenant_id),
                keys.offences(tenant_id),
            ]
            args = [tenant_id, lookup.names[index], "", *common]
            reply: list[Any] = self._call("sender_state", self._sender_state, script_keys, args)
            if reply != [-1]:
                self.mappings.put(lookup, index, tenant_id)
                return reply
            self.mappings.forget(lookup)
            cached = None
            if attempt == 1:
                raise StoreUnavailable(
                    f"{keys.mapping(lookup.kind, lookup.names[index])} names tenant"
                    f" {tenant_id!r}, whose {keys.reverse_index(lookup.kind, tenant_id)}"
                    f" lacks {lookup.names[index]!r}: add it there (SADD) or map it with"
                    " aup-milter tenant"
                )
        return []  # not reached: the loop returns or raises

    def _read_mapping(self, lookup: Lookup) -> tuple[int, str] | None:
        """The mapping keys and the registry's presence, in one pipelined read (cache miss)."""
        assert lookup.kind is not None
        kind = lookup.kind

        def read() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            pipe.exists(keys.REGISTRY)
            pipe.exists(keys.TENANTS)
            for name in lookup.names:
                pipe.get(keys.mapping(kind, name))
            return list(pipe.execute())

        registry, index_set, *owners = self._command("mapping_read", read)
        for index, owner in enumerate(owners):
            if owner:
                return index, str(owner)
        if not registry and not index_set:
            self._registry_missing()
        return None

    def charge(
        self,
        tenant_id: str,
        windows: Sequence[Window],
        sender_id: str,
        recipients: Sequence[str],
        now_ms: int,
        counters: Sequence[tuple[str, Window]] = (),
        references: ReferenceWrite | None = None,
        consent: ConsentCheck | None = None,
    ) -> ChargeResult:
        """Drop suppressed recipients, then re-check and charge every window, atomically.

        ``counters`` are extra windows that only count, never refuse (such as the
        content fingerprint's recipients): (key, window) pairs whose fills come
        after the windows' in ``Charged.fills``. ``references`` are the
        unsubscribe references of the message's links, stored in the same call
        when the message is charged and turns out bulk. ``consent``: on a consent
        plan, the ledger's rules over a bulk message's recipients in the same call
        (lapsed ones dropped, or a message with too many new ones refused).
        """
        script_keys = [keys.suppressed(tenant_id)]
        args = [str(now_ms), str(len(windows) + len(counters))]
        for window in windows:
            script_keys.append(keys.window_key(tenant_id, window, sender_id))
            unit = "r" if window.unit is Unit.RECIPIENTS else "m"
            args += [unit, str(window.limit), str(window.bucket_ms), str(window.buckets)]
        for key, counter in counters:
            script_keys.append(key)
            unit = "r" if counter.unit is Unit.RECIPIENTS else "m"
            args += [unit, "-1", str(counter.bucket_ms), str(counter.buckets)]
        # On a cluster the reference keys live on other slots than the tenant's
        # (the unsubscribe service finds them by token alone): the script leaves
        # them, and `_write_references` stores them after a bulk charge.
        deferred = references if self.cluster else None
        if references is None or not references.references or deferred is not None:
            args += ["0", "0", *_bulk_flags(consent or references)]
        else:
            written = references.references
            script_keys += [keys.unsubscribe_ref(r.ref_text) for r in written]
            args += [
                str(len(written)),
                str(references.ttl_seconds),
                "1" if references.known_bulk else "0",
                str(
                    references.bulk_from_counter if references.bulk_from_counter is not None else -1
                ),
                *(r.store_value for r in written),
            ]
        if consent is not None and consent.plan.enabled:
            script_keys += [keys.consent(tenant_id), keys.last_bulk(tenant_id)]
            args += consent.script_args()
        else:
            args += CONSENT_OFF
        args += recipients
        status, detail, fills, *more = self._call("charge", self._charge, script_keys, args)
        if status == 0:
            return NoRoom(window_index=int(detail) - 1, fill=parse_fill(fills))
        finding = _consent_finding(more, len(recipients) - len(detail))
        if status == 2:
            return AllSuppressed(tuple(detail), finding)
        if status == 3:
            return TooManyNew(tuple(detail), finding)
        charged = Charged(tuple(detail), tuple(int(fill) for fill in fills), finding)
        if deferred is not None and deferred.references:
            self._write_references(deferred, charged.fills)
        return charged

    def _write_references(self, references: ReferenceWrite, fills: Sequence[int]) -> None:
        """Cluster only: the charged message's references, when it is bulk (as charge.lua
        decides on one server), in one pipelined write: a third round trip, paid only by
        bulk mail that carries the relay's unsubscribe links."""
        threshold = references.bulk_from_counter
        bulk = references.known_bulk or (threshold is not None and fills[-1] >= threshold)
        if not bulk:
            return

        def write() -> Any:
            pipe = self.client.pipeline(transaction=False)
            for reference in references.references:
                pipe.set(
                    keys.unsubscribe_ref(reference.ref_text),
                    reference.store_value,
                    ex=references.ttl_seconds,
                )
            return pipe.execute()

        self._command("references", write)

    def is_suppressed(self, tenant_id: str, address: str) -> bool:
        """For suppression_check = "rcpt": one HEXISTS per RCPT (address normalised)."""
        return bool(
            self._command(
                "rcpt_lookup", lambda: self.client.hexists(keys.suppressed(tenant_id), address)
            )
        )

    def _command(self, call: str, run: Callable[[], Any]) -> Any:
        """One round trip named `call` (aup_redis_* metrics); errors as StoreUnavailable."""
        try:
            result = metrics().redis_call(call, run)
        except STORE_ERRORS as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self.outage.failed(reason)
            raise StoreUnavailable(reason) from exc
        self.outage.succeeded()
        return result

    def _call(self, call: str, script: Script, script_keys: list[str], args: list[str]) -> Any:
        # On a cluster the stream lives on another slot and redis-py refuses EVALSHA
        # in a cluster pipeline: the events wait for the flusher (one write a second).
        riders = self.audit.take() if self.audit is not None and not self.cluster else []
        marks = self._take_marks() if self.audit is not None and not self.cluster else []
        lean = self._lean
        if riders or marks:
            return self._command(call, lambda: self._ride(riders, script, script_keys, args, marks))
        if lean is not None:
            return self._command(call, lambda: lean.script(script, script_keys, args))
        return self._command(call, lambda: script(keys=script_keys, args=args))

    def _ride(
        self,
        riders: list[tuple[float, StreamFields]],
        script: Script,
        script_keys: list[str],
        args: list[str],
        marks: Sequence[Mark] = (),
    ) -> Any:
        """The script call with the waiting audit events and warm-up marks in front of it:
        one round trip.

        A script Redis does not know (after a restart or SCRIPT FLUSH) is loaded and
        called again: the events are written by then. Events whose pipeline failed
        as a whole go back to wait for the next ride, and so do marks.
        """
        lean = self._lean
        assert lean is not None, "nothing rides on a cluster"
        command = evalsha(script, script_keys, args)
        try:
            results = lean.round_trip(
                [*self._event_commands(riders), *self._mark_commands(marks), command]
            )
        except STORE_ERRORS:
            assert self.audit is not None
            self.audit.give_back(riders)
            self._give_back_marks(marks)
            raise
        self._count_written(results[: len(riders)])
        self._marks_written(marks, results[len(riders) : -1])
        reply = results[-1]
        if isinstance(reply, NoScriptError):
            return lean.load_and_call(script, command)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def flush_audit(self, older_than: float = 0.0) -> int:
        """Write the events that waited at least `older_than` seconds; how many were written.

        The daemon's flusher calls this when no transaction gave them a ride;
        warm-up marks that waited as long go in the same pipeline (on a
        Cluster each on its tenant's slot first, `flush_marks`).
        """
        audit = self.audit
        if audit is None:
            return 0
        marks_due = self._marks_waited(audit.now() - older_than)
        if marks_due and self.cluster:
            self.flush_marks()
        marks = self._take_marks() if marks_due and not self.cluster else []
        since = audit.waiting_since()
        events_due = since is not None and audit.now() - since >= older_than
        if not events_due and not marks:
            return 0
        riders = audit.take() if events_due else []

        def write() -> Any:
            pipe = self.client.pipeline(transaction=False)
            self._queue_events(pipe, riders)
            self._queue_marks(pipe, marks)
            return pipe.execute(raise_on_error=False)

        try:
            results = self._command("audit_flush", write)
        except StoreUnavailable:
            audit.give_back(riders)
            self._give_back_marks(marks)
            return 0
        self._marks_written(marks, results[len(riders) :])
        return self._count_written(results[: len(riders)])

    def _marks_waited(self, since: float) -> bool:
        """Whether a warm-up mark waits that was queued at or before `since`."""
        with self._marks_lock:
            return any(mark.now <= since for mark in self._marks.values())

    def _give_back_marks(self, marks: Sequence[Mark]) -> None:
        """Marks whose write failed wait again, unless a newer one of the tenant came."""
        with self._marks_lock:
            for mark in marks:
                self._marks.setdefault(mark.tenant_id, mark)

    def _queue_marks(self, pipe: Any, marks: Sequence[Mark]) -> None:
        for command in self._mark_commands(marks):
            pipe.execute_command(*command)

    def _mark_commands(self, marks: Sequence[Mark]) -> list[tuple[Any, ...]]:
        """The warm-up marks' EVALSHAs, with the audit stream (one server, Sentinel)."""
        if not marks:
            return []
        assert self.audit is not None
        commands = []
        for mark in marks:
            mark_keys, mark_args = mark.script_call(self.audit.oldest_kept_ms(mark.now))
            commands.append(evalsha(self._warmup_mark, mark_keys, mark_args))
        return commands

    def _marks_written(self, marks: Sequence[Mark], results: Sequence[Any]) -> None:
        """Log the changes this process recorded (and audited, in the script)."""
        for mark, result in zip(marks, results, strict=True):
            if isinstance(result, NoScriptError):
                assert self.audit is not None
                mark_keys, mark_args = mark.script_call(self.audit.oldest_kept_ms(mark.now))
                try:
                    result = self._warmup_mark(keys=mark_keys, args=mark_args)
                except STORE_ERRORS as exc:
                    result = exc
            if isinstance(result, Exception):
                log.error("warm-up change of tenant %s not recorded: %s", mark.tenant_id, result)
            elif result == 1:
                log_mark(mark)

    def flush_marks(self) -> int:
        """Cluster: the waiting warm-up marks, each on its tenant's slot; a recorded one is
        audited through the trail (the stream is on another slot). How many were recorded."""
        recorded = 0
        for mark in self._take_marks():
            mark_keys, mark_args = mark.script_call(None)

            def write(k: list[str] = mark_keys, a: list[str] = mark_args) -> Any:
                return self._warmup_mark(keys=k, args=a)

            try:
                written = self._command("warmup_mark", write)
            except StoreUnavailable:
                self._give_back_marks([mark])
                continue
            if written == 1:
                recorded += 1
                if self.audit is not None:
                    self.audit.add(dict(mark.event), mark.now)
                log_mark(mark)
        return recorded

    def _queue_events(self, pipe: Any, riders: Sequence[tuple[float, StreamFields]]) -> None:
        for command in self._event_commands(riders):
            pipe.execute_command(*command)

    def _event_commands(
        self, riders: Sequence[tuple[float, StreamFields]]
    ) -> list[tuple[Any, ...]]:
        """The events' XADDs, as redis-py's `xadd(stream, fields, minid=..., approximate=False)`
        sends them: exact MINID trimming, an id Redis gives."""
        audit = self.audit
        assert audit is not None
        stream = keys.AUDIT_STREAM
        return [
            (
                "XADD",
                stream,
                "MINID",
                audit.oldest_kept_ms(when),
                "*",
                *(x for pair in fields.items() for x in pair),
            )
            for when, fields in riders
        ]

    def _count_written(self, results: Sequence[Any]) -> int:
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:
            log.error("audit trail: %d events not written: %s", len(failed), failed[0])
        written = len(results) - len(failed)
        if self.audit is not None:
            self.audit.written += written
        return written

    def close(self) -> None:
        self.client.close()

"""Prometheus metrics: every metric the processes export, on a registry of our own.

The one place that names a metric (all `aup_`, listed in aup-milter(8) and
README "Metrics"). The daemon serves `METRICS` over HTTP (`[metrics] listen`,
loopback by default, `GET /metrics`); the unsubscribe web service serves its
own on its listener's `/metrics`.

Per message the cost is a few counter increments and one histogram
observation per callback, all on label children picked from small fixed sets.
The hot ones (every callback's time, every Redis round trip's count, time and
errors: some 15 per 10-recipient message) are `FoldedHistogram` and
`FoldedCounter`: each thread counts into cells of its own, without a lock,
and a scrape folds the cells (the same families, labels and buckets as
prometheus_client's Histogram and Counter, at a quarter of the cost per
observation). Gauges (open connections and transactions, audit events
waiting) are read at scrape time from the objects that keep them, never
updated per message.

The tenant label is bounded: the first `TENANT_LABELS` distinct tenants seen
since the process started get their own label value, every later one is
counted as `tenant="other"`.

Relay-wide counts made outside the daemon's process (the intake is a pipe
process per message, `aup-milter suppress` a command, the web service its own
process) and the ladder's automatic actions live in one Redis hash
(store/shared_counts.py); the daemon reads it with one HGETALL per scrape
(`SharedCounts`). Every relay sharing the Redis exports the same values:
aggregate them with max(), not sum(). A failed read yields no samples, never
a failed scrape.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from aupmilter import __version__

log = logging.getLogger("aupmilter.metrics")

TENANT_LABELS = 50
"""Distinct tenants with a label of their own; the rest are `tenant="other"`."""
MAX_VERDICT_KEYS = 4096
"""(verdict, rule, tenant) triples whose counter children are kept at hand; the tenant is
the raw one (every tenant past TENANT_LABELS maps to `other`), so this bounds the memory."""
OTHER_TENANT = "other"

CALLBACKS = ("connect", "envfrom", "envrcpt", "eom")
REDIS_CALLS = ("sender_state", "charge", "rcpt_lookup", "audit_flush", "offence")
DNS_RESULTS = ("answer", "nxdomain", "nodata", "servfail", "timeout", "error")
CALLBACK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
REDIS_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)

SHARED_FAMILIES = {
    "report": ("aup_intake_reports", "Reports the intake handled, by kind.", "kind"),
    "unsubscribe": (
        "aup_intake_unsubscribes",
        "Mailto unsubscribes the intake handled, by outcome.",
        "outcome",
    ),
    "suppression": (
        "aup_suppressions",
        "Addresses newly suppressed, by source (one-click, mailto, complaint, bounce, manual).",
        "source",
    ),
    "action": (
        "aup_automatic_actions",
        "Automatic actions taken (would-... in shadow mode), by action.",
        "action",
    ),
}
"""Fields `<prefix>:<value>` of the shared Redis hash -> counter family name, help, label."""

WEB_SAMPLES = ("aup_web_requests_total", "aup_build_info")
"""What the unsubscribe web service's /metrics shows (the rest is the daemon's)."""

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
C = TypeVar("C", bound="_FoldedChild")


class BoundedLabel:
    """The first `limit` distinct values keep their own label; later ones become `other`."""

    def __init__(self, limit: int = TENANT_LABELS, other: str = OTHER_TENANT) -> None:
        self.limit = limit
        self.other = other
        self._kept: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._kept:
            return value
        with self._lock:
            if len(self._kept) < self.limit:
                self._kept.add(value)
                return value
        return self.other


class SharedCounts(Collector):
    """The shared Redis hash read at scrape time, as counter families.

    `read` returns the hash (field -> count) or raises; any exception means no
    samples this scrape.
    """

    def __init__(self, read: Callable[[], Mapping[str, str]]) -> None:
        self.read = read

    def describe(self) -> Iterable[Metric]:
        return []  # not at registration: no Redis call before the first scrape

    def collect(self) -> Iterator[Metric]:
        try:
            flat = self.read()
        except Exception as exc:
            log.debug("metrics: the shared counts could not be read: %s", exc)
            return
        families = {
            prefix: CounterMetricFamily(name, text, labels=[label])
            for prefix, (name, text, label) in SHARED_FAMILIES.items()
        }
        for field, raw in sorted(flat.items()):
            prefix, sep, value = str(field).partition(":")
            family = families.get(prefix)
            if family is None or not sep:
                continue
            try:
                family.add_metric([value], float(raw))
            except (TypeError, ValueError):
                continue
        yield from families.values()


class ReadCounter(Collector):
    """A counter kept elsewhere (an attribute of another object), read at scrape time."""

    def __init__(self, name: str, text: str, read: Callable[[], float]) -> None:
        self.name = name
        self.text = text
        self.read = read

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self.name, self.text)]

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.text, value=float(self.read()))


def _exports_created() -> bool:
    """Whether prometheus_client adds `_created` samples (PROMETHEUS_DISABLE_CREATED_SERIES)."""
    probe = Counter("aup_probe", "Probe.", registry=None)
    return any(s.name.endswith("_created") for m in probe.collect() for s in m.samples)


_CREATED = _exports_created()
_go_float: Callable[[float], str] = floatToGoString
"""The `le` label as prometheus_client writes it (its function has no type hints)."""

MAX_THREAD_CELLS = 4096
"""Threads (distinct thread ids) with cells of their own, per label child; past that, one
shared cell under a lock. Cells are kept for good (an ended thread's counts stay counted);
libmilter runs a thread per MTA connection, and the ids of ended threads are handed to new
ones (glibc reuses their stacks), so the cells number about the peak of concurrent
connections, not the connections ever made."""


class _FoldedChild:
    """One label child's counts: a cell (list) per thread id, folded at scrape time.

    Why no lock: a cell is written only by the thread whose id keys it (ids are unique among
    live threads; a thread that takes over an ended thread's id takes over its cell once
    that thread wrote its last), and a scrape only reads; reading or storing one list item
    is atomic, under the GIL and in free-threaded builds alike. A scrape may see a count
    whose sum is not yet added (one observation in flight), as prometheus_client's own
    per-value locks allow too.
    """

    __slots__ = ("_cells", "_lock", "_shared", "_size", "created")

    def __init__(self, size: int) -> None:
        self._size = size
        self._cells: dict[int, list[float]] = {}
        self._lock = threading.Lock()
        self._shared: list[float] = [0] * size
        self.created = time.time()

    def _own_cell(self) -> list[float] | None:
        """A new cell for this thread (its first count here); None past MAX_THREAD_CELLS."""
        with self._lock:
            if len(self._cells) >= MAX_THREAD_CELLS:
                return None
            cell: list[float] = [0] * self._size
            self._cells[threading.get_ident()] = cell
            return cell

    def totals(self) -> list[float]:
        """Every thread's counts added up (slot by slot)."""
        total = list(self._shared)
        for cell in list(self._cells.values()):
            for i, count in enumerate(cell):
                total[i] += count
        return total


class _FoldedFamily(Collector, Generic[C]):
    """One metric family of one label whose children count lock-free (see `_FoldedChild`)."""

    kind = ""

    def __init__(
        self, name: str, documentation: str, labelnames: Iterable[str], registry: CollectorRegistry
    ) -> None:
        (self.labelname,) = labelnames
        self.name = name
        self.documentation = documentation
        self._children: dict[str, C] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def _new_child(self) -> C:
        raise NotImplementedError

    def labels(self, value: str) -> C:
        child = self._children.get(value)
        if child is None:
            with self._lock:
                child = self._children.get(value)
                if child is None:
                    child = self._children[value] = self._new_child()
        return child

    def describe(self) -> Iterable[Metric]:
        return [Metric(self.name, self.documentation, self.kind)]


class FoldedHistogram(_FoldedFamily["FoldedHistogramChild"]):
    """prometheus_client's `Histogram` (one label) as the text format shows it, counted lock-free.

    `labels(value).observe(seconds)` costs a thread-id lookup and two list stores (about a
    quarter of Histogram.observe's two mutexes and Python loop over the buckets). The
    scrape gives the same samples: cumulative `_bucket{le}`, `_count`, `_sum`, `_created`.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Iterable[str],
        buckets: Iterable[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self.bounds = tuple(bounds)
        self._le = tuple(_go_float(b) for b in self.bounds)
        super().__init__(name, documentation, labelnames, registry)

    kind = "histogram"

    def _new_child(self) -> FoldedHistogramChild:
        return FoldedHistogramChild(self.bounds)

    def collect(self) -> Iterator[Metric]:
        family = Metric(self.name, self.documentation, "histogram")
        for value, child in list(self._children.items()):
            labels = {self.labelname: value}
            totals = child.totals()
            acc = 0.0
            for le, count in zip(self._le, totals, strict=False):
                acc += count
                family.add_sample(f"{self.name}_bucket", {**labels, "le": le}, acc)
            family.add_sample(f"{self.name}_count", labels, acc)
            family.add_sample(f"{self.name}_sum", labels, float(totals[-1]))
            if _CREATED:
                family.add_sample(f"{self.name}_created", labels, child.created)
        yield family


class FoldedHistogramChild(_FoldedChild):
    """Slots: one count per bucket (not cumulative), then the sum."""

    __slots__ = ("_bounds",)

    def __init__(self, bounds: tuple[float, ...]) -> None:
        super().__init__(len(bounds) + 1)
        self._bounds = bounds

    def observe(self, amount: float) -> None:
        index = bisect_left(self._bounds, amount)
        cell = self._cells.get(threading.get_ident()) or self._own_cell()
        if cell is None:
            with self._lock:
                self._shared[index] += 1
                self._shared[-1] += amount
            return
        cell[index] += 1
        cell[-1] += amount


class FoldedCounter(_FoldedFamily["FoldedCounterChild"]):
    """prometheus_client's `Counter` (one label) as the text format shows it, counted lock-free.

    Samples `<name>_total` and `<name>_created`, as Counter gives them.
    """

    kind = "counter"

    def _new_child(self) -> FoldedCounterChild:
        return FoldedCounterChild()

    def collect(self) -> Iterator[Metric]:
        family = Metric(self.name, self.documentation, "counter")
        for value, child in list(self._children.items()):
            labels = {self.labelname: value}
            family.add_sample(f"{self.name}_total", labels, float(child.totals()[0]))
            if _CREATED:
                family.add_sample(f"{self.name}_created", labels, child.created)
        yield family


class FoldedCounterChild(_FoldedChild):
    """One slot: the count."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(1)

    def inc(self, amount: float = 1) -> None:
        """Add `amount` (one by default; never negative, as a counter)."""
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        cell = self._cells.get(threading.get_ident()) or self._own_cell()
        if cell is None:
            with self._lock:
                self._shared[0] += amount
            return
        cell[0] += amount


class Metrics:
    """Every metric of the daemon and the web service, on one registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.transactions = Counter(
            "aup_transactions",
            "Transactions by verdict (accept, reject, tempfail, quarantine, would-...) and rule.",
            ["verdict", "rule"],
            registry=r,
        )
        self.recipients_refused = Counter(
            "aup_recipients_refused",
            "Recipients refused at RCPT, by rule and verdict (would-... in shadow mode).",
            ["rule", "verdict"],
            registry=r,
        )
        self.recipients_suppressed = Counter(
            "aup_recipients_suppressed",
            "Recipients on the tenant's suppression list: refused at RCPT or removed at"
            " end of message.",
            registry=r,
        )
        self.callback_seconds = FoldedHistogram(
            "aup_callback_seconds",
            "Time spent in a milter callback.",
            ["callback"],
            buckets=CALLBACK_BUCKETS,
            registry=r,
        )
        self.redis_round_trips = FoldedCounter(
            "aup_redis_round_trips", "Redis round trips, by call.", ["call"], registry=r
        )
        self.redis_errors = FoldedCounter(
            "aup_redis_errors", "Redis calls that failed, by call.", ["call"], registry=r
        )
        self.redis_seconds = FoldedHistogram(
            "aup_redis_seconds",
            "Time of one Redis round trip, by call.",
            ["call"],
            buckets=REDIS_BUCKETS,
            registry=r,
        )
        self.dns_lookups = Counter(
            "aup_dns_lookups",
            "DNS queries sent (cache misses), by record type and result.",
            ["rdtype", "result"],
            registry=r,
        )
        self.dns_cache_hits = Counter(
            "aup_dns_cache_hits", "DNS answers served from the resolver's cache.", registry=r
        )
        self.config_reloads = Counter(
            "aup_config_reloads", "Configuration reloads, by result (ok, failed).", ["result"],
            registry=r,
        )  # fmt: skip
        self.open_connections = Gauge(
            "aup_open_connections", "MTA connections open now.", registry=r
        )
        self.open_transactions = Gauge(
            "aup_open_transactions", "Transactions open now (MAIL FROM seen, not ended).",
            registry=r,
        )  # fmt: skip
        self.audit_pending = Gauge(
            "aup_audit_events_pending",
            "Audit events waiting for their ride to the Redis stream.",
            registry=r,
        )
        self.tenant_transactions = Counter(
            "aup_tenant_transactions",
            f"Transactions by tenant and verdict; the first {TENANT_LABELS} tenants seen have"
            f" their own label, the rest tenant={OTHER_TENANT!r}.",
            ["tenant", "verdict"],
            registry=r,
        )
        self.web_requests = Counter(
            "aup_web_requests",
            "Requests to the unsubscribe web service, by outcome.",
            ["outcome"],
            registry=r,
        )
        self.build_info = Gauge(
            "aup_build_info", "The running version (value 1).", ["version"], registry=r
        )
        self.build_info.labels(__version__).set(1)
        self.tenant_label = BoundedLabel()
        self._callbacks = {name: self.callback_seconds.labels(name) for name in CALLBACKS}
        self._redis: dict[
            str, tuple[FoldedCounterChild, FoldedCounterChild, FoldedHistogramChild]
        ] = {}
        self._verdicts: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        """(verdict, rule, tenant) -> the two counter children a transaction increments
        (prometheus_client's labels() validates and locks on every call). Bounded: tenants
        are TENANT_LABELS at most, verdicts and rules a small fixed set."""
        for call in REDIS_CALLS:
            self._redis_children(call)
        self._shared: SharedCounts | None = None
        self._dropped: ReadCounter | None = None

    # --- what the glue, the stages and the store call ------------------------

    def transaction(self, verdict: str, rule: str, tenant: str | None) -> None:
        """One transaction's verdict (accept gets rule "")."""
        key = (verdict, rule, tenant or "")
        children = self._verdicts.get(key)
        if children is None:
            children = (
                self.transactions.labels(verdict, "" if verdict == "accept" else rule),
                self.tenant_transactions.labels(self.tenant_label(tenant or ""), verdict),
            )
            if len(self._verdicts) < MAX_VERDICT_KEYS:
                self._verdicts[key] = children
        children[0].inc()
        children[1].inc()

    def recipient_refused(self, rule: str, verdict: str) -> None:
        self.recipients_refused.labels(rule, verdict).inc()

    def callback(self, name: str) -> Callable[[F], F]:
        """Decorator: the callback's time into aup_callback_seconds{callback=name}."""
        child = self._callbacks.get(name) or self.callback_seconds.labels(name)

        observe = child.observe
        clock = time.perf_counter

        def wrap(function: F) -> F:
            @functools.wraps(function)
            def timed(*args: Any) -> Any:
                started = clock()
                try:
                    return function(*args)
                finally:
                    observe(clock() - started)

            return timed  # type: ignore[return-value]

        return wrap

    def redis_call(self, call: str, run: Callable[[], T]) -> T:
        """`run()`, one Redis round trip: counted, timed, and counted as an error if it raises."""
        trips, errors, seconds = self._redis.get(call) or self._redis_children(call)
        trips.inc()
        started = time.perf_counter()
        try:
            return run()
        except BaseException:
            errors.inc()
            raise
        finally:
            seconds.observe(time.perf_counter() - started)

    def _redis_children(
        self, call: str
    ) -> tuple[FoldedCounterChild, FoldedCounterChild, FoldedHistogramChild]:
        children = (
            self.redis_round_trips.labels(call),
            self.redis_errors.labels(call),
            self.redis_seconds.labels(call),
        )
        self._redis[call] = children
        return children

    def dns_lookup(self, rdtype: str, result: str) -> None:
        self.dns_lookups.labels(rdtype, result).inc()

    # --- scrape-time readers -------------------------------------------------

    def watch(
        self,
        connections: Callable[[], float],
        transactions: Callable[[], float],
        audit_pending: Callable[[], float],
        audit_dropped: Callable[[], float],
    ) -> None:
        """The gauges read these at scrape time."""
        self.open_connections.set_function(connections)
        self.open_transactions.set_function(transactions)
        self.audit_pending.set_function(audit_pending)
        if self._dropped is None:
            self._dropped = ReadCounter(
                "aup_audit_events_dropped",
                "Audit events dropped from the stream (Redis unreachable for long; their"
                " log lines are kept).",
                audit_dropped,
            )
            self.registry.register(self._dropped)
        self._dropped.read = audit_dropped

    def share(self, read: Callable[[], Mapping[str, str]]) -> None:
        """Export the shared Redis hash (read by `read` at each scrape); once per process."""
        if self._shared is not None:
            self._shared.read = read
            return
        self._shared = SharedCounts(read)
        self.registry.register(self._shared)

    def exposition(self, names: Iterable[str] | None = None) -> bytes:
        """The text format, as /metrics serves it; only the samples `names` when given."""
        if names is None:
            return generate_latest(self.registry)
        return generate_latest(self.registry.restricted_registry(names))


METRICS = Metrics()
"""The process's metrics: what every instrumented module counts into."""


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


class MetricsServer:
    """The daemon's HTTP endpoint: GET /metrics (any path) on a thread of its own."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen (OSError if the address is taken) and serve in a daemon thread."""
        family = socket_family(self.host)

        class Server(ThreadingWSGIServer):
            address_family = family

        app = make_wsgi_app(self.registry)
        self._server = make_server(self.host, self.port, app, Server, handler_class=_QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"


def socket_family(host: str) -> int:
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET

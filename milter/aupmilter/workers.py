"""Worker processes: `milter.workers` copies of the daemon on one listening socket.

One Python process runs Python code on one core at a time (the GIL), so a
relay with more cores runs several. The supervisor is the process that was
started (by systemd, the package's init script or an operator): it opens the
listening socket once, exactly as the single-process daemon does (unix, inet,
inet6 or the socket systemd passed), and starts each worker as a fresh
interpreter (`python -m aupmilter run -c CONFIG`, never a fork of a process
with threads). A worker inherits two descriptors, named in its environment
(`AUP_MILTER_WORKER=INDEX:LISTEN_FD:CONTROL_FD`):

- the listening socket, non-blocking, so a worker that lost the race for a
  connection goes back to libmilter's 5 s poll instead of blocking in
  accept() (where it would not notice a stop); the kernel hands each new
  MTA connection to one of the workers polling it. Each worker puts the
  socket in place of a placeholder libmilter opened, as with socket
  activation, so a worker that ends never unlinks the shared unix socket;
- one end of a socket pair, the control channel: the worker writes one
  READY byte once libmilter runs, then answers each METRICS byte with its
  Prometheus text (8-byte length, then the text).

The supervisor passes SIGHUP (reload) and SIGTERM/SIGINT (drain, then stop)
to every worker, restarts a worker that dies (logged, with a delay that grows
while restarts keep failing early), serves `[metrics] listen` with the
workers' metrics summed, and tells systemd READY=1 once every worker is ready.
A worker whose supervisor is gone drains and stops by itself.

Windows and suspensions live in Redis, so they are exact across workers as
they are across relays; what a worker keeps in memory (the DNS cache, the
audit events waiting for a ride, its metrics) is its own.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from aupmilter import __version__
from aupmilter.exitcodes import EX_CONFIG, EX_FAILURE, EX_OK

log = logging.getLogger("aupmilter.workers")

WORKER_ENV = "AUP_MILTER_WORKER"
READY = b"r"
METRICS_REQUEST = b"m"
LENGTH_BYTES = 8
METRICS_TIMEOUT = 2.0
"""A worker that does not answer a scrape within this is left out of that scrape."""
MAX_METRICS_BYTES = 64 << 20
RESTART_DELAY_FIRST = 0.5
RESTART_DELAY_MAX = 30.0
EARLY_EXIT = 10.0
"""A worker that dies within this many seconds of its start doubles the next restart delay."""
STOP_MARGIN = 20.0
"""Past shutdown_grace: libmilter's 5 s poll, the audit flush, a slow machine."""


@dataclass(frozen=True, slots=True)
class WorkerSeat:
    """What a worker process learns from its environment."""

    index: int
    listen_fd: int
    control_fd: int

    def encode(self) -> str:
        return f"{self.index}:{self.listen_fd}:{self.control_fd}"

    @classmethod
    def from_environment(cls) -> WorkerSeat | None:
        """The seat named by AUP_MILTER_WORKER (removed from the environment), or None."""
        raw = os.environ.pop(WORKER_ENV, None)
        if raw is None:
            return None
        try:
            index, listen_fd, control_fd = (int(part) for part in raw.split(":"))
        except ValueError:
            raise ValueError(f"{WORKER_ENV}={raw!r}: expected INDEX:LISTEN_FD:CONTROL_FD") from None
        return cls(index, listen_fd, control_fd)


class ControlChannel(threading.Thread):
    """The worker's end: READY once, then its metrics text for every request."""

    def __init__(self, fd: int, exposition: Callable[[], bytes]) -> None:
        super().__init__(name="worker-control", daemon=True)
        self.sock = socket.socket(fileno=fd)
        self.exposition = exposition

    def ready(self) -> None:
        self.sock.sendall(READY)
        self.start()

    def run(self) -> None:
        while True:
            try:
                request = self.sock.recv(1)
            except OSError:
                return
            if not request:
                return  # the supervisor is gone; the main loop notices it too
            body = self.exposition()
            try:
                self.sock.sendall(len(body).to_bytes(LENGTH_BYTES, "big") + body)
            except OSError:
                return


@dataclass(slots=True)
class Worker:
    """The supervisor's view of one worker process."""

    index: int
    process: subprocess.Popen[bytes]
    control: socket.socket
    started: float
    ready: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def pid(self) -> int:
        return self.process.pid

    def metrics_text(self) -> str | None:
        """The worker's exposition, or None if it does not answer in time."""
        if not self.ready:
            return None
        with self.lock:
            try:
                self.control.settimeout(METRICS_TIMEOUT)
                self.control.sendall(METRICS_REQUEST)
                length = int.from_bytes(_read_exactly(self.control, LENGTH_BYTES), "big")
                if length > MAX_METRICS_BYTES:
                    raise OSError(f"{length} bytes of metrics")
                return _read_exactly(self.control, length).decode()
            except OSError as exc:
                log.debug(
                    "worker %d (pid %d): no metrics this scrape: %s", self.index, self.pid, exc
                )
                return None


def _read_exactly(sock: socket.socket, count: int) -> bytes:
    chunks: list[bytes] = []
    while count:
        chunk = sock.recv(min(count, 1 << 20))
        if not chunk:
            raise OSError("the worker closed its control channel")
        chunks.append(chunk)
        count -= len(chunk)
    return b"".join(chunks)


def merge_expositions(texts: Iterable[str], skip: frozenset[str]) -> list[Metric]:
    """The workers' metrics as one process's: every sample summed over the workers.

    Counters, histogram buckets and the gauges the daemon exports (open
    connections and transactions, audit events waiting) all add up. `_created`
    samples are dropped (their sum means nothing), and families in `skip` are
    left to the supervisor's own registry. A restarted worker starts from zero,
    which Prometheus's rate() takes as a counter reset.
    """
    families: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name in skip:
                continue
            merged = families.setdefault(
                family.name, Metric(family.name, family.documentation, family.type)
            )
            values = sums.setdefault(merged.name, {})
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                values[key] = values.get(key, 0.0) + sample.value
    for name, merged in families.items():
        for (sample_name, labels), value in sums[name].items():
            merged.add_sample(sample_name, dict(labels), value)
    return list(families.values())


class WorkersCollector(Collector):
    """Asks every ready worker for its metrics at scrape time and sums them."""

    def __init__(self, workers: Callable[[], Sequence[Worker]], skip: frozenset[str]) -> None:
        self.workers = workers
        self.skip = skip

    def describe(self) -> Iterable[Metric]:
        return []  # no worker is asked before the first scrape

    def collect(self) -> Iterator[Metric]:
        texts = [text for w in self.workers() if (text := w.metrics_text()) is not None]
        yield from merge_expositions(texts, self.skip)


class Supervisor:
    """Starts, watches, restarts and stops the worker processes."""

    def __init__(self, config_path: Path, count: int, listen_fd: int, shutdown_grace: float):
        self.config_path = config_path
        self.count = count
        self.listen_fd = listen_fd
        self.shutdown_grace = shutdown_grace
        self.workers: dict[int, Worker] = {}
        self.restart_at: dict[int, float] = {}
        self.restart_delay: dict[int, float] = {}
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.exit_status = EX_OK
        self.registry = CollectorRegistry(auto_describe=True)
        self.restarts = Counter(
            "aup_worker_restarts",
            "Worker processes restarted after they died.",
            registry=self.registry,
        )
        self.alive = Gauge("aup_workers", "Worker processes running now.", registry=self.registry)
        self.alive.set_function(lambda: sum(1 for w in self.workers.values() if w.ready))
        self.configured = Gauge(
            "aup_workers_configured", "Worker processes the configuration asks for.",
            registry=self.registry,
        )  # fmt: skip
        self.configured.set(count)

    # --- processes -----------------------------------------------------------

    def spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        seat = WorkerSeat(index, self.listen_fd, theirs.fileno())
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
        }
        env[WORKER_ENV] = seat.encode()
        process = subprocess.Popen(
            [sys.executable, "-m", "aupmilter", "run", "-c", str(self.config_path)],
            env=env,
            pass_fds=(self.listen_fd, theirs.fileno()),
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.workers[index] = Worker(index, process, ours, time.monotonic())
        log.info("worker %d started (pid %d)", index, process.pid)

    def _check_ready(self, worker: Worker) -> None:
        readable, _, _ = select.select([worker.control], [], [], 0)
        if not readable:
            return
        with worker.lock:
            byte = worker.control.recv(1)
        if byte == READY:
            worker.ready = True
            log.info("worker %d (pid %d) ready", worker.index, worker.pid)

    def _reap(self, worker: Worker, status: int) -> None:
        """A worker ended without being asked to: restart it, or give up on a startup error."""
        worker.control.close()
        del self.workers[worker.index]
        how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"exit status {status}"
        if not worker.ready and status == EX_CONFIG:
            log.error(
                "worker %d (pid %d) could not start (%s): stopping all workers",
                worker.index,
                worker.pid,
                how,
            )
            self.exit_status = EX_CONFIG
            self.stop_requested.set()
            return
        ran = time.monotonic() - worker.started
        delay = 0.0
        if ran < EARLY_EXIT:
            previous = self.restart_delay.get(worker.index, 0.0)
            delay = min(RESTART_DELAY_MAX, max(RESTART_DELAY_FIRST, previous * 2))
        self.restart_delay[worker.index] = delay
        self.restart_at[worker.index] = time.monotonic() + delay
        log.error(
            "worker %d (pid %d) died (%s) after %.1f s; restarting it in %.1f s",
            worker.index,
            worker.pid,
            how,
            ran,
            delay,
        )

    def _restart_due(self) -> None:
        now = time.monotonic()
        for index, due in list(self.restart_at.items()):
            if due <= now:
                del self.restart_at[index]
                self.restarts.inc()
                self.spawn(index)

    def signal_all(self, signum: int) -> None:
        for worker in self.workers.values():
            try:
                worker.process.send_signal(signum)
            except ProcessLookupError:
                continue

    # --- the loop ------------------------------------------------------------

    def run(self, on_all_ready: Callable[[], None]) -> int:
        """Serve until stopped; return the exit status."""
        for index in range(self.count):
            self.spawn(index)
        announced = False
        while not self.stop_requested.wait(0.2):
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                log.info("passing the reload to %d workers", len(self.workers))
                self.signal_all(signal.SIGHUP)
            for worker in list(self.workers.values()):
                if not worker.ready:
                    self._check_ready(worker)
                status = worker.process.poll()
                if status is not None:
                    self._reap(worker, status)
            if self.stop_requested.is_set():
                break
            self._restart_due()
            if (
                not announced
                and len(self.workers) == self.count
                and all(w.ready for w in self.workers.values())
            ):
                announced = True
                log.info("all %d workers ready", self.count)
                on_all_ready()
        return self._stop_all()

    def _stop_all(self) -> int:
        log.info("stopping %d workers (each drains for up to %.0f s)", len(self.workers),
                 self.shutdown_grace)  # fmt: skip
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_grace + STOP_MARGIN
        for worker in list(self.workers.values()):
            left = max(0.0, deadline - time.monotonic())
            try:
                status = worker.process.wait(timeout=left)
            except subprocess.TimeoutExpired:
                log.warning("worker %d (pid %d) did not stop in time: killing it",
                            worker.index, worker.pid)  # fmt: skip
                worker.process.kill()
                worker.process.wait()
                self.exit_status = self.exit_status or EX_FAILURE
                continue
            if status not in (0, -signal.SIGTERM):
                log.warning("worker %d (pid %d) stopped with status %d", worker.index,
                            worker.pid, status)  # fmt: skip
            worker.control.close()
        self.workers.clear()
        return self.exit_status


def supervisor_metrics(
    supervisor: Supervisor, worker_families: frozenset[str]
) -> CollectorRegistry:
    """The registry `[metrics] listen` serves with workers: theirs summed, and the supervisor's."""
    supervisor.registry.register(WorkersCollector(lambda: list(supervisor.workers.values()),
                                                  worker_families))  # fmt: skip
    build = Gauge("aup_build_info", "The running version (value 1).", ["version"],
                  registry=supervisor.registry)  # fmt: skip
    build.labels(__version__).set(1)
    return supervisor.registry

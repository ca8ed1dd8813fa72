"""Process lifecycle: the listening socket, the protocol engine, stop and drain.

Two engines speak the milter protocol (`milter.engine`): libmilter's thread
per connection (the default), and the event loop of `engine.py`, on a socket
this module opens itself. libmilter owns the socket it listens on;
two things it cannot do are done around `opensocket`: setting TCP_NODELAY on
an inet listener (without it, Postfix's small milter packets wait ~40 ms on
delayed ACKs), and taking a socket handed over by systemd (socket activation)
or by the supervisor, which replaces libmilter's own socket with dup2.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import signal
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import Milter
import milter as libmilter
from prometheus_client import CollectorRegistry

from aupmilter import __version__, audit, callbacks, logs
from aupmilter.callbacks import AupMilter, Lifecycle
from aupmilter.config import Config, ListenAddress, MilterSettings
from aupmilter.engine import Engine
from aupmilter.exitcodes import EX_FAILURE, EX_OK
from aupmilter.live_config import ConfigWatcher, LiveRuntime
from aupmilter.metrics import METRICS, SHARED_FAMILIES, MetricsServer, SharedCounts
from aupmilter.store import shared_counts
from aupmilter.workers import ControlChannel, Supervisor, WorkerSeat, supervisor_metrics

log = logging.getLogger("aupmilter.daemon")

MILTER_NAME = "aup-milter"
SD_LISTEN_FDS_START = 3
MILTER_FLAGS = (
    libmilter.QUARANTINE
    | libmilter.DELRCPT
    | libmilter.ADDHDRS
    | libmilter.CHGHDRS
    | libmilter.CHGBODY  # the sender footer (stages.end_of_message, message.footer)
)
"""Actions used at end of message: hold, drop suppressed recipients, add or change headers."""
STOP_TIMEOUT = 15.0
"""libmilter's listener notices a stop within its 5 s poll; allow for a slow machine."""


class StartupError(Exception):
    """The daemon cannot start; the text says what to fix."""


def socket_fds() -> set[int]:
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                fds.add(int(name))
        except OSError:
            continue  # the fd listdir itself used, already closed
    return fds


def set_nodelay(fd: int) -> None:
    """Accepted sockets inherit TCP_NODELAY from the listener on Linux."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def systemd_listen_fd() -> int:
    """The first socket passed by systemd socket activation (LISTEN_FDS protocol)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        raise StartupError(
            "milter.listen = 'systemd' but no socket was passed for this process "
            "(LISTEN_PID does not match): start it from aup-milter.socket"
        )
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    if count < 1:
        raise StartupError("milter.listen = 'systemd' but LISTEN_FDS passes no socket")
    if count > 1:
        log.warning("systemd passed %d sockets; using the first and ignoring the rest", count)
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    fd = SD_LISTEN_FDS_START
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        raise StartupError(f"systemd passed fd {fd}, which is not a socket")
    return fd


def sd_notify(message: str) -> None:
    """Tell systemd about readiness and stopping (Type=notify); no-op elsewhere."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", message, exc)


def _register(live: LiveRuntime, lifecycle: Lifecycle, settings: MilterSettings) -> None:
    register_milter(MILTER_NAME, lambda: AupMilter(live, lifecycle), settings.timeout)


def register_milter(name: str, factory: Callable[[], Milter.Base], timeout: int) -> None:
    """Register `factory`'s connection objects with libmilter, with our flags and callbacks.

    The bench's do-nothing milter (bench/floor_milter.py) registers through this too,
    so the floor it measures negotiates and dispatches exactly as aup-milter does.
    """
    Milter.factory = factory
    libmilter.set_flags(MILTER_FLAGS)
    libmilter.set_connect_callback(Milter.connect_callback)
    libmilter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    libmilter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    libmilter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    libmilter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    libmilter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    libmilter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    libmilter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    libmilter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    libmilter.set_close_callback(Milter.close_callback)
    libmilter.settimeout(timeout)
    # Every smtpd process opens its own milter connection: bursts need a deep queue.
    libmilter.setbacklog(socket.SOMAXCONN)
    libmilter.register(
        name,
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=Milter.negotiate_callback,
    )


@dataclass(frozen=True, slots=True)
class Listener:
    description: str
    """For the log: the address, or "systemd socket activation"."""
    fd: int
    """The listening socket libmilter accepts on."""


def open_listener(settings: MilterSettings) -> Listener:
    """Open the socket libmilter will accept on (libmilter must be registered first)."""
    listen = settings.listen
    if listen.kind == "systemd":
        return _adopt_socket(systemd_listen_fd(), "systemd socket activation")
    before = socket_fds()
    if listen.kind == "unix":
        _open_unix(listen, settings)
    else:
        libmilter.setconn(listen.libmilter_spec)
        _opensocket(listen)
    opened = sorted(socket_fds() - before)
    if len(opened) != 1:
        raise StartupError(f"cannot find libmilter's listening socket (found {opened})")
    set_nodelay(opened[0])
    return Listener(str(listen), opened[0])


def _opensocket(listen: ListenAddress | str) -> None:
    try:
        libmilter.opensocket(True)
    except libmilter.error as exc:
        raise StartupError(f"cannot listen on {listen}: {exc} (in use, or no permission?)") from exc


def _open_unix(listen: ListenAddress, settings: MilterSettings) -> None:
    with _making_unix_socket(listen, settings):
        libmilter.setconn(listen.libmilter_spec)
        _opensocket(listen)


@contextlib.contextmanager
def _making_unix_socket(listen: ListenAddress, settings: MilterSettings) -> Iterator[Path]:
    """Around creating the unix socket (by libmilter or by us): the folder and group checked,
    no more access than asked for while it is made, then its mode and group set exactly."""
    path = listen.path
    assert path is not None
    if not path.parent.is_dir():
        raise StartupError(f"milter.listen: directory {path.parent} does not exist")
    gid = _socket_gid(settings)
    old_umask = os.umask(0o777 & ~settings.socket_mode)
    try:
        yield path
    finally:
        os.umask(old_umask)
    _give_socket(path, gid, settings)


def _socket_gid(settings: MilterSettings) -> int:
    if not settings.socket_group:
        return -1
    try:
        return grp.getgrnam(settings.socket_group).gr_gid
    except KeyError:
        group = settings.socket_group
        raise StartupError(f"milter.socket_group: no group named {group!r}") from None


def _give_socket(path: Path, gid: int, settings: MilterSettings) -> None:
    try:
        os.chown(path, -1, gid)
    except PermissionError:
        raise StartupError(
            f"milter.socket_group: cannot give {path} to group {settings.socket_group!r}:"
            " the daemon's user is not a member of it (adduser USER GROUP, then restart;"
            " or use socket activation, aup-milter.socket)"
        ) from None
    os.chmod(path, settings.socket_mode)


def _adopt_socket(passed: int, description: str) -> Listener:
    """Make libmilter accept on `passed`, a socket it did not open (systemd's, a supervisor's).

    libmilter opens its own socket; open a throwaway one, then put `passed` in
    its place. libmilter remembers only the placeholder's path, so when it
    stops it never unlinks a unix socket that others still serve.
    """
    with tempfile.TemporaryDirectory(prefix="aup-milter-") as scratch:
        placeholder = Path(scratch) / "placeholder.sock"
        libmilter.setconn(f"unix:{placeholder}")
        before = socket_fds()
        _opensocket(f"a placeholder socket for {description}")
        opened = sorted(socket_fds() - before - {passed})
        if len(opened) != 1:
            raise StartupError(f"cannot find libmilter's listening socket (found {opened})")
        os.dup2(passed, opened[0])
        os.close(passed)
    set_nodelay(opened[0])
    return Listener(description, opened[0])


@dataclass(slots=True)
class OwnListener:
    """A listening socket this process opened (the event-loop engine's, the supervisor's)."""

    description: str
    sock: socket.socket
    path: Path | None = None
    """The unix socket's file, removed again at stop if it is still this socket's."""

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        if self.path is not None:
            try:
                if os.stat(self.path).st_ino == os.fstat(self.sock.fileno()).st_ino:
                    self.path.unlink()
            except OSError:
                pass  # already gone, or replaced by a newer daemon's socket
        self.sock.close()


def open_own_listener(settings: MilterSettings) -> OwnListener:
    """Open the socket the MTA connects to, as libmilter would, without libmilter."""
    listen = settings.listen
    if listen.kind == "systemd":
        fd = systemd_listen_fd()
        return OwnListener("systemd socket activation", socket.socket(fileno=fd))
    if listen.kind == "unix":
        return _own_unix(listen, settings)
    family = socket.AF_INET6 if listen.kind == "inet6" else socket.AF_INET
    host = listen.host or ("::" if family == socket.AF_INET6 else "0.0.0.0")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, listen.port or 0))
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {listen}: {exc} (in use, or no permission?)") from exc
    return OwnListener(str(listen), sock)


def _own_unix(listen: ListenAddress, settings: MilterSettings) -> OwnListener:
    with _making_unix_socket(listen, settings) as path:
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                path.unlink()  # a stale socket of an earlier run (libmilter removes it too)
        except FileNotFoundError:
            pass
        except OSError as exc:
            why = f"milter.listen: cannot remove the old socket {path}: {exc}"
            raise StartupError(why) from exc
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            sock.listen(socket.SOMAXCONN)
        except OSError as exc:
            sock.close()
            why = f"cannot listen on {listen}: {exc} (in use, or no permission?)"
            raise StartupError(why) from exc
    return OwnListener(str(listen), sock, path)


class MilterThread(threading.Thread):
    """Runs libmilter's main loop off the main thread.

    libmilter blocks SIGTERM, SIGINT and SIGHUP in the thread that calls
    smfi_main and hands them to a sigwait thread of its own, which stops the
    worker pool at once: open transactions would never get their answer. Run
    from here, libmilter blocks them only in its own threads; the Python main
    thread keeps them, so a process-directed signal reaches Python's handlers
    first and the daemon drains before it asks libmilter to stop.
    """

    def __init__(self) -> None:
        super().__init__(name="libmilter", daemon=True)
        self.error: str | None = None

    def run(self) -> None:
        try:
            libmilter.main()
        except libmilter.error as exc:
            self.error = str(exc)

    def stop(self, timeout: float) -> bool:
        libmilter.stop()
        self.join(timeout=timeout)
        return not self.is_alive()


class AuditFlusher(threading.Thread):
    """Writes audit events that found no ride on a transaction's Redis call.

    Wakes every FLUSH_AFTER / 2 seconds; writes only events that waited at least
    FLUSH_AFTER, so under load it never adds a round trip. `stop` writes what is left.
    """

    def __init__(self, live: LiveRuntime) -> None:
        super().__init__(name="audit-flusher", daemon=True)
        self.live = live
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(audit.FLUSH_AFTER / 2):
            self._flush(audit.FLUSH_AFTER)

    def _flush(self, older_than: float) -> None:
        try:
            self.live.current.store.flush_audit(older_than)
        except Exception:
            log.exception("audit flusher: unexpected error; the events wait for the next try")

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=STOP_TIMEOUT)
        # What is left, in rides of MAX_PER_RIDE: bounded, it gives up when Redis is down.
        for _ in range(audit.MAX_PENDING // audit.MAX_PER_RIDE + 1):
            if not self.live.audit.pending or not self.live.current.store.flush_audit():
                break
        if self.live.audit.pending:
            log.warning(
                "stopping with %d audit events not written to the stream (their log lines are)",
                self.live.audit.pending,
            )


def watch_metrics(live: LiveRuntime, lifecycle: Lifecycle) -> None:
    """The gauges read at scrape time: open connections and transactions, the audit queue."""
    trail = live.audit
    METRICS.watch(
        connections=lambda: lifecycle.open_connections,
        transactions=lambda: lifecycle.open_transactions,
        audit_pending=lambda: trail.pending,
        audit_dropped=lambda: trail.dropped,
    )


def start_metrics(config: Config, registry: CollectorRegistry) -> MetricsServer | None:
    """The Prometheus endpoint of `[metrics] listen`; None when disabled or not possible.

    An address that cannot be bound is logged as an error and the daemon runs
    without metrics: mail keeps flowing, and the failed scrape shows.
    """
    settings = config.metrics
    if settings.host is None:
        return None
    server = MetricsServer(registry, settings.host, settings.port)
    try:
        server.start()
    except OSError as exc:
        log.error(
            "metrics: cannot listen on %s (%s); running without metrics", settings.listen, exc
        )
        return None
    log.info("metrics served on %s", server.url)
    return server


def serve(config: Config) -> int:
    """Run until SIGTERM/SIGINT; return the process exit status.

    One process serves when `milter.workers` comes to 1; otherwise this one
    supervises that many workers (workers.py), each of which serves.
    """
    seat = WorkerSeat.from_environment()
    if seat is not None:
        return _serve(config, seat)
    count = config.milter.worker_count()
    if count == 1:
        return _serve(config, None)
    return _supervise(config, count)


def _serve(config: Config, seat: WorkerSeat | None) -> int:
    """The milter engine serving in this process: alone, or as the worker `seat`."""
    live = LiveRuntime(config)
    lifecycle = Lifecycle()
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("%s received", signal.Signals(signum).name)
        stop_requested.set()

    def reload_now(_signum: int, _frame: object) -> None:
        log.info("SIGHUP received: reloading the configuration")
        live.reload()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, reload_now)

    supervisor_pid = os.getppid()
    runner, where, own = _start_engine(config.milter, live, lifecycle, seat)
    watcher = ConfigWatcher(live)
    watcher.start()
    flusher = AuditFlusher(live)
    flusher.start()
    watch_metrics(live, lifecycle)
    metrics_server = None
    if seat is None:
        METRICS.share(lambda: shared_counts.read(live.current.store.client))
        metrics_server = start_metrics(config, METRICS.registry)
    runner.start()
    log.info(
        "aup-milter %s %s on %s (redis %s, on_store_error=%s, %d plans)",
        __version__,
        "listening" if seat is None else f"worker {seat.index} serving",
        where,
        _redacted(config.redis.url),
        config.policy.on_store_error,
        len(config.plans),
    )
    if seat is None:
        sd_notify("READY=1")
    else:
        ControlChannel(seat.control_fd, METRICS.exposition).ready()
    while not stop_requested.wait(0.5):
        if not runner.is_alive():
            watcher.stop()
            flusher.stop()
            log.error("the milter engine stopped by itself: %s", runner.error or "no reason given")
            if own is not None:
                own.close()
            return EX_FAILURE
        if seat is not None and os.getppid() != supervisor_pid:
            log.error("worker %d: the supervisor is gone; stopping", seat.index)
            break

    if seat is None:
        sd_notify("STOPPING=1")
    watcher.stop()
    grace = live.current.config.milter.shutdown_grace
    log.info("stopping: new transactions get 421; up to %.0f s for open ones to finish", grace)
    left = lifecycle.stop_and_drain(grace)
    if left:
        log.warning("stopping with %d transactions still open; the MTA will tempfail them", left)
    if runner.stop(STOP_TIMEOUT):
        log.info("stopped cleanly")
    else:
        log.warning("the milter engine did not stop within %.0f s; exiting anyway", STOP_TIMEOUT)
    if own is not None:
        own.close()
    flusher.stop()
    if metrics_server is not None:
        metrics_server.stop()
    live.current.store.close()
    return EX_OK


class Runner(Protocol):
    """What serving needs of an engine: start it, see that it runs, stop it."""

    @property
    def error(self) -> str | None: ...

    def start(self) -> None: ...

    def is_alive(self) -> bool: ...

    def stop(self, timeout: float) -> bool: ...


class EventLoopRunner:
    """`engine.Engine` on a listening socket, as a Runner."""

    def __init__(self, engine: Engine, listener: socket.socket) -> None:
        self.engine = engine
        self.listener = listener

    @property
    def error(self) -> str | None:
        return self.engine.error

    def start(self) -> None:
        self.engine.start(self.listener)

    def is_alive(self) -> bool:
        return self.engine.is_alive()

    def stop(self, timeout: float) -> bool:
        return self.engine.stop(timeout)


def _start_engine(
    settings: MilterSettings, live: LiveRuntime, lifecycle: Lifecycle, seat: WorkerSeat | None
) -> tuple[Runner, str, OwnListener | None]:
    """The engine `milter.engine` names, on this process's socket: (runner, where, own socket).

    The own socket is the one this process opened and must close (and unlink) at stop.
    """
    if seat is not None:
        callbacks.name_connections(f"w{seat.index}-c")
    if settings.engine == "libmilter":
        _register(live, lifecycle, settings)
        if seat is None:
            where = open_listener(settings).description
        else:
            seat_name = f"worker {seat.index}'s shared socket"
            where = _adopt_socket(seat.listen_fd, seat_name).description
        return MilterThread(), where, None
    engine = Engine(lambda: AupMilter(live, lifecycle), MILTER_FLAGS, settings.timeout)
    if seat is not None:
        shared = socket.socket(fileno=seat.listen_fd)
        return EventLoopRunner(engine, shared), f"worker {seat.index}'s shared socket", None
    own = open_own_listener(settings)
    return EventLoopRunner(engine, own.sock), own.description, own


def _supervise(config: Config, count: int) -> int:
    """Open the socket once, then run `count` workers on it until stopped (workers.py)."""
    live = LiveRuntime(config)
    own: OwnListener | None = None
    if config.milter.engine == "libmilter":
        _register(live, Lifecycle(), config.milter)  # libmilter opens sockets only once registered
        listener: Listener | OwnListener = open_listener(config.milter)
    else:
        listener = own = open_own_listener(config.milter)
    os.set_inheritable(listener.fd, True)
    # A worker that loses the race for a connection must not block in accept().
    os.set_blocking(listener.fd, False)
    supervisor = Supervisor(config.path, count, listener.fd, config.milter.shutdown_grace)

    def request_stop(signum: int, _frame: object) -> None:
        log.info("%s received: stopping the workers", signal.Signals(signum).name)
        sd_notify("STOPPING=1")
        supervisor.stop_requested.set()

    def reload_all(_signum: int, _frame: object) -> None:
        log.info("SIGHUP received")
        supervisor.reload_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, reload_all)

    registry = supervisor_metrics(supervisor, frozenset(WORKER_FAMILIES_SKIPPED))
    registry.register(SharedCounts(lambda: shared_counts.read(live.current.store.client)))
    metrics_server = start_metrics(config, registry)
    log.info(
        "aup-milter %s listening on %s with %d workers (redis %s, on_store_error=%s, %d plans)",
        __version__,
        listener.description,
        count,
        _redacted(config.redis.url),
        config.policy.on_store_error,
        len(config.plans),
    )
    status = supervisor.run(on_all_ready=lambda: sd_notify("READY=1"))
    if own is not None:
        own.close()
    if metrics_server is not None:
        metrics_server.stop()
    live.current.store.close()
    log.info("stopped (status %d)", status)
    return status


WORKER_FAMILIES_SKIPPED = ("aup_build_info", *(name for name, _, _ in SHARED_FAMILIES.values()))
"""What the supervisor exports itself, not summed over the workers."""


def _redacted(url: str) -> str:
    """The Redis URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user + ':' if user else ''}***@{host}"


def configure_logging(config: Config) -> None:
    logs.configure(config.log)

"""The live configuration and the Redis store built from it, swapped whole on reload.

The config file and the plan files are watched by polling their stat
signatures (libmilter treats SIGHUP as stop, so a signal cannot ask for a
reload). A new file that does not validate leaves the running one in place and
says why in the log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from aupmilter import logs
from aupmilter.audit import AuditTrail
from aupmilter.config import Config, ConfigError, load_config, plan_files
from aupmilter.mailauth.resolver import Resolver
from aupmilter.metrics import METRICS
from aupmilter.policy.tenancy import SenderPolicy
from aupmilter.store.client import Store, WindowCatalog

log = logging.getLogger("aupmilter.live_config")

Signature = tuple[tuple[str, int, int, int], ...]


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    store: Store
    sender_policy: SenderPolicy = field(init=False)
    """Built once per configuration, not once per MAIL FROM."""
    resolver: Resolver = field(init=False)
    """DNS for the message checks, with its TTL cache; one per configuration."""
    windows: WindowCatalog = field(init=False)

    def __post_init__(self) -> None:
        policy = SenderPolicy(
            unknown_sender=self.config.policy.unknown_sender,
            on_store_error=self.config.policy.on_store_error,
            known_plans=self.config.plan_names,
        )
        object.__setattr__(self, "sender_policy", policy)
        object.__setattr__(self, "resolver", Resolver(self.config.dns))
        object.__setattr__(self, "windows", WindowCatalog(self.config.plans))


class LiveRuntime:
    """Holds the current Runtime; readers take one snapshot per transaction."""

    def __init__(
        self, config: Config, store_factory: Callable[[Config], Store] | None = None
    ) -> None:
        self.audit = AuditTrail(
            config.audit.retention_seconds, recipients_listed=config.audit.recipients_listed
        )
        """One per process: events waiting for the stream survive a reload and a new store."""
        self._store_factory = store_factory or (lambda cfg: Store(cfg.redis, self.audit))
        self._current = Runtime(config, self._store_factory(config))
        self._lock = threading.Lock()

    @property
    def current(self) -> Runtime:
        return self._current  # a single reference read: atomic under the GIL

    def reload(self) -> bool:
        """Load the config file again; True when a new one is in force."""
        old = self._current
        try:
            config = load_config(old.config.path)
        except ConfigError as exc:
            log.error(
                "config reload refused, keeping the running configuration:\n%s",
                exc,
                extra={"problems": exc.problems},
            )
            METRICS.config_reloads.labels("failed").inc()
            return False
        if config.milter.listen != old.config.milter.listen:
            log.warning(
                "milter.listen changed to %s; it takes effect at the next restart",
                config.milter.listen,
            )
        if config.metrics != old.config.metrics:
            log.warning(
                "metrics.listen changed to %r; it takes effect at the next restart",
                config.metrics.listen,
            )
        store = old.store if config.redis == old.config.redis else self._store_factory(config)
        self.audit.retention_seconds = config.audit.retention_seconds
        self.audit.recipients_listed = config.audit.recipients_listed
        with self._lock:
            self._current = Runtime(config, store)
        logs.configure(config.log)
        METRICS.config_reloads.labels("ok").inc()
        log.info("configuration reloaded from %s (%d plans)", config.path, len(config.plans))
        return True


def file_signature(config: Config) -> Signature:
    """What changes when the config or a plan file is edited, replaced or removed."""
    paths = [config.path, config.policy.plans_dir]
    if config.policy.plans_dir.is_dir():
        paths += plan_files(config.policy.plans_dir)
    signature = []
    for path in paths:
        try:
            st = path.stat()
            signature.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            signature.append((str(path), 0, -1, 0))
    return tuple(signature)


class ConfigWatcher(threading.Thread):
    def __init__(self, live: LiveRuntime, interval: float = 1.0) -> None:
        super().__init__(name="config-watcher", daemon=True)
        self.live = live
        self.interval = interval
        self._stop_event = threading.Event()
        # Taken now, not when the thread runs: an edit right after start() must count.
        self._seen = file_signature(live.current.config)

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            if file_signature(self.live.current.config) == self._seen:
                continue
            # Let an editor finish writing before reading the file.
            if self._stop_event.wait(min(0.2, self.interval)):
                return
            # Taken before loading: an edit made during the reload is seen next round.
            before_load = file_signature(self.live.current.config)
            self.live.reload()
            after_load = file_signature(self.live.current.config)
            same_files = [e[0] for e in before_load] == [e[0] for e in after_load]
            # A new plans_dir changes which files are watched: start over from those.
            self._seen = before_load if same_files else after_load

    def stop(self) -> None:
        self._stop_event.set()

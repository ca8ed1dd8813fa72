"""Worker processes: one socket served by several, supervised, windows exact across them."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from testbed.proc import free_port, wait_until
from tests.milter.harness import Daemon, StartDaemon, Tenants
from tests.milter.mta import Kind, MilterClient
from tests.support import worker_pids

WINDOW = "sender-recipients-minute"
WAIT = 30.0


def until(probe: Callable[[], object], what: str) -> None:
    wait_until(lambda: probe() or None, timeout=WAIT, what=what)


def start_workers(start_daemon: StartDaemon, count: int = 2, **overrides: Any) -> Daemon:
    milter = {"workers": count, **overrides.pop("milter", {})}
    daemon = start_daemon(milter=milter, **overrides)
    until(lambda: len(daemon.log.matching(") ready", logger="aupmilter.workers")) >= count, "ready")
    assert len(worker_pids(daemon.pid)) == count
    return daemon


def serving_workers(daemon: Daemon) -> set[str]:
    """The worker prefixes seen in connection ids of the log (`w0-`, `w1-`, ...)."""
    return {
        str(entry["conn"]).split("-", 1)[0]
        for entry in daemon.log.entries()
        if str(entry.get("conn", "")).startswith("w")
    }


@pytest.mark.parametrize("engine", ["event-loop", "libmilter"])
def test_two_workers_serve_one_socket_and_connections_are_spread(
    start_daemon: StartDaemon, acme: str, engine: str
) -> None:
    daemon = start_workers(start_daemon, milter={"engine": engine})
    clients: list[MilterClient] = []
    try:
        # Held open together, so one worker's being busy lets the other accept.
        for n in range(40):
            client = daemon.client()
            assert client.mail(f"n{n}@acme.example", macros={"{auth_authen}": "acme"}).kind is (
                Kind.CONTINUE
            )
            clients.append(client)
    finally:
        for client in clients:
            client.abort()
            client.close()
    assert serving_workers(daemon) == {"w0", "w1"}


def test_windows_stay_exact_with_transactions_spread_over_two_workers(
    start_daemon: StartDaemon, acme: str, tenants: Tenants, redis_db: redis.Redis
) -> None:
    limit = 40
    tenants.hset("acme", **{f"window.{WINDOW}": str(limit)})
    daemon = start_workers(start_daemon)
    delivered: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(24)

    def send(n: int) -> None:
        recipients = [f"r{n}-{k}@dest.example" for k in range(3)]
        with daemon.client(timeout=20.0) as client:
            start.wait(timeout=WAIT)
            result = client.send_message("a@acme.example", recipients, auth_login="acme")
        if result.eom is not None and result.eom.response.kind in (Kind.CONTINUE, Kind.ACCEPT):
            accepted = sum(1 for _, reply in result.rcpts if reply.kind is Kind.CONTINUE)
            with lock:
                delivered.append(accepted - len(result.eom.deleted_rcpts))

    threads = [threading.Thread(target=send, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    charged = sum(
        int(value)
        for key in redis_db.scan_iter("aup:{acme}:w:r:60000:s:*")
        for value in redis_db.hgetall(key).values()
    )
    assert sum(delivered) == charged, "what the workers let through is what Redis counted"
    assert charged <= limit, "two workers together never overshoot the window"
    assert charged >= limit - 2, "and they fill it: only a 3-recipient message can miss the rest"
    assert serving_workers(daemon) == {"w0", "w1"}


def test_a_killed_worker_is_restarted_while_the_other_serves(
    start_daemon: StartDaemon, acme: str
) -> None:
    daemon = start_workers(start_daemon)
    before = worker_pids(daemon.pid)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    # The survivor answers at once, whatever the supervisor is doing.
    with daemon.client() as client:
        result = client.send_message("a@acme.example", ["x@dest.example"], auth_login="acme")
        assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE
    until(lambda: daemon.log.matching("died", logger="aupmilter.workers"), "the death logged")
    (died,) = daemon.log.matching("died", logger="aupmilter.workers")
    assert f"pid {victim}" in died["msg"] and "SIGKILL" in died["msg"]
    until(lambda: len(worker_pids(daemon.pid) - {victim}) == 2, "a new worker")
    until(
        lambda: len(daemon.log.matching(") ready", logger="aupmilter.workers")) >= 3, "it is ready"
    )
    for _ in range(6):
        with daemon.client() as client:
            result = client.send_message("a@acme.example", ["y@dest.example"], auth_login="acme")
            assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE


def test_sighup_reaches_every_worker_and_sigterm_stops_them_all(
    start_daemon: StartDaemon, acme: str
) -> None:
    daemon = start_workers(start_daemon)
    pids = worker_pids(daemon.pid)
    mark = daemon.log.mark()
    daemon.signal(signal.SIGHUP)
    until(
        lambda: len(daemon.log.matching("SIGHUP received: reloading", since=mark)) == 2,
        "both workers reloading",
    )
    assert daemon.proc is not None and daemon.proc.poll() is None, "the supervisor keeps running"
    assert worker_pids(daemon.pid) == pids, "a reload restarts no worker"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(WAIT) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    assert len(daemon.log.matching("stopped cleanly", since=mark)) == 2


def test_a_worker_outlives_no_supervisor(start_daemon: StartDaemon, acme: str) -> None:
    daemon = start_workers(start_daemon)
    pids = worker_pids(daemon.pid)
    os.kill(daemon.pid, signal.SIGKILL)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids), "the orphans stopped"
    assert len(daemon.log.matching("the supervisor is gone", logger="aupmilter.daemon")) == 2


def test_metrics_of_the_workers_are_summed_by_the_supervisor(
    start_daemon: StartDaemon, acme: str
) -> None:
    port = free_port()
    daemon = start_workers(start_daemon, metrics={"listen": f"127.0.0.1:{port}"})
    for n in range(12):
        with daemon.client() as client:
            result = client.send_message(
                "a@acme.example", [f"m{n}@dest.example"], auth_login="acme"
            )
            assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['aup_transactions_total{rule="",verdict="accept"}'] == 12
    assert samples["aup_workers"] == 2
    assert samples["aup_workers_configured"] == 2
    assert samples["aup_worker_restarts_total"] == 0
    assert sum(1 for name in samples if name.startswith("aup_build_info")) == 1
    assert len(re.findall(r"^# TYPE aup_transactions(?:_total)? counter$", text, re.M)) == 1

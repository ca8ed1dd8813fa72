"""The milter's own capacity: the daemon driven over the milter protocol, no Postfix.

``python -m bench --milter-only`` (and every ``make bench``, after the
end-to-end workloads) drives the daemons of the bench's aup-milter and floor
stacks directly on their unix sockets with the project's MTA-side client
(:class:`tests.milter.mta.MilterClient`, the one the milter-protocol tests
use), from ``CLIENT_PROCESSES`` processes of ``CONNECTIONS_PER_PROCESS``
threads, each thread one MTA connection per message as Postfix's smtpd makes
them: OPTNEG, CONNECT, HELO, MAIL FROM, RCPT x N, the headers, a 2000-byte
body, EOM. The message mix is the end-to-end bench's: sender
``a@acme.example`` (tenant acme by its domain, the bench plan's five windows),
10 or 100 recipients, transactional.

Printed per workload: messages/s and milter CPU per message (user + system
of the supervisor and all its workers, from /proc) for aup-milter with 1 and
with 2 workers and for the floor; then, at half the 2-worker capacity, the
latency of a transaction (MAIL FROM to the EOM answer) p50/p99 for both; and
the resident memory of each worker with ``IDLE_CONNECTIONS`` MTA
connections open at once. The load generator runs on the same cores as the
daemon (say so when reading the ratios of 2 workers to 1).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench.procstat import process_tree, tree_cpu_seconds, vm_rss_kib
from testbed.proc import TestbedError, wait_until
from testbed.stack import Stack
from tests.milter.mta import Kind, MilterClient, compliant_headers

SENDER = "a@acme.example"
BODY = (b"x" * 76 + b"\r\n") * 25  # 1950 bytes, as the end-to-end bench's 2000-byte body
CLIENT_PROCESSES = 4
CONNECTIONS_PER_PROCESS = 8
IDLE_CONNECTIONS = 500
WORKER_COUNTS = (1, 2)
# Workload name -> (recipients, messages per measured run; quick run).
WORKLOADS = {"10rcpt": (10, 4000, 400), "100rcpt": (100, 800, 80)}
WARMUP_DIVISOR = 10
LATENCY_SECONDS = 10.0
"""Length of the paced run at half capacity."""
READY_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class DriveResult:
    messages: int
    seconds: float
    latencies: tuple[float, ...]
    refused: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def _client_process(
    address: str, recipients: int, count: int, threads: int, interval: float, start_at: float
) -> tuple[list[float], int, float, float]:
    """One load process: `threads` connections' worth of `count` messages.

    Every thread starts at `start_at` (monotonic, shared by all processes on
    the machine) plus its offset; returns the latencies, the refusals, and
    when the first message began and the last one ended.
    """
    latencies: list[float] = []
    refused = [0]
    ended = [start_at]
    lock = threading.Lock()
    rcpts = [f"r{n}@example.net" for n in range(recipients)]
    headers = compliant_headers(SENDER, rcpts[:1])
    shares = [count // threads + (1 if n < count % threads else 0) for n in range(threads)]

    def run(share: int, offset: float) -> None:
        mine: list[float] = []
        bad = 0
        next_at = start_at + offset
        for _ in range(share):
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at += interval
            with MilterClient(address, timeout=30.0) as client:
                client.open_session(daemon_name="smtpd-bench")
                began = time.perf_counter()
                result = client.send_message(SENDER, rcpts, headers=headers, body=BODY)
                mine.append(time.perf_counter() - began)
            if result.eom is None or result.eom.response.kind not in (Kind.CONTINUE, Kind.ACCEPT):
                bad += 1
        with lock:
            latencies.extend(mine)
            refused[0] += bad
            ended[0] = max(ended[0], time.monotonic())

    workers = [
        threading.Thread(target=run, args=(share, n * interval / threads))
        for n, share in enumerate(shares)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return latencies, refused[0], start_at, ended[0]


def drive(address: str, recipients: int, messages: int, rate: float | None = None) -> DriveResult:
    """Send `messages` as fast as the daemon takes them, or paced at `rate` per second."""
    total_threads = CLIENT_PROCESSES * CONNECTIONS_PER_PROCESS
    interval = total_threads / rate if rate else 0.0
    counts = [messages // CLIENT_PROCESSES + (1 if n < messages % CLIENT_PROCESSES else 0)
              for n in range(CLIENT_PROCESSES)]  # fmt: skip
    context = multiprocessing.get_context("spawn")
    with context.Pool(CLIENT_PROCESSES) as pool:
        # Time for the client processes to come up: the clock starts when they all send.
        start_at = time.monotonic() + 2.0
        jobs = [
            pool.apply_async(
                _client_process,
                (
                    address,
                    recipients,
                    count,
                    CONNECTIONS_PER_PROCESS,
                    interval,
                    start_at + n * interval / total_threads,
                ),
            )
            for n, count in enumerate(counts)
        ]
        results = [job.get(timeout=900) for job in jobs]
    latencies = tuple(value for found, _, _, _ in results for value in found)
    refused = sum(bad for _, bad, _, _ in results)
    began = min(first for _, _, first, _ in results)
    finished = max(last for _, _, _, last in results)
    return DriveResult(len(latencies), finished - began, latencies, refused)


@dataclass(frozen=True, slots=True)
class Capacity:
    label: str
    workers: int
    rate: float
    cpu_ms_per_msg: float
    redis_ms_per_msg: float
    """Redis's own CPU (INFO cpu, user + system) per message."""


def measure(
    label: str, stack: Stack, recipients: int, messages: int, workers: int
) -> tuple[Capacity, DriveResult]:
    address = address_of(stack)
    drive(address, recipients, max(1, messages // WARMUP_DIVISOR))
    pid = _milter_pid(stack)
    before, redis_before = tree_cpu_seconds(pid), redis_cpu_seconds(stack)
    result = drive(address, recipients, messages)
    used = tree_cpu_seconds(pid) - before
    redis_used = redis_cpu_seconds(stack) - redis_before
    if result.refused:
        raise TestbedError(f"{label}: {result.refused} of {result.messages} messages refused")
    per_message = 1000 / result.messages
    capacity = Capacity(label, workers, result.rate, used * per_message, redis_used * per_message)
    return capacity, result


def redis_cpu_seconds(stack: Stack) -> float:
    """CPU the stack's redis-server has used (INFO cpu: used_cpu_user + used_cpu_sys)."""
    fields = dict(
        line.split(":", 1) for line in stack.redis_cli("INFO", "cpu").splitlines() if ":" in line
    )
    return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def address_of(stack: Stack) -> str:
    return f"unix:{stack.milter_socket}"


def _milter_pid(stack: Stack) -> int:
    pid = stack.status()["milter"]
    if pid is None:
        raise TestbedError(f"the milter of {stack.run_dir} is not running")
    return pid


def set_workers(stack: Stack, base_extra: str, workers: int) -> None:
    """Restart the aup-milter stack's daemon with `workers` processes, all of them ready.

    `base_extra` is the stack's own extra configuration, which ends in its [milter] table.
    """
    stack.milter_config_extra = base_extra + f"workers = {workers}\n"
    stack.restart_milter()
    pid = _milter_pid(stack)
    if workers > 1:
        wait_until(
            lambda: len(process_tree(pid)) == workers + 1 or None,
            timeout=READY_TIMEOUT,
            what=f"{workers} workers",
        )
    # Every worker answers before the clock starts.
    drive(address_of(stack), 1, 8 * workers)


def idle_rss(stack: Stack, connections: int) -> list[int]:
    """Resident KiB of each worker with `connections` MTA connections open, each in a MAIL."""
    address = address_of(stack)
    opened: list[MilterClient] = []
    try:
        for n in range(connections):
            client = MilterClient(address, timeout=30.0)
            opened.append(client)
            client.open_session(daemon_name="smtpd-bench")
            client.mail(f"idle{n}@acme.example")
        time.sleep(1.0)
        pid = _milter_pid(stack)
        workers = [p for p in process_tree(pid) if p != pid] or [pid]
        return [vm_rss_kib(p) for p in workers]
    finally:
        for client in opened:
            client.close()


def say(text: str) -> None:
    print(text, flush=True)


def run(aup: Stack, floor: Stack, base_extra: str, quick: bool,
        workloads: Sequence[str] = tuple(WORKLOADS)) -> list[str]:  # fmt: skip
    """Every measurement; returns the result lines for the end of the output."""
    lines: list[str] = []
    say(
        f"milter only: {CLIENT_PROCESSES} client processes x {CONNECTIONS_PER_PROCESS} "
        f"connections, one connection per message, on the daemon's unix socket; "
        f"{os.cpu_count()} CPUs shared by the load generator, the daemon and Redis"
    )
    for name in workloads:
        recipients, count, quick_count = WORKLOADS[name]
        messages = quick_count if quick else count
        floor_cap, _ = measure("floor", floor, recipients, messages, 1)
        caps: dict[int, Capacity] = {}
        for workers in WORKER_COUNTS:
            set_workers(aup, base_extra, workers)
            caps[workers], _ = measure(f"aup-milter x{workers}", aup, recipients, messages, workers)
        for cap in (floor_cap, *caps.values()):
            say(
                f"  {name} {cap.label}: {cap.rate:.0f} msg/s, "
                f"{cap.cpu_ms_per_msg:.2f} ms milter CPU per message"
                + ("" if cap.label == "floor" else f", Redis CPU {cap.redis_ms_per_msg:.3f} ms")
            )
        scale = caps[2].rate / caps[1].rate if caps[1].rate else float("nan")
        above = caps[1].cpu_ms_per_msg - floor_cap.cpu_ms_per_msg
        say(f"  {name}: 2 workers / 1 worker = {scale:.2f}x; CPU above the floor {above:.2f} ms")
        pace = caps[2].rate / 2
        paced = drive(address_of(aup), recipients, max(50, int(pace * LATENCY_SECONDS)), pace)
        floor_paced = drive(
            address_of(floor), recipients, max(50, int(pace * LATENCY_SECONDS)), pace
        )
        say(
            f"  {name} at {pace:.0f} msg/s (half the 2-worker capacity): transaction latency "
            f"p50 {paced.percentile(50) * 1000:.1f} ms, p99 {paced.percentile(99) * 1000:.1f} ms "
            f"(floor p50 {floor_paced.percentile(50) * 1000:.1f} ms, "
            f"p99 {floor_paced.percentile(99) * 1000:.1f} ms): added p99 "
            f"{(paced.percentile(99) - floor_paced.percentile(99)) * 1000:.1f} ms"
        )
        lines.append(
            f"bench: milter-only workload={name} workers=1 msgs_per_s={caps[1].rate:.0f} "
            f"cpu_ms_per_msg={caps[1].cpu_ms_per_msg:.2f} floor_msgs_per_s={floor_cap.rate:.0f} "
            f"floor_cpu_ms_per_msg={floor_cap.cpu_ms_per_msg:.2f} "
            f"redis_cpu_ms_per_msg={caps[1].redis_ms_per_msg:.3f}"
        )
        lines.append(
            f"bench: milter-only workload={name} workers=2 msgs_per_s={caps[2].rate:.0f} "
            f"cpu_ms_per_msg={caps[2].cpu_ms_per_msg:.2f} scale={scale:.2f}"
        )
    rss = idle_rss(aup, IDLE_CONNECTIONS)
    say(
        f"  resident memory with {IDLE_CONNECTIONS} MTA connections open: "
        + ", ".join(f"worker {n} {kib / 1024:.0f} MB" for n, kib in enumerate(rss))
    )
    return lines

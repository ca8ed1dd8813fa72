"""Throughput of Postfix + aup-milter against bare Postfix and a do-nothing milter, end to end.

Three private stacks (the test bed's :class:`testbed.stack.Stack`) run side
by side on loopback ports of their own: bare Postfix; Postfix + the floor, a
pymilter milter that answers every callback with CONTINUE
(:mod:`bench.floor_milter`, negotiated and threaded like aup-milter); and
Postfix + aup-milter (with its Redis, the demo tenants, the one-click
unsubscribe and DKIM signing of the demo). All relay to Postfix's
``smtp-sink`` and get identical Postfix tuning. Postfix's ``smtp-source``
feeds them (``-s 20`` sessions, one connection per message, envelope sender
``a@acme.example``, which the milter maps to tenant acme by its domain, or
``bulk@acme.example``, whose sender stream is ``bulk``).

One run: the clock starts with smtp-source and stops once the Postfix queue
is empty (``postqueue -j`` prints nothing); then the Postfix log must show
every recipient delivered (``status=sent``) and nothing rejected, deferred,
bounced or held, otherwise the run fails instead of reporting a number. On
the aup-milter side its verdict log lines must also show one accept per
message of the run's class (bulk: List-Unsubscribe, List-Unsubscribe-Post
and DKIM-Signature added to every message; transactional: none of them).

Per workload (10 and 100 recipients transactional, 10 recipients bulk): one
warm-up run per side, then ``--pairs`` triples "bare, floor, aup-milter".
Printed: each triple's msg/s and the ratios (aup-milter / bare, aup-milter /
floor, floor / bare); per workload the median ratios, the CPU seconds per
1000 messages of the aup-milter and floor processes (utime + stime from
/proc) and Redis commands per message (``INFO commandstats`` of the
aup-milter stack's Redis, without the INFO calls themselves). The output
ends with one line per workload, for scripts::

    bench: workload=10rcpt ratio=0.93 vs_floor=0.97
    bench: workload=100rcpt ratio=0.88 vs_floor=0.98
    bench: workload=10rcpt-bulk ratio=0.74 vs_floor=0.87

Everything started is stopped at the end, also on failure, Ctrl-C or SIGTERM;
the exit status is 0 only for a complete, verified run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from aupmilter.store import keys
from bench import milter_only
from bench.procstat import tree_cpu_seconds
from testbed.proc import TestbedError, tail, tcp_port_free
from testbed.stack import HOST, Stack, default_run_dir

SENDER = "a@acme.example"
# Tenant acme's sender stream for this address is "bulk" (aup:tenant:acme:streams):
# its mail gets the unsubscribe pair and the DKIM signature of the demo's key.
BULK_SENDER = "bulk@acme.example"
BENCH_TENANT = "acme"
BENCH_PLAN = "bench"
# Caps and windows active as on the shipped plans (same number and kinds of
# windows as `standard`), with limits no benchmark run reaches: the milter
# pays for reading and charging every window on every message.
_NEVER = 1_000_000_000
_WINDOWS = (
    ("sender-recipients-minute", "sender", "recipients", "1m"),
    ("sender-recipients-hour", "sender", "recipients", "1h"),
    ("sender-recipients-day", "sender", "recipients", "1d"),
    ("tenant-messages-hour", "tenant", "messages", "1h"),
    ("tenant-recipients-day", "tenant", "recipients", "1d"),
)
BENCH_PLANS = (
    f"[plan.{BENCH_PLAN}]\n"
    'description = "make bench: the standard plan\'s windows, limits no run reaches"\n'
    "max_recipients_per_message = 100\n"
    + "".join(
        f"[plan.{BENCH_PLAN}.windows.{name}]\n"
        f'per = "{per}"\ncount = "{count}"\nlimit = {_NEVER}\nperiod = "{period}"\n'
        for name, per, count, period in _WINDOWS
    )
    # The ladder counts every near-cap message (the 100-recipient runs) and never fires.
    + f"[plan.{BENCH_PLAN}.ladder]\nnear_cap_repeats = 1000000\n"
)
RECIPIENT = "r@example.net"
CLIENT_HELO = "client.bench.invalid"
MESSAGE_BYTES = 2000
DEFAULT_SESSIONS = 20
DEFAULT_PAIRS = 3
# Workload name -> (recipients per message, bulk, messages per run; quick run).
WORKLOADS = {
    "10rcpt": (10, False, 2000, 200),
    "100rcpt": (100, False, 400, 40),
    "10rcpt-bulk": (10, True, 2000, 200),
}
# Headers the milter must have added to every bulk message (its verdict log lines).
BULK_HEADERS = ("List-Unsubscribe", "List-Unsubscribe-Post", "DKIM-Signature")
QUICK_PAIRS = 1
# A warm-up run sends this fraction of the measured count (at least one message).
WARMUP_DIVISOR = 5
DEFAULT_TIMEOUT = 600.0
# Redis: bare BASE, aup-milter BASE+1, floor BASE+2. SMTP ports from BASE: bare SMTP +0,
# sink +1; aup-milter SMTP +2, sink +3, DNS +4, unsubscribe web +5, intake +6, metrics
# +7; floor SMTP +8, sink +9, DNS +10 (the floor's stack runs the test DNS, unused).
# Clear of the demo (6390/2525/2526) and the e2e tests (6395/2535/2536, 6396/2545/2546).
DEFAULT_REDIS_PORT = 6480
DEFAULT_SMTP_PORT = 2580
REDIS_PORTS = 3
SMTP_PORTS = 11
FLOOR_COMMAND_MODULE = "bench.floor_milter"

# Identical on both sides: 20 smtp-source sessions need 20 smtpd processes and
# up to 20 parallel deliveries to the sink, without Postfix's defaults in the way.
POSTFIX_TUNING = {
    "default_process_limit": "200",
    "smtp_destination_concurrency_limit": "20",
}

QUEUE_POLL = 0.05
# After a run: time for postlogd to write the last delivery lines.
LOG_GRACE = 20.0
# Between runs: let delivery agents and cached connections go idle.
SETTLE = 1.0
# Queues of a Postfix spool; "hold", "deferred" and "corrupt" mean a failed run.
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold", "corrupt")
BAD_LOG_MARKERS = (
    "status=deferred",
    "status=bounced",
    "status=expired",
    "milter-reject",
    "milter-hold",
    "milter-discard",
    "reject:",
)


class BenchError(RuntimeError):
    """The benchmark cannot go on; the text says why (with log tails where useful)."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C so that everything is stopped."""


@dataclass(frozen=True)
class Workload:
    recipients: int
    messages: int
    bulk: bool = False

    @property
    def name(self) -> str:
        return f"{self.recipients}rcpt" + ("-bulk" if self.bulk else "")

    @property
    def sender(self) -> str:
        return BULK_SENDER if self.bulk else SENDER

    @property
    def mail_class(self) -> str:
        return "bulk" if self.bulk else "transactional"

    @property
    def warmup(self) -> int:
        return max(1, self.messages // WARMUP_DIVISOR)


@dataclass(frozen=True)
class Options:
    workloads: tuple[Workload, ...]
    pairs: int
    sessions: int
    timeout: float
    run_dir: Path
    redis_port: int
    smtp_port: int
    suppression_check: str = "eom"
    engine: str = "libmilter"
    """The aup-milter side's `milter.engine`."""
    milter_only: str = "also"
    """"also": the milter-only capacity runs after the end-to-end ones; "only"; "skip"."""
    quick: bool = False


@dataclass(frozen=True)
class RunResult:
    messages: int
    seconds: float
    milter_cpu: float
    redis_calls: Counter[str]

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


@dataclass(frozen=True)
class Summary:
    workload: Workload
    ratios: tuple[float, ...]
    """aup-milter / bare, one per triple."""
    vs_floor: tuple[float, ...]
    """aup-milter / floor, one per triple."""
    floor_ratios: tuple[float, ...]
    """floor / bare, one per triple."""
    # Totals over the measured aup-milter runs.
    milter_messages: int
    milter_cpu: float
    redis_calls: Counter[str]
    # Totals over the measured floor runs.
    floor_messages: int
    floor_cpu: float

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def median_vs_floor(self) -> float:
        return statistics.median(self.vs_floor)

    @property
    def median_floor_ratio(self) -> float:
        return statistics.median(self.floor_ratios)

    @property
    def floor_cpu_per_1000(self) -> float:
        return self.floor_cpu / self.floor_messages * 1000

    @property
    def milter_cpu_per_1000(self) -> float:
        return self.milter_cpu / self.milter_messages * 1000

    @property
    def redis_per_message(self) -> float:
        return sum(self.redis_calls.values()) / self.milter_messages


def say(text: str) -> None:
    print(text, flush=True)


# ---- one side: a Stack plus what the benchmark reads from it ----------------


BARE, FLOOR, AUP = "bare", "floor", "aup-milter"


class Side:
    """``kind``: BARE (no milter), FLOOR (the do-nothing milter) or AUP (aup-milter)."""

    def __init__(self, kind: str, stack: Stack) -> None:
        self.label = kind
        self.kind = kind
        self.stack = stack
        self.milter_pid: int | None = None

    @property
    def with_milter(self) -> bool:
        return self.stack.with_milter

    @property
    def is_aup(self) -> bool:
        return self.kind == AUP

    def ports(self) -> dict[str, int]:
        stack = self.stack
        ports = {"Redis": stack.redis_port, "SMTP": stack.smtp_port, "sink": stack.sink_port}
        if self.with_milter:
            ports["DNS"] = stack.dns_port
        if self.is_aup:
            ports.update(web=stack.web_port, intake=stack.intake_port, metrics=stack.metrics_port)
        return ports

    def start(self) -> None:
        self.stack.start(clean=True)
        if self.is_aup:
            self.stack.add_demo_tenants()
            self.stack.redis_cli("HSET", keys.tenant(BENCH_TENANT), keys.FIELD_PLAN, BENCH_PLAN)
            self.stack.redis_cli("HSET", keys.tenant_streams(BENCH_TENANT), BULK_SENDER, "bulk")
        if self.with_milter:
            self.milter_pid = self.stack.status()["milter"]
            if self.milter_pid is None:
                raise BenchError(f"{self.label}: the milter is not running{self.log_tails()}")

    def milter_cpu(self) -> float:
        """CPU seconds (user + system, all threads) the milter and its workers have used so far."""
        if not self.with_milter:
            return 0.0
        pid = self.stack.status()["milter"]
        if pid is None or pid != self.milter_pid:
            raise BenchError(
                f"{self.label}: the milter (pid {self.milter_pid}) is gone or was replaced "
                f"(now {pid}){tail(self.stack.milter_log)}"
            )
        try:
            return tree_cpu_seconds(pid)
        except OSError as exc:
            raise BenchError(f"{self.label}: cannot read /proc/{pid}/stat: {exc}") from None

    def redis_calls(self) -> Counter[str]:
        """Calls per command since Redis started (INFO commandstats), INFO itself left out."""
        calls: Counter[str] = Counter()
        if not self.is_aup:
            return calls
        for line in self.stack.redis_cli("INFO", "commandstats").splitlines():
            name, sep, stats = line.strip().partition(":")
            if not sep or not name.startswith("cmdstat_"):
                continue
            command = name.removeprefix("cmdstat_")
            if command == "info":
                continue
            fields = dict(item.split("=", 1) for item in stats.split(",") if "=" in item)
            calls[command] = int(fields.get("calls", "0"))
        return calls

    def spool_counts(self) -> dict[str, int]:
        """Queue files per Postfix queue, straight from the spool (cheap enough to poll)."""
        counts: dict[str, int] = {}
        for queue in QUEUES:
            folder = self.stack.postfix.queue_dir / queue
            counts[queue] = sum(len(files) for _, _, files in os.walk(folder))
        return counts

    def postqueue_empty(self) -> bool:
        return not self.stack.queue()

    def log_size(self) -> int:
        try:
            return self.stack.postfix.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        with open(self.stack.postfix.log_file, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")

    def milter_log_size(self) -> int:
        try:
            return self.stack.milter_log.stat().st_size
        except FileNotFoundError:
            return 0

    def verdicts_since(self, offset: int) -> list[dict[str, object]]:
        """aup-milter's verdict events (its JSON log lines) written after ``offset``."""
        with open(self.stack.milter_log, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
        events: list[dict[str, object]] = []
        for line in text.splitlines():
            if '"event": "verdict"' not in line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "verdict":
                events.append(event)
        return events

    def log_tails(self) -> str:
        logs = tail(self.stack.postfix.log_file) + tail(self.stack.sink_log)
        if self.with_milter:
            logs += tail(self.stack.milter_log)
        return logs


# ---- one measured run --------------------------------------------------------


def smtp_source_argv(side: Side, workload: Workload, messages: int, sessions: int) -> list[str]:
    # No -d: one connection per message. smtp-source numbers the recipients
    # itself (1r@example.net, 2r@example.net, ...).
    return [
        "smtp-source",
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-r",
        str(workload.recipients),
        "-l",
        str(MESSAGE_BYTES),
        "-M",
        CLIENT_HELO,
        "-f",
        workload.sender,
        "-t",
        RECIPIENT,
        f"{HOST}:{side.stack.smtp_port}",
    ]


def measure(side: Side, workload: Workload, messages: int, options: Options) -> RunResult:
    time.sleep(SETTLE)
    if any(side.spool_counts().values()) or not side.postqueue_empty():
        raise BenchError(f"{side.label}: the Postfix queue is not empty before the run")
    log_offset = side.log_size()
    milter_log_offset = side.milter_log_size() if side.is_aup else 0
    cpu_before = side.milter_cpu()
    calls_before = side.redis_calls()

    started = time.monotonic()
    deadline = started + options.timeout
    argv = smtp_source_argv(side, workload, messages, options.sessions)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=options.timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"{side.label}: smtp-source did not finish within {options.timeout:g}s"
            f"{side.log_tails()}"
        ) from None
    if done.returncode != 0:
        raise BenchError(
            f"{side.label}: smtp-source exited {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()}{side.log_tails()}"
        )
    wait_for_empty_queue(side, deadline)
    seconds = time.monotonic() - started

    cpu = side.milter_cpu() - cpu_before
    calls = side.redis_calls()
    calls.subtract(calls_before)
    check_delivered(side, log_offset, messages * workload.recipients)
    if side.is_aup:
        check_verdicts(side, milter_log_offset, workload, messages)
    return RunResult(messages=messages, seconds=seconds, milter_cpu=cpu, redis_calls=+calls)


def wait_for_empty_queue(side: Side, deadline: float) -> None:
    """Poll the spool until the queue is empty, then confirm with ``postqueue -j``."""
    while True:
        counts = side.spool_counts()
        stuck = {queue: counts[queue] for queue in ("deferred", "hold", "corrupt")}
        if any(stuck.values()):
            raise BenchError(
                f"{side.label}: messages that will not be delivered in this run: {stuck}"
                f"{side.log_tails()}"
            )
        if not any(counts.values()) and side.postqueue_empty():
            return
        if time.monotonic() >= deadline:
            raise BenchError(
                f"{side.label}: the queue did not drain in time (still {counts}){side.log_tails()}"
            )
        time.sleep(QUEUE_POLL)


def check_delivered(side: Side, log_offset: int, expected: int) -> None:
    """The run's Postfix log lines: every recipient sent, nothing refused or delayed."""
    deadline = time.monotonic() + LOG_GRACE
    while True:
        text = side.log_since(log_offset)
        bad = [line for line in text.splitlines() if any(m in line for m in BAD_LOG_MARKERS)]
        if bad:
            sample = "\n".join(bad[:5])
            raise BenchError(f"{side.label}: {len(bad)} failed deliveries, e.g.:\n{sample}")
        sent = text.count("status=sent")
        if sent == expected:
            return
        if sent > expected or time.monotonic() >= deadline:
            raise BenchError(
                f"{side.label}: the Postfix log shows {sent} recipients sent, "
                f"expected {expected}{side.log_tails()}"
            )
        time.sleep(0.2)


def verdict_problem(event: dict[str, object], workload: Workload) -> str | None:
    """What is wrong with one verdict event of the run, or None."""
    if event.get("verdict") != "accept" or event.get("stage") != "eom":
        return f"verdict {event.get('verdict')} at {event.get('stage')}"
    if event.get("class") != workload.mail_class:
        return f"class {event.get('class')} ({event.get('class_reason')})"
    added = event.get("headers") or []
    names = {str(name).lower() for name in added} if isinstance(added, list) else set()
    wanted = {name.lower() for name in BULK_HEADERS}
    if workload.bulk and not wanted <= names:
        return f"headers added {sorted(names)}, expected {', '.join(BULK_HEADERS)}"
    if not workload.bulk and names & wanted:
        return f"list-mail headers on transactional mail: {sorted(names & wanted)}"
    return None


def check_verdicts(side: Side, offset: int, workload: Workload, messages: int) -> None:
    """aup-milter's verdict log lines of the run: one accept per message, of the workload's class.

    A bulk message must have had List-Unsubscribe, List-Unsubscribe-Post and
    DKIM-Signature added; a transactional one none of them. So a bulk
    workload that silently ran transactional (or the reverse) fails the run.
    """
    deadline = time.monotonic() + LOG_GRACE
    while True:
        events = side.verdicts_since(offset)
        problems = Counter(p for e in events if (p := verdict_problem(e, workload)) is not None)
        if problems:
            sample = "; ".join(f"{n} x {p}" for p, n in problems.most_common(3))
            raise BenchError(
                f"{side.label}: {sum(problems.values())} of {len(events)} verdicts are not a "
                f"{workload.mail_class} accept as expected: {sample}"
            )
        if len(events) == messages:
            return
        if len(events) > messages or time.monotonic() >= deadline:
            raise BenchError(
                f"{side.label}: the milter log shows {len(events)} verdicts, expected {messages}"
                f"{tail(side.stack.milter_log)}"
            )
        time.sleep(0.2)


# ---- the whole benchmark -----------------------------------------------------


def run_workload(sides: Sides, workload: Workload, options: Options) -> Summary:
    bare, floor, aup = sides.bare, sides.floor, sides.aup
    name = workload.name
    say(
        f"{name}: {workload.messages} {workload.mail_class} messages per run from "
        f"{workload.sender}, warm-up {workload.warmup} per side"
    )
    warm = [measure(side, workload, workload.warmup, options) for side in sides.all]
    say(
        f"{name} warm-up: "
        + ", ".join(
            f"{side.label} {r.rate:.1f} msg/s" for side, r in zip(sides.all, warm, strict=True)
        )
        + " (not counted)"
    )
    ratios: list[float] = []
    vs_floor: list[float] = []
    floor_ratios: list[float] = []
    milter_runs: list[RunResult] = []
    floor_runs: list[RunResult] = []
    for pair in range(1, options.pairs + 1):
        a = measure(bare, workload, workload.messages, options)
        f = measure(floor, workload, workload.messages, options)
        b = measure(aup, workload, workload.messages, options)
        milter_runs.append(b)
        floor_runs.append(f)
        ratios.append(b.rate / a.rate)
        vs_floor.append(b.rate / f.rate)
        floor_ratios.append(f.rate / a.rate)
        say(
            f"{name} triple {pair}/{options.pairs}: bare {a.rate:.1f} msg/s ({a.seconds:.2f} s), "
            f"floor {f.rate:.1f} msg/s ({f.seconds:.2f} s), "
            f"aup-milter {b.rate:.1f} msg/s ({b.seconds:.2f} s); "
            f"ratio {ratios[-1]:.2f}, vs_floor {vs_floor[-1]:.2f}, "
            f"floor/bare {floor_ratios[-1]:.2f}"
        )
    calls: Counter[str] = Counter()
    for result in milter_runs:
        calls.update(result.redis_calls)
    summary = Summary(
        workload=workload,
        ratios=tuple(ratios),
        vs_floor=tuple(vs_floor),
        floor_ratios=tuple(floor_ratios),
        milter_messages=sum(r.messages for r in milter_runs),
        milter_cpu=sum(r.milter_cpu for r in milter_runs),
        redis_calls=calls,
        floor_messages=sum(r.messages for r in floor_runs),
        floor_cpu=sum(r.milter_cpu for r in floor_runs),
    )
    say(
        f"{name}: median ratio {summary.median_ratio:.2f} "
        f"(triples {' '.join(f'{r:.2f}' for r in ratios)}), "
        f"vs_floor {summary.median_vs_floor:.2f} "
        f"(triples {' '.join(f'{r:.2f}' for r in vs_floor)}), "
        f"floor/bare {summary.median_floor_ratio:.2f}"
    )
    say(
        f"{name}: CPU per 1000 messages: aup-milter {summary.milter_cpu_per_1000:.2f} s, "
        f"floor {summary.floor_cpu_per_1000:.2f} s "
        f"(aup-milter above the floor: "
        f"{summary.milter_cpu_per_1000 - summary.floor_cpu_per_1000:.2f} ms per message); "
        f"Redis {summary.redis_per_message:.2f} commands per message"
    )
    if workload.bulk:
        say(
            f"{name}: every aup-milter message verified bulk with "
            f"{', '.join(BULK_HEADERS)} added (verdict log lines)"
        )
    # Redis counts the commands a script runs (redis.call) as well as the script call.
    breakdown = ", ".join(f"{cmd} {n}" for cmd, n in calls.most_common()) or "none"
    say(
        f"{name}: Redis commands in {summary.milter_messages} milter messages: {breakdown} "
        "(commands run inside scripts included)"
    )
    # What the milter itself sends: one script call per round trip (the rest ran inside).
    round_trips = calls["evalsha"] + calls["eval"] + calls["hexists"]
    say(
        f"{name}: Redis round trips per message: "
        f"{round_trips / max(1, summary.milter_messages):.2f} (EVALSHA at MAIL FROM and at end"
        f" of message, HEXISTS per RCPT with suppression_check = rcpt; plus"
        f" {calls['hello'] + calls['client|setname']} connection set-up commands in all)"
    )
    entries = int(aup.stack.redis_cli("XLEN", keys.AUDIT_STREAM) or 0)
    memory = int(aup.stack.redis_cli("MEMORY", "USAGE", keys.AUDIT_STREAM, "SAMPLES", "0") or 0)
    say(
        f"{name}: audit stream: {calls['xadd'] / max(1, summary.milter_messages):.2f} events per"
        f" message, pipelined in front of those script calls (no round trip of their own under"
        f" load); {entries} entries, {memory // max(1, entries)} bytes per event (MEMORY USAGE)"
    )
    return summary


@dataclass(frozen=True)
class Sides:
    bare: Side
    floor: Side
    aup: Side

    @property
    def all(self) -> tuple[Side, Side, Side]:
        """In the order of every triple: bare, floor, aup-milter."""
        return (self.bare, self.floor, self.aup)


def make_sides(options: Options) -> Sides:
    redis, smtp = options.redis_port, options.smtp_port
    common: dict[str, Any] = {
        "sink": "smtp-sink",
        "postfix_overrides": POSTFIX_TUNING,
    }
    bare = Stack(
        options.run_dir / "bare",
        redis_port=redis,
        smtp_port=smtp,
        sink_port=smtp + 1,
        with_milter=False,
        **common,
    )
    aup = Stack(
        options.run_dir / "milter",
        redis_port=redis + 1,
        smtp_port=smtp + 2,
        sink_port=smtp + 3,
        dns_port=smtp + 4,
        web_port=smtp + 5,
        intake_port=smtp + 6,
        metrics_port=smtp + 7,
        extra_plans=BENCH_PLANS,
        # The demo's [unsubscribe] and [dkim]: bulk mail gets the pair and is signed.
        unsubscribe=True,
        # "rcpt" costs one Redis call per RCPT (the default "eom" none).
        # Ends in its [milter] table: the milter-only runs add `workers` to it.
        milter_config_extra=(
            f'[policy]\nsuppression_check = "{options.suppression_check}"\n'
            f'[milter]\nengine = "{options.engine}"\n'
        ),
        **common,
    )
    floor = Stack(
        options.run_dir / "floor",
        redis_port=redis + 2,
        smtp_port=smtp + 8,
        sink_port=smtp + 9,
        dns_port=smtp + 10,
        milter_command=[sys.executable, "-m", FLOOR_COMMAND_MODULE, "{socket}"],
        **common,
    )
    return Sides(Side(BARE, bare), Side(FLOOR, floor), Side(AUP, aup))


def check_ports(sides: Sequence[Side]) -> None:
    busy = [
        f"{HOST}:{port} ({side.label} {what})"
        for side in sides
        for what, port in side.ports().items()
        if not tcp_port_free(HOST, port)
    ]
    if busy:
        raise BenchError(
            "ports already in use: " + ", ".join(busy) + "; stop what holds them, or choose "
            "others with --redis-port and --smtp-port"
        )


def check_tools() -> None:
    if os.geteuid() != 0:
        raise BenchError("needs root: it runs private Postfix instances (postfix -c ... start)")
    missing = [tool for tool in ("smtp-source", "smtp-sink", "postfix") if not shutil.which(tool)]
    if missing:
        raise BenchError(f"not installed: {', '.join(missing)} (scripts/bootstrap.sh)")


def leftover_processes(root: Path) -> list[str]:
    """Processes (other than this one) whose working directory lies under ``root``."""
    found: list[str] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        if cwd == root or root in cwd.parents:
            found.append(f"{entry.name} {command}")
    return found


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Ignore Ctrl-C and SIGTERM while stopping (every stop step is bounded in time)."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signal.Signals(signum).name)


def stop_all(sides: Sequence[Side], root: Path) -> list[str]:
    problems: list[str] = []
    with signals_deferred():
        for side in sides:
            try:
                side.stack.stop()
            except TestbedError as exc:
                problems.append(f"{side.label}: {exc}")
        left = leftover_processes(root)
        if left:
            problems.append("processes still running under " + str(root) + ":\n" + "\n".join(left))
    return problems


def benchmark(options: Options) -> tuple[list[Summary], list[str]]:
    """The end-to-end summaries and the milter-only result lines."""
    check_tools()
    triple = make_sides(options)
    sides = triple.all if options.milter_only != "only" else (triple.floor, triple.aup)
    started = time.monotonic()
    summaries: list[Summary] = []
    milter_lines: list[str] = []
    try:
        # Leftovers of an interrupted earlier run (only pids from our own run folders).
        for side in sides:
            side.stack.stop()
        check_ports(sides)
        for side in sides:
            side.start()
        version = triple.aup.stack.postconf("mail_version").get("mail_version", "?")
        say(
            f"smtp-source ({options.sessions} sessions, one connection per message, "
            f"{MESSAGE_BYTES}-byte body, from {SENDER} or {BULK_SENDER}) -> Postfix {version} "
            f"-> smtp-sink; {os.cpu_count()} CPUs"
        )
        for side in sides:
            say(
                f"{side.label}: SMTP {HOST}:{side.stack.smtp_port}, sink {side.stack.sink_port}, "
                f"Redis {side.stack.redis_port}, run folder {side.stack.run_dir}"
            )
        tuning = " ".join(f"{key}={value}" for key, value in POSTFIX_TUNING.items())
        say(f"Postfix tuning on every side: {tuning}")
        say(
            f"{options.pairs} triple(s) (bare, floor, aup-milter) per workload, "
            "after one warm-up run per side"
        )
        if options.milter_only != "only":
            for workload in options.workloads:
                summaries.append(run_workload(triple, workload, options))
        if options.milter_only != "skip":
            milter_lines = milter_only.run(
                triple.aup.stack,
                triple.floor.stack,
                triple.aup.stack.milter_config_extra,
                options.quick,
            )
    finally:
        problems = stop_all(sides, options.run_dir)
        # Reported here: on Ctrl-C or an earlier error nothing else would show them.
        for problem in problems:
            print(f"bench: error while stopping: {problem}", file=sys.stderr, flush=True)
    if problems:
        raise BenchError("could not stop everything it started (see above)")
    say(f"done in {time.monotonic() - started:.0f} s; everything it started is stopped")
    return summaries, milter_lines


# ---- command line ------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def port(text: str) -> int:
    value = int(text)
    if not 1024 <= value <= 65532:
        raise argparse.ArgumentTypeError(f"must be within 1024-65532, got {value}")
    return value


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Throughput of Postfix + aup-milter against bare Postfix (make bench).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: "
        + "/".join(str(quick) for _, _, _, quick in WORKLOADS.values())
        + f" messages, {QUICK_PAIRS} triple (explicit options still win)",
    )
    for name, (rcpt, bulk, count, _quick) in WORKLOADS.items():
        parser.add_argument(
            f"--messages-{name}",
            type=positive_int,
            metavar="N",
            help=f"messages per run with {rcpt} recipients, "
            f"{'bulk' if bulk else 'transactional'} (default {count})",
        )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated workloads to run, in this order (default {','.join(WORKLOADS)})",
    )
    parser.add_argument(
        "--pairs",
        type=positive_int,
        help=f"measured triples (bare, floor, aup-milter) per workload (default {DEFAULT_PAIRS})",
    )
    parser.add_argument(
        "--sessions",
        type=positive_int,
        default=DEFAULT_SESSIONS,
        help=f"parallel smtp-source sessions (default {DEFAULT_SESSIONS})",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds one run may take until the queue is empty (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="folder for the three stacks (default run/bench, wiped at start)",
    )
    parser.add_argument(
        "--redis-port",
        type=port,
        default=DEFAULT_REDIS_PORT,
        help=f"Redis ports: this one (bare), +1 (aup-milter), +2 (floor) "
        f"(default {DEFAULT_REDIS_PORT})",
    )
    parser.add_argument(
        "--smtp-port",
        type=port,
        default=DEFAULT_SMTP_PORT,
        help=f"first of {SMTP_PORTS} ports: bare SMTP and sink +0/+1, aup-milter +2 to +7 "
        f"(SMTP, sink, DNS, web, intake, metrics), floor +8 to +10 (SMTP, sink, DNS) "
        f"(default {DEFAULT_SMTP_PORT})",
    )
    parser.add_argument(
        "--milter-only",
        action="store_const",
        const="only",
        default="also",
        dest="milter_only",
        help="only the milter-only capacity runs (bench/milter_only.py), no end-to-end ones",
    )
    parser.add_argument(
        "--no-milter-only",
        action="store_const",
        const="skip",
        dest="milter_only",
        help="only the end-to-end runs",
    )
    parser.add_argument(
        "--engine",
        choices=("event-loop", "libmilter"),
        default="libmilter",
        help="the aup-milter side's milter.engine (default libmilter, the daemon's default)",
    )
    parser.add_argument(
        "--suppression-check",
        choices=("eom", "rcpt"),
        default="eom",
        help="the milter's policy.suppression_check: 'rcpt' adds one Redis call per RCPT",
    )
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.workloads.split(",") if name.strip()]
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown or not names:
        parser.error(f"--workloads: choose from {', '.join(WORKLOADS)}")
    workloads = []
    for name in names:
        rcpt, bulk, count, quick = WORKLOADS[name]
        given = getattr(args, f"messages_{name.replace('-', '_')}")
        workloads.append(Workload(rcpt, given or (quick if args.quick else count), bulk))
    pairs = args.pairs or (QUICK_PAIRS if args.quick else DEFAULT_PAIRS)
    redis_ports = set(range(args.redis_port, args.redis_port + REDIS_PORTS))
    smtp_ports = set(range(args.smtp_port, args.smtp_port + SMTP_PORTS))
    if redis_ports & smtp_ports:
        parser.error("--redis-port and --smtp-port ranges overlap")
    if max(redis_ports | smtp_ports) > 65535:
        parser.error("--redis-port or --smtp-port: the range goes past port 65535")
    return Options(
        workloads=tuple(workloads),
        pairs=pairs,
        sessions=args.sessions,
        timeout=args.timeout,
        run_dir=(args.run_dir or default_run_dir("bench")).resolve(),
        redis_port=args.redis_port,
        smtp_port=args.smtp_port,
        suppression_check=args.suppression_check,
        engine=args.engine,
        milter_only=args.milter_only,
        quick=args.quick,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminated)
    try:
        summaries, milter_lines = benchmark(options)
    except (BenchError, TestbedError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, Terminated):
        print("bench: interrupted", file=sys.stderr, flush=True)
        return 130
    # The last lines, for scripts: nothing may follow them.
    for summary in summaries:
        say(
            f"bench: workload={summary.workload.name} ratio={summary.median_ratio:.2f} "
            f"vs_floor={summary.median_vs_floor:.2f}"
        )
    for line in milter_lines:
        say(line)
    return 0

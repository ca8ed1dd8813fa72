"""CPU and memory of a process and its children, from /proc (Linux)."""

from __future__ import annotations

import os
from pathlib import Path

from testbed.proc import child_pids, stat_fields

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (zombies left out), parents first."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        tree.append(current)
        todo.extend(sorted(child_pids(current)))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of `pid` so far (utime, stime: fields 14 and 15)."""
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float:
    """CPU of `pid` and its descendants alive now, plus what its reaped children used.

    A worker that died and was reaped counts in the supervisor's cutime/cstime
    (fields 16 and 17); one that runs counts in its own stat.
    """
    fields = stat_fields(pid)
    reaped = (int(fields[13]) + int(fields[14])) / CLOCK_TICKS
    total = reaped
    for member in process_tree(pid):
        try:
            total += cpu_seconds(member)
        except OSError:
            continue  # ended between the listing and the read
    return total


def vm_rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise OSError(f"/proc/{pid}/status has no VmRSS")

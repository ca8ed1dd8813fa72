"""Run the fuzz targets for a number of cases; count them and measure peak memory.

``python -m tests.fuzz`` (``make fuzz``) runs at least 10**5 cases across the
targets (tests/fuzz/targets.py) and prints the count per target and the peak
RSS of this process (``resource.getrusage``) and of the web service; it
exits 1 on the first failing case (Hypothesis prints the shrunk example) or
when a peak passes ``--max-rss-mib``. tests/fuzz/test_fuzz.py runs the same
targets briefly inside ``make test``.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings

from tests.fuzz.targets import ISSUED, SIGNER, Target, in_process_targets, web_target
from tests.support import RedisServer
from tests.web.harness import WebService

DEFAULT_CASES = 100_000
DEFAULT_MAX_RSS_MIB = 512


BATCH = 2000
"""Cases per Hypothesis run: one run keeps what it explored until it ends (measured: ~40 KiB
per case of the header target), so a long run is many short ones, each with a fresh seed."""


def run_target(target: Target, cases: int) -> int:
    """``cases`` generated inputs through ``target``, in batches; how many actually ran."""
    ran = 0

    def batch(size: int) -> None:
        @settings(
            max_examples=size,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
        )
        @given(target.strategy)
        def each(case: object) -> None:
            nonlocal ran
            ran += 1
            target.check(case)

        each()

    while ran < cases:
        before = ran
        batch(min(BATCH, cases - ran))
        gc.collect()
        if ran == before:
            break  # the strategy has nothing left to generate
    return ran


def peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_peak_mib(pid: int) -> float:
    """VmHWM (the peak resident set) of another process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES)
    parser.add_argument("--max-rss-mib", type=float, default=DEFAULT_MAX_RSS_MIB)
    parser.add_argument("--only", action="append", default=[], help="target name; repeatable")
    args = parser.parse_args(argv)
    started = time.monotonic()
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="aup-fuzz-") as folder:
        redis_server = RedisServer(Path(folder) / "redis")
        redis_server.start()
        web = WebService(Path(folder), redis_server.url, rate_limit_per_minute=100_000,
                         rate_limit_burst=10_000, max_body_bytes=1024)  # fmt: skip
        try:
            web.start()
            from aupmilter.store.suppression import SuppressionStore

            with redis_server.client() as client:
                SuppressionStore(client).store_references(
                    [ISSUED.recipient.reference, ISSUED.message.reference], SIGNER.lifetime_seconds
                )
            web_case, web_check = web_target(web.host, web.port)
            targets = [*in_process_targets(), web_case]
            if args.only:
                targets = [t for t in targets if t.name in args.only]
            total_share = sum(t.share for t in targets)
            for target in targets:
                wanted = max(1, round(args.cases * target.share / total_share))
                began = time.monotonic()
                counts[target.name] = run_target(target, wanted)
                print(f"fuzz: {target.name}: {counts[target.name]} cases in "
                      f"{time.monotonic() - began:.0f} s, peak RSS so far {peak_rss_mib():.0f} MiB",
                      flush=True)  # fmt: skip
            with redis_server.client() as client:
                suppressed = {str(a).lower() for a in client.hkeys("aup:{acme}:suppressed")}
            web_pid = web.running_pid()
            web_peak = process_peak_mib(web_pid) if web_pid else 0.0
        finally:
            web.stop()
            redis_server.stop()
    total = sum(counts.values())
    own_peak = peak_rss_mib()
    print(f"fuzz: {total} cases in {time.monotonic() - started:.0f} s "
          f"({', '.join(f'{n} {c}' for n, c in counts.items())})")  # fmt: skip
    statuses = dict(sorted(web_check.statuses.items()))
    print(f"fuzz: peak RSS {own_peak:.0f} MiB (fuzzer, in-process targets), "
          f"{web_peak:.0f} MiB (aup-milter web); web statuses {statuses}")  # fmt: skip
    failed = False
    if not suppressed <= ISSUED.suppressible:
        print(f"fuzz: FAILED: suppressed beyond the tokens' recipients: {sorted(suppressed)}")
        failed = True
    if max(own_peak, web_peak) > args.max_rss_mib:
        print(f"fuzz: FAILED: peak RSS above {args.max_rss_mib:g} MiB")
        failed = True
    if total < args.cases * 0.99:
        print(f"fuzz: FAILED: only {total} of {args.cases} cases ran")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

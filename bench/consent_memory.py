"""``python -m bench.consent_memory``: Redis memory per recorded recipient, and the check's cost.

Starts a private redis-server (Debian's, as the tests do), fills a tenant's
consent ledger (address -> consent time), its sources (address -> source
text) and its last-bulk record (address -> time) with ``--entries`` addresses
(100k by default, of a realistic length), and prints ``MEMORY USAGE`` (exact:
``SAMPLES 0``) of each hash divided by the entries: the bytes one recorded
recipient costs. Then it times the end-of-message script (store.client.Store.charge)
for a bulk message of ``--recipients`` recipients with the consent rules off
and on (median of ``--rounds`` calls over loopback), so the lapse check's
cost shows. Printed, never asserted; the last lines are for scripts:

    consent_memory: hash=consent entries=100000 bytes_per_entry=...
    consent_memory: charge recipients=1000 off_ms=... on_ms=...
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from aupmilter.config import RedisSettings
from aupmilter.policy.consent import DAY, ConsentMode, ConsentPlan
from aupmilter.policy.limits import Scope, Unit, Window
from aupmilter.store import keys
from aupmilter.store.client import ConsentCheck, Store
from testbed.parts.redisserver import RedisServer

TENANT = "bench"
SOURCE = "signup-form"


def address(i: int) -> str:
    """About 30 characters, like a real list's: a name, digits, one of 50 domains."""
    return f"reader.{i:07d}@mail-{i % 50:02d}.example.net"


def fill(client: object, entries: int, now: int) -> None:
    for start in range(0, entries, 10_000):
        chunk = range(start, min(start + 10_000, entries))
        pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
        pipe.hset(keys.consent(TENANT), mapping={address(i): now - i for i in chunk})
        pipe.hset(keys.consent_sources(TENANT), mapping=dict.fromkeys(map(address, chunk), SOURCE))
        pipe.hset(keys.last_bulk(TENANT), mapping={address(i): now - i for i in chunk})
        pipe.execute()


def charge_ms(
    store: Store, recipients: list[str], consent: ConsentCheck | None, rounds: int
) -> float:
    window = Window("tenant-recipients-day", Scope.TENANT, Unit.RECIPIENTS, 10**9, 86_400_000)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        store.charge(
            TENANT, (window,), "bench", recipients, int(time.time() * 1000), consent=consent
        )
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.consent_memory")
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--recipients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    now = int(time.time())
    with tempfile.TemporaryDirectory(prefix="aup-consent-bench-") as run:
        server = RedisServer(Path(run))
        server.start()
        try:
            client = server.client()
            fill(client, args.entries, now)
            length = statistics.mean(len(address(i)) for i in range(args.entries))
            print(f"{args.entries} addresses of {length:.1f} characters on average")
            for name, key in (
                ("consent", keys.consent(TENANT)),
                ("consent:src", keys.consent_sources(TENANT)),
                ("lastbulk", keys.last_bulk(TENANT)),
            ):
                usage = int(client.memory_usage(key, samples=0) or 0)
                encoding = client.object("encoding", key)
                print(
                    f"consent_memory: hash={name} entries={args.entries} encoding={encoding}"
                    f" bytes={usage} bytes_per_entry={usage / args.entries:.1f}"
                )
            store = Store(RedisSettings(server.url, 5.0, 5.0))
            recipients = [address(i) for i in range(args.recipients)]
            plan = ConsentPlan(mode=ConsentMode.ENFORCE, lapse=180 * DAY)
            off = charge_ms(store, recipients, None, args.rounds)
            on = charge_ms(store, recipients, ConsentCheck(plan, known_bulk=True), args.rounds)
            print(
                f"consent_memory: charge recipients={args.recipients} off_ms={off:.3f}"
                f" on_ms={on:.3f} added_ms={on - off:.3f}"
            )
            store.close()
            client.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()

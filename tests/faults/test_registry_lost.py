"""Redis SIGKILLed mid-stream and brought back empty: the tenant registry is gone.

The issue's finding, reproduced: with Redis restarted without persistence
(or failed over to an empty replica, or flushed) every tenant is an unknown
sender. The milter tells that apart from a sender that is unknown: the store
holds neither the registry marker nor the tenant index, so it tempfails
(`451 4.3.0`, rule registry-missing, logged and counted) until the tenants
are added back, as `make demo` does; then the retried mail is delivered.
Nothing is lost and nothing gets `550 5.7.1 no tenant mapped`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter

from aupmilter.store import keys
from testbed import Stack
from testbed.faultstream import Fault, FaultStream
from tests.faults.conftest import (
    PASSWORDS,
    SUPPRESSED,
    assert_nothing_lost,
    probed_messages,
    run_stream,
    sigkill,
)

COUNT = 120
INTERVAL = 0.03
CONCURRENCY = 4
FAULT_AT = 30
EMPTY_FOR = 3.0
"""Seconds the store runs empty before the tenants are added again."""


def test_redis_back_without_its_data_tempfails_until_the_registry_is_back(
    fault_stack: Stack,
) -> None:
    redis = fault_stack.redis
    log_mark = len(fault_stack.milter.log_text())
    restored: list[float] = []

    def kill_and_restart_empty() -> None:
        sigkill(redis)
        redis.persistence = False
        shutil.rmtree(redis.run_dir / "appendonlydir", ignore_errors=True)
        fault_stack.start_redis()
        time.sleep(EMPTY_FOR)
        # What an operator restoring the store does: the suppression list first (from a
        # backup: `suppress add` wants the tenant), so no probe slips through between
        # the tenants' return and the list's; then the tenants, as `make demo` adds them.
        entry = f"manual {int(time.time())}"
        fault_stack.redis_cli("HSET", keys.suppressed("acme"), SUPPRESSED, entry)
        fault_stack.add_demo_tenants()
        restored.append(time.monotonic())

    stream = FaultStream(
        fault_stack, "acme", PASSWORDS["acme"], count=COUNT, interval=INTERVAL,
        factory=probed_messages(), faults=[Fault(kill_and_restart_empty, at_message=FAULT_AT)],
        concurrency=CONCURRENCY,
    )  # fmt: skip
    try:
        tally = run_stream(stream)
    finally:
        # The session's Redis keeps its append-only file for the other fault tests.
        redis.stop()
        redis.persistence = True
        fault_stack.start_redis()

    assert restored, "the fault never ran"
    assert_nothing_lost(tally)
    assert tally.retried > 0, tally.report()
    assert set(tally.reply_counts()) <= {"451 4.3.0", "550 5.7.1", "553 5.7.1"}, tally.report()
    entries = [json.loads(line) for line in fault_stack.milter.log_text()[log_mark:].splitlines()]
    messages = [str(entry.get("msg", "")) for entry in entries]
    assert any(m.startswith("tenant registry missing") for m in messages)
    assert any(m.startswith("tenant registry back") for m in messages)
    rules = Counter(e.get("rule") for e in entries if e.get("logger") == "aupmilter.verdict")
    assert rules["registry-missing"] > 0, rules
    assert rules["unknown-sender"] == 0, rules

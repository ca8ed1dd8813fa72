"""The consent rules in the charge script on Sentinel and on a Cluster (one slot per call).

On a Cluster every key of the call (suppression, windows, consent ledger,
last bulk) carries the tenant's hash tag, so the script runs on that slot;
a key off the slot would make Redis refuse the call (CROSSSLOT).
"""

from __future__ import annotations

import time

from aupmilter.policy.consent import DAY, ConsentMode, ConsentPlan
from aupmilter.policy.limits import Scope, Unit, Window
from aupmilter.store import keys
from aupmilter.store.client import Charged, ConsentCheck, Store
from tests.distributed.conftest import Deployment

WINDOW = Window("tenant-recipients-day", Scope.TENANT, Unit.RECIPIENTS, 1000, 86_400_000)


def test_lapsed_recipients_dropped_and_last_bulk_recorded_on_the_tenant_slot(
    shared: Deployment,
) -> None:
    now = int(time.time())
    store = Store(shared.settings)
    try:
        with shared.client() as client:
            ledger = {"fresh@example.net": now - DAY, "old@example.net": now - 400 * DAY}
            client.hset(keys.consent("acme"), mapping=ledger)
        plan = ConsentPlan(mode=ConsentMode.ENFORCE, lapse=180 * DAY)
        result = store.charge(
            "acme",
            (WINDOW,),
            "bob@acme.example",
            ["fresh@example.net", "old@example.net"],
            now * 1000,
            consent=ConsentCheck(plan, known_bulk=True),
        )
        assert isinstance(result, Charged), result
        assert result.consent.lapsed == ("old@example.net",) and result.fills == (1,)
        with shared.client() as client:
            assert client.hgetall(keys.last_bulk("acme")) == {"fresh@example.net": str(now)}
    finally:
        store.close()

"""TLS on a Redis Cluster: `rediss://` in `url` carries the nodes' TLS, as it does for one server.

The nodes listen on TLS only (`--tls-port`, the cluster bus and replication
on TLS too), with a throw-away CA; the milter's store and its tenant
administration verify the nodes' certificate against that CA.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from aupmilter.config import RedisSettings
from aupmilter.policy.limits import Scope, Unit, Window
from aupmilter.policy.tenancy import tenant_lookup
from aupmilter.store import keys
from aupmilter.store.client import Charged, Store, StoreUnavailable, connect
from aupmilter.store.tenants import TenantAdmin
from testbed.parts.rediscluster import RedisClusterDeployment
from testbed.parts.tlsfiles import make_tls_files
from tests.support import STARTUP_TIMEOUT, record_of


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSettings]:
    folder = Path(tmp_path_factory.mktemp("tls-cluster"))
    tls = make_tls_files(folder / "tls")
    cluster = RedisClusterDeployment(
        folder, replicas=0, password="pw", tls=tls, timeout=STARTUP_TIMEOUT
    )
    cluster.start()
    try:
        nodes = tuple((n.host, n.port) for n in cluster.nodes)
        yield RedisSettings(f"rediss://:pw@?ssl_ca_certs={tls.ca}", 2.0, 5.0, cluster_nodes=nodes)
    finally:
        cluster.stop()
        keys.use_cluster_layout(False)


def test_the_store_reads_and_charges_over_tls(tls_cluster: RedisSettings) -> None:
    with connect(tls_cluster) as client:
        TenantAdmin(client).add("acme", "standard", ["acme"], ["acme.example"])
    store = Store(tls_cluster)
    try:
        record = record_of(store, tenant_lookup("acme", "a@acme.example"))
        assert record is not None and record.tenant_id == "acme"
        window = Window("w", Scope.TENANT, Unit.MESSAGES, 5, 60_000)
        charged = store.charge("acme", [window], "acme", ["r@dest.example"], 1_700_000_000_000)
        assert isinstance(charged, Charged) and charged.fills == (1,)
    finally:
        store.close()
        keys.use_cluster_layout(False)


def test_a_client_without_the_ca_is_unavailable_not_crashed(tls_cluster: RedisSettings) -> None:
    """The nodes' certificate does not verify: the store is unavailable (on_store_error),
    and making the store did not fail (the cluster client is made at its first use)."""
    store = Store(replace(tls_cluster, url="rediss://:pw@"))
    try:
        with pytest.raises(StoreUnavailable):
            record_of(store, tenant_lookup("acme", ""))
    finally:
        store.close()
        keys.use_cluster_layout(False)

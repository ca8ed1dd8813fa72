"""A distributed Redis failing over under a stream of mail: nothing lost.

The private Postfix's milter uses a real Sentinel set (master + replica +
three sentinels) or a real 3-master Redis Cluster with a replica each. Mid
stream the master (Sentinel) or the master of acme's slot (Cluster) is
SIGKILLed; the sentinels or the cluster promote its replica, which holds
the replicated tenants. Meanwhile the milter tempfails (`451 4.3.0`), the
client retries, and every message ends delivered once or refused by a
deliberate policy probe. Each test prints ``sent, delivered, retried,
refused, lost``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed import DEMO_ACCOUNTS, Stack, toml
from testbed.faultstream import Fault, FaultStream
from testbed.parts.rediscluster import RedisClusterDeployment
from testbed.parts.redissentinel import SERVICE_NAME, SentinelDeployment
from testbed.parts.service import python_env
from testbed.proc import run
from testbed.stack import default_run_dir, port_offset
from tests.faults.conftest import (
    PASSWORDS,
    SUPPRESSED,
    assert_nothing_lost,
    probed_messages,
    run_stream,
)
from tests.support import STARTUP_TIMEOUT

COUNT = 120
INTERVAL = 0.03
CONCURRENCY = 4
FAULT_AT = 30
DATA_PASSWORD = "data-secret"
SENTINEL_PASSWORD = "sentinel-secret"
PORTS = {"sentinel": (6415, 2615, 2616), "cluster": (6425, 2625, 2626)}
"""The stack's own Redis (unused by its milter), SMTP and sink ports, per deployment."""

Deployment = SentinelDeployment | RedisClusterDeployment


def redis_section(deployment: Deployment) -> dict[str, Any]:
    if isinstance(deployment, SentinelDeployment):
        return {
            "url": f"redis://:{DATA_PASSWORD}@/0",
            "sentinels": deployment.addresses,
            "service_name": SERVICE_NAME,
            "sentinel_password": SENTINEL_PASSWORD,
        }
    return {"url": f"redis://:{DATA_PASSWORD}@", "cluster_nodes": deployment.addresses[:2]}


def aup(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """``aup-milter`` with the stack's milter config: the command finds the deployment there."""
    argv = [stack.python, "-m", "aupmilter", args[0], "-c", str(stack.milter_conf.path), *args[1:]]
    return run(argv, what=f"aup-milter {' '.join(args[:2])}", env=python_env(), check=False)


def add_tenants(stack: Stack) -> None:
    """The demo's tenants in the deployment, their SASL users in Postfix, acme's probe
    address suppressed: what the fault tests' own stack gets from `restore`."""
    for account in DEMO_ACCOUNTS:
        tenant = account.tenant
        for login in tenant.logins:
            stack.relay.add_sasl_user(login, account.password)
        aup(stack, "tenant", "remove", tenant.id)
        logins = [stack.relay.auth_authen(login) for login in tenant.logins]
        done = aup(stack, "tenant", *tenant.add_args(logins))
        assert done.returncode == 0, done.stderr
    done = aup(stack, "suppress", "add", "--tenant", "acme", "--source", "manual", SUPPRESSED)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module", params=["sentinel", "cluster"])
def distributed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Deployment]]:
    kind = str(request.param)
    folder = Path(tmp_path_factory.mktemp(kind))
    deployment: Deployment
    if kind == "sentinel":
        deployment = SentinelDeployment(
            folder, password=DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD,
            timeout=STARTUP_TIMEOUT,
        )  # fmt: skip
    else:
        deployment = RedisClusterDeployment(folder, password=DATA_PASSWORD, timeout=STARTUP_TIMEOUT)
    deployment.start()
    redis_port, smtp_port, sink_port = (port + port_offset() for port in PORTS[kind])
    extra = toml.dumps({"redis": redis_section(deployment), "dns": {"max_ttl": 0}})
    stack = Stack(
        default_run_dir(f"faults-{kind}"),
        redis_port=redis_port,
        smtp_port=smtp_port,
        sink_port=sink_port,
        milter_config_extra=extra,
    )
    try:
        stack.start(clean=True)
        add_tenants(stack)
        yield stack, deployment
    finally:
        stack.stop()
        deployment.stop()


def test_the_master_killed_mid_stream_and_its_replica_promoted_loses_nothing(
    distributed: tuple[Stack, Deployment],
) -> None:
    stack, deployment = distributed
    killed: list[str] = []

    def kill_master() -> None:
        if isinstance(deployment, SentinelDeployment):
            victim = deployment.kill_master()
            killed.append(f"master {victim.port}")
            deployment.wait_failover(victim)
        else:
            victim = deployment.kill_master_of("aup:tenant:{acme}")
            killed.append(f"master {victim.port}")
            deployment.wait_promoted()

    stream = FaultStream(
        stack, "acme", PASSWORDS["acme"], count=COUNT, interval=INTERVAL,
        factory=probed_messages(), faults=[Fault(kill_master, at_message=FAULT_AT)],
        concurrency=CONCURRENCY,
    )  # fmt: skip
    tally = run_stream(stream)

    assert killed, "the fault never ran"
    assert_nothing_lost(tally)
    assert set(tally.reply_counts()) <= {"451 4.3.0", "550 5.7.1", "553 5.7.1"}, tally.report()
    # The promoted replica holds the replicated registry: no tenant became unknown.
    assert "no tenant mapped" not in stack.milter.log_text()
    assert "tenant registry missing" not in stack.milter.log_text()

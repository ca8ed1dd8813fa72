"""The intake's counts for Prometheus: one HINCRBY per message into the shared hash.

The intake is a pipe process per message and cannot be scraped; the daemon
exports this hash (tests/milter/test_milter_metrics.py). Counted exactly, by
outcome and by report kind, on the real command.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis

from aupmilter.store import keys
from tests.intake.test_intake import DOMAIN, intake, issue, message
from tests.milter.harness import child_env
from tests.support import RedisServer, free_port
from tests.web.harness import write_config


@pytest.fixture
def config(redis_server: RedisServer, tmp_path: Path) -> Path:
    return write_config(tmp_path, redis_server.url, 8895)


def counts(client: redis.Redis) -> dict[str, str]:
    return {str(k): str(v) for k, v in client.hgetall(keys.SHARED_COUNTS).items()}


def test_unsubscribes_are_counted_by_outcome(config: Path, redis_client: redis.Redis) -> None:
    token = issue(redis_client).token
    address = f"unsubscribe+{token}@{DOMAIN}"
    assert intake(config, message(address), address).returncode == 0
    assert intake(config, message(address), address).returncode == 0
    stranger = f"postmaster@{DOMAIN}"
    assert intake(config, message(stranger), stranger).returncode == 67
    assert intake(config, message(f"nobody@{DOMAIN}"), None).returncode == 64
    assert counts(redis_client) == {
        "unsubscribe:unsubscribed": "1",
        "unsubscribe:already": "1",
        "unsubscribe:refused": "1",
        "unsubscribe:invalid": "1",
        "suppression:mailto": "1",
    }


def test_reports_are_counted_by_kind(config: Path, redis_client: redis.Redis) -> None:
    argv = [sys.executable, "-m", "aupmilter", "intake", "--reports", "-c", str(config)]
    for raw in (b"not a report at all\r\n", b"From: x@y.example\r\n\r\nhello\r\n"):
        done = subprocess.run(argv, input=raw, capture_output=True, env=child_env(), timeout=60)
        assert done.returncode == 0, done.stderr
    found = counts(redis_client)
    assert sum(int(v) for k, v in found.items() if k.startswith("report:")) == 2, found


def test_a_count_that_cannot_be_written_changes_no_exit_code(tmp_path: Path) -> None:
    down = write_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0", 8895)
    address = f"postmaster@{DOMAIN}"
    assert intake(down, message(address), address).returncode == 67

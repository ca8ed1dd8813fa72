"""`[redis]`: one server (the default), a Sentinel set, or a Cluster, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from aupmilter.config import load_config
from aupmilter.store.client import node_options
from tests.unit.configfiles import problems, write


def test_an_existing_config_stays_standalone(confdir: Path) -> None:
    redis = load_config(write(confdir, '[redis]\nurl = "redis://10.0.0.1:6380/2"\n')).redis
    assert redis.mode == "standalone"
    assert (redis.sentinels, redis.cluster_nodes, redis.service_name) == ((), (), "")


def test_sentinel_mode(confdir: Path) -> None:
    text = (
        "[redis]\n"
        'sentinels = ["10.0.0.1:26379", "[2001:db8::1]:26379"]\n'
        'service_name = "aup"\n'
        'url = "rediss://milter:secret@/3?ssl_ca_certs=/etc/ca.pem"\n'
        'sentinel_username = "watch"\nsentinel_password = "s3"\nsentinel_tls = true\n'
    )
    redis = load_config(write(confdir, text)).redis
    assert redis.mode == "sentinel"
    assert redis.sentinels == (("10.0.0.1", 26379), ("2001:db8::1", 26379))
    assert (redis.sentinel_username, redis.sentinel_password, redis.sentinel_tls) == (
        "watch",
        "s3",
        True,
    )
    # The data nodes' ACL user, password and TLS come from the address-less URL.
    assert node_options(redis.url) == {
        "username": "milter",
        "password": "secret",
        "ssl": True,
        "ssl_ca_certs": "/etc/ca.pem",
    }


def test_cluster_mode(confdir: Path) -> None:
    text = '[redis]\ncluster_nodes = ["10.0.0.1:6379", "10.0.0.2:6379"]\nurl = "redis://:pw@"\n'
    redis = load_config(write(confdir, text)).redis
    assert redis.mode == "cluster" and redis.mapping_cache_seconds == 30
    assert redis.cluster_nodes == (("10.0.0.1", 6379), ("10.0.0.2", 6379))


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('sentinels = ["10.0.0.1"]\nservice_name = "aup"\n', "sentinels", "'HOST:PORT'"),
        ('sentinels = []\nservice_name = "aup"\n', "sentinels", "non-empty list"),
        ('sentinels = ["10.0.0.1:26379"]\n', "service_name", "the master's name"),
        ('service_name = "aup"\n', "service_name", "without 'sentinels'"),
        ('sentinel_password = "x"\n', "sentinel_password", "without 'sentinels'"),
        (
            'sentinels = ["h:1"]\nservice_name = "a"\ncluster_nodes = ["h:2"]\n',
            "cluster_nodes",
            "not both",
        ),
        (
            'cluster_nodes = ["h:2"]\nurl = "redis://10.0.0.1:6379/0"\n',
            "url",
            "without an address",
        ),
        ('cluster_nodes = ["h:2"]\nmapping_cache_seconds = -1\n', "mapping_cache_seconds", "0 to"),
    ],
)
def test_mode_errors_name_file_key_and_form(
    confdir: Path, text: str, key: str, expected: str
) -> None:
    found = problems(confdir, "[redis]\n" + text)
    assert len(found) == 1, found
    assert found[0].startswith(str(confdir / "aup-milter.toml") + ": ")
    assert f"key 'redis.{key}'" in found[0] and expected in found[0], found[0]

"""The Redis URL forms of `redis.url`: unix sockets, ACL users and passwords, bad credentials."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aupmilter.config import RedisSettings
from aupmilter.policy.tenancy import tenant_lookup
from aupmilter.store.client import Store, StoreUnavailable
from aupmilter.store.tenants import TenantAdmin
from tests.support import STARTUP_TIMEOUT, RedisServer, record_of


@pytest.fixture
def locked_redis() -> Iterator[Path]:
    """A redis-server on a unix socket only, with an ACL user for the milter."""
    # Short path: unix socket paths are limited to 108 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="aupr-", dir="/tmp"))
    sock = workdir / "redis.sock"
    server = RedisServer(
        workdir, unix_socket=sock, password="admin-secret",
        acl_users=["milter on >milter-secret ~aup:* +@all"], timeout=STARTUP_TIMEOUT,
    )  # fmt: skip
    try:
        server.start()
        with server.client() as admin:
            TenantAdmin(admin).add("acme", "standard", ["acme"], ["acme.example"])
        yield sock
    finally:
        server.stop()
        shutil.rmtree(workdir)


def lookup_via(url: str) -> str | None:
    store = Store(RedisSettings(url, 1.0, 1.0))
    try:
        record = record_of(store, tenant_lookup("acme", ""))
        return record.tenant_id if record else None
    finally:
        store.close()


def test_unix_socket_with_acl_user(locked_redis: Path) -> None:
    assert lookup_via(f"unix://milter:milter-secret@{locked_redis}?db=0") == "acme"


def test_unix_socket_with_default_user_password(locked_redis: Path) -> None:
    assert lookup_via(f"unix://:admin-secret@{locked_redis}") == "acme"


@pytest.mark.parametrize(
    "credentials",
    ["milter:wrong", ":wrong", ""],
    ids=["wrong-acl-password", "wrong-password", "no-password"],
)
def test_bad_credentials_are_a_store_error(locked_redis: Path, credentials: str) -> None:
    at = f"{credentials}@" if credentials else ""
    with pytest.raises(StoreUnavailable):
        lookup_via(f"unix://{at}{locked_redis}")

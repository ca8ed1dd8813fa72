"""Fixtures for the unsubscribe web service tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import RedisServer
from tests.web.harness import WebService


@pytest.fixture(scope="module")
def service(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebService]:
    web = WebService(
        tmp_path_factory.mktemp("web"), redis_server.url,
        rate_limit_per_minute=100_000, rate_limit_burst=10_000, max_body_bytes=1024,
    )  # fmt: skip
    web.start()
    yield web
    web.stop()

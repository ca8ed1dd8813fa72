"""The fuzz targets, briefly, inside ``make test``: every parsing path sees a few hundred
generated inputs (``make fuzz`` runs 10**5). Hypothesis keeps its example database
(.hypothesis/), so a case that once failed is tried first next time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings

from aupmilter.store.suppression import SuppressionStore
from tests.fuzz.targets import ISSUED, SIGNER, Target, in_process_targets, web_target
from tests.support import RedisServer
from tests.web.harness import WebService

SHORT_RUN = 150
"""Cases per target in make test; the whole file stays within ~20 s."""


def run_briefly(target: Target, cases: int) -> None:
    @settings(max_examples=cases, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(target.strategy)
    def each(case: object) -> None:
        target.check(case)

    each()


@pytest.mark.parametrize("target", in_process_targets(), ids=lambda t: t.name)
def test_parsing_paths_answer_deliberately(target: Target) -> None:
    run_briefly(target, SHORT_RUN)


@pytest.fixture(scope="module")
def web(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebService]:
    service = WebService(
        tmp_path_factory.mktemp("fuzz-web"), redis_server.url,
        rate_limit_per_minute=100_000, rate_limit_burst=10_000, max_body_bytes=1024,
    )  # fmt: skip
    service.start()
    yield service
    service.stop()


def test_raw_http_requests_get_deliberate_answers(
    web: WebService, redis_client: redis.Redis
) -> None:
    SuppressionStore(redis_client).store_references(
        [ISSUED.recipient.reference, ISSUED.message.reference], SIGNER.lifetime_seconds
    )
    target, check = web_target(web.host, web.port)
    run_briefly(target, SHORT_RUN * 2)
    suppressed = {str(a).lower() for a in redis_client.hkeys("aup:{acme}:suppressed")}
    assert suppressed <= ISSUED.suppressible, "a request suppressed someone no token names"
    assert check.statuses, "no request was answered"
    assert web.running_pid() is not None, "the web service died"
    log = [json.loads(line) for line in Path(web.log_path).read_text().splitlines() if line]
    ours = [e for e in log if e.get("logger", "").startswith("aupmilter") and "exc" in e]
    assert ours == [], ours[:3]
    assert not [e for e in log if "custom kwargs" in e.get("msg", "")], "bounds not applied"

"""The unsubscribe service's own /metrics: requests by outcome, and one-click suppressions
counted in the shared hash the daemon exports."""

from __future__ import annotations

import redis
from prometheus_client.parser import text_string_to_metric_families

from aupmilter.store import keys
from tests.web.harness import WebService
from tests.web.test_web import ONE_CLICK, issue


def outcomes(service: WebService) -> dict[str, float]:
    response = service.request("GET", "/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    found: dict[str, float] = {}
    names = set()
    for family in text_string_to_metric_families(response.body):
        names.add(family.name)
        for sample in family.samples:
            if sample.name == "aup_web_requests_total":
                found[sample.labels["outcome"]] = sample.value
    assert "aup_build_info" in names
    assert not any(n.startswith("aup_transactions") for n in names), "the daemon's are not here"
    return found


def test_requests_are_counted_by_outcome(service: WebService, redis_client: redis.Redis) -> None:
    before = outcomes(service)
    token = issue(redis_client).token
    assert service.request("GET", f"/u/{token}").status == 200
    assert service.post_form(f"/u/{token}", ONE_CLICK).status == 200
    assert service.post_form(f"/u/{token}", ONE_CLICK).status == 200
    assert service.post_form(f"/u/{token}", {"x": "y"}).status == 400
    assert service.request("GET", "/u/not-a-token").status == 400
    assert service.request("GET", "/nowhere").status == 404
    assert service.request("GET", "/healthz").status == 200
    after = outcomes(service)
    grown = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert {k: v for k, v in grown.items() if v} == {
        "page": 1,
        "unsubscribed": 1,
        "already": 1,
        "not-one-click": 1,
        "invalid-token": 1,
        "not-found": 1,
        "health": 1,
    }
    assert redis_client.hget(keys.SHARED_COUNTS, "suppression:one-click") == "1"

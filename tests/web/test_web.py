"""The one-click unsubscribe service (RFC 8058), as a client and a scanner see it."""

from __future__ import annotations

import time
from http.client import HTTPMessage
from pathlib import Path
from typing import cast

import pytest
import redis

from aupmilter.policy.tokens import IssuedToken, TokenSigner
from aupmilter.store.keys import AUDIT_STREAM
from aupmilter.store.suppression import SuppressionStore
from tests.support import RedisServer
from tests.web.harness import SECRET, WebService

SIGNER = TokenSigner([SECRET.encode()], 60)
ONE_CLICK = {"List-Unsubscribe": "One-Click"}
SUPPRESSED = "aup:{acme}:suppressed"


MESSAGE_RECIPIENTS = ("Carol@example.net", "dave@example.org")
"""Who the message of a message token (``issue(client, None)``) went to, normalised."""


def issue(
    client: redis.Redis, address: str | None = "Bob@example.net", tenant: str = "acme"
) -> IssuedToken:
    now = time.time()
    if address is None:
        issued = SIGNER.message_token(tenant, "<m1@acme.example>", now, MESSAGE_RECIPIENTS)
    else:
        issued = SIGNER.recipient_token(tenant, address, now)
    SuppressionStore(client).store_references([issued.reference], SIGNER.lifetime_seconds)
    return issued


def assert_plain_answer(headers: HTTPMessage) -> None:
    """No cookie, no redirect, not cached, nothing active in the page."""
    assert headers.get("Set-Cookie") is None
    assert headers.get("Location") is None
    assert headers.get("Cache-Control") == "no-store"
    assert "default-src 'none'" in str(headers.get("Content-Security-Policy"))


def test_get_shows_a_button_and_never_suppresses(
    service: WebService, redis_client: redis.Redis
) -> None:
    token = issue(redis_client).token
    for method in ("GET", "HEAD", "GET"):
        response = service.request(method, f"/u/{token}")
        assert response.status == 200
        assert_plain_answer(response.headers)
    page = service.request("GET", f"/u/{token}").body
    assert '<form method=post action="">' in page
    assert 'name="List-Unsubscribe" value="One-Click"' in page
    assert "name=address" not in page, "a recipient token needs no address"
    assert redis_client.exists(SUPPRESSED) == 0


def test_one_click_post_suppresses_fast_and_idempotently(
    service: WebService, redis_client: redis.Redis
) -> None:
    token = issue(redis_client).token
    started = time.monotonic()
    response = service.post_form(f"/u/{token}", ONE_CLICK)
    elapsed = time.monotonic() - started
    assert response.status == 200, response.body
    assert_plain_answer(response.headers)
    assert "Bob@example.net will receive no more" in response.body
    assert elapsed < 0.5, f"one-click POST took {elapsed * 1000:.0f} ms"
    stored = redis_client.hget(SUPPRESSED, "Bob@example.net")
    assert stored is not None and str(stored).startswith("one-click ")
    again = service.post_form(f"/u/{token.upper()}", ONE_CLICK)
    assert again.status == 200 and again.body == response.body
    assert redis_client.hget(SUPPRESSED, "Bob@example.net") == stored, "the first record stays"
    assert redis_client.xlen(AUDIT_STREAM) == 2


def test_multipart_one_click_post_is_accepted(
    service: WebService, redis_client: redis.Redis
) -> None:
    token = issue(redis_client).token
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
        b"One-Click\r\n--XyZ--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=XyZ"}
    assert service.request("POST", f"/u/{token}", body, headers).status == 200
    assert redis_client.hexists(SUPPRESSED, "Bob@example.net")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", "application/x-www-form-urlencoded"),
        (None, None),
        (b"List-Unsubscribe=Yes", "application/x-www-form-urlencoded"),
        (b"List-Unsubscribe=One-Click", "text/plain"),
        (b'{"List-Unsubscribe": "One-Click"}', "application/json"),
        (b"unsubscribe=One-Click", "application/x-www-form-urlencoded"),
    ],
)
def test_post_without_the_one_click_body_is_refused(
    service: WebService, redis_client: redis.Redis, body: bytes | None, content_type: str | None
) -> None:
    token = issue(redis_client).token
    headers = {"Content-Type": content_type} if content_type else {}
    response = service.request("POST", f"/u/{token}", body, headers)
    assert response.status == 400
    assert "Nothing was changed" in response.body
    assert redis_client.exists(SUPPRESSED) == 0


def _bad_tokens(client: redis.Redis) -> dict[str, str]:
    good = issue(client).token
    forged = TokenSigner([b"z" * 32], 60).recipient_token("acme", "Bob@example.net", time.time())
    expired = SIGNER.recipient_token("acme", "Bob@example.net", time.time() - 61 * 86_400)
    SuppressionStore(client).store_references([expired.reference], 3600)
    unknown = SIGNER.recipient_token("acme", "never-stored@example.net", time.time())
    wrong_tenant = SIGNER.recipient_token("globex", "Bob@example.net", time.time())
    client.set(f"aup:unsubref:{wrong_tenant.reference.ref_text}", "acme\nBob@example.net")
    return {
        "forged (other secret)": forged.token,
        "wrong HMAC": good[:-2] + ("aa" if not good.endswith("aa") else "bb"),
        "truncated": good[:-3],
        "expired": expired.token,
        "never stored": unknown.token,
        "stored for another tenant": wrong_tenant.token,
        "junk": "hello",
        "over-long": "a" * 300,
    }


def test_bad_tokens_get_one_short_answer(service: WebService, redis_client: redis.Redis) -> None:
    answers = set()
    for case, token in _bad_tokens(redis_client).items():
        posted = service.post_form(f"/u/{token}", ONE_CLICK)
        assert posted.status == 400, case
        assert_plain_answer(posted.headers)
        answers.add(posted.body)
        if case not in ("never stored", "stored for another tenant"):
            # refused before any store lookup: GET refuses too
            assert service.request("GET", f"/u/{token}").status == 400, case
    assert len(answers) == 1, "the same text whatever is wrong: nothing to learn from it"
    assert redis_client.exists(SUPPRESSED) == 0


def test_message_token_asks_for_the_address(service: WebService, redis_client: redis.Redis) -> None:
    token = issue(redis_client, address=None).token
    page = service.request("GET", f"/u/{token}").body
    assert "name=address" in page and "type=email" in page
    asked = service.post_form(f"/u/{token}", ONE_CLICK)
    assert asked.status == 200 and "name=address" in asked.body
    assert redis_client.exists(SUPPRESSED) == 0, "a one-click POST alone cannot name anyone"
    wrong = service.post_form(f"/u/{token}", {**ONE_CLICK, "address": "not an address"})
    assert wrong.status == 400 and "not an email address" in wrong.body
    done = service.post_form(f"/u/{token}", {**ONE_CLICK, "address": " Carol@Example.NET "})
    assert done.status == 200 and "Carol@example.net will receive no more" in done.body
    assert redis_client.hexists(SUPPRESSED, "Carol@example.net")


def test_message_token_suppresses_only_a_recipient_and_answers_alike(
    service: WebService, redis_client: redis.Redis
) -> None:
    """A forwarded message token cannot wipe the list: a typed non-recipient is suppressed
    nowhere, and its answer is a recipient's (status, headers, page but the address)."""
    token = issue(redis_client, address=None).token
    stranger = service.post_form(f"/u/{token}", {**ONE_CLICK, "address": "Eve@Example.com"})
    assert redis_client.exists(SUPPRESSED) == 0, "a non-recipient was suppressed"
    recipient = service.post_form(f"/u/{token}", {**ONE_CLICK, "address": "Dave@example.org"})
    assert redis_client.hkeys(SUPPRESSED) == ["Dave@example.org"]
    again = service.post_form(f"/u/{token}", {**ONE_CLICK, "address": "Dave@example.org"})

    assert stranger.status == recipient.status == again.status == 200
    assert stranger.body.replace("Eve@example.com", "X") == recipient.body.replace(
        "Dave@example.org", "X"
    )
    assert again.body == recipient.body
    for name in ("Content-Type", "Cache-Control", "Content-Security-Policy", "Set-Cookie"):
        assert stranger.headers.get(name) == recipient.headers.get(name), name
    # Ops see the attempt in the audit trail; the requester saw nothing of it.
    stream = cast(list[tuple[str, dict[str, str]]], redis_client.xrange("aup:audit"))
    events = [fields for _id, fields in stream]
    refused = [e for e in events if e.get("event") == "unsubscribe-not-recipient"]
    assert [(e["tenant"], e["address"]) for e in refused] == [("acme", "Eve@example.com")]


def test_a_message_token_with_its_recipient_list_swapped_is_refused(
    service: WebService, redis_client: redis.Redis
) -> None:
    """The reference commits to its recipients' hashes: a stored list changed to another
    (say, copied from another message of the tenant) no longer matches the token."""
    issued = issue(redis_client, address=None)
    other = SIGNER.message_token("acme", "<m1@acme.example>", time.time(), ("eve@example.com",))
    redis_client.set(f"aup:unsubref:{issued.reference.ref_text}", other.reference.store_value)
    done = service.post_form(f"/u/{issued.token}", {**ONE_CLICK, "address": "eve@example.com"})
    assert done.status == 400
    assert redis_client.exists(SUPPRESSED) == 0


def test_no_redirects_and_plain_errors(service: WebService, redis_client: redis.Redis) -> None:
    token = issue(redis_client).token
    for method, path, status in [
        ("GET", f"/u/{token}/", 404),
        ("GET", "/u/", 404),
        ("GET", "/", 404),
        ("GET", f"//u/{token}", 404),
        ("PUT", f"/u/{token}", 405),
        ("DELETE", f"/u/{token}", 405),
    ]:
        response = service.request(method, path)
        assert response.status == status, (method, path)
        assert_plain_answer(response.headers)
    assert redis_client.exists(SUPPRESSED) == 0


def test_request_size_limits(service: WebService, redis_client: redis.Redis) -> None:
    token = issue(redis_client).token
    big = b"List-Unsubscribe=One-Click&pad=" + b"x" * 5000
    response = service.request(
        "POST", f"/u/{token}", big, {"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status == 413
    huge_header = service.request("GET", f"/u/{token}", headers={"X-Junk": "j" * 10_000})
    assert huge_header.status in (400, 431)
    assert redis_client.exists(SUPPRESSED) == 0


def test_rate_limit_per_client(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    web = WebService(
        tmp_path, redis_server.url, rate_limit_per_minute=1, rate_limit_burst=3,
        trusted_proxies=["127.0.0.1"],
    )  # fmt: skip
    web.start()
    try:
        token = issue(redis_client).token
        first = {"X-Forwarded-For": "192.0.2.1"}
        statuses = [web.request("GET", f"/u/{token}", headers=first).status for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        limited = web.request("GET", f"/u/{token}", headers=first)
        assert limited.headers.get("Retry-After") == "60"
        other = {"X-Forwarded-For": "198.51.100.7, 192.0.2.1"}  # rightmost untrusted hop counts
        assert web.request("GET", f"/u/{token}", headers=other).status == 429
        fresh = {"X-Forwarded-For": "198.51.100.7"}
        assert web.request("GET", f"/u/{token}", headers=fresh).status == 200
        assert web.request("GET", "/healthz").status == 200, "health checks are not limited"
    finally:
        web.stop()


def test_redis_outage_gives_503_and_recovers(
    service: WebService, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    token = issue(redis_client).token
    redis_server.stop()
    try:
        down = service.post_form(f"/u/{token}", ONE_CLICK)
        assert down.status == 503 and down.headers.get("Retry-After") == "60"
        assert service.request("GET", f"/u/{token}").status == 200, "GET needs no store"
    finally:
        redis_server.proc = None
        redis_server.start()
    with redis_server.client() as client:
        SuppressionStore(client).store_references(
            [SIGNER.verify(token, time.time()).resolve("acme\nBob@example.net")], 3600
        )
        assert service.post_form(f"/u/{token}", ONE_CLICK).status == 200
        assert client.hexists(SUPPRESSED, "Bob@example.net")
    assert "redis unavailable" in service.log_text()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data; boundary=zz", b""),
        ("multipart/form-data", b"List-Unsubscribe=One-Click"),
        ("multipart/form-data; boundary=zz", b"--zz\r\nxx"),
        ("application/x-www-form-urlencoded; charset=utf-16", b"a=b"),
        ("application/x-www-form-urlencoded; charset=x-unknown", b"List-Unsubscribe=One-Click"),
        ("application/x-www-form-urlencoded", b"\xff\xfe=1"),
    ],
)
def test_an_unreadable_form_is_a_request_that_asks_nothing(
    service: WebService, redis_client: redis.Redis, content_type: str, body: bytes
) -> None:
    """Found by tests/fuzz: aiohttp's form parser raises on these, which was a 500."""
    for address in ("Bob@example.net", None):
        token = issue(redis_client, address).token
        response = service.request("POST", f"/u/{token}", body, {"Content-Type": content_type})
        assert response.status == 400 and "Nothing was changed" in response.body
    assert redis_client.exists(SUPPRESSED) == 0

"""The one-click unsubscribe service (RFC 8058): `aup-milter web -c FILE`.

POST /u/<token> with the form body `List-Unsubscribe=One-Click` suppresses the
token's recipient for the token's tenant and answers 200 at once: no cookies,
no authentication, no redirects, and a repeated POST answers the same way.
A GET never suppresses anything (mail scanners and link previews follow
links): it shows a page with one button that makes the POST. A message token
(a message that went to several recipients) cannot name the address, so its
page, and its one-click POST, ask for the address; it suppresses the address
only if it was a recipient of that message (policy/tokens.py keeps keyed
hashes of them), and answers any other address exactly as a success (same
status, page and number of Redis round trips), so a forwarded message
neither wipes the list nor tells who received it.

A token that does not verify (forged, altered, truncated, expired) gets 400
with the same short text whatever is wrong, and costs no Redis call. Each
client address has a token bucket (`web.rate_limit_per_minute`,
`web.rate_limit_burst`; 429 when empty). Bodies over `web.max_body_bytes`
get 413; request lines and header fields are bounded as well. If Redis cannot
answer, 503 with Retry-After: the link keeps working once it is back.

Run it behind any HTTPS reverse proxy; list the proxy in `web.trusted_proxies`
so the rate limit applies to the client named in X-Forwarded-For.

GET /metrics serves the service's Prometheus metrics (aupmilter.metrics:
aup_web_requests_total{outcome}, aup_build_info) on the same listener, which
is loopback by default; the reverse proxy forwards only /u/ (the samples in
README do), so the metrics stay local. Outcomes: page, unsubscribed,
already, ask-address, bad-address, invalid-token, not-one-click,
not-recipient, unavailable, rate-limited, too-large, not-found, bad-method,
health, error.
"""

from __future__ import annotations

import argparse
import html
import ipaddress
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST

from aupmilter.config import Config, ConfigError, UnsubscribeSettings, WebSettings, load_config
from aupmilter.exitcodes import EX_CONFIG, EX_OK
from aupmilter.metrics import METRICS, WEB_SAMPLES
from aupmilter.policy.tokens import InvalidToken, TokenClaims, TokenKind, TokenSigner
from aupmilter.store import keys
from aupmilter.store.client import connect_async
from aupmilter.store.shared_counts import queue_count
from aupmilter.store.suppression import (
    AddressError,
    Outcome,
    Source,
    Suppression,
    audit_fields,
    log_event,
    not_recipient_fields,
    queue_audit,
    queue_not_recipient,
    validate_address,
)

log = logging.getLogger("aupmilter.unsubscribe.web")

ONE_CLICK_FIELD = "List-Unsubscribe"
ONE_CLICK_VALUE = "One-Click"
MAX_REQUEST_LINE = 2048
MAX_HEADER_FIELD = 4096
MAX_HEADERS = 50
HANDLER_LIMITS = {
    "max_line_size": MAX_REQUEST_LINE,
    "max_field_size": MAX_HEADER_FIELD,
    "max_headers": MAX_HEADERS,
}
MAX_TRACKED_CLIENTS = 100_000
RETRY_AFTER_SECONDS = 60
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
UNCOUNTED = ("/metrics",)
UNREADABLE_FORM = (ValueError, LookupError, HttpProcessingError)
"""What aiohttp's form parsing raises for a body it cannot read (UnicodeDecodeError is a
ValueError); a body over max_body_bytes raises HTTPRequestEntityTooLarge, answered 413."""
OUTCOME_BY_STATUS = {404: "not-found", 405: "bad-method", 413: "too-large", 429: "rate-limited"}

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Clock = Callable[[], float]


class RateLimiter:
    """Token bucket per client address; bounded memory (least recently seen dropped first)."""

    def __init__(self, per_minute: int, burst: int, clock: Clock = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, client: str) -> bool:
        now = self.clock()
        tokens, stamp = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > MAX_TRACKED_CLIENTS:
            self._buckets.popitem(last=False)
        return allowed


def client_address(request: web.Request, trusted_proxies: tuple[str, ...]) -> str:
    """The peer, or with a trusted proxy in front, the last untrusted X-Forwarded-For hop."""
    peer = request.remote or "unknown"
    if peer not in trusted_proxies:
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")]
    for hop in reversed(hops):
        try:
            address = str(ipaddress.ip_address(hop))
        except ValueError:
            return peer  # a malformed header: fall back to the proxy itself
        if address not in trusted_proxies:
            return address
    return peer


def page(title: str, body: str, status: int = 200) -> web.Response:
    text = (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:34em;margin:3em auto;padding:0 1em}"
        "button{font-size:1.1em;padding:.5em 1.2em}input{font-size:1em;padding:.3em;"
        "width:100%;box-sizing:border-box;margin:.5em 0}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


INVALID_LINK = "This unsubscribe link is not valid. Use the link in a more recent message."


def invalid_link() -> web.Response:
    return page("Link not valid", f"<p>{INVALID_LINK}</p>", status=400)


def unsubscribed_page(address: str) -> web.Response:
    """The answer to every accepted unsubscribe: a new one, a repeated one, and a message
    token used for an address that never got the message (which suppresses nothing)."""
    shown = html.escape(address)
    return page(
        "Unsubscribed", f"<p>{shown} will receive no more mailing-list mail from this sender.</p>"
    )


def confirm_form(kind: TokenKind, note: str = "") -> str:
    address_input = ""
    if kind is TokenKind.MESSAGE:
        address_input = (
            "<label for=address>Your email address</label>"
            "<input id=address name=address type=email required autocomplete=email maxlength=254>"
        )
    note_html = f"<p><strong>{html.escape(note)}</strong></p>" if note else ""
    return (
        f"{note_html}<p>Stop receiving this sender's mailing-list mail"
        f"{'' if kind is TokenKind.RECIPIENT else ' at the address you enter'}?</p>"
        '<form method=post action="">'
        f'<input type=hidden name="{ONE_CLICK_FIELD}" value="{ONE_CLICK_VALUE}">'
        f"{address_input}<button type=submit>Unsubscribe</button></form>"
    )


class UnsubscribeService:
    def __init__(
        self,
        unsubscribe: UnsubscribeSettings,
        settings: WebSettings,
        client: redis.asyncio.Redis,
        clock: Clock = time.time,
    ) -> None:
        self.signer = TokenSigner(unsubscribe.secrets, unsubscribe.token_lifetime_days)
        self.settings = settings
        self.client = client
        self.clock = clock
        self.limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_body_bytes,
            middlewares=[self.guard],
            # Here, not as run_app(handler_args=...): aiohttp 3.8 (Debian 12) has no such
            # argument, and 3.14 hands it to the request handler as an unknown keyword,
            # which then drops every bound and keeps its defaults (found by tests/fuzz).
            handler_args=HANDLER_LIMITS,
        )
        app.router.add_get("/u/{token}", self.show)
        app.router.add_post("/u/{token}", self.unsubscribe)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/metrics", self.metrics)
        return app

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        client = client_address(request, self.settings.trusted_proxies)
        request["client"] = client
        local = request.path in ("/healthz", "/metrics")
        if not local and not self.limiter.allow(client):
            log.info("rate limit: %s refused", client, extra={"client": client})
            response: web.StreamResponse = page(
                "Too many requests", "<p>Please try again in a minute.</p>", status=429
            )
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        else:
            try:
                response = await handler(request)
            except web.HTTPRequestEntityTooLarge:
                response = page("Request too large", "<p>The request is too large.</p>", 413)
            except web.HTTPException as exc:
                # 404, 405 and their kind: plain pages, never a redirect.
                response = page(exc.reason, f"<p>{html.escape(exc.reason)}.</p>", exc.status)
                if exc.status == 405:
                    response.headers["Allow"] = "GET, POST"
        response.headers.update(SECURITY_HEADERS)
        if request.path not in UNCOUNTED:
            outcome = request.get("outcome") or OUTCOME_BY_STATUS.get(response.status, "error")
            METRICS.web_requests.labels(outcome).inc()
        return response

    async def health(self, request: web.Request) -> web.Response:
        request["outcome"] = "health"
        return web.Response(text="ok\n")

    async def metrics(self, request: web.Request) -> web.Response:
        body = METRICS.exposition(WEB_SAMPLES)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    def _claims(self, request: web.Request) -> TokenClaims | None:
        token = request.match_info["token"]
        try:
            return self.signer.verify(token, self.clock())
        except InvalidToken as exc:
            log.info(
                "refused token %.8s...: %s",
                token,
                exc,
                extra={"client": request["client"], "reason": str(exc)},
            )
            return None

    async def show(self, request: web.Request) -> web.Response:
        claims = self._claims(request)
        if claims is None:
            request["outcome"] = "invalid-token"
            return invalid_link()
        request["outcome"] = "page"
        return page("Unsubscribe", confirm_form(claims.kind))

    async def unsubscribe(self, request: web.Request) -> web.Response:
        response, outcome = await self._unsubscribe(request)
        request["outcome"] = outcome
        return response

    async def _unsubscribe(self, request: web.Request) -> tuple[web.Response, str]:
        """The POST's response and its outcome (aup_web_requests_total)."""
        claims = self._claims(request)
        if claims is None:
            return invalid_link(), "invalid-token"
        length = request.content_length
        if length is not None and length > self.settings.max_body_bytes:
            return page("Request too large", "<p>The request is too large.</p>", 413), "too-large"
        if request.content_type not in FORM_TYPES:
            return self._not_one_click(), "not-one-click"
        try:
            form = await request.post()
        except UNREADABLE_FORM as exc:
            # A multipart without its boundary, bytes not in the declared charset, an
            # unknown charset: a form nobody can read asks for nothing (found by tests/fuzz).
            log.info("unreadable form body: %s", exc, extra={"client": request["client"]})
            return self._not_one_click(), "not-one-click"
        if form.get(ONE_CLICK_FIELD) != ONE_CLICK_VALUE:
            return self._not_one_click(), "not-one-click"
        typed = form.get("address")
        try:
            stored = await self.client.get(keys.unsubscribe_ref(claims.ref_text))
            reference = claims.resolve(None if stored is None else str(stored))
        except InvalidToken as exc:
            log.info("refused token %.8s...: %s", claims.token, exc)
            return invalid_link(), "invalid-token"
        except (redis.RedisError, OSError) as exc:
            return self._unavailable(exc), "unavailable"
        address = reference.address
        if claims.kind is TokenKind.MESSAGE:
            if not isinstance(typed, str) or not typed.strip():
                return page("Unsubscribe", confirm_form(claims.kind)), "ask-address"
            try:
                address = validate_address(typed)
            except AddressError as exc:
                note = f"That is not an email address ({exc}); please check it."
                form_page = page("Unsubscribe", confirm_form(claims.kind, note), status=400)
                return form_page, "bad-address"
        detail = f"token {claims.token[:8]} message {claims.message_tag_text}".strip()
        try:
            if not self.signer.was_recipient(reference, address):
                await self._refuse_not_recipient(reference.tenant, address, detail)
                return unsubscribed_page(address), "not-recipient"
            outcome = await self._suppress(reference.tenant, address, detail)
        except (redis.RedisError, OSError) as exc:
            return self._unavailable(exc), "unavailable"
        done = unsubscribed_page(outcome.suppression.address)
        return done, "unsubscribed" if outcome.added else "already"

    async def _refuse_not_recipient(self, tenant: str, address: str, detail: str) -> None:
        """Suppress nothing, at `_suppress`'s cost: a read, then the audit pipeline."""
        now = self.clock()
        await self.client.hget(keys.suppressed(tenant), address)
        fields = not_recipient_fields(tenant, address, Source.ONE_CLICK, now, detail)
        async with self.client.pipeline(transaction=False) as pipe:
            queue_not_recipient(pipe, fields, now)
            await pipe.execute()
        log_event(fields)

    async def _suppress(self, tenant: str, address: str, detail: str) -> Outcome:
        now = self.clock()
        entry = Suppression(tenant, address, Source.ONE_CLICK, int(now))
        key = keys.suppressed(tenant)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hsetnx(key, address, entry.value)
            pipe.hget(key, address)
            added, value = await pipe.execute()
        outcome = Outcome(
            entry if added else Suppression.parse(tenant, address, value or ""), bool(added)
        )
        fields = audit_fields("suppress", outcome.suppression, outcome.added, detail)
        async with self.client.pipeline(transaction=False) as pipe:
            queue_audit(pipe, fields, now)
            if outcome.added:
                queue_count(pipe, "suppression", Source.ONE_CLICK.value)
            await pipe.execute()
        log_event(fields)
        return outcome

    @staticmethod
    def _not_one_click() -> web.Response:
        return page(
            "Not unsubscribed",
            "<p>This request did not ask to unsubscribe (RFC 8058 expects the form field"
            f" {ONE_CLICK_FIELD}={ONE_CLICK_VALUE}). Nothing was changed.</p>",
            status=400,
        )

    @staticmethod
    def _unavailable(exc: Exception) -> web.Response:
        log.error("redis unavailable: %s; answering 503", exc)
        response = page(
            "Try again later",
            "<p>The service is briefly unavailable. Your request was not lost: please try"
            " again in a minute.</p>",
            status=503,
        )
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response


def build(config: Config, clock: Clock = time.time) -> tuple[web.Application, Any]:
    """The application and its Redis client (closed on cleanup)."""
    if config.unsubscribe is None:
        raise ConfigError(
            [f"{config.path}: key 'unsubscribe': expected an [unsubscribe] section, got none"]
        )
    client: redis.asyncio.Redis = connect_async(config.redis, "aup-milter-web")
    service = UnsubscribeService(config.unsubscribe, config.web, client, clock)
    app = service.app()

    async def close_client(_app: web.Application) -> None:
        await client.close()

    app.on_cleanup.append(close_client)
    return app, client


def main(args: argparse.Namespace) -> int:
    from aupmilter import logs

    try:
        config = load_config(args.config)
        app, _client = build(config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EX_CONFIG
    logs.configure(config.log)
    log.info("unsubscribe service listening on http://%s", config.web.listen)
    web.run_app(
        app,
        host=config.web.host,
        port=config.web.port,
        print=None,
        access_log=None,  # tokens in URLs are credentials of a sort: not logged in full
        shutdown_timeout=5.0,
    )
    return EX_OK

"""Where the fuzz cases go: the milter's, the intake's and the web service's real parsing paths.

Each target takes one generated input, runs it through the code that parses
such input in production and asserts the outcome is deliberate: a finding
with a reply of the reply table, a classified report, a refused token, an
HTTP answer the service means (never a 5xx, never a hang). An unexpected
exception is a failure. The web target speaks raw HTTP to the real
``aup-milter web`` (tests/web/harness.py) backed by a real Redis.
"""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hypothesis import strategies as st

from aupmilter import replies
from aupmilter.config import MessageSettings
from aupmilter.mailauth.dkimverify import signatures
from aupmilter.message.collect import Collected
from aupmilter.message.wire import message_id_of
from aupmilter.policy.classify import classify
from aupmilter.policy.findings import DEFAULT_PLAN_CHECKS, Finding
from aupmilter.policy.headers import check_headers
from aupmilter.policy.plans import UnsubscribePlan
from aupmilter.policy.subjects import check_subject
from aupmilter.policy.tokens import InvalidToken, IssuedToken, TokenKind, TokenSigner
from aupmilter.policy.unsubscribe import compliance_problem
from aupmilter.reports import mime
from aupmilter.reports.classify import classify_bytes
from aupmilter.reports.model import Kind
from tests.fuzz import strategies as gen
from tests.web.harness import SECRET as WEB_SECRET

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KNOWN_REPLIES = set(replies.ALL_REPLIES) - {replies.INTERNAL_ERROR}
CHUNK = 65535
"""libmilter hands the body over in chunks of at most 64 KiB - 1."""
SIGNER = TokenSigner([WEB_SECRET.encode()], 60)
"""The web service's signer (tests/web/harness.py writes the same secret into its config)."""


def _assert_findings(findings: Sequence[Finding]) -> None:
    for finding in findings:
        assert finding.reply in KNOWN_REPLIES, finding
        assert finding.fault and "\n" not in finding.fault, finding


def message_path(headers: Sequence[tuple[str, bytes]], body: bytes) -> None:
    """What the milter does with one message's header fields and body, minus Redis and DNS:
    bounded collection, the structural header checks, the subject rule, DKIM-Signature
    parsing, Message-ID, the unsubscribe headers' compliance, bulk classification, the
    content fingerprint over the MIME structure, and the wire rendering."""
    settings = MessageSettings()
    collected = Collected(settings, keep_body=True)
    try:
        for name, raw in headers:
            collected.add_header(name, raw)
        for at in range(0, len(body), CHUNK):
            collected.add_body(body[at : at + CHUNK])
        block = collected.block()
        findings = check_headers(block, smtputf8=False, now=NOW, rules=settings.header_rules)
        _assert_findings(findings)
        _assert_findings(check_subject(block, bulk=True, plan=DEFAULT_PLAN_CHECKS))
        signatures([f.value for f in block.all("dkim-signature")])
        message_id_of(block.fields)
        problem = compliance_problem(block.fields)
        assert problem is None or problem.strip(), problem
        classify(None, block.fields, 1, None, UnsubscribePlan(bulk_recipients=25))
        kept = collected.body_bytes()
        if kept is not None:
            from aupmilter.policy.fingerprint import body_fingerprint

            fingerprint = body_fingerprint(
                block.text("content-type"), block.text("content-transfer-encoding"), kept
            )
            assert len(fingerprint) > 0
        whole = collected.message_bytes()
        assert whole is None or whole.endswith(kept or b"")
    finally:
        collected.close()


def split_entity(raw: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """A MIME entity as the MTA would hand it over: (name, value) fields, then the body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    fields: list[tuple[str, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            folded_name, value = fields[-1]
            fields[-1] = (folded_name, value + b"\r\n" + line)
            continue
        raw_name, colon, value = line.partition(b":")
        if colon and raw_name:
            fields.append((raw_name.decode("latin-1"), value))
    return fields, body


def mime_path(raw: bytes) -> None:
    """A generated MIME structure as a message (the milter's path) and as a report's parts."""
    fields, body = split_entity(raw)
    message_path(fields, body)
    try:
        parts = mime.walk(mime.parse(raw))
    except mime.Unreadable:
        return
    assert parts is not None


def report_path(raw: bytes) -> None:
    """The intake's classification of an ARF/DSN (or anything else sent to it)."""
    report = classify_bytes(raw)
    assert report.kind in Kind
    assert set(report.suppress) <= set(report.recipients)
    assert "cannot be classified" not in report.reason, report.reason
    assert report.reason and "\n" not in report.reason


def token_path(text: str) -> None:
    """Any string where a token goes: refused, or (only for a real token) its claims."""
    try:
        claims = SIGNER.verify(text, NOW.timestamp())
    except InvalidToken:
        return
    assert claims.kind in TokenKind


def stored_value_path(stored: str, address: str) -> None:
    """A stored reference as Redis might hold it (corrupt, swapped, foreign) against a real
    message token: refused, or resolved to exactly what was issued."""
    claims = SIGNER.verify(ISSUED.message.token, NOW.timestamp())
    try:
        reference = claims.resolve(stored)
    except InvalidToken:
        return
    assert reference == ISSUED.message.reference
    was = SIGNER.was_recipient(reference, address)
    assert was == (address.lower() in {r.lower() for r in ISSUED.recipients})


@dataclass(frozen=True)
class Issued:
    """The real tokens the fuzz mutates and the web service resolves."""

    recipient: IssuedToken
    message: IssuedToken
    recipients: tuple[str, ...]

    @property
    def suppressible(self) -> set[str]:
        """Lower-cased addresses a valid use of these tokens may suppress."""
        return {a.lower() for a in (*self.recipients, self.recipient.reference.address)}


def issue(now: float) -> Issued:
    recipients = ("carol@example.net", "Dave@example.org")
    return Issued(
        SIGNER.recipient_token("acme", "bob@example.net", now),
        SIGNER.message_token("acme", "<fuzz@acme.example>", now, recipients),
        recipients,
    )


ISSUED = issue(NOW.timestamp())


def mutated_token_path(text: str) -> None:
    """A real token with one character changed, cut or extended: always refused."""
    if text in (ISSUED.recipient.token, ISSUED.message.token):
        return
    try:
        SIGNER.verify(text, NOW.timestamp())
    except InvalidToken:
        return
    raise AssertionError(f"a mutated token verified: {text}")


# ---- the web service --------------------------------------------------------------

WEB_STATUSES = {200, 400, 404, 405, 413, 429, 431}
RESPONSE_BOUND = 1 << 20


def raw_exchange(host: str, port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send ``request`` as is, read the answer until the server closes (bounded in bytes and
    time). No half-close: aiohttp takes the client's EOF for a disconnect and answers nothing."""
    with socket.create_connection((host, port), timeout=timeout) as conn:
        # The server may answer and close before it read everything.
        with contextlib.suppress(OSError):
            conn.sendall(request)
        answer = b""
        deadline = time.monotonic() + timeout
        while len(answer) < RESPONSE_BOUND:
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
            assert time.monotonic() < deadline, "the web service hung on a request"
    return answer


@dataclass
class WebTarget:
    """Raw requests to a running ``aup-milter web`` at host:port; the statuses seen."""

    host: str
    port: int
    statuses: dict[int, int] = field(default_factory=dict)

    def __call__(self, request: bytes) -> None:
        answer = raw_exchange(self.host, self.port, request)
        assert answer, "the web service closed the connection without an answer"
        status_line = answer.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1."), status_line[:80]
        status = int(status_line.split()[1])
        self.statuses[status] = self.statuses.get(status, 0) + 1
        assert status in WEB_STATUSES, answer[:600]


def web_paths() -> st.SearchStrategy[str]:
    tokens = st.one_of(
        gen.tokens,
        st.sampled_from([ISSUED.recipient.token, ISSUED.message.token]),
        gen.mutated(ISSUED.message.token),
    )
    return st.one_of(
        tokens.map(lambda t: "/u/" + urllib.parse.quote(t, safe="")),
        st.sampled_from(["/", "/u/", "/healthz", "/metrics", "/u//x", "/u/../etc", "*"]),
        st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=300).map(
            lambda p: "/" + p
        ),
    )


@dataclass(frozen=True)
class Target:
    """One parsing path: a name, what to generate, and the check run on each case."""

    name: str
    strategy: st.SearchStrategy[object]
    check: Callable[..., None]
    share: float
    """Its part of a run's cases."""


def in_process_targets() -> list[Target]:
    return [
        Target("headers", st.tuples(gen.header_blocks, gen.bodies),
               lambda case: message_path(*case), 0.25),
        Target("mime", gen.mime_messages, mime_path, 0.2),
        Target("reports", gen.reports, report_path, 0.2),
        Target("tokens", gen.tokens, token_path, 0.1),
        Target("mutated-tokens",
               st.one_of(gen.mutated(ISSUED.message.token), gen.mutated(ISSUED.recipient.token)),
               mutated_token_path, 0.05),
        Target("stored-references", st.tuples(
            st.one_of(st.text(max_size=200), st.just(ISSUED.message.reference.store_value),
                      st.just(ISSUED.recipient.reference.store_value),
                      st.just(ISSUED.message.reference.store_value + " aaaaaaaaaa")),
            st.one_of(gen.addresses, st.sampled_from(ISSUED.recipients))),
            lambda case: stored_value_path(*case), 0.1),
    ]  # fmt: skip


def web_target(host: str, port: int) -> tuple[Target, WebTarget]:
    check = WebTarget(host, port)
    return Target("web", gen.http_requests(web_paths()), check, 0.1), check

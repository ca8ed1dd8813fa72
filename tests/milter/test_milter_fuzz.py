"""Generated header blocks and bodies through the real daemon over the milter protocol.

Whatever the MTA passes, every transaction ends in a deliberate answer: accepted, or
refused with one of the reply table's codes and a text, never pymilter's "untrapped
exception" nor the internal-error 451 the glue keeps for bugs. Memory stays bounded
however large the header section is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from aupmilter import replies
from tests.fuzz.strategies import bodies, header_blocks
from tests.milter.harness import Daemon
from tests.milter.mta import Kind, MilterClient, compliant_headers

ALLOWED = {(r.code, r.status) for r in replies.ALL_REPLIES if r is not replies.INTERNAL_ERROR}


@pytest.fixture
def session(daemon: Daemon, acme: str) -> Iterator[MilterClient]:
    with daemon.client(timeout=10.0) as client:
        yield client


def answer_of(
    client: MilterClient, headers: list[tuple[str, bytes]], body: bytes
) -> tuple[str, str | None, str | None]:
    mail = client.mail("alice@acme.example", macros={"{auth_authen}": "acme"})
    assert mail.kind is Kind.CONTINUE, mail
    client.rcpt("bob@dest.example")
    client.content("alice@acme.example", ["bob@dest.example"], headers=headers, body=body)
    eom = client.eom()
    return eom.response.kind.value, eom.response.smtp_code, eom.response.status


def assert_deliberate(kind: str, code: str | None, status: str | None) -> None:
    if kind in ("continue", "accept"):
        return
    assert kind in ("reject", "tempfail"), kind
    assert (code, status) in ALLOWED, f"{code} {status} is not a deliberate reply"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(headers=header_blocks, body=bodies)
def test_generated_messages_get_deliberate_answers(
    session: MilterClient, headers: list[tuple[str, bytes]], body: bytes
) -> None:
    assert_deliberate(*answer_of(session, headers, body))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(extra=header_blocks, body=bodies)
def test_compliant_messages_with_generated_extras(
    session: MilterClient, extra: list[tuple[str, bytes]], body: bytes
) -> None:
    base = [
        (n, v.encode()) for n, v in compliant_headers("alice@acme.example", ["bob@dest.example"])
    ]
    extension = [(f"X-Gen-{i}", v) for i, (_, v) in enumerate(extra)]
    kind, code, status = answer_of(session, base + extension, body)
    assert_deliberate(kind, code, status)
    if kind == "reject":
        assert (code, status) == ("550", "5.6.0"), "only extension headers' own bytes can fail"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_memory_is_bounded_by_the_collection_limits(daemon: Daemon, acme: str) -> None:
    """20 transactions with 4 MiB of header fields each: the daemon keeps at most the limits."""
    big = [(f"X-Big-{i}", b"b" * 990) for i in range(4200)]
    with daemon.client(timeout=30.0) as client:
        assert_deliberate(*answer_of(client, big[:10], b"warm up\r\n"))
        before = rss_kib(daemon.pid)
        started = time.monotonic()
        for _ in range(20):
            # Bodies come in chunks of at most 64 KiB - 1 (libmilter's packet limit).
            kind, code, status = answer_of(client, big, b"x" * 65000)
            assert (kind, code, status) == ("reject", "550", "5.6.0")
        growth = rss_kib(daemon.pid) - before
    assert growth < 32 * 1024, f"RSS grew by {growth} KiB for 80 MiB of headers"
    assert time.monotonic() - started < 120
    assert not daemon.log.matching("unexpected error")

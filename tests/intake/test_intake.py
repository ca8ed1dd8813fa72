"""`aup-milter intake`: one message on stdin, as Postfix's pipe transport runs it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import pytest
import redis

from aupmilter.policy.tokens import IssuedToken, TokenSigner
from aupmilter.store.suppression import SuppressionStore
from tests.milter.harness import child_env
from tests.support import RedisServer, free_port
from tests.web.harness import SECRET, write_config

SIGNER = TokenSigner([SECRET.encode()], 60)
SUPPRESSED = "aup:{acme}:suppressed"
DOMAIN = "unsub.relay.example"


@pytest.fixture
def config(redis_server: RedisServer, tmp_path: Path) -> Path:
    return write_config(tmp_path, redis_server.url, 8895)


MESSAGE_RECIPIENTS = ("Carol@example.org", "dave@example.net")
"""Who the message of a message token (``issue(client, None)``) went to, normalised."""


def issue(client: redis.Redis, address: str | None = "Bob@example.net") -> IssuedToken:
    now = time.time()
    if address is None:
        issued = SIGNER.message_token("acme", "<m@acme.example>", now, MESSAGE_RECIPIENTS)
    else:
        issued = SIGNER.recipient_token("acme", address, now)
    SuppressionStore(client).store_references([issued.reference], 3600)
    return issued


def message(to: str, sender: str = "Bob <Bob@Example.net>", extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: unsubscribe\r\n{extra}\r\nplease\r\n").encode()


def intake(config: Path, raw: bytes, recipient: str | None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "aupmilter", "intake", "-c", str(config)]
    if recipient is not None:
        argv += ["--recipient", recipient]
    return subprocess.run(
        argv, input=raw.decode("latin-1"), capture_output=True, text=True, env=child_env(),
        timeout=60, encoding="latin-1",
    )  # fmt: skip


def test_recipient_token_suppresses_its_recipient(config: Path, redis_client: redis.Redis) -> None:
    token = issue(redis_client).token
    address = f"unsubscribe+{token}@{DOMAIN}"
    done = intake(config, message(address, sender="someone-else@example.org"), address)
    assert done.returncode == 0, done.stderr
    stored = redis_client.hget(SUPPRESSED, "Bob@example.net")
    assert stored is not None and str(stored).startswith("mailto ")
    again = intake(config, message(address), address)
    assert again.returncode == 0, "a second mail is answered the same way"


def test_recipient_from_the_headers_and_case_changes(
    config: Path, redis_client: redis.Redis
) -> None:
    token = issue(redis_client).token
    address = f"UNSUBSCRIBE+{token.upper()}@Unsub.Relay.Example"
    done = intake(config, message("x@y.example", extra=f"Delivered-To: {address}\r\n"), None)
    assert done.returncode == 0, done.stderr
    assert redis_client.hexists(SUPPRESSED, "Bob@example.net")


def test_message_token_suppresses_the_from_address(config: Path, redis_client: redis.Redis) -> None:
    token = issue(redis_client, address=None).token
    address = f"unsubscribe+{token}@{DOMAIN}"
    done = intake(config, message(address, sender='"Carol" <Carol@Example.ORG>'), address)
    assert done.returncode == 0, done.stderr
    assert redis_client.hkeys(SUPPRESSED) == ["Carol@example.org"]
    for sender in ("", "a@example.org, b@example.org", "not-an-address"):
        refused = intake(config, message(address, sender=sender), address)
        assert refused.returncode == 65, (sender, refused.stderr)
        assert "From address" in refused.stderr


def test_a_forged_from_on_a_message_token_suppresses_nothing(
    config: Path, redis_client: redis.Redis
) -> None:
    """Anyone can write any From: only a recipient of the message is removed, and a forged
    From gets what a recipient gets (exit 0, the same words), so it learns nothing."""
    token = issue(redis_client, address=None).token
    address = f"unsubscribe+{token}@{DOMAIN}"
    forged = intake(config, message(address, sender="Mallory <Mallory@Example.com>"), address)
    assert redis_client.exists(SUPPRESSED) == 0, "a forged From was suppressed"
    real = intake(config, message(address, sender="<Dave@example.net>"), address)
    assert redis_client.hkeys(SUPPRESSED) == ["Dave@example.net"]

    assert forged.returncode == real.returncode == 0, (forged.stderr, real.stderr)
    assert forged.stdout.replace("Mallory@example.com", "X") == real.stdout.replace(
        "Dave@example.net", "X"
    )
    stream = cast(list[tuple[str, dict[str, str]]], redis_client.xrange("aup:audit"))
    events = [fields for _id, fields in stream]
    refused = [e for e in events if e.get("event") == "unsubscribe-not-recipient"]
    assert [(e["address"], e["source"]) for e in refused] == [("Mallory@example.com", "mailto")]


def test_bad_addresses_and_tokens_bounce(config: Path, redis_client: redis.Redis) -> None:
    good = issue(redis_client).token
    forged = TokenSigner([b"q" * 32], 60).recipient_token("acme", "Bob@example.net", time.time())
    expired = SIGNER.recipient_token("acme", "Bob@example.net", time.time() - 90 * 86_400)
    SuppressionStore(redis_client).store_references([expired.reference], 3600)
    never_stored = SIGNER.recipient_token("acme", "z@example.net", time.time())
    for recipient in [
        f"postmaster@{DOMAIN}",
        f"unsubscribe@{DOMAIN}",
        f"unsubscribe+{good}@other.example",
        f"other+{good}@{DOMAIN}",
        f"unsubscribe+{forged.token}@{DOMAIN}",
        f"unsubscribe+{good[:-1]}@{DOMAIN}",
        f"unsubscribe+{expired.token}@{DOMAIN}",
        f"unsubscribe+{never_stored.token}@{DOMAIN}",
    ]:
        done = intake(config, message(recipient), recipient)
        assert done.returncode == 67, (recipient, done.stderr)
    assert redis_client.exists(SUPPRESSED) == 0


def test_only_the_mta_s_delivered_to_counts(config: Path, redis_client: redis.Redis) -> None:
    """A Delivered-To the sender wrote sits below the one Postfix prepends: it is not used."""
    token = issue(redis_client).token
    forged_below = (
        f"Delivered-To: bounces@{DOMAIN}\r\nDelivered-To: unsubscribe+{token}@{DOMAIN}\r\n"
    )
    done = intake(config, forged_below.encode() + message("x@y.example"), None)
    assert done.returncode == 67, done.stderr
    assert redis_client.exists(SUPPRESSED) == 0


def test_no_recipient_at_all(config: Path) -> None:
    done = intake(config, message("x@y.example"), None)
    assert done.returncode == 64 and "no unsubscribe address" in done.stderr


def test_redis_down_defers(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0", 8895)
    token = SIGNER.recipient_token("acme", "Bob@example.net", time.time()).token
    address = f"unsubscribe+{token}@{DOMAIN}"
    done = intake(config, message(address), address)
    assert done.returncode == 75 and "try again later" in done.stderr


def test_config_problems_defer(tmp_path: Path, redis_server: RedisServer) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[unsubscribe]\nurl_base = 1\n")
    assert intake(broken, message("x@y.example"), None).returncode == 75
    config = write_config(tmp_path, redis_server.url, 8895)
    text = config.read_text()
    config.write_text(text[: text.index("[unsubscribe]")])
    done = intake(config, message("x@y.example"), None)
    assert done.returncode == 75 and "[unsubscribe]" in done.stderr


def test_large_message_is_read_to_the_end(config: Path, redis_client: redis.Redis) -> None:
    token = issue(redis_client).token
    address = f"unsubscribe+{token}@{DOMAIN}"
    raw = message(address) + b"x" * 70 + b"\r\n"
    raw += (b"y" * 998 + b"\r\n") * 5000  # ~5 MB after the header
    done = intake(config, raw, address)
    assert done.returncode == 0, done.stderr

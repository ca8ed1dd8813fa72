"""List mail at end of message, over the milter protocol: headers, tokens, Feedback-ID, DKIM.

The delivered message is rebuilt from what the milter asked the MTA to do
(delete, add, insert header fields) and its DKIM signature is verified by
dkimpy against the test DNS server, as a receiver would.
"""

from __future__ import annotations

import re
import shutil
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import dkim
import pytest
import redis

from aupmilter.policy.tokens import TokenKind, TokenSigner
from aupmilter.store import keys
from testbed.dkimkeys import dns_txt_lookup
from testbed.dnsserver import DnsServer
from testbed.zones import private_key_path
from tests.milter.harness import (
    Daemon,
    StartDaemon,
    Tenants,
    unsubscribe_folder,
    unsubscribe_settings,
)
from tests.milter.mta import EomResult, Kind
from tests.support import RedisServer, client_commands, round_trips

SECRET = "milter-listmail-secret-0123456789abcdef0123"
SIGNER = TokenSigner([SECRET.encode()], 60)
LINK = re.compile(
    r"^ ?<https://unsub\.relay\.example/u/(?P<token>[a-z2-7]+)>, "
    r"<mailto:unsubscribe\+(?P=token)@unsub\.relay\.example>$"
)
BODY = b"Autumn news.\r\nSee you.\r\n"


@pytest.fixture
def setup_dir(tmp_path: Path) -> Path:
    folder = unsubscribe_folder(
        tmp_path / "listmail",
        "[plan.strict]\n"
        'on_noncompliant_unsubscribe = "reject"\n'
        "[plan.counted]\n"
        "bulk_fingerprint_recipients = 3\n"
        "bulk_fingerprint_window = 3600\n",
        SECRET,
    )
    key = folder / "acme.key"
    shutil.copy(private_key_path("test-rsa2048"), key)
    key.chmod(0o600)
    return folder


def list_mail_settings(setup_dir: Path) -> dict[str, Any]:
    """The daemon's plans, unsubscribe service and acme's signing identity."""
    return {
        "policy": {"plans_dir": str(setup_dir / "policies")},
        "unsubscribe": unsubscribe_settings(setup_dir),
        "dkim": {
            "tenant": {
                "acme": {
                    "domain": "acme.example",
                    "selector": "test2048",
                    "key_file": str(setup_dir / "acme.key"),
                }
            }
        },
    }


@pytest.fixture(params=["event-loop", "libmilter"])
def daemon(start_daemon: StartDaemon, setup_dir: Path, request: pytest.FixtureRequest) -> Daemon:
    """Under both protocol engines: the same headers, tokens, deletions and signatures."""
    return start_daemon(**list_mail_settings(setup_dir), milter={"engine": request.param})


def message_headers(recipients: list[str], *extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [
        ("From", "News <news@acme.example>"),
        ("To", ", ".join(recipients)),
        ("Subject", "Autumn news"),
        ("Date", formatdate(localtime=True)),
        ("Message-ID", f"<{time.monotonic_ns()}@acme.example>"),
        ("MIME-Version", "1.0"),
        ("Content-Type", "text/plain; charset=utf-8"),
        *extra,
    ]


def delivered(headers: list[tuple[str, str]], eom: EomResult, body: bytes = BODY) -> bytes:
    """The message as the MTA writes it after applying the milter's header actions."""
    fields = [(name, " " + value) for name, value in headers]
    for index, name, value in eom.changed_headers:
        positions = [i for i, (n, _) in enumerate(fields) if n.lower() == name.lower()]
        if index <= len(positions):
            if value:
                fields[positions[index - 1]] = (fields[positions[index - 1]][0], value)
            else:
                del fields[positions[index - 1]]
    fields += list(eom.added_headers)
    for index, name, value in eom.inserted_headers:
        fields.insert(index, (name, value))
    head = b"".join(f"{n}:{v}".replace("\n", "\r\n").encode() + b"\r\n" for n, v in fields)
    return head + b"\r\n" + body


def verify(message: bytes, dns_server: DnsServer) -> bool:
    return bool(dkim.verify(message, dnsfunc=dns_txt_lookup(dns_server.host, dns_server.port)))


def signed_headers(eom: EomResult) -> list[str]:
    (index, name, value), *_ = eom.inserted_headers
    assert (index, name) == (0, "DKIM-Signature")
    found = re.search(r"\bh=([^;]*)", value.replace("\n", "").replace("\t", ""))
    assert found is not None
    return [h.strip() for h in found.group(1).split(":")]


def stored_reference(client: redis.Redis, ref: str) -> str | None:
    value = client.get(f"aup:unsubref:{ref}")
    return None if value is None else str(value)


def send(
    daemon: Daemon, recipients: list[str], headers: list[tuple[str, str]], login: str = "acme"
) -> EomResult:
    with daemon.client() as client:
        result = client.send_message(
            "news@acme.example", recipients, auth_login=login, headers=headers, body=BODY
        )
    assert result.eom is not None, result
    return result.eom


def test_bulk_mail_gets_both_headers_signed(
    daemon: Daemon, acme: str, redis_db: redis.Redis, dns_server: DnsServer
) -> None:
    headers = message_headers(["x@d.example"], ("Precedence", "bulk"))
    eom = send(daemon, ["x@D.example"], headers)
    assert eom.response.kind is Kind.CONTINUE
    added = dict(eom.added_headers)
    match = LINK.match(added["List-Unsubscribe"])
    assert match, added
    assert added["List-Unsubscribe-Post"].strip() == "List-Unsubscribe=One-Click"
    assert "Feedback-ID" not in added, "no [feedback_id] section: no Feedback-ID"
    token = match["token"]
    claims = SIGNER.verify(token, time.time())
    assert claims.kind is TokenKind.RECIPIENT
    stored = stored_reference(redis_db, claims.ref_text)
    assert claims.resolve(stored).address == "x@d.example", "the normalised recipient"
    assert 0 < redis_db.ttl(f"aup:unsubref:{claims.ref_text}") <= 61 * 86_400
    listed = signed_headers(eom)
    assert listed.count("list-unsubscribe") == 2 and listed.count("list-unsubscribe-post") == 2
    assert verify(delivered(headers, eom), dns_server)
    tampered = delivered(headers, eom).replace(token.encode(), b"a" * len(token), 1)
    assert not verify(tampered, dns_server)
    line = daemon.log.matching("verdict accept")[-1]
    assert line["class"] == "bulk" and line["unsubscribe"] == "insert"
    assert line["unsubscribe_token"] == "recipient"


def test_several_recipients_get_a_message_token(
    daemon: Daemon, acme: str, redis_db: redis.Redis, dns_server: DnsServer
) -> None:
    rcpts = ["a@d.example", "b@d.example"]
    headers = message_headers(rcpts, ("List-Id", "<news.acme.example>"))
    eom = send(daemon, rcpts, headers)
    match = LINK.match(dict(eom.added_headers)["List-Unsubscribe"])
    assert match
    claims = SIGNER.verify(match["token"], time.time())
    assert claims.kind is TokenKind.MESSAGE
    assert claims.resolve(stored_reference(redis_db, claims.ref_text)).tenant == "acme"
    assert verify(delivered(headers, eom), dns_server)


def test_transactional_mail_is_left_alone(daemon: Daemon, acme: str) -> None:
    headers = message_headers(["x@d.example"])
    eom = send(daemon, ["x@d.example"], headers)
    assert eom.response.kind is Kind.CONTINUE
    assert not eom.added_headers and not eom.inserted_headers and not eom.changed_headers
    assert daemon.log.matching("verdict accept")[-1]["class"] == "transactional"


def test_a_bulk_stream_makes_mail_bulk(daemon: Daemon, acme: str, redis_db: redis.Redis) -> None:
    redis_db.hset(keys.tenant_streams("acme"), "acme", "bulk")
    eom = send(daemon, ["x@d.example"], message_headers(["x@d.example"]))
    assert "List-Unsubscribe" in dict(eom.added_headers)


def test_compliant_headers_are_kept_and_signed(
    daemon: Daemon, acme: str, dns_server: DnsServer
) -> None:
    own = [
        ("List-Unsubscribe", "<https://acme.example/unsub/42>, <mailto:unsub@acme.example>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ]
    headers = message_headers(["x@d.example"], ("Precedence", "list"), *own)
    eom = send(daemon, ["x@d.example"], headers)
    assert not eom.added_headers and not eom.changed_headers
    assert "list-unsubscribe" in signed_headers(eom)
    assert verify(delivered(headers, eom), dns_server)
    assert daemon.log.matching("verdict accept")[-1]["unsubscribe"] == "keep"


def test_broken_headers_are_replaced(daemon: Daemon, acme: str, dns_server: DnsServer) -> None:
    broken = [
        ("List-Unsubscribe", "<mailto:unsub@acme.example>"),
        ("List-Unsubscribe", "<http://acme.example/u>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=Yes"),
    ]
    headers = message_headers(["x@d.example"], ("Precedence", "bulk"), *broken)
    eom = send(daemon, ["x@d.example"], headers)
    assert sorted(eom.changed_headers) == [
        (1, "List-Unsubscribe", ""),
        (1, "List-Unsubscribe-Post", ""),
        (2, "List-Unsubscribe", ""),
    ]
    assert LINK.match(dict(eom.added_headers)["List-Unsubscribe"])
    message = delivered(headers, eom)
    assert message.count(b"List-Unsubscribe:") == 1 and b"acme.example/u>" not in message
    assert verify(message, dns_server)


def test_broken_headers_are_refused_on_a_reject_plan(
    daemon: Daemon, tenants: Tenants, redis_db: redis.Redis
) -> None:
    tenants.add("acme", plan="strict", logins=["acme"], domains=["acme.example"])
    headers = message_headers(
        ["x@d.example"], ("Precedence", "bulk"), ("List-Unsubscribe", "<mailto:u@acme.example>")
    )
    eom = send(daemon, ["x@d.example"], headers)
    assert eom.response.reply == "550 5.7.1"
    assert "List-Unsubscribe-Post" in (eom.response.text or "")
    assert not redis_db.keys("aup:{acme}:w:*"), "nothing was charged"


def test_suppressed_recipient_removed_and_the_message_link_still_works(
    daemon: Daemon, acme: str, redis_db: redis.Redis
) -> None:
    """The link is chosen before the one end-of-message call, from the accepted recipients:
    two accepted give a message token, even when suppression leaves one."""
    redis_db.hset(keys.suppressed("acme"), "gone@d.example", "one-click 1")
    rcpts = ["gone@d.example", "stay@d.example"]
    eom = send(daemon, rcpts, message_headers(rcpts, ("Precedence", "bulk")))
    assert eom.deleted_rcpts == ("<gone@d.example>",)
    match = LINK.match(dict(eom.added_headers)["List-Unsubscribe"])
    assert match
    claims = SIGNER.verify(match["token"], time.time())
    assert claims.kind is TokenKind.MESSAGE
    stored = stored_reference(redis_db, claims.ref_text)
    assert claims.resolve(stored).tenant == "acme"


def test_repeated_content_becomes_bulk(daemon: Daemon, tenants: Tenants) -> None:
    tenants.add("acme", plan="counted", logins=["acme"], domains=["acme.example"])
    first = send(daemon, ["a@d.example", "b@d.example"], message_headers(["a@d.example"]))
    assert not first.added_headers, "2 recipients so far: below the plan's 3"
    again = send(daemon, ["c@d.example"], message_headers(["c@d.example"]))
    assert "List-Unsubscribe" in dict(again.added_headers)
    line = daemon.log.matching("verdict accept")[-1]
    assert "same content went to 3 recipients" in line["class_reason"]


def test_round_trips_bulk_mail_with_relay_links(
    daemon: Daemon, acme: str, shared_redis: RedisServer, redis_db: redis.Redis
) -> None:
    """Two round trips for list mail too: the token reference is stored inside the charge call."""
    send(daemon, ["x@d.example"], message_headers(["x@d.example"], ("Precedence", "bulk")))
    redis_db.delete(*redis_db.keys("aup:unsubref:*"))

    def bulk() -> None:
        send(daemon, ["y@d.example"], message_headers(["y@d.example"], ("Precedence", "bulk")))

    def transactional() -> None:
        send(daemon, ["z@d.example"], message_headers(["z@d.example"]))

    assert round_trips(client_commands(shared_redis, bulk)) == ["EVALSHA", "EVALSHA"]
    stored = [redis_db.get(key) for key in redis_db.keys("aup:unsubref:*")]
    assert stored == ["acme\ny@d.example"], "the bulk message's reference, written by the script"
    assert round_trips(client_commands(shared_redis, transactional)) == [
        "EVALSHA",
        "EVALSHA",
    ]
    assert len(redis_db.keys("aup:unsubref:*")) == 1, "transactional mail stores no reference"


# --- Feedback-ID ----------------------------------------------------------------------

RELAY_ID = "relay1"
CONTENT_STAMP = re.compile(r"^(?P<campaign>[0-9a-f]{12}):acme:bulk:relay1$")


@pytest.fixture
def stamping(start_daemon: StartDaemon, setup_dir: Path) -> Daemon:
    """The list-mail daemon with `[feedback_id]` configured."""
    return start_daemon(**list_mail_settings(setup_dir), feedback_id={"relay_id": RELAY_ID})


def feedback_ids(message: bytes) -> list[bytes]:
    return re.findall(rb"(?im)^feedback-id:(.*)$", message.split(b"\r\n\r\n", 1)[0])


def test_bulk_mail_gets_one_signed_feedback_id(
    stamping: Daemon, acme: str, dns_server: DnsServer
) -> None:
    headers = message_headers(["x@d.example"], ("Precedence", "bulk"))
    eom = send(stamping, ["x@d.example"], headers)
    assert eom.response.kind is Kind.CONTINUE
    stamps = [value for name, value in eom.added_headers if name == "Feedback-ID"]
    assert len(stamps) == 1, eom.added_headers
    match = CONTENT_STAMP.match(stamps[0].strip())
    assert match, stamps
    assert [name for name, _ in eom.added_headers][-1] == "Feedback-ID", (
        "after the unsubscribe pair"
    )
    listed = signed_headers(eom)
    assert listed.count("feedback-id") == 2, "over-signed: none can be added under the signature"
    message = delivered(headers, eom)
    assert feedback_ids(message) == [b" " + match[0].encode()]
    assert verify(message, dns_server)
    forged = message.replace(b":acme:bulk:", b":other:bulk:", 1)
    assert not verify(forged, dns_server)
    line = stamping.log.matching("verdict accept")[-1]
    assert line["feedback_id"] == match[0] and line["feedback_campaign"] == "content"

    again = send(
        stamping, ["y@d.example"], message_headers(["y@d.example"], ("Precedence", "bulk"))
    )
    assert dict(again.added_headers)["Feedback-ID"].strip() == match[0], "same content, same id"


def test_the_tenants_feedback_id_is_replaced_with_its_campaign_kept(
    stamping: Daemon, acme: str, dns_server: DnsServer
) -> None:
    own = ("Feedback-ID", "spring24:cust9:promo:theiresp")
    headers = message_headers(["x@d.example"], ("List-Id", "<news.acme.example>"), own)
    eom = send(stamping, ["x@d.example"], headers)
    assert (1, "Feedback-ID", "") in eom.changed_headers
    stamps = [value.strip() for name, value in eom.added_headers if name == "Feedback-ID"]
    assert stamps == ["spring24:acme:bulk:relay1"]
    message = delivered(headers, eom)
    assert feedback_ids(message) == [b" spring24:acme:bulk:relay1"], "theirs is gone"
    assert verify(message, dns_server)
    line = stamping.log.matching("verdict accept")[-1]
    assert line["feedback_campaign"] == "tenant" and line["feedback_id_replaced"] == 1


def test_a_list_id_names_the_campaign(stamping: Daemon, acme: str, dns_server: DnsServer) -> None:
    headers = message_headers(["x@d.example"], ("List-Id", "Acme News <news.acme.example>"))
    eom = send(stamping, ["x@d.example"], headers)
    assert dict(eom.added_headers)["Feedback-ID"].strip() == "news.acme.example:acme:bulk:relay1"
    assert verify(delivered(headers, eom), dns_server)


def test_transactional_mail_gets_no_feedback_id(stamping: Daemon, acme: str) -> None:
    headers = message_headers(["x@d.example"], ("Feedback-ID", "receipt:acme:tx:theiresp"))
    eom = send(stamping, ["x@d.example"], headers)
    assert eom.response.kind is Kind.CONTINUE
    assert not eom.added_headers and not eom.inserted_headers and not eom.changed_headers
    line = stamping.log.matching("verdict accept")[-1]
    assert line["class"] == "transactional" and "feedback_id" not in line


def test_feedback_id_alone_stamps_bulk_mail(
    start_daemon: StartDaemon, setup_dir: Path, acme: str
) -> None:
    """Without unsubscribe service or signing identity the class still matters: it is stamped."""
    daemon = start_daemon(
        policy={"plans_dir": str(setup_dir / "policies")}, feedback_id={"relay_id": RELAY_ID}
    )
    bulk = send(daemon, ["x@d.example"], message_headers(["x@d.example"], ("Precedence", "bulk")))
    assert [name for name, _ in bulk.added_headers] == ["Feedback-ID"]
    assert CONTENT_STAMP.match(bulk.added_headers[0][1].strip())
    assert not bulk.inserted_headers, "no identity: not signed"
    plain = send(daemon, ["x@d.example"], message_headers(["x@d.example"]))
    assert not plain.added_headers


def test_round_trips_with_feedback_id(
    stamping: Daemon, acme: str, shared_redis: RedisServer
) -> None:
    """Computed locally: still the two script calls (after the connection's handshake)."""
    send(stamping, ["w@d.example"], message_headers(["w@d.example"], ("Precedence", "bulk")))

    def bulk() -> None:
        eom = send(
            stamping, ["z@d.example"], message_headers(["z@d.example"], ("Precedence", "bulk"))
        )
        assert "Feedback-ID" in dict(eom.added_headers)

    assert round_trips(client_commands(shared_redis, bulk)) == ["EVALSHA", "EVALSHA"]

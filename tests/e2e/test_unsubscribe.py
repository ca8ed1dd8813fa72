"""One-click unsubscribe end to end: the private Postfix, the milter, the web service, the intake.

What a mailbox provider sees: bulk mail arrives with List-Unsubscribe and
List-Unsubscribe-Post under a DKIM signature that verifies against DNS (the
testbed's DNS server, over the real protocol); a POST to the link, or a mail
to the mailto address through Postfix's pipe transport, stops the next
message to that address within a second.
"""

from __future__ import annotations

import http.client
import re
import time
import urllib.parse
from collections.abc import Iterator
from email.message import EmailMessage

import dkim
import pytest

from testbed import Stack
from testbed.client import TOKEN_HEADER, ClientFactory, SmtpClient, make_message
from testbed.dkimkeys import dns_txt_lookup
from testbed.proc import wait_until
from testbed.stack import SinkMessage
from testbed.unsubscribe import UNSUB_DOMAIN
from tests.support import worker_pids

pytestmark = pytest.mark.e2e

SENDER = "news@acme.example"
LINKS = re.compile(
    r"<(?P<url>http://127\.0\.0\.1:\d+/u/(?P<token>[a-z2-7]+))>, <mailto:(?P<mailto>[^>]+)>"
)


def bulk_message(
    rcpts: list[str], *headers: tuple[str, str], precedence: str | None = "bulk"
) -> tuple[EmailMessage, str]:
    message, token = make_message(SENDER, rcpts, subject="Autumn news")
    if precedence:
        message["Precedence"] = precedence
    for name, value in headers:
        message[name] = value
    return message, token


def send_and_receive(
    client: SmtpClient, rcpts: list[str], message: EmailMessage, token: str, stack: Stack
) -> SinkMessage:
    outcome = client.send(SENDER, rcpts, message)
    assert outcome.accepted, outcome
    return stack.wait_for_sink(token)


def links(delivered: SinkMessage) -> re.Match[str]:
    values = delivered.message.get_all("List-Unsubscribe") or []
    assert len(values) == 1, values
    match = LINKS.fullmatch(" ".join(str(values[0]).split()))
    assert match, values[0]
    return match


def verify_dkim(delivered: SinkMessage, stack: Stack) -> list[str]:
    """dkimpy verifies the sink's copy against the test DNS; returns the signature's h= list."""
    raw = delivered.raw
    # The sink adds its own envelope headers on top; a receiver's view starts below them.
    raw = re.sub(rb"\A(?:(?:Return-Path|X-Sink-[A-Za-z-]+):[^\r\n]*\r?\n)+", b"", raw)
    assert dkim.verify(raw, dnsfunc=dns_txt_lookup(stack.host, stack.dns_port)), raw[:3000]
    signature = str(delivered.message["DKIM-Signature"])
    assert "d=acme.example" in signature and "s=test2048" in signature
    found = re.search(r"\bh=([^;]*)", "".join(signature.split()))
    assert found is not None
    return found.group(1).lower().split(":")


def post(url: str, body: bytes | None = b"List-Unsubscribe=One-Click") -> http.client.HTTPResponse:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
    conn.request("POST", parts.path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def get(url: str) -> http.client.HTTPResponse:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    conn.request("GET", parts.path)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def suppressed(stack: Stack, address: str) -> str:
    return stack.redis_cli("HGET", "aup:{acme}:suppressed", address)


@pytest.fixture
def fresh(stack: Stack) -> Iterator[Stack]:
    """No suppressions left over; the default suppression_check (eom) restored afterwards."""
    stack.redis_cli("DEL", "aup:{acme}:suppressed")
    yield stack
    stack.redis_cli("DEL", "aup:{acme}:suppressed")
    if stack.milter_config_extra:
        stack.milter_config_extra = ""
        stack.write_milter_config()


def test_bulk_mail_arrives_with_both_headers_signed(fresh: Stack, connect: ClientFactory) -> None:
    message, token = bulk_message(["reader@example.net"])
    delivered = send_and_receive(connect("acme"), ["reader@example.net"], message, token, fresh)
    match = links(delivered)
    assert match["url"].startswith(fresh.web_url + "/u/")
    assert match["mailto"] == f"unsubscribe+{match['token']}@{UNSUB_DOMAIN}"
    assert str(delivered.message["List-Unsubscribe-Post"]).strip() == "List-Unsubscribe=One-Click"
    listed = verify_dkim(delivered, fresh)
    assert listed.count("list-unsubscribe") == 2 and listed.count("list-unsubscribe-post") == 2
    assert "from" in listed and "subject" in listed


@pytest.mark.parametrize("mode", ["eom", "rcpt"])
def test_one_click_post_stops_the_next_message_within_a_second(
    fresh: Stack, connect: ClientFactory, mode: str
) -> None:
    if mode == "rcpt":
        set_suppression_check(fresh, "rcpt")
    reader, other = f"reader-{mode}@example.net", f"other-{mode}@example.net"
    message, token = bulk_message([reader])
    client = connect("acme")
    match = links(send_and_receive(client, [reader], message, token, fresh))

    response = post(match["url"])
    posted = time.monotonic()
    assert response.status == 200 and response.getheader("Set-Cookie") is None
    again_message, _ = bulk_message([reader])
    outcome = client.send(SENDER, [reader], again_message)
    refused_after = time.monotonic() - posted
    last = outcome.last
    assert (last.code, last.enhanced) == (550, "5.7.1"), outcome
    assert "unsubscribed from acme's mail" in last.text
    assert refused_after < 1.0, f"enforced {refused_after:.3f} s after the POST"
    if mode == "rcpt":
        assert outcome.rcpts and outcome.rcpts[0].code == 550, "refused at RCPT"
    else:
        assert outcome.data is not None and outcome.data.code == 550, "refused at end of message"
    assert suppressed(fresh, reader).startswith("one-click ")

    both, both_token = bulk_message([reader, other])
    outcome = client.send(SENDER, [reader, other], both)
    assert outcome.accepted, outcome
    delivered = fresh.wait_for_sink(both_token)
    time.sleep(0.5)  # a copy to the reader, if any, would be in the sink by now
    copies = [m for m in fresh.sink_messages() if m.message.get(TOKEN_HEADER) == both_token]
    assert [m.rcpt_to for m in copies] == [(other,)], copies
    assert delivered.rcpt_to == (other,)


def set_suppression_check(stack: Stack, mode: str) -> None:
    """Switch the running milter (it reloads its config file within about a second).

    Every worker reloads on its own: one refusing at RCPT does not mean all do,
    so this also waits for each worker's reload line.
    """
    supervisor = stack.status()["milter"]
    assert supervisor is not None
    workers = max(1, len(worker_pids(supervisor)))
    mark = stack.milter_log.stat().st_size
    stack.milter_config_extra = f'[policy]\nsuppression_check = "{mode}"\n'
    stack.write_milter_config()

    def all_reloaded() -> bool:
        with stack.milter_log.open("rb") as log:
            log.seek(mark)
            return log.read().count(b"configuration reloaded") >= workers

    wait_until(all_reloaded, timeout=15, interval=0.1, what="every worker's reload")
    stack.redis_cli("HSET", "aup:{acme}:suppressed", "probe@example.net", "manual 1")

    def refused_at_rcpt() -> bool:
        with SmtpClient(stack.host, stack.smtp_port) as client:
            client.login("acme", "acme-demo", "PLAIN")
            client.mail(SENDER)
            reply = client.rcpt("probe@example.net")
            client.rset()
        return reply.code == 550

    wait_until(refused_at_rcpt, timeout=15, interval=0.25, what="suppression_check = rcpt")
    stack.redis_cli("HDEL", "aup:{acme}:suppressed", "probe@example.net")


def test_mailto_through_the_postfix_pipe_transport(fresh: Stack, connect: ClientFactory) -> None:
    reader = "mailto-reader@example.net"
    message, token = bulk_message([reader])
    client = connect("acme")
    mailto = links(send_and_receive(client, [reader], message, token, fresh))["mailto"]

    unsubscribe = EmailMessage()
    unsubscribe["From"] = reader
    unsubscribe["To"] = mailto
    unsubscribe["Subject"] = "unsubscribe"
    unsubscribe.set_content("unsubscribe\n")
    # A mailbox provider's MTA delivers it to the intake listener (no milter there).
    with SmtpClient(fresh.host, fresh.intake_port) as provider:
        outcome = provider.send("bounces@provider.example", [mailto], unsubscribe)
    assert outcome.accepted, outcome
    wait_until(
        lambda: suppressed(fresh, reader).startswith("mailto "),
        timeout=30,
        interval=0.1,
        what="the pipe transport's intake to suppress the reader",
    )
    # The suppression lands before the pipe command exits and Postfix logs the delivery.
    wait_until(
        lambda: re.search(r"relay=aup-intake.*status=sent", fresh.postfix_log()),
        timeout=30,
        interval=0.1,
        what="Postfix to log the pipe delivery as sent",
        on_timeout=lambda: fresh.postfix_log()[-3000:],
    )
    again, _ = bulk_message([reader])
    last = client.send(SENDER, [reader], again).last
    assert (last.code, last.enhanced) == (550, "5.7.1")


def test_forged_token_by_mail_bounces(fresh: Stack) -> None:
    forged = f"unsubscribe+{'a' * 40}@{UNSUB_DOMAIN}"
    unsubscribe = EmailMessage()
    unsubscribe["From"] = "someone@example.net"
    unsubscribe["To"] = forged
    unsubscribe["Subject"] = "unsubscribe"
    unsubscribe.set_content("unsubscribe\n")
    with SmtpClient(fresh.host, fresh.intake_port) as provider:
        assert provider.send("someone@example.net", [forged], unsubscribe).accepted
    bounced = wait_until(
        lambda: re.search(rf"to=<{re.escape(forged)}>.*relay=aup-intake.*status=bounced.*",
                          fresh.postfix_log()),
        timeout=30, interval=0.2, what="the intake to bounce a forged token",
    )  # fmt: skip
    # The intake's own verdict (EX_NOUSER), not a command that died: an intake that
    # cannot even import its packages exits 1, which Postfix bounces as well.
    assert "dsn=5.1.1" in bounced.group(0) and "Traceback" not in bounced.group(0), bounced
    assert "this unsubscribe address is not valid" in bounced.group(0)
    assert fresh.redis_cli("EXISTS", "aup:{acme}:suppressed") == "0"


def test_transactional_mail_gets_no_header(fresh: Stack, connect: ClientFactory) -> None:
    message, token = bulk_message(["customer@example.net"], precedence=None)
    delivered = send_and_receive(connect("acme"), ["customer@example.net"], message, token, fresh)
    assert delivered.message.get("List-Unsubscribe") is None
    assert delivered.message.get("List-Unsubscribe-Post") is None
    assert delivered.message.get("DKIM-Signature") is None, "transactional mail is not signed"


def test_compliant_header_is_kept(fresh: Stack, connect: ClientFactory) -> None:
    own = ("List-Unsubscribe", "<https://acme.example/unsubscribe/42>")
    post_header = ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
    message, token = bulk_message(["kept@example.net"], own, post_header)
    delivered = send_and_receive(connect("acme"), ["kept@example.net"], message, token, fresh)
    assert delivered.message.get_all("List-Unsubscribe") == [own[1]]
    assert "list-unsubscribe" in verify_dkim(delivered, fresh)


def test_broken_header_is_replaced(fresh: Stack, connect: ClientFactory) -> None:
    broken = ("List-Unsubscribe", "<http://acme.example/unsubscribe/42>")
    message, token = bulk_message(["fixed@example.net"], broken)
    delivered = send_and_receive(connect("acme"), ["fixed@example.net"], message, token, fresh)
    match = links(delivered)
    assert "acme.example/unsubscribe" not in delivered.raw.decode("utf-8", "replace")
    assert match["url"].startswith(fresh.web_url)
    verify_dkim(delivered, fresh)


def test_web_service_behind_the_delivered_link(fresh: Stack, connect: ClientFactory) -> None:
    reader = "web-reader@example.net"
    message, token = bulk_message([reader])
    url = links(send_and_receive(connect("acme"), [reader], message, token, fresh))["url"]
    for _ in range(3):
        assert get(url).status == 200
    assert fresh.redis_cli("HEXISTS", "aup:{acme}:suppressed", reader) == "0", "GET never does"
    refused = post(url, body=None)
    assert refused.status == 400
    assert fresh.redis_cli("HEXISTS", "aup:{acme}:suppressed", reader) == "0"
    trailing = get(url + "/")
    assert trailing.status == 404 and trailing.getheader("Location") is None, "no redirect"
    done = post(url)
    assert done.status == 200 and done.getheader("Location") is None
    assert fresh.redis_cli("HEXISTS", "aup:{acme}:suppressed", reader) == "1"


def post_address(url: str, address: str) -> tuple[int, str]:
    """A one-click POST naming ``address`` (a message token's page asks for it)."""
    body = urllib.parse.urlencode({"List-Unsubscribe": "One-Click", "address": address})
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    conn.request("POST", parts.path, body=body.encode(),
                 headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    response = conn.getresponse()
    page = response.read().decode("utf-8", "replace")
    conn.close()
    return response.status, page


def mail_to_intake(stack: Stack, mailto: str, sender: str) -> None:
    """An unsubscribe mail from ``sender`` through the intake, waited for until Postfix's pipe
    delivery is logged as sent (so whatever it suppresses is in Redis by then)."""
    before = len(re.findall(r"relay=aup-intake.*status=sent", stack.postfix_log()))
    unsubscribe = EmailMessage()
    unsubscribe["From"] = sender
    unsubscribe["To"] = mailto
    unsubscribe["Subject"] = "unsubscribe"
    unsubscribe.set_content("unsubscribe\n")
    with SmtpClient(stack.host, stack.intake_port) as provider:
        assert provider.send("bounces@provider.example", [mailto], unsubscribe).accepted
    wait_until(
        lambda: len(re.findall(r"relay=aup-intake.*status=sent", stack.postfix_log())) > before,
        timeout=30, interval=0.1, what="the intake's delivery to be logged as sent",
        on_timeout=lambda: stack.postfix_log()[-3000:],
    )  # fmt: skip


def test_a_forwarded_message_token_suppresses_only_its_recipients(
    fresh: Stack, connect: ClientFactory
) -> None:
    """One newsletter to two readers, forwarded to a stranger: neither a typed address nor
    a forged From that never got the message is suppressed, and the answers are the same;
    each real reader still unsubscribes, by page or by mail."""
    readers = ["first-reader@example.net", "second-reader@example.net"]
    message, token = bulk_message(readers)
    delivered = send_and_receive(connect("acme"), readers, message, token, fresh)
    match = links(delivered)
    assert len(match["token"]) == 48, "two recipients: a message token"

    stranger = post_address(match["url"], "victim@example.org")
    assert fresh.redis_cli("EXISTS", "aup:{acme}:suppressed") == "0", "a stranger was suppressed"
    reader = post_address(match["url"], readers[0])
    assert suppressed(fresh, readers[0]).startswith("one-click ")
    assert stranger[0] == reader[0] == 200
    assert stranger[1].replace("victim@example.org", "X") == reader[1].replace(readers[0], "X")

    mail_to_intake(fresh, match["mailto"], "victim@example.org")
    assert fresh.redis_cli("HLEN", "aup:{acme}:suppressed") == "1", "a forged From was suppressed"
    mail_to_intake(fresh, match["mailto"], readers[1])
    assert suppressed(fresh, readers[1]).startswith("mailto ")
    assert fresh.redis_cli("HEXISTS", "aup:{acme}:suppressed", "victim@example.org") == "0"

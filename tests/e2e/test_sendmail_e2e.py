"""The core end-to-end cases through a real Sendmail: SMTP client -> Sendmail -> aup-milter -> sink.

Sendmail (Debian's sendmail-bin, unpacked by scripts/bootstrap.sh) runs with a
``sendmail.cf`` built from ``postfix-sample/sendmail.mc.milter``
(``testbed.parts.sendmailinstance``), so these tests prove the shipped sample:
its filter line, its macro lists ({auth_authen} and the queue id ``i`` at MAIL
FROM, ``j`` at connect), and what the milter does through it: the recipient
cap (452 at RCPT), a rate window (450), a suspended tenant's mail in
Sendmail's quarantine (``mailq -qQ``; released with ``sendmail -qQ -Q``), an
unknown sender refused (550 5.7.1), and List-Unsubscribe inserted under a
DKIM signature that verifies on the copy the sink received.

Redis, the sink, the DNS server, the milter daemon and the unsubscribe web
service are a ``testbed.Stack``'s parts (its Postfix is never started), under
``run/e2e-sendmail/`` on ports of their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage

import pytest

from testbed import DEMO_ACCOUNTS, DEMO_SASL_USERS, Stack
from testbed.client import TOKEN_HEADER, Outcome, SmtpClient, make_message
from testbed.parts.sendmailinstance import HOSTNAME, SendmailInstance, queue_id_of, safe_run_dir
from testbed.parts.tenantadmin import TenantAdmin
from testbed.proc import wait_until
from testbed.stack import SinkMessage, default_run_dir, port_offset
from tests.e2e.test_audit_e2e import explain, verdict_of
from tests.e2e.test_unsubscribe import bulk_message, links, verify_dkim

pytestmark = pytest.mark.e2e

RUN_DIR = safe_run_dir(default_run_dir("e2e-sendmail"))
# Beside the Postfix stacks' (6395/2535, 6396/2545) and the demo's: DNS, web and
# metrics take the sink's port + 1, + 2 and + 4.
REDIS_PORT, SMTP_PORT, SINK_PORT = (port + port_offset() for port in (6397, 2565, 2566))
STRANGER = ("stranger", "stranger-pw")
PASSWORDS = {account.tenant.id: account.password for account in DEMO_ACCOUNTS}
SENDER = "alice@acme.example"
RCPT = "someone@example.net"
WAIT = 20.0


@dataclass
class SendmailBed:
    """A Stack's Redis, sink, DNS, milter and web service, with Sendmail as the relay."""

    stack: Stack
    sendmail: SendmailInstance
    tenants: TenantAdmin
    opened: list[SmtpClient] = field(default_factory=list)

    def connect(self, user: str | None = None, password: str | None = None) -> SmtpClient:
        """An SMTP client to Sendmail (from 127.0.0.2), logged in as ``user`` if given."""
        client = SmtpClient(self.stack.host, self.sendmail.smtp_port)
        self.opened.append(client)
        if user is not None:
            secret = password if password is not None else PASSWORDS[user]
            reply = client.login(user, secret)
            assert reply.code == 235, f"AUTH as {user} failed: {reply}"
        return client

    def diagnostics(self) -> str:
        return self.sendmail.diagnostics(self.stack.milter.log_path)

    def wait_for_sink(self, token: str) -> SinkMessage:
        return self.stack.sink_service.wait_for(token, WAIT, on_timeout=self.diagnostics)

    def reset(self) -> None:
        """Clients closed, demo tenants active, empty windows, nothing left in the quarantine."""
        while self.opened:
            self.opened.pop().close()
        self.tenants.add_demo_tenants()
        self.tenants.clear_rate_windows()
        held = [message.queue_id for message in self.sendmail.queued() if message.quarantine]
        self.sendmail.delete_queued(held)


@pytest.fixture(scope="session")
def sendmail_bed() -> Iterator[SendmailBed]:
    stack = Stack(
        RUN_DIR,
        redis_port=REDIS_PORT,
        smtp_port=SMTP_PORT,
        sink_port=SINK_PORT,
        sasl_users={**DEMO_SASL_USERS, STRANGER[0]: STRANGER[1]},
        unsubscribe=True,
    )
    sendmail = SendmailInstance(
        stack.run_dir,
        smtp_port=SMTP_PORT,
        sink_port=SINK_PORT,
        milter_socket=stack.milter_socket,
        sasl_users=stack.sasl_users,
    )
    bed = SendmailBed(stack, sendmail, TenantAdmin(stack.redis, sendmail))
    # A killed earlier run may have left its parts running: start clean.
    sendmail.stop()
    stack.stop()
    stack.wipe()
    try:
        stack.start_redis()
        stack.start_sink()
        stack.start_dns()
        stack.start_milter()
        stack.start_web()
        sendmail.start()
        yield bed
    finally:
        sendmail.stop()
        stack.stop()


@pytest.fixture
def bed(sendmail_bed: SendmailBed) -> Iterator[SendmailBed]:
    sendmail_bed.reset()
    yield sendmail_bed
    sendmail_bed.reset()


def recipients(count: int, tag: str) -> list[str]:
    return [f"{tag}-{n}@example.net" for n in range(count)]


def crlf(message: EmailMessage) -> bytes:
    """The message with CRLF line ends: Sendmail answers a bare LF in DATA with 421 4.5.0."""
    return message.as_bytes(policy=message.policy.clone(linesep="\r\n"))


def send(client: SmtpClient, rcpts: list[str], subject: str) -> tuple[Outcome, str]:
    message, token = make_message(SENDER, rcpts, subject=subject)
    return client.send(SENDER, rcpts, crlf(message)), token


def delivered_to(bed: SendmailBed, token: str, expected: int) -> set[str]:
    """Every recipient the sink got the message with ``token`` for."""

    def collected() -> set[str] | None:
        found = {
            rcpt
            for message in bed.stack.sink_messages()
            if message.message.get(TOKEN_HEADER) == token
            for rcpt in message.rcpt_to
        }
        return found if len(found) >= expected else None

    return wait_until(
        collected, timeout=WAIT, what=f"{expected} deliveries of {token}",
        on_timeout=bed.diagnostics,
    )  # fmt: skip


def queue_id(outcome: Outcome) -> str:
    assert outcome.accepted and outcome.data is not None, f"not accepted: {outcome}"
    found = queue_id_of(outcome.data.text)
    assert found, f"no Sendmail queue id in {outcome.data}"
    return found


def test_a_tenant_logged_in_is_delivered_under_sendmails_queue_id(bed: SendmailBed) -> None:
    outcome, token = send(bed.connect("acme"), [RCPT], "through sendmail")
    qid = queue_id(outcome)
    delivered = bed.wait_for_sink(token)
    assert (delivered.mail_from, delivered.rcpt_to) == (SENDER, (RCPT,))
    # {auth_authen} and i at MAIL FROM: the verdict names the tenant and Sendmail's queue id.
    event = verdict_of(bed.stack, qid)
    assert event["tenant"] == "acme" and event["verdict"] == "accept", event
    assert event["auth"] == "acme"


def test_unknown_sender_is_refused_at_mail_from(bed: SendmailBed) -> None:
    stranger = "nobody@unknown.example"
    message, _ = make_message(stranger, [RCPT])
    outcome = bed.connect().send(stranger, [RCPT], crlf(message))
    assert (outcome.mail.code, outcome.mail.enhanced) == (550, "5.7.1"), outcome.mail
    assert outcome.data is None


def test_a_login_of_no_tenant_does_not_borrow_the_sender_domain(bed: SendmailBed) -> None:
    # Only {auth_authen} tells this apart from an unauthenticated alice@acme.example.
    outcome, _ = send(bed.connect(*STRANGER), [RCPT], "stranger")
    assert (outcome.mail.code, outcome.mail.enhanced) == (550, "5.7.1"), outcome.mail


def test_the_101st_rcpt_gets_452_and_the_100_others_are_delivered(bed: SendmailBed) -> None:
    rcpts = recipients(101, "cap")
    outcome, token = send(bed.connect("acme"), rcpts, "cap")
    assert [(r.code, r.enhanced) for r in outcome.rcpts[:100]] == [(250, "2.1.5")] * 100
    last = outcome.rcpts[100]
    assert (last.code, last.enhanced) == (452, "4.5.3"), last
    assert "at most 100 recipients per message" in last.text
    assert outcome.accepted
    assert delivered_to(bed, token, 100) == set(rcpts[:100])


def test_exhausted_window_gives_450_at_rcpt(bed: SendmailBed) -> None:
    bed.stack.redis_cli("HSET", "aup:tenant:acme", "window.sender-recipients-hour", "2")
    client = bed.connect("acme")
    first, token = send(client, recipients(2, "hour"), "hourly 1")
    assert first.accepted, first
    delivered_to(bed, token, 2)
    second, _ = send(client, recipients(1, "hour-more"), "hourly 2")
    refused = second.rcpts[0]
    assert (refused.code, refused.enhanced) == (450, "4.7.1"), refused
    assert "2 recipients per hour for sender acme" in refused.text
    assert second.data is None


def test_a_suspended_tenants_mail_goes_to_sendmails_quarantine(bed: SendmailBed) -> None:
    bed.tenants.set_status("acme", "suspended", reason="spam report")
    outcome, token = send(bed.connect("acme"), [RCPT], "suspended")
    qid = queue_id(outcome)
    held = bed.sendmail.wait_for_quarantine(qid, WAIT, bed.diagnostics)
    assert held.recipients == (RCPT,) and held.sender == SENDER
    assert held.quarantine is not None and "acme" in held.quarantine, held
    assert "spam report" in held.quarantine
    listing = bed.sendmail.mailq(quarantined=True)
    assert qid in listing and "QUARANTINE" in listing, listing
    assert bed.stack.find_sink_message(token) is None
    # The trail knows it under Sendmail's queue id (the event rides to Redis within 1 s).
    event = verdict_of(bed.stack, qid)
    assert (event["verdict"], event["rule"]) == ("quarantine", "tenant-suspended"), event
    told = explain(bed.stack, qid)
    assert told.returncode == 0, told.stderr
    assert f"Message {qid} from {SENDER}" in told.stdout


def test_released_quarantine_is_delivered_one_message_or_all(bed: SendmailBed) -> None:
    bed.tenants.set_status("acme", "suspended")
    client = bed.connect("acme")
    (first, first_token), (second, second_token) = (
        send(client, [RCPT], subject) for subject in ("released first", "released second")
    )
    first_id, second_id = queue_id(first), queue_id(second)
    for qid in (first_id, second_id):
        bed.sendmail.wait_for_quarantine(qid, WAIT, bed.diagnostics)
    bed.sendmail.release_quarantine(first_id)
    assert bed.wait_for_sink(first_token).rcpt_to == (RCPT,)
    assert [m.queue_id for m in bed.sendmail.queued() if m.quarantine] == [second_id]
    assert bed.stack.find_sink_message(second_token) is None
    bed.sendmail.release_quarantine()
    bed.wait_for_sink(second_token)
    assert bed.sendmail.queued() == []


def test_with_the_milter_down_sendmail_tempfails_as_the_sample_says(bed: SendmailBed) -> None:
    # F=T: no milter, no relaying unchecked; the client is told to come back.
    bed.stack.stop_milter()
    try:
        outcome, _ = send(bed.connect(), [RCPT], "milter down")
        assert (outcome.mail.code, outcome.mail.enhanced) == (451, "4.3.2"), outcome.mail
    finally:
        bed.stack.start_milter()
    again, token = send(bed.connect("acme"), [RCPT], "milter back")
    assert again.accepted, again
    bed.wait_for_sink(token)


def test_bulk_mail_arrives_with_list_unsubscribe_under_a_dkim_signature(
    bed: SendmailBed,
) -> None:
    message, token = bulk_message([RCPT])
    outcome = bed.connect("acme").send(str(message["From"]), [RCPT], crlf(message))
    assert outcome.accepted, outcome
    delivered = bed.wait_for_sink(token)
    links(delivered)
    assert str(delivered.message["List-Unsubscribe-Post"]).strip() == "List-Unsubscribe=One-Click"
    listed = verify_dkim(delivered, bed.stack)
    assert listed.count("list-unsubscribe") == 2 and listed.count("list-unsubscribe-post") == 2


def test_a_message_without_message_id_gets_one_on_sendmails_host_name(bed: SendmailBed) -> None:
    # The milter's, named after j (Sendmail's $j), not Sendmail's own at delivery.
    message, token = make_message(SENDER, [RCPT], subject="no id")
    del message["Message-ID"]
    outcome = bed.connect("acme").send(SENDER, [RCPT], crlf(message))
    assert outcome.accepted, outcome
    ids = bed.wait_for_sink(token).message.get_all("Message-ID") or []
    assert len(ids) == 1, ids
    assert re.fullmatch(rf"<[0-9a-f]{{32}}@{re.escape(HOSTNAME)}>", str(ids[0]).strip()), ids

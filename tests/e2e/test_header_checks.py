"""Through the real Postfix, the milter judges the header the tenant sent.

Postfix's cleanup adds a missing From:, Date: and Message-Id: for clients it
counts as local (``local_header_rewrite_clients``) before any milter sees the
header, and the header checks would then pass mail a real tenant could not
send. Two things keep that out of the testbed, and each is tested on its own:
``postfix-sample/main.cf.milter`` makes no SMTP client local, and the
testbed's clients connect from 127.0.0.2 (``testbed.client``), which is not an
address of the Postfix under test, so they are remote even where a relay keeps
Postfix's default (``permit_inet_interfaces``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from aupmilter import replies
from testbed import Stack
from testbed.client import ClientFactory, Outcome, make_message
from testbed.postfix import MYHOSTNAME

pytestmark = pytest.mark.e2e

SENDER = "alice@acme.example"
RCPT = "someone@example.net"
SETTING = "local_header_rewrite_clients"
POSTFIX_DEFAULT = "permit_inet_interfaces"
# aupmilter.stages.message_checks: "<" uuid4().hex "@" the MTA's host name (the j
# macro, Postfix's myhostname) ">". Postfix writes "<YYYYMMDDhhmmss.QUEUEID@host>".
MILTER_MESSAGE_ID = re.compile(rf"<[0-9a-f]{{32}}@{re.escape(MYHOSTNAME)}>")


@pytest.fixture(scope="module", params=["sample", "postfix-default"])
def rewrite_clients(request: pytest.FixtureRequest, session_stack: Stack) -> Iterator[str]:
    """The stack's Postfix with the sample's setting, or with Postfix's own default.

    A restart rather than a reload: cleanup and smtpd processes started before
    a reload may still serve the next connection with the old setting.
    """
    stack = session_stack
    if request.param == "sample":
        assert stack.postconf(SETTING) == {SETTING: ""}
        yield request.param
        return
    stack.postfix_overrides[SETTING] = POSTFIX_DEFAULT
    try:
        stack.stop_postfix()
        stack.start_postfix()
        assert stack.postconf(SETTING) == {SETTING: POSTFIX_DEFAULT}
        yield request.param
    finally:
        del stack.postfix_overrides[SETTING]
        stack.stop_postfix()
        stack.start_postfix()


def assert_refused_by_header_check(outcome: Outcome, fault: str) -> None:
    """The reply of the header counts check: its code, status, the fault, then its advice."""
    reply, expected = outcome.data, replies.MALFORMED_HEADER
    assert reply is not None, f"refused before DATA: {outcome}"
    assert (reply.code, reply.enhanced) == (int(expected.code), expected.status), reply
    assert reply.text == f"{expected.status} {fault}; {expected.text}"


@pytest.mark.parametrize("name", ["From", "Date"])
def test_message_without_a_required_field_is_refused(
    rewrite_clients: str, stack: Stack, connect: ClientFactory, name: str
) -> None:
    message, token = make_message(SENDER, [RCPT], subject=f"no {name}")
    del message[name]

    outcome = connect("acme").send(SENDER, [RCPT], message)

    assert_refused_by_header_check(outcome, f"no {name} header (exactly one is required)")
    assert stack.find_sink_message(token) is None


def test_message_without_message_id_gets_the_milters(
    rewrite_clients: str, stack: Stack, connect: ClientFactory
) -> None:
    message, token = make_message(SENDER, [RCPT], subject="no Message-ID")
    del message["Message-ID"]

    outcome = connect("acme").send(SENDER, [RCPT], message)

    assert outcome.accepted, outcome
    delivered = stack.wait_for_sink(token)
    header = delivered.raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode()
    fields = re.findall(r"^(message-id):[ \t]*(\S*)", header, re.IGNORECASE | re.MULTILINE)
    # One field, spelt the milter's way (Postfix writes "Message-Id"), in the milter's form.
    assert len(fields) == 1, fields
    assert fields[0][0] == "Message-ID"
    assert MILTER_MESSAGE_ID.fullmatch(fields[0][1]), fields[0][1]

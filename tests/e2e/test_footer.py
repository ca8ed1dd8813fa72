"""The sender footer end to end: the private Postfix, the milter, the sink, dkimpy over test DNS.

What a reader's mailbox sees from the demo tenant initech (plan newsletter,
footer = "insert"): a newsletter arrives with the footer (identity, postal
address, the List-Unsubscribe header's own link) in both alternatives, the
attachment unchanged, the message clean for Python's `email`, and the
relay's DKIM signature verifying over the new body. On a plan with
footer = "check" a newsletter without the address is refused, one with it
(wrapped otherwise) passes untouched; transactional mail is never touched.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from email.message import EmailMessage

import dkim
import pytest

from testbed import Stack
from testbed.client import ClientFactory, make_message
from testbed.dkimkeys import dns_txt_lookup
from testbed.stack import SinkMessage

pytestmark = pytest.mark.e2e

SENDER = "news@initech.example"
READER = "reader@example.net"
ADDRESS = "4120 Freidrich Lane"
ATTACHMENT = b"%PDF-1.4\n" + bytes(range(256)) * 4 + b"\n%%EOF\n"


def newsletter(*, text: str, html: str, precedence: str | None = "bulk") -> tuple[bytes, str]:
    message, token = make_message(SENDER, [READER], subject="Autumn news", body=text)
    message.add_alternative(html, subtype="html")
    message.make_mixed()
    message.add_attachment(ATTACHMENT, maintype="application", subtype="pdf", filename="prices.pdf")
    if precedence:
        message["Precedence"] = precedence
    return message.as_bytes(policy=email.policy.SMTP), token


def body_of(raw: bytes) -> bytes:
    return re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[1].replace(b"\r\n", b"\n")


def verified(delivered: SinkMessage, stack: Stack) -> str:
    """dkimpy verifies the sink's copy against the test DNS; returns the DKIM-Signature."""
    raw = re.sub(rb"\A(?:(?:Return-Path|X-Sink-[A-Za-z-]+):[^\r\n]*\r?\n)+", b"", delivered.raw)
    assert dkim.verify(raw, dnsfunc=dns_txt_lookup(stack.host, stack.dns_port)), raw[:3000]
    return str(delivered.message["DKIM-Signature"])


def alternatives(message: EmailMessage) -> dict[str, str]:
    found = {}
    for part in message.walk():
        if part.get_content_type() in ("text/plain", "text/html") and not part.is_attachment():
            found[part.get_content_type()] = part.get_content()
    return found


def test_newsletter_gets_the_footer_in_both_alternatives_under_the_signature(
    stack: Stack, connect: ClientFactory
) -> None:
    raw, token = newsletter(
        text="Our autumn sale starts on Monday.\n",
        html="<html><body><p>Our autumn sale starts on <b>Monday</b>.</p></body></html>\n",
    )
    outcome = connect("initech").send(SENDER, [READER], raw)
    assert outcome.accepted, outcome
    delivered = stack.wait_for_sink(token)
    # A fresh parse of the bytes as delivered: no defect anywhere.
    message = email.message_from_bytes(delivered.raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert all(not part.defects for part in message.walk())
    link = re.search(r"<(http://[^>]+)>", str(message["List-Unsubscribe"]))
    assert link is not None
    shown = alternatives(message)
    assert set(shown) == {"text/plain", "text/html"}
    assert "Our autumn sale starts on Monday." in shown["text/plain"]
    for kind, content in shown.items():
        assert "Initech, Inc." in content and ADDRESS in content, (kind, content)
        assert "Austin, TX 78744" in content
    assert f"Unsubscribe: {link.group(1)}" in shown["text/plain"]
    assert f'<a href="{link.group(1)}">Unsubscribe</a>' in shown["text/html"]
    html = shown["text/html"]
    assert html.index("aup-footer") < html.index("</body>")
    attachment = next(p for p in message.walk() if p.get_filename() == "prices.pdf")
    payload = attachment.get_payload(decode=True)
    assert isinstance(payload, bytes)
    assert hashlib.sha256(payload).digest() == hashlib.sha256(ATTACHMENT).digest()
    signature = verified(delivered, stack)
    assert "d=initech.example" in signature


def test_transactional_mail_passes_untouched(stack: Stack, connect: ClientFactory) -> None:
    raw, token = newsletter(
        text="Your invoice is attached.\n",
        html="<html><body><p>Your invoice is attached.</p></body></html>\n",
        precedence=None,
    )
    outcome = connect("initech").send(SENDER, [READER], raw)
    assert outcome.accepted, outcome
    delivered = stack.wait_for_sink(token)
    assert body_of(delivered.raw) == body_of(raw)
    assert ADDRESS not in delivered.raw.decode("ascii", "replace")


@pytest.fixture
def checking(stack: Stack) -> Stack:
    """initech on the e2e plan with footer = "check" (the fixture's reset puts it back)."""
    stack.redis_cli("HSET", "aup:tenant:initech", "plan", "e2e-footer-check")
    return stack


def test_check_refuses_a_newsletter_without_the_address(
    checking: Stack, connect: ClientFactory
) -> None:
    raw, _token = newsletter(
        text="Our autumn sale starts on Monday.\n",
        html="<html><body><p>Initech, 4120 Freidrich Lane, Austin TX 78744, USA</p></body></html>",
    )
    outcome = connect("initech").send(SENDER, [READER], raw)
    assert outcome.data is not None and outcome.data.code == 550, outcome
    assert "5.7.1" in outcome.data.text and "text/plain part lacks it" in outcome.data.text
    assert "4120 Freidrich Lane" in outcome.data.text


def test_check_accepts_the_address_wrapped_otherwise(
    checking: Stack, connect: ClientFactory
) -> None:
    raw, token = newsletter(
        text="Our autumn sale starts on Monday.\n\nInitech -- 4120 FREIDRICH\nLANE,\nAustin TX"
        " 78744 (USA)\n",
        html="<html><body><p>Sale!</p><p>4120&nbsp;Freidrich <i>Lane</i><br>Austin, TX&#160;"
        "78744<br>\nUSA</p></body></html>\n",
    )
    outcome = connect("initech").send(SENDER, [READER], raw)
    assert outcome.accepted, outcome
    delivered = checking.wait_for_sink(token)
    assert body_of(delivered.raw) == body_of(raw)
    verified(delivered, checking)


def test_bulk_mail_of_a_tenant_without_identity_is_deferred(
    stack: Stack, connect: ClientFactory
) -> None:
    stack.redis_cli("HDEL", "aup:tenant:initech", "identity_address")
    raw, _token = newsletter(text="Sale.\n", html="<p>Sale.</p>")
    outcome = connect("initech").send(SENDER, [READER], raw)
    assert outcome.data is not None and outcome.data.code == 451, outcome
    assert "4.7.0" in outcome.data.text and "address missing" in outcome.data.text

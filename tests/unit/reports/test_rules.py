"""The classification's rules, one small message each: complainers, tenants, plain-text bounces."""

from __future__ import annotations

import pytest

from aupmilter.policy.tokens import Reference, TokenKind, TokenSigner
from aupmilter.reports import bounces
from aupmilter.reports.classify import classify_bytes
from aupmilter.reports.model import Attribution, Clues, Kind
from aupmilter.reports.tenant import clues_of, feedback_id_tenant, store_lookup, token_resolver
from tests.unit.reports.test_parts import HEADERS

NOW = 1_731_400_000.0
SIGNER = TokenSigner([b"k" * 32], 60)


def arf(fields: str, original: str, feedback_type: str = "abuse") -> bytes:
    return (
        "From: fbl@isp.example.com\nTo: abuse@relay.example.net\nSubject: report\n"
        "MIME-Version: 1.0\nContent-Type: multipart/report; report-type=feedback-report; "
        'boundary="b"\n\n--b\nContent-Type: text/plain\n\nspam report\n\n--b\n'
        f"Content-Type: message/feedback-report\n\nFeedback-Type: {feedback_type}\n"
        f"Version: 1\n{fields}\n\n--b\nContent-Type: message/rfc822\n\n{original}\n\nbody\n--b--\n"
    ).encode()


ORIGINAL = "From: News <news@acme.example>\nSubject: sale"


@pytest.mark.parametrize(
    ("fields", "original", "complainers"),
    [
        ("Original-Rcpt-To: <a@example.com>", f"{ORIGINAL}\nTo: b@example.com", ["a@example.com"]),
        ("Original-Rcpt-To: <a@example.com>\nOriginal-Rcpt-To: <c@example.com>", ORIGINAL,
         ["a@example.com", "c@example.com"]),
        ("Original-Rcpt-To: <redacted@example.com>", f"{ORIGINAL}\nTo: b@example.com",
         ["b@example.com"]),
        ("", f"{ORIGINAL}\nTo: b@example.com", ["b@example.com"]),
        ("", f"{ORIGINAL}\nTo: b@example.com, c@example.com", []),
        ("", f"{ORIGINAL}\nTo: xxxxx@example.com", []),
        ("", f"X-Original-To: d@example.com\n{ORIGINAL}\nTo: b@example.com, c@example.com",
         ["d@example.com"]),
        ("", f"Delivered-To: e@example.com\nDelivered-To: f@example.com\n{ORIGINAL}",
         ["e@example.com"]),
        # The sender of the original, and the report's own addresses, never complained.
        ("Original-Rcpt-To: <news@acme.example>", f"{ORIGINAL}\nTo: news@acme.example", []),
        ("Original-Rcpt-To: <fbl@isp.example.com>", ORIGINAL, []),
        ("", f"{ORIGINAL}\nTo: b@example.com\nCc: g@example.com\nReply-To: h@example.com",
         ["b@example.com"]),
    ],
)  # fmt: skip
def test_the_complainer(fields: str, original: str, complainers: list[str]) -> None:
    report = classify_bytes(arf(fields, original))
    assert report.kind is Kind.COMPLAINT
    assert list(report.suppress) == complainers == list(report.recipients), report.reason


@pytest.mark.parametrize(
    ("feedback_type", "kind"),
    [("abuse", Kind.COMPLAINT), ("fraud", Kind.COMPLAINT), ("virus", Kind.COMPLAINT),
     ("other", Kind.COMPLAINT), ("opt-out", Kind.COMPLAINT), ("Abuse", Kind.COMPLAINT),
     ("auth-failure", Kind.NOT_A_REPORT), ("not-spam", Kind.NOT_A_REPORT)],
)  # fmt: skip
def test_feedback_types(feedback_type: str, kind: Kind) -> None:
    report = classify_bytes(arf("Original-Rcpt-To: a@example.com", ORIGINAL, feedback_type))
    assert report.kind is kind and report.feedback_type == feedback_type.lower()
    assert report.suppress == (("a@example.com",) if kind is Kind.COMPLAINT else ())


def test_the_envelope_sender_of_the_report_is_never_suppressed() -> None:
    raw = arf("Original-Rcpt-To: <loop@isp.example.com>", ORIGINAL)
    assert classify_bytes(raw).suppress == ("loop@isp.example.com",)
    assert classify_bytes(raw, report_sender="loop@isp.example.com").suppress == ()


@pytest.mark.parametrize(
    ("value", "relay_id", "tenant"),
    [
        ("spring:acme:bulk:relay01", None, "acme"),
        ("spring:acme:bulk:relay01", "relay01", "acme"),
        ("spring:acme:bulk:other01", "relay01", None),
        ("acme:bulk:relay01", None, None),
        ("spring:Not A Tenant:bulk:relay01", None, None),
        ("a:b:c:d:e", None, None),
    ],
)  # fmt: skip
def test_feedback_id_tenant(value: str, relay_id: str | None, tenant: str | None) -> None:
    assert feedback_id_tenant(value, relay_id) == tenant


def test_clues_from_the_original() -> None:
    token = SIGNER.recipient_token("acme", "a@example.com", NOW).token
    headers = HEADERS.parsestr(
        "Return-Path: <bounce@acme.example>\nFrom: News <news@acme.example>\n"
        "DKIM-Signature: v=1; a=rsa-sha256; d=Acme.Example; s=s1;\n i=@mail.acme.example; b=x\n"
        f"List-Unsubscribe: <https://unsub.example.net/u/{token}>,\n"
        f" <mailto:unsubscribe+{token}@unsub.example.net>, <https://acme.example/u/short>\n"
        "Feedback-ID: spring:acme:bulk:relay01\n\n"
    )
    clues = clues_of([headers], ["<offers@acme.example>"])
    assert clues.tokens == (token,)
    assert clues.dkim_domains == ("acme.example", "mail.acme.example")
    assert clues.feedback_ids == ("spring:acme:bulk:relay01",)
    assert clues.senders == ("offers@acme.example", "bounce@acme.example", "news@acme.example")


def references(*made: Reference) -> dict[str, str]:
    return {r.ref_text: r.store_value for r in made}


RECIPIENT = SIGNER.recipient_token("acme", "a@example.com", NOW)
FORGED = TokenSigner([b"f" * 32], 60).recipient_token("globex", "z@example.com", NOW)
STORED = references(RECIPIENT.reference)
LOOKUP = store_lookup(
    resolve_token=token_resolver(SIGNER, STORED.get, NOW),
    domain_tenant={"acme.example": "acme", "globex.example": "globex"}.get,
    shared_domains=frozenset({"relay.example.net"}),
    relay_id="relay01",
)


@pytest.mark.parametrize(
    ("clues", "expected"),
    [
        (Clues(tokens=(RECIPIENT.token,), feedback_ids=("c:globex:bulk:relay01",)),
         Attribution("acme", "unsubscribe token", "a@example.com")),
        (Clues(tokens=(FORGED.token,), feedback_ids=("c:globex:bulk:relay01",)),
         Attribution("globex", "Feedback-ID")),
        (Clues(feedback_ids=("c:globex:bulk:elsewhere",), dkim_domains=("acme.example",)),
         Attribution("acme", "DKIM d=acme.example")),
        (Clues(dkim_domains=("relay.example.net",), senders=("x@globex.example",)),
         Attribution("globex", "sender domain globex.example")),
        (Clues(dkim_domains=("relay.example.net",), senders=("x@relay.example.net",)), None),
        (Clues(), None),
    ],
)  # fmt: skip
def test_the_lookup_weighs_the_evidence_in_order(
    clues: Clues, expected: Attribution | None
) -> None:
    assert LOOKUP(clues) == expected


def test_a_message_token_names_the_tenant_only() -> None:
    made = SIGNER.message_token("globex", "<m@globex.example>", NOW, ["a@example.net"])
    lookup = store_lookup(resolve_token=token_resolver(SIGNER, references(made.reference).get, NOW))
    assert lookup(Clues(tokens=(made.token,))) == Attribution("globex", "unsubscribe token")
    assert made.reference.kind is TokenKind.MESSAGE


def bounce(text: str, subject: str = "Undelivered Mail", sender: str = "MAILER-DAEMON") -> bytes:
    return (
        f"From: {sender}@mx.example.net\nTo: bounce@acme.example\nSubject: {subject}\n"
        f"Content-Type: text/plain\n\n{text}\n"
    ).encode()


@pytest.mark.parametrize(
    ("text", "kind", "recipients", "suppress"),
    [
        ("<a@example.com>: 550 5.1.1 User unknown", Kind.HARD_BOUNCE, ["a@example.com"],
         ["a@example.com"]),
        ("<a@example.com>: 452 4.2.2 over quota", Kind.SOFT_BOUNCE, ["a@example.com"], []),
        ("a@example.com\n  mailbox full", Kind.SOFT_BOUNCE, ["a@example.com"], []),
        ("a@example.com: no such user", Kind.HARD_BOUNCE, ["a@example.com"], ["a@example.com"]),
        ("Message delayed, will be retried.\n<a@example.com>: 451 4.3.0 try later",
         Kind.DELAYED, ["a@example.com"], []),
        ("a@example.com: 550 5.1.1 unknown\nb@example.com: 452 4.2.2 full", Kind.HARD_BOUNCE,
         ["a@example.com", "b@example.com"], ["a@example.com"]),
        # Only the bounce's own words count: an address in the quoted copy is not taken.
        ("Delivery failed.\n--- Below this line is a copy of the message.\n\n"
         "To: q@example.com\n\n550 5.1.1 q@example.com unknown", Kind.NOT_A_REPORT, [], []),
        # The bounced message's sender (the bounce's To) is never a failed recipient.
        ("bounce@acme.example: 550 5.1.1 unknown", Kind.NOT_A_REPORT, [], []),
        ("Your message was delivered.", Kind.NOT_A_REPORT, [], []),
    ],
)  # fmt: skip
def test_plain_text_bounces(
    text: str, kind: Kind, recipients: list[str], suppress: list[str]
) -> None:
    report = classify_bytes(bounce(text))
    assert report.kind is kind, report.reason
    assert (list(report.recipients), list(report.suppress)) == (recipients, suppress)


def test_a_persons_mail_quoting_a_code_is_not_a_bounce() -> None:
    raw = bounce("a@example.com: 550 5.1.1 unknown", subject="Re: hello", sender="peter")
    assert classify_bytes(raw).kind is Kind.NOT_A_REPORT


def test_a_detector_that_crashes_is_noted_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    import flufl.bounce

    def broken(message: object) -> object:
        raise ValueError("detector bug")

    monkeypatch.setattr(flufl.bounce, "all_failures", broken)
    raw = bounce("X-Failed-Recipients style\n  a@example.com\n  550 5.1.1 unknown")
    report = classify_bytes(raw)
    assert report.kind is Kind.HARD_BOUNCE and report.suppress == ("a@example.com",)
    found, note = bounces.text_bounces(HEADERS.parsestr("Subject: x\n\n"), "", ())
    assert found == [] and "flufl.bounce failed (ValueError)" in note


def test_an_8bit_header_does_not_stop_the_detectors(caplog: pytest.LogCaptureFixture) -> None:
    """compat32 returns such a header as a Header object, which a detector calls .lower() on."""
    raw = (
        b"From: Mail Delivery System <Mailer-Daemon@mx.example.net>\n"
        b"To: J\xc3\xb6rg <bounce@acme.example>\nX-Failed-Recipients: a@example.com\n"
        b"Subject: Mail delivery failed\n\n  a@example.com\n    550 5.1.1 unknown\n"
    )
    with caplog.at_level("DEBUG"):
        report = classify_bytes(raw)
    assert report.kind is Kind.HARD_BOUNCE and "flufl.bounce" in report.reason
    assert all(r.exc_info is None for r in caplog.records)


def test_soft_and_delayed_recipients_are_named_apart() -> None:
    """The intake counts these; only the hard ones are in `suppress`."""
    blocks = [
        ("hard@example.net", "failed", "5.1.1"),
        ("soft@example.net", "failed", "4.2.2"),
        ("late@example.net", "delayed", "4.4.1"),
        ("fine@example.net", "delivered", "2.0.0"),
    ]
    status = "\n".join(
        f"Final-Recipient: rfc822; {a}\nAction: {action}\nStatus: {code}\n"
        for a, action, code in blocks
    )
    raw = (
        "From: MAILER-DAEMON@relay.example.net\nTo: news@acme.example\nSubject: failure\n"
        "MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; "
        'boundary="b"\n\n--b\nContent-Type: text/plain\n\nfailed\n\n--b\n'
        "Content-Type: message/delivery-status\n\nReporting-MTA: dns; relay.example.net\n\n"
        f"{status}\n--b--\n"
    ).encode()
    report = classify_bytes(raw)
    assert report.kind is Kind.HARD_BOUNCE
    assert report.suppress == ("hard@example.net",)
    assert report.soft == ("soft@example.net",)
    assert report.delayed == ("late@example.net",)


def status_report(status_part: str, sender: str = "MAILER-DAEMON@relay.example.net") -> bytes:
    return (
        f"From: {sender}\nTo: news@acme.example\nSubject: failure\nMIME-Version: 1.0\n"
        "Content-Type: multipart/report; report-type=delivery-status; "
        'boundary="b"\n\n--b\nContent-Type: text/plain\n\n'
        "A message could not be delivered to:\nq@example.fr\nThis address does not exist.\n\n"
        f"--b\nContent-Type: message/delivery-status\n\n{status_part}\n--b--\n"
    ).encode()


def test_a_dsn_without_recipient_blocks_is_read_as_a_bounce_in_words() -> None:
    report = classify_bytes(status_report("Reporting-MTA: mx.example.fr\n\nMessage removed\n"))
    assert report.kind is Kind.HARD_BOUNCE, report.reason
    assert report.suppress == ("q@example.fr",)
    assert report.reason.startswith("bounce without a status part")


def test_a_dsn_attached_whole_to_a_gateways_bounce_is_judged() -> None:
    inner = status_report(
        "Reporting-MTA: dns; mx.example.com\n\n"
        "Final-Recipient: rfc822; gone@example.com\nAction: failed\nStatus: 5.1.1\n"
    ).decode()
    raw = (
        "From: postmaster@gateway.example.com\nTo: news@acme.example\n"
        "Subject: Delivery Status Notification (Failure)\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="outer"\n\n--outer\n'
        "Content-Type: message/rfc822\n\n"
        f"{inner}\n--outer--\n"
    ).encode()
    report = classify_bytes(raw)
    assert report.kind is Kind.HARD_BOUNCE, report.reason
    assert report.suppress == ("gone@example.com",)
    assert report.reason.startswith("attached DSN")


def test_a_dsn_attached_to_a_persons_mail_is_not_taken() -> None:
    """Only a bounce (by its sender, Subject or report type) is unwrapped."""
    inner = status_report(
        "Final-Recipient: rfc822; gone@example.com\nAction: failed\nStatus: 5.1.1\n"
    ).decode()
    raw = (
        "From: Peter <peter@example.org>\nTo: news@acme.example\nSubject: look at this\n"
        'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="outer"\n\n--outer\n'
        f"Content-Type: message/rfc822\n\n{inner}\n--outer--\n"
    ).encode()
    assert classify_bytes(raw).kind is Kind.NOT_A_REPORT


@pytest.mark.parametrize(
    ("subject", "body", "kind"),
    [
        # "Delivery failure notification" in base64, with a warning that retries go on.
        ("=?utf-8?B?RGVsaXZlcnkgZmFpbHVyZSBub3RpZmljYXRpb24=?=",
         "Your message with Subject: news\ncould not be delivered to the following recipients:"
         "\n\nq@example.org\n\nPlease do not resend your original message.\n\n"
         "Delivery attempts will continue to be made for 5 day(s).\n", Kind.DELAYED),
        # "Automatic reply: Winter news" in quoted-printable.
        ("=?utf-8?Q?Automatic_reply=3A_Winter_news?=", "I am away until Monday.\n",
         Kind.NOT_A_REPORT),
        ("=?x-unknown?Q?Undeliverable=3A_news?=", "q@example.org: 550 5.1.1 unknown\n",
         Kind.HARD_BOUNCE),
        ("=?utf-8?B?broken", "q@example.org: 550 5.1.1 unknown\n", Kind.NOT_A_REPORT),
    ],
)  # fmt: skip
def test_encoded_subjects_are_read_decoded(subject: str, body: str, kind: Kind) -> None:
    raw = f"From: gateway@example.org\nTo: news@acme.example\nSubject: {subject}\n\n{body}"
    report = classify_bytes(raw.encode())
    assert report.kind is kind, report.reason

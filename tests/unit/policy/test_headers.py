"""Header structure (policy/headers.py): table-driven, one fault per row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from aupmilter.policy.findings import Check, Finding
from aupmilter.policy.headers import (
    HeaderBlock,
    HeaderField,
    HeaderRules,
    check_headers,
    message_id_fault,
    missing_message_id,
    parse_date,
    valid_domain,
)

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)
DATE = "Fri, 14 Mar 2025 11:58:00 +0000"
RULES = HeaderRules()


def block(*fields: tuple[str, str | bytes]) -> HeaderBlock:
    return HeaderBlock(
        tuple(HeaderField(n, v if isinstance(v, bytes) else v.encode()) for n, v in fields)
    )


def base(**replace: str | bytes | None) -> HeaderBlock:
    """A compliant header section; keyword = field to replace (None drops it)."""
    fields: dict[str, str | bytes | None] = {
        "From": "Alice <alice@acme.example>",
        "To": "bob@dest.example",
        "Subject": "Quarterly report",
        "Date": DATE,
        "Message-ID": "<20250314.1@acme.example>",
    }
    fields.update({k.replace("_", "-"): v for k, v in replace.items()})
    return block(*((n, v) for n, v in fields.items() if v is not None))


def findings(hb: HeaderBlock, smtputf8: bool = False) -> list[Finding]:
    return check_headers(hb, smtputf8=smtputf8, now=NOW, rules=RULES)


def only(hb: HeaderBlock, smtputf8: bool = False) -> Finding:
    found = findings(hb, smtputf8)
    assert len(found) == 1, found
    return found[0]


def test_compliant_headers_have_no_findings() -> None:
    assert findings(base()) == []


@pytest.mark.parametrize(
    ("hb", "check", "fault"),
    [
        (base(From=None), Check.HEADER_COUNTS, "no From header"),
        (base(Date=None), Check.HEADER_COUNTS, "no Date header"),
        (
            block(
                ("From", "a@acme.example"),
                ("From", "b@acme.example"),
                ("Date", DATE),
                ("Message-ID", "<1@a.example>"),
            ),
            Check.HEADER_COUNTS,
            "2 From headers",
        ),
        (
            block(
                ("From", "a@acme.example"),
                ("Date", DATE),
                ("Subject", "one"),
                ("subject", "two"),
            ),
            Check.HEADER_COUNTS,
            "2 Subject headers",
        ),
        (
            block(("From", "a@acme.example, b@acme.example"), ("Date", DATE)),
            Check.HEADER_COUNTS,
            "no Sender header",
        ),
        (base(From="alice"), Check.ADDRESS_SYNTAX, "not a valid address list"),
        (base(From="alice@"), Check.ADDRESS_SYNTAX, "not a valid address list"),
        (base(From="<alice@acme.example"), Check.ADDRESS_SYNTAX, "not a valid address list"),
        (base(From="alice@acme..example"), Check.ADDRESS_SYNTAX, "not a valid address list"),
        (base(From="alice@-acme.example"), Check.ADDRESS_SYNTAX, "not a valid address list"),
        (base(From="Team: a@acme.example;"), Check.ADDRESS_SYNTAX, "not a group"),
        (base(To="bob@@dest.example"), Check.ADDRESS_SYNTAX, "To header"),
        (base(Reply_To="nobody"), Check.ADDRESS_SYNTAX, "Reply-To header"),
        (base(Message_ID="20250314@acme.example"), Check.MESSAGE_ID, "<left@right>"),
        (base(Message_ID="<no-at-sign>"), Check.MESSAGE_ID, "<left@right>"),
        (base(Message_ID="<a b@acme.example>"), Check.MESSAGE_ID, "<left@right>"),
        (base(Date="yesterday"), Check.DATE, "not an RFC 5322 date"),
        (base(Date="Mon, 10 Mar 2025 11:58:00 +0000"), Check.DATE, "in the past"),
        (base(Date="Fri, 14 Mar 2025 16:00:00 +0000"), Check.DATE, "in the future"),
        (base(Subject=b"caf\xc3\xa9"), Check.HEADER_BYTES, "8-bit"),
        (base(Subject=b"a\x00b"), Check.HEADER_BYTES, "NUL"),
        (base(Subject=b"a\rb"), Check.HEADER_BYTES, "bare CR"),
        (base(Subject=b"a\nb: c"), Check.HEADER_BYTES, "bare LF"),
        (base(Subject="x" * 995), Check.HEADER_BYTES, "octets"),
        (
            block(*[("From", "a@acme.example"), ("Date", DATE), ("Bad Name", "x")]),
            Check.HEADER_BYTES,
            "field name",
        ),
    ],
)
def test_each_fault_is_named(hb: HeaderBlock, check: Check, fault: str) -> None:
    finding = only(hb)
    assert finding.check is check
    assert fault in finding.fault
    assert (finding.reply.code, finding.reply.status) == ("550", "5.6.0")


@pytest.mark.parametrize(
    "value",
    [
        "=?utf-8?q?J=C3=B6rg?= <joerg@acme.example>",  # encoded word
        '"Doe, Jane" <jane@acme.example>',
        "jane@acme.example (Jane Doe)",  # comment
        "Jane <@relay.example:jane@acme.example>",  # obsolete route: accepted
        "jane . doe @ acme . example",  # obsolete CFWS: accepted
        "jane@xn--bcher-kva.example",  # IDN as A-label
        "jane@[192.0.2.1]",  # address literal
    ],
)
def test_accepted_address_forms(value: str) -> None:
    assert findings(base(From=value)) == []


def test_smtputf8_allows_utf8_headers_but_not_other_8bit() -> None:
    utf8 = base(From="Jörg <jörg@bücher.example>".encode(), Subject="Grüße".encode())
    assert findings(utf8, smtputf8=True) == []
    assert {f.check for f in findings(utf8, smtputf8=False)} == {Check.HEADER_BYTES}
    latin1 = base(Subject=b"Gr\xfc\xdfe")
    assert "not UTF-8" in only(latin1, smtputf8=True).fault


def test_folded_lines_are_measured_per_line() -> None:
    folded = " ".join(["word"] * 300)  # 1500 octets unfolded
    as_folds = folded.replace(" word word word", "\n word word word", 100).encode()
    assert findings(base(Subject=as_folds)) == []
    assert findings(base(Subject=as_folds.replace(b"\n", b"\r\n"))) == []


def test_groups_are_allowed_in_to_and_cc() -> None:
    assert findings(base(To="undisclosed-recipients:;")) == []
    assert findings(base(To="Team: a@dest.example, b@dest.example;")) == []


def test_several_authors_with_a_sender() -> None:
    hb = base(From="a@acme.example, b@acme.example", Sender="a@acme.example")
    assert findings(hb) == []
    two_senders = base(From="a@acme.example", Sender="a@acme.example, b@acme.example")
    assert "exactly one mailbox" in only(two_senders).fault


def test_limits_count_what_was_dropped_too() -> None:
    hb = base()
    over = HeaderBlock(hb.fields, seen_fields=RULES.max_fields + 1, seen_bytes=10)
    assert only(over).check is Check.HEADER_LIMITS
    big = HeaderBlock(hb.fields, seen_fields=5, seen_bytes=RULES.max_bytes + 1)
    assert "bytes" in only(big).fault


def test_date_skew_is_configurable() -> None:
    old = base(Date="Mon, 10 Mar 2025 11:58:00 +0000")
    lenient = HeaderRules(date_max_age=timedelta(days=7))
    assert check_headers(old, smtputf8=False, now=NOW, rules=lenient) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Fri, 14 Mar 2025 11:58:00 +0000", datetime(2025, 3, 14, 11, 58, tzinfo=UTC)),
        ("14 Mar 2025 11:58 -0000", datetime(2025, 3, 14, 11, 58, tzinfo=UTC)),  # no weekday
        ("Fri, 14 Mar 25 11:58:00 GMT", datetime(2025, 3, 14, 11, 58, tzinfo=UTC)),  # obsolete
        ("", None),
        ("Fri, 32 Mar 2025 11:58:00 +0000", None),
        ("99999999999999999999", None),
    ],
)
def test_parse_date(value: str, expected: datetime | None) -> None:
    assert parse_date(value) == expected


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("<a@b>", True),
        ("<a.b.c@host.example>", True),
        ("<abc@[192.0.2.1]>", True),
        ("  <a@b>  (comment)", True),
        ("<a@b", False),
        ("<@b>", False),
        ("<a@>", False),
        ("<a..b@c>", False),
        ("<a@b><c@d>", False),
    ],
)
def test_message_id_syntax(value: str, ok: bool) -> None:
    assert (message_id_fault(value) is None) is ok


def test_missing_message_id_is_a_finding_only_when_asked() -> None:
    assert missing_message_id(base()) is None
    finding = missing_message_id(base(Message_ID=None))
    assert finding is not None and finding.check is Check.MESSAGE_ID
    assert findings(base(Message_ID=None)) == [], "check_headers leaves it to add_message_id"


@pytest.mark.parametrize(
    ("domain", "ok"),
    [
        ("acme.example", True),
        ("ACME.example.", True),
        ("bücher.example", True),
        ("[192.0.2.1]", True),
        ("localhost", False),
        ("-a.example", False),
        ("a_b.example", False),
        ("a" * 64 + ".example", False),
        ("", False),
    ],
)
def test_valid_domain(domain: str, ok: bool) -> None:
    assert valid_domain(domain) is ok


def test_reply_texts_quote_the_fault_safely() -> None:
    finding = only(base(Message_ID="<100%\x01@x>"))
    text = finding.specific_reply().text
    assert "%" not in text and "\x01" not in text
    assert text.startswith("Message-ID '<100??@x>' is not of the form <left@right>")

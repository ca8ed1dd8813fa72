"""The reply table: codes consistent, texts safe for libmilter."""

from __future__ import annotations

import re

import pytest

from aupmilter import replies
from aupmilter.replies import Reply

ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


@pytest.mark.parametrize("reply", replies.ALL_REPLIES, ids=str)
def test_reply_is_well_formed(reply: Reply) -> None:
    assert reply.code[0] == reply.status[0]
    assert ENHANCED.match(reply.status)
    assert "%" not in reply.text, "libmilter silently drops replies with a bare %"
    assert reply.text and reply.text[0].isupper()
    assert "\r" not in reply.text and "\n" not in reply.text


def test_every_reply_constant_is_in_the_table() -> None:
    constants = {v for v in vars(replies).values() if isinstance(v, Reply)}
    assert constants == set(replies.ALL_REPLIES)


@pytest.mark.parametrize(
    ("code", "status"),
    [("250", "2.0.0"), ("45", "4.0.0"), ("451", "5.3.0"), ("x51", "4.3.0")],
)
def test_bad_reply_definitions_are_refused(code: str, status: str) -> None:
    with pytest.raises(ValueError):
        Reply(code, status, "text")


def test_temporary_and_custom_text() -> None:
    assert replies.STORE_UNAVAILABLE.is_temporary
    assert not replies.UNKNOWN_SENDER.is_temporary
    custom = replies.UNKNOWN_SENDER.with_text("Other text")
    assert (custom.code, custom.status, custom.text) == ("550", "5.7.1", "Other text")
    assert str(custom) == "550 5.7.1 Other text"


@pytest.mark.parametrize(
    "text",
    ["50% off", "two\r\nlines", "tab\there", "na\u00efve", "", "x" * (replies.MAX_TEXT_LENGTH + 1)],
)
def test_a_reply_refuses_text_that_would_break_its_line(text: str) -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        Reply("550", "5.7.1", text)


def test_an_escaped_percent_is_allowed() -> None:
    assert Reply("550", "5.7.1", "100%% sure").text == "100%% sure"


def test_case_texts_from_the_client_are_made_safe() -> None:
    custom = replies.UNKNOWN_SENDER.with_text("Login a%b\r\nX-Injected: na\u00efve " + "x" * 500)
    assert "%" not in custom.text and "\r" not in custom.text and "\n" not in custom.text
    assert custom.text.startswith("Login a?b??X-Injected: na?ve xxx")
    assert len(custom.text) == replies.MAX_TEXT_LENGTH and custom.text.endswith("...")


@pytest.mark.parametrize(
    ("text", "limit", "control", "safe"),
    [
        ("100% sure", 50, "?", "100? sure"),
        ("  padded  ", 50, "?", "padded"),
        ("spam\r\nreports", 50, " ", "spam  reports"),
        ("50% na\u00efve", 50, " ", "50? na?ve"),
        ("abcdefgh", 6, "?", "abc..."),
    ],
)
def test_safe_text(text: str, limit: int, control: str, safe: str) -> None:
    assert replies.safe_text(text, limit, control=control) == safe

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

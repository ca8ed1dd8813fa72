from __future__ import annotations

import pytest

from aupmilter import replies
from aupmilter.policy.verdict import Action, Verdict


def test_refuse_picks_the_action_from_the_reply_code() -> None:
    assert Verdict.refuse(replies.UNKNOWN_SENDER, "r", rule="t").action is Action.REJECT
    assert Verdict.refuse(replies.STORE_UNAVAILABLE, "r", rule="t").action is Action.TEMPFAIL


@pytest.mark.parametrize(
    ("action", "reply"),
    [
        (Action.ACCEPT, replies.UNKNOWN_SENDER),
        (Action.QUARANTINE, replies.UNKNOWN_SENDER),
        (Action.REJECT, None),
        (Action.REJECT, replies.STORE_UNAVAILABLE),
        (Action.TEMPFAIL, replies.UNKNOWN_SENDER),
    ],
)
def test_inconsistent_verdicts_cannot_be_built(action: Action, reply: replies.Reply | None) -> None:
    with pytest.raises(ValueError):
        Verdict(action, "reason", None, reply)


def test_accept_and_quarantine_do_not_refuse() -> None:
    assert not Verdict.accept("ok").refuses
    assert not Verdict.quarantine("held", "acme", rule="t").refuses

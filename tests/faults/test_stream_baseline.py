"""The harness itself, with nothing broken: every copy delivered once, nothing retried,
and a copy the policy must stop (a suppressed recipient) is counted as stopped."""

from __future__ import annotations

from testbed import Stack
from testbed.faultstream import Fault, FaultStream, MessageSpec, numbered_messages
from tests.faults.conftest import PASSWORDS, run_stream, suppress


def test_a_clean_stream_is_delivered_exactly_once(fault_stack: Stack) -> None:
    fired: list[int] = []
    stream = FaultStream(
        fault_stack,
        "acme",
        PASSWORDS["acme"],
        count=20,
        interval=0.02,
        sender="alice@acme.example",
        faults=[Fault(lambda: fired.append(1), at_message=5, name="probe")],
    )
    tally = run_stream(stream)

    assert (tally.sent, tally.delivered, tally.retried, tally.refused, tally.lost) == (
        20,
        20,
        0,
        0,
        0,
    ), tally.report()
    assert tally.ok and fired == [1]


def test_a_message_the_policy_refuses_counts_as_refused_not_lost(fault_stack: Stack) -> None:
    suppress(fault_stack, "acme", "stopped@example.net")
    plain = numbered_messages("alice@acme.example")

    def factory(seq: int) -> MessageSpec:
        if seq % 5 == 0:
            return MessageSpec(
                "alice@acme.example", ("stopped@example.net",), must_not_deliver=True
            )
        return plain(seq)

    tally = run_stream(FaultStream(fault_stack, "acme", PASSWORDS["acme"], count=10,
                                   interval=0.02, factory=factory))  # fmt: skip

    assert tally.ok, tally.report()
    assert tally.bypassed == 0 and tally.lost == 0
    assert tally.refused + tally.withheld == 2, tally.report()
    assert tally.delivered == 8

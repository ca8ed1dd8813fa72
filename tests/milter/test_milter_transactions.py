"""Many transactions on one milter connection: state is per transaction, not per connection."""

from __future__ import annotations

from tests.milter.harness import Daemon, Tenants
from tests.milter.mta import Kind


def test_status_change_applies_from_the_next_transaction(
    daemon: Daemon, acme: str, tenants: Tenants
) -> None:
    """The ops contract: a status change needs no restart and no new MTA connection."""
    rcpts = ["r@dest.example"]
    with daemon.client() as client:
        first = client.send_message("a@acme.example", rcpts, auth_login="acme", queue_id="ST1")
        assert first.eom is not None and first.quarantine_reason is None

        tenants.hset("acme", status="suspended", reason="under investigation")
        second = client.send_message("a@acme.example", rcpts, auth_login="acme", queue_id="ST2")
        assert second.quarantine_reason is not None
        assert "under investigation" in second.quarantine_reason

        tenants.hset("acme", status="terminated")
        third = client.send_message("a@acme.example", rcpts, auth_login="acme", queue_id="ST3")
        assert third.refused_at == "mail" and third.mail.reply == "550 5.7.1"

        tenants.set_status("acme", "active")
        fourth = client.send_message("a@acme.example", rcpts, auth_login="acme", queue_id="ST4")
        assert fourth.refused_at is None and fourth.eom is not None
        assert fourth.eom.response.kind is Kind.CONTINUE
        assert fourth.quarantine_reason is None, "lifting a suspension must stop the quarantine"

    verdicts = {v["queue_id"]: v["verdict"] for v in daemon.log.verdicts()}
    assert verdicts == {"ST1": "accept", "ST2": "quarantine", "ST3": "reject", "ST4": "accept"}
    assert len({v["conn"] for v in daemon.log.verdicts()}) == 1, "all on one connection"


def test_abort_between_transactions_resets_state(
    daemon: Daemon, acme: str, tenants: Tenants
) -> None:
    tenants.add("beta", logins=["beta"], domains=["beta.example"], status="suspended")
    with daemon.client() as client:
        done = client.send_message(
            "a@acme.example", ["1@d.example", "2@d.example"], auth_login="acme", queue_id="AB1"
        )
        assert done.eom is not None and done.eom.response.kind is Kind.CONTINUE

        # A suspended tenant's transaction, aborted after three recipients (client said RSET).
        assert client.mail("b@beta.example", macros={"i": "AB2"}).kind is Kind.CONTINUE
        for n in range(3):
            client.rcpt(f"{n}@d.example")
        client.abort()

        # The next transaction on the connection starts clean: its own tenant, its own
        # recipients, and no quarantine left over from the aborted one.
        after = client.send_message("a@acme.example", ["x@d.example"], queue_id="AB3")
        assert after.refused_at is None and after.eom is not None
        assert after.eom.response.kind is Kind.CONTINUE
        assert after.quarantine_reason is None

        # Refused at MAIL, then the connection carries on.
        refused = client.send_message("a@stranger.example", ["y@d.example"], queue_id="AB4")
        assert refused.refused_at == "mail"
        last = client.send_message(
            "a@acme.example", ["p@d.example", "q@d.example", "r@d.example"], queue_id="AB5"
        )
        assert last.eom is not None and last.quarantine_reason is None

    counts = {v["queue_id"]: v["recipients"] for v in daemon.log.verdicts()}
    assert counts == {"AB1": 2, "AB3": 1, "AB4": 0, "AB5": 3}, "no verdict for the aborted one"
    assert daemon.log.matching("transaction aborted after 3 recipients", level="debug")


def test_abort_without_a_transaction_is_harmless(daemon: Daemon, acme: str) -> None:
    """Postfix sends ABORT on RSET even when no MAIL was given."""
    with daemon.client() as client:
        client.abort()
        client.abort()
        result = client.send_message("a@acme.example", ["r@d.example"], queue_id="AB6")
    assert result.eom is not None and result.eom.response.kind is Kind.CONTINUE
    assert not daemon.log.matching(level="error")


def test_connections_are_independent(daemon: Daemon, acme: str, tenants: Tenants) -> None:
    """Interleaved transactions on two connections keep their own senders and verdicts."""
    tenants.add("beta", logins=["beta"], domains=["beta.example"], status="suspended")
    with daemon.client() as one, daemon.client() as two:
        assert one.mail("a@acme.example", macros={"i": "IND1"}).kind is Kind.CONTINUE
        assert two.mail("b@beta.example", macros={"i": "IND2"}).kind is Kind.CONTINUE
        one.rcpt("r1@d.example")
        two.rcpt("r2@d.example")
        two.rcpt("r3@d.example")
        two.content("b@beta.example", ["r2@d.example", "r3@d.example"])
        one.content("a@acme.example", ["r1@d.example"])
        eom_two = two.eom(macros={"i": "IND2"})
        eom_one = one.eom(macros={"i": "IND1"})
    assert eom_one.quarantine_reason is None
    assert eom_two.quarantine_reason is not None and "beta" in eom_two.quarantine_reason
    assert daemon.log.verdict("IND1")["recipients"] == 1
    assert daemon.log.verdict("IND2")["recipients"] == 2
    assert daemon.log.verdict("IND1")["conn"] != daemon.log.verdict("IND2")["conn"]

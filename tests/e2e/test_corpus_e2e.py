"""A representative subset of the corpus through the private Postfix, as tenant acme.

What the sender sees (the reply at MAIL FROM or at the end of DATA) must be
what the pure run of the corpus says; accepted messages must reach the sink
intact (a DKIM signature made by the sender still verifies there).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aupmilter.mailauth.dkimverify import signatures, verify_signatures
from aupmilter.mailauth.resolver import DnsSettings, Nameserver, Resolver
from aupmilter.policy.evidence import DkimStatus
from testbed import Stack
from testbed.client import TOKEN_HEADER, ClientFactory
from tests.corpus.corpus import Entry, load_manifest
from tests.messages import split_message

pytestmark = pytest.mark.e2e

RCPT = "someone@example.net"
SUBSET = [e for e in load_manifest() if e.e2e]


def test_the_subset_covers_each_kind_of_answer() -> None:
    answers = {e.expect for e in SUBSET}
    assert {"250", "550 5.6.0", "553 5.7.1", "550 5.7.27", "550 5.7.1"} <= answers
    assert len(SUBSET) >= 15


@pytest.mark.parametrize("entry", SUBSET, ids=lambda e: e.file)
def test_corpus_message_through_postfix(entry: Entry, stack: Stack, connect: ClientFactory) -> None:
    token = f"corpus-{entry.file}"
    raw = entry.message(datetime.now(UTC), f"{TOKEN_HEADER}: {token}\r\n".encode())
    for domain in entry.domains:
        # The entry's tenant domains are acme's for this message (reset after the test).
        stack.redis_cli("SADD", "aup:tenant:acme:domains", domain)
    client = connect("acme")
    outcome = client.send(entry.sender, [RCPT], raw)
    code, _, status = entry.expect.partition(" ")
    if entry.stage == "mail":
        assert (outcome.mail.code, outcome.mail.enhanced) == (int(code), status), outcome
        return
    assert outcome.data is not None, f"{entry.about}: refused before DATA: {outcome}"
    if entry.expect != "250":
        assert (outcome.data.code, outcome.data.enhanced) == (int(code), status), outcome
        assert "%" not in outcome.data.text
        return
    assert outcome.accepted, f"{entry.about}: {outcome}"
    delivered = stack.wait_for_sink(token)
    if entry.sign:
        # Verified against the stack's own DNS server, through Postfix's Received header.
        assert _verifies(delivered.raw, stack), "the sender's DKIM signature survived the relay"


def _verifies(raw: bytes, stack: Stack) -> bool:
    """The sender's acme.example signature in the delivered copy, checked with dkimpy."""
    resolver = Resolver(DnsSettings(nameservers=(Nameserver(stack.host, stack.dns_port),)))
    fields, _ = split_message(raw)
    values = [field.value for field in fields if field.key == "dkim-signature"]
    chosen = [s for s in signatures(values) if s.domain == "acme.example"]
    results = verify_signatures(raw, chosen, resolver)
    return [r.status for r in results] == [DkimStatus.PASS]

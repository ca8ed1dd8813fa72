"""Every corpus message through the message checks: the reply and the check that decides."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from aupmilter.config import Config
from aupmilter.mailauth.resolver import Resolver
from testbed.dnsserver import DnsServer
from testbed.zones import RELAY_IP
from tests.corpus.corpus import PLANS_FILE, Entry, load_manifest
from tests.dns.conftest import settings_for
from tests.messages import run_checks, write_config

ENTRIES = load_manifest()
NOW = datetime.now(UTC).replace(microsecond=0)
CORPUS_SETTINGS = f"""
[messages]
relay_ips = ["{RELAY_IP}"]
max_message_bytes = 262144
spool_memory_bytes = 65536
"""


@pytest.fixture(scope="module")
def corpus_config(tmp_path_factory: pytest.TempPathFactory, dns_server: DnsServer) -> Config:
    directory = tmp_path_factory.mktemp("corpus")
    return write_config(directory, dns_server.address, PLANS_FILE.read_text(), CORPUS_SETTINGS)


@pytest.fixture(scope="module")
def corpus_resolver(dns_server: DnsServer) -> Resolver:
    return Resolver(settings_for(dns_server))


def test_the_corpus_is_large_and_varied() -> None:
    assert len(ENTRIES) >= 80
    assert len({e.file for e in ENTRIES}) == len(ENTRIES)
    assert {p.name for p in Path(ENTRIES[0].path.parent).glob("*.eml")} == {e.file for e in ENTRIES}
    accepted = [e for e in ENTRIES if e.expect == "250"]
    assert 25 <= len(accepted) <= len(ENTRIES) - 40, "compliant and broken, both well represented"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.file)
def test_corpus_message(entry: Entry, corpus_config: Config, corpus_resolver: Resolver) -> None:
    run = run_checks(
        entry.message(NOW),
        config=corpus_config,
        resolver=corpus_resolver,
        sender=entry.sender,
        domains=frozenset(entry.domains),
        allowed_domains=frozenset(entry.allowed),
        plan=corpus_config.plans[entry.plan].checks,
        smtputf8=entry.smtputf8,
        now=NOW,
    )
    verdict = run.final
    assert run.reply == entry.expect, f"{entry.about}: {verdict}"
    if entry.check is not None:
        assert verdict.reason.startswith(f"message refused by {entry.check}: "), verdict.reason
        assert verdict.reply is not None
        text = verdict.reply.text
        assert "%" not in text and text.isascii() and text.isprintable()
        assert len(text) < 450, "the whole reply line fits in 512 octets"
    assert (run.eom is None) == (entry.stage == "mail")
    warned = sorted({w.split(":", 1)[0] for w in verdict.warnings})
    assert warned == sorted(entry.warnings)
    added = [field.name for field in run.eom.add_headers] if run.eom else []
    assert added == list(entry.added)

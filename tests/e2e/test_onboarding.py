"""Domain onboarding end to end: the private Postfix, the milter, test DNS and a loopback RDAP.

Tenant acme on a plan with onboarding enforced: its bulk mail is refused
(550 5.7.1, naming the command) until `aup-milter tenant verify-domain acme
acme.example` passes against the test DNS (testbed.zones: the ownership
token, SPF for the relay, the relay's DKIM selector, DMARC) and the RDAP
server (testbed.rdapserver: a named registrant); the next bulk message is
delivered, signed. Transactional mail is never held back meanwhile.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import Stack, toml
from testbed.client import ClientFactory, Outcome, make_message
from testbed.parts.service import python_env
from testbed.rdapserver import RdapServer
from testbed.zones import ONBOARDING_TOKEN, RELAY_IP

pytestmark = pytest.mark.e2e

SENDER = "news@acme.example"
READER = "reader@example.net"


@pytest.fixture(scope="module")
def rdap() -> Iterator[RdapServer]:
    with RdapServer() as server:
        yield server


@pytest.fixture
def onboarding(stack: Stack) -> Stack:
    """acme on the e2e plan with onboarding enforced (the fixture's reset puts it back)."""
    stack.redis_cli("HSET", "aup:tenant:acme", "plan", "e2e-onboard")
    return stack


def cli_config(stack: Stack, rdap: RdapServer) -> Path:
    """The milter's own config plus what only the command needs: the relay's address for SPF
    and the RDAP bootstrap (the daemon's file stays as it is)."""
    extra = (
        f'[messages]\nrelay_ips = ["{RELAY_IP}"]\n'
        f'[onboarding]\nrdap_bootstrap = "{rdap.bootstrap_url}"\nrdap_timeout = 5\n'
    )
    path = stack.run_dir / "verify-domain.toml"
    path.write_text(toml.dumps(toml.merged(stack.milter_conf.settings(), extra)))
    return path


def verify_domain(stack: Stack, config: Path) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable, "-m", "aupmilter", "tenant", "-c", str(config),
        "--redis", stack.redis_url, "verify-domain", "acme", "acme.example", "--json",
    ]  # fmt: skip
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False, env=python_env()
    )


def bulk(connect: ClientFactory, subject: str) -> tuple[Outcome, str]:
    message, token = make_message(SENDER, [READER], subject=subject, body="Our autumn sale.\n")
    message["Precedence"] = "bulk"
    return connect("acme").send(SENDER, [READER], message.as_bytes()), token


def test_unverified_bulk_refused_then_accepted_after_verify_domain(
    onboarding: Stack, connect: ClientFactory, rdap: RdapServer
) -> None:
    outcome, _ = bulk(connect, "Autumn sale")
    last = outcome.last
    assert not outcome.accepted and last.code == 550, outcome
    assert "5.7.1" in last.text and "aup-milter tenant verify-domain acme acme.example" in last.text
    # Transactional mail is not held back by onboarding.
    message, token = make_message(SENDER, [READER], subject="Your invoice")
    assert connect("acme").send(SENDER, [READER], message.as_bytes()).accepted
    onboarding.wait_for_sink(token)

    config = cli_config(onboarding, rdap)
    # The test zones publish this token; a real tenant's is made by the first run.
    onboarding.redis_cli("HSET", "aup:tenant:acme", "verification_token", ONBOARDING_TOKEN)
    done = verify_domain(onboarding, config)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert {f["check"]: f["status"] for f in report["findings"]} == dict.fromkeys(
        ("ownership", "spf", "dkim", "dmarc", "rdap"), "pass"
    )
    assert report["newly_verified"] is True and report["bulk_mail"] == "verified"

    outcome, token = bulk(connect, "Autumn sale, again")
    assert outcome.accepted, outcome
    delivered = onboarding.wait_for_sink(token)
    assert "d=acme.example" in str(delivered.message["DKIM-Signature"])


def test_a_failing_verification_keeps_refusing(
    onboarding: Stack, connect: ClientFactory, rdap: RdapServer
) -> None:
    """Without the token in the tenant hash, ownership fails: still 550, now naming it."""
    done = verify_domain(onboarding, cli_config(onboarding, rdap))
    assert done.returncode == 1, done.stdout + done.stderr
    outcome, _ = bulk(connect, "Autumn sale")
    last = outcome.last
    assert last.code == 550 and "failed: ownership fail" in last.text, outcome

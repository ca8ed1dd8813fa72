"""`aup-milter tenant verify-domain` against the loopback DNS server, RDAP server and Redis.

Real DNS (testbed.dnsserver serving testbed.zones), a real RDAP server
(testbed.rdapserver: recorded answers from tests/corpus/rdap/, a 500 and a
timeout) and a real redis-server: each check's answer, the exit status, what
is recorded in the tenant hash (and parsed for the milter), `tenant show`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from aupmilter.cli.main import main
from aupmilter.exitcodes import EX_CONFIG, EX_FAILURE, EX_OK, EX_TEMPFAIL
from aupmilter.mailauth.rdap import RdapClient, RdapSettings
from aupmilter.policy.onboarding import TOKEN_FORM, Status
from aupmilter.store import keys
from aupmilter.store.tenants import TenantAdmin, tenant_record
from testbed.dnsserver import DnsServer
from testbed.rdapserver import RdapServer
from testbed.zones import ONBOARDING_TOKEN, RELAY_IP, private_key_path
from tests.support import RedisServer
from tests.unit.configfiles import ROOT

DOMAINS = (
    "acme.example",
    "privacy.example",
    "redacted.example",
    "rdap-error.example",
    "rdap-slow.example",
    "nodmarc.example",
    "spffail.example",
    "nospf.example",
    "badpolicy.example",
)


@pytest.fixture(scope="module")
def rdap() -> Iterator[RdapServer]:
    with RdapServer(slow_seconds=3.0) as server:
        yield server


def write_config(folder: Path, dns: DnsServer, bootstrap: str, key: str = "test-rsa2048") -> Path:
    (folder / "policies").mkdir(exist_ok=True)
    shutil.copy(ROOT / "policies" / "plans.toml", folder / "policies" / "plans.toml")
    (folder / "policies" / "onboard.toml").write_text(
        '[plan.onboard]\nbulk_recipients = 2\n[plan.onboard.onboarding]\nmode = "enforce"\n'
        "[plan.onboard-ramp]\nbulk_recipients = 2\n[plan.onboard-ramp.onboarding]\n"
        'mode = "enforce"\n[plan.onboard-ramp.warmup]\nstart_percent = 10\n'
    )
    key_file = folder / "acme.key"
    shutil.copy(private_key_path(key), key_file)
    key_file.chmod(0o600)
    path = folder / "aup-milter.toml"
    path.write_text(
        f'[dns]\nnameservers = ["{dns.address}"]\ntimeout = 0.3\nlifetime = 0.6\n'
        f'[messages]\nrelay_ips = ["{RELAY_IP}"]\n'
        f'[onboarding]\nrdap_bootstrap = "{bootstrap}"\nrdap_timeout = 1.0\n'
        f'[dkim.tenant.acme]\ndomain = "acme.example"\nselector = "test2048"\n'
        f'key_file = "{key_file}"\n'
    )
    return path


@pytest.fixture
def config_path(tmp_path: Path, dns_server: DnsServer, rdap: RdapServer) -> Path:
    return write_config(tmp_path, dns_server, rdap.bootstrap_url)


@pytest.fixture
def acme(redis_client: redis.Redis) -> redis.Redis:
    """Tenant acme with every test domain, and the token the test zones publish."""
    TenantAdmin(redis_client).add("acme", "onboard", ["acme"], DOMAINS)
    redis_client.hset(keys.tenant("acme"), keys.FIELD_VERIFICATION_TOKEN, ONBOARDING_TOKEN)
    return redis_client


def run(
    capsys: pytest.CaptureFixture[str], server: RedisServer, config: Path, *args: str
) -> tuple[int, str, str]:
    code = main(["tenant", "-c", str(config), "--redis", server.url, *args])
    out, err = capsys.readouterr()
    return code, out, err


def verify_json(
    capsys: pytest.CaptureFixture[str], server: RedisServer, config: Path, domain: str
) -> tuple[int, dict[str, Any]]:
    code, out, err = run(capsys, server, config, "verify-domain", "acme", domain, "--json")
    assert not err, err
    payload: dict[str, Any] = json.loads(out)
    return code, payload


def statuses(payload: dict[str, Any]) -> dict[str, str]:
    return {f["check"]: f["status"] for f in payload["findings"]}


def test_a_domain_that_passes_everything_is_recorded_and_read_by_the_milter(
    capsys: pytest.CaptureFixture[str],
    redis_server: RedisServer,
    acme: redis.Redis,
    config_path: Path,
) -> None:
    code, payload = verify_json(capsys, redis_server, config_path, "acme.example")
    assert code == EX_OK, payload
    assert statuses(payload) == dict.fromkeys(("ownership", "spf", "dkim", "dmarc", "rdap"),
                                              "pass")  # fmt: skip
    reasons = {f["check"]: f["reason"] for f in payload["findings"]}
    assert reasons["dkim"] == "test2048._domainkey.acme.example publishes the relay's key"
    assert reasons["dmarc"] == "_dmarc.acme.example: p=quarantine"
    assert reasons["rdap"] == "registrant organization Acme Corporation"
    assert payload["newly_verified"] is True and payload["bulk_mail"] == "verified"
    assert payload["token_record"]["value"] == f"aup-milter-verification={ONBOARDING_TOKEN}"
    # What the milter's MAIL FROM read (HGETALL) parses.
    fields = cast(dict[str, str], acme.hgetall(keys.tenant("acme")))
    stored = fields[keys.verified_field("acme.example")]
    assert stored == f"{payload['checked_at']} pass -"
    record = tenant_record("acme", fields)
    assert record.verifications["acme.example"].status is Status.PASS
    # The full report beside the tenant, and the audit event.
    report = json.loads(acme.hget(keys.tenant_verifications("acme"), "acme.example") or "{}")
    assert [f["status"] for f in report["findings"]] == ["pass"] * 5
    entries = cast(list[tuple[str, dict[str, str]]], acme.xrange(keys.AUDIT_STREAM))
    events = [e for _, e in entries if e["event"] == "domain-verification"]
    assert events[-1]["subject"] == "acme.example" and events[-1]["verdict"] == "pass"
    # Again: still verified, not newly.
    code, payload = verify_json(capsys, redis_server, config_path, "acme.example")
    assert code == EX_OK and payload["newly_verified"] is False
    code, out, _ = run(capsys, redis_server, config_path, "show", "acme")
    assert code == EX_OK
    assert "domain acme.example: verification pass at " in out
    code, out, _ = run(capsys, redis_server, config_path, "show", "acme", "--json")
    shown = json.loads(out)["verifications"]["acme.example"]
    assert shown["status"] == "pass" and shown["failing"] == {}


@pytest.mark.parametrize(
    ("domain", "exit_code", "expected", "reason"),
    [
        ("privacy.example", EX_FAILURE, {"rdap": "fail"}, "Domains By Proxy, LLC"),
        ("redacted.example", EX_TEMPFAIL, {"rdap": "unknown"}, "redacts the registrant"),
        ("rdap-error.example", EX_TEMPFAIL, {"rdap": "unknown"}, "HTTP 500"),
        # Not in the test zones either: every DNS check fails, RDAP times out.
        ("rdap-slow.example", EX_FAILURE,
         {"ownership": "fail", "spf": "fail", "dmarc": "fail", "rdap": "unknown"}, "timed out"),
        ("nodmarc.example", EX_FAILURE, {"dmarc": "fail"},
         "no DMARC record at _dmarc.nodmarc.example"),
        ("badpolicy.example", EX_FAILURE, {"dmarc": "fail"}, "p=maybe"),
        ("spffail.example", EX_FAILURE, {"spf": "fail"},
         "gives fail for the relay's address 192.0.2.25"),
        ("nospf.example", EX_FAILURE,
         {"ownership": "fail", "spf": "fail", "dmarc": "fail", "rdap": "fail"},
         "the registry does not know nospf.example"),
    ],
)  # fmt: skip
def test_what_fails_and_what_could_not_be_learnt(
    capsys: pytest.CaptureFixture[str],
    redis_server: RedisServer,
    acme: redis.Redis,
    config_path: Path,
    domain: str,
    exit_code: int,
    expected: dict[str, str],
    reason: str,
) -> None:
    code, payload = verify_json(capsys, redis_server, config_path, domain)
    found = statuses(payload)
    assert {check: found[check] for check in expected} == expected, payload
    others = {check for check, status in found.items() if status != "pass"} - set(expected)
    assert not others, payload
    assert code == exit_code
    assert any(reason in f["reason"] for f in payload["findings"]), payload
    for finding in payload["findings"]:
        if finding["status"] != "pass":
            assert finding["fix"], finding
    stored = acme.hget(keys.tenant("acme"), keys.verified_field(domain)) or ""
    assert stored.split()[2] == ",".join(f"{c}={s}" for c, s in sorted(expected.items()))
    assert payload["bulk_mail"] != "verified"


def test_human_output_says_what_to_fix(
    capsys: pytest.CaptureFixture[str],
    redis_server: RedisServer,
    acme: redis.Redis,
    config_path: Path,
) -> None:
    code, out, _ = run(capsys, redis_server, config_path, "verify-domain", "acme", "nospf.example")
    assert code == EX_FAILURE
    assert "  ownership  fail" in out and "  dkim       pass" in out
    assert (
        f'fix:     publish a TXT record at nospf.example: "aup-milter-verification='
        f'{ONBOARDING_TOKEN}"'
    ) in out
    assert "fix:     add ip4:192.0.2.25 (or the relay's include) to the SPF record" in out
    assert "result: fail (dmarc fail, ownership fail, rdap fail, spf fail), recorded at " in out
    assert "bulk mail from nospf.example on plan onboard: not accepted (failed)" in out


def test_the_token_is_made_once_and_kept(
    capsys: pytest.CaptureFixture[str],
    redis_server: RedisServer,
    redis_client: redis.Redis,
    config_path: Path,
) -> None:
    TenantAdmin(redis_client).add("acme", "standard", ["acme"], ["acme.example"])
    tokens = []
    for _ in range(2):
        code, payload = verify_json(capsys, redis_server, config_path, "acme.example")
        assert code == EX_FAILURE and statuses(payload)["ownership"] == "fail"
        tokens.append(payload["token_record"]["value"].removeprefix("aup-milter-verification="))
    assert tokens[0] == tokens[1] and TOKEN_FORM.match(tokens[0])
    assert tokens[0] != ONBOARDING_TOKEN
    assert payload["bulk_mail"] is None  # plan standard: onboarding off


def test_a_key_that_is_not_the_relays_fails_dkim(
    capsys: pytest.CaptureFixture[str],
    redis_server: RedisServer,
    acme: redis.Redis,
    tmp_path: Path,
    dns_server: DnsServer,
    rdap: RdapServer,
) -> None:
    config = write_config(tmp_path, dns_server, rdap.bootstrap_url, key="test-rsa4096")
    code, payload = verify_json(capsys, redis_server, config, "acme.example")
    assert code == EX_FAILURE and statuses(payload)["dkim"] == "fail"


def test_rdap_bootstrap_from_a_file_and_an_unreachable_one(
    capsys: pytest.CaptureFixture[str],
    redis_server: RedisServer,
    acme: redis.Redis,
    tmp_path: Path,
    dns_server: DnsServer,
    rdap: RdapServer,
) -> None:
    bootstrap = tmp_path / "dns.json"
    bootstrap.write_text(json.dumps(rdap.bootstrap()))
    config = write_config(tmp_path, dns_server, str(bootstrap))
    code, payload = verify_json(capsys, redis_server, config, "acme.example")
    assert code == EX_OK, payload
    config = write_config(tmp_path, dns_server, "http://127.0.0.1:9/bootstrap/dns.json")
    code, payload = verify_json(capsys, redis_server, config, "acme.example")
    assert code == EX_TEMPFAIL and statuses(payload)["rdap"] == "unknown"
    rdap_reason = next(f["reason"] for f in payload["findings"] if f["check"] == "rdap")
    assert "bootstrap" in rdap_reason or "127.0.0.1:9" in rdap_reason


def test_refusals(
    capsys: pytest.CaptureFixture[str],
    redis_server: RedisServer,
    acme: redis.Redis,
    config_path: Path,
    tmp_path: Path,
) -> None:
    code, _, err = run(capsys, redis_server, config_path, "verify-domain", "acme", "globex.example")
    assert code == EX_FAILURE and "not a domain of tenant acme" in err
    code, _, err = run(capsys, redis_server, config_path, "verify-domain", "nobody", "a.example")
    assert code == EX_FAILURE and "no tenant 'nobody'" in err
    missing = tmp_path / "absent.toml"
    code, _, err = run(capsys, redis_server, missing, "verify-domain", "acme", "acme.example")
    assert code == EX_CONFIG and "needs a readable config file" in err


def test_subdomains_are_verified_under_their_own_name(
    capsys: pytest.CaptureFixture[str],
    redis_server: RedisServer,
    acme: redis.Redis,
    config_path: Path,
) -> None:
    code, payload = verify_json(capsys, redis_server, config_path, "mail.acme.example")
    found = statuses(payload)
    # No token or SPF of its own; DMARC from the organizational domain; RDAP of acme.example.
    assert found["ownership"] == "fail" and found["dmarc"] == "pass" and found["rdap"] == "pass"
    assert code == EX_FAILURE


def test_rdap_client_bounds_and_failures(rdap: RdapServer, tmp_path: Path) -> None:
    client = RdapClient(RdapSettings(rdap.bootstrap_url, timeout=1.0))
    assert client.lookup("acme.example").registration is not None
    assert client.lookup("acme.test").detail == "no RDAP service for acme.test in the bootstrap"
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    answer = RdapClient(RdapSettings(str(garbage))).lookup("acme.example")
    assert answer.status is Status.UNKNOWN and "not JSON" in answer.detail
    answer = RdapClient(RdapSettings(str(tmp_path / "absent.json"))).lookup("acme.example")
    assert answer.status is Status.UNKNOWN and "absent.json" in answer.detail


def test_a_newly_verified_domain_starts_the_warm_up_ramp_again(
    capsys: pytest.CaptureFixture[str],
    redis_server: RedisServer,
    redis_client: redis.Redis,
    config_path: Path,
) -> None:
    admin = TenantAdmin(redis_client)
    admin.add("ramp", "onboard-ramp", ["ramp"], ["acme.example"])
    redis_client.hset(keys.tenant("ramp"), keys.FIELD_VERIFICATION_TOKEN, ONBOARDING_TOKEN)
    # Day 5 of its ramp when the domain is verified: it starts at day 1 again.
    redis_client.hset(keys.tenant("ramp"), keys.FIELD_WARMUP_STARTED_AT, "1000")
    code, out, err = run(capsys, redis_server, config_path, "verify-domain", "ramp", "acme.example")
    assert code == EX_OK, out + err
    assert "the ramp starts again at 10 percent" in out
    started = float(redis_client.hget(keys.tenant("ramp"), keys.FIELD_WARMUP_STARTED_AT) or 0)
    assert started > 1000
    entries = cast(list[tuple[str, dict[str, str]]], redis_client.xrange(keys.AUDIT_STREAM))
    restarts = [e for _, e in entries if e["event"] == "warmup-restarted"]
    assert len(restarts) == 1 and "acme.example newly verified" in restarts[0]["detail"]
    assert restarts[0]["by"] == "tenant verify-domain"
    # Verified again: not newly, so the ramp goes on.
    code, out, err = run(
        capsys, redis_server, config_path, "verify-domain", "ramp", "acme.example", "--json"
    )
    assert code == EX_OK and json.loads(out)["warmup_restarted"] is False
    again = float(redis_client.hget(keys.tenant("ramp"), keys.FIELD_WARMUP_STARTED_AT) or 0)
    assert again == started

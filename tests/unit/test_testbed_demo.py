"""The demo's wiring of domain onboarding, checked without starting it (tests/e2e/test_demo.py
starts it): the names the test bed spells, its config, its ports and its start-up text."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from aupmilter.config import load_config
from aupmilter.mailauth.rdap import IANA_BOOTSTRAP
from aupmilter.store import keys
from testbed.__main__ import DEFAULT_PORTS, build_stack, parse_args, try_it
from testbed.parts.milterconfig import MilterConfig
from testbed.tenants import DEMO_ONBOARDING, VERIFICATION_TOKEN_FIELD, tenant_key
from testbed.zones import ONBOARDING_TOKEN, RECORDS, RELAY_IP, onboarded


def test_the_testbed_spells_the_token_field_and_tenant_key_as_the_store_does() -> None:
    # No command sets a token, so the demo writes the field with redis-cli: it must be the
    # field `tenant verify-domain` reads, on the one-server layout the demo's Redis has.
    assert VERIFICATION_TOKEN_FIELD == keys.FIELD_VERIFICATION_TOKEN
    assert tenant_key("acme") == keys.tenant("acme")


def test_the_demo_token_is_the_one_the_test_zones_publish_at_the_demo_domain() -> None:
    tenant_id, domain, token = DEMO_ONBOARDING
    assert (tenant_id, token) == ("acme", ONBOARDING_TOKEN)
    assert onboarded(domain)[0] in RECORDS


def milter_config(tmp_path: Path, bootstrap: str | None) -> MilterConfig:
    return MilterConfig(
        tmp_path, redis_url="redis://127.0.0.1:1/0", dns_address="127.0.0.1:2",
        web_port=3, rdap_bootstrap=bootstrap,
    )  # fmt: skip


def test_with_rdap_the_config_points_verify_domain_at_it_and_at_the_zones_relay(
    tmp_path: Path,
) -> None:
    conf = milter_config(tmp_path, "http://127.0.0.1:8897/bootstrap/dns.json")
    conf.write()
    loaded = load_config(conf.path)
    assert loaded.onboarding.bootstrap == "http://127.0.0.1:8897/bootstrap/dns.json"
    assert loaded.messages.relay_ips == (RELAY_IP,)


def test_without_rdap_the_config_keeps_the_samples_onboarding_and_relay_ips(
    tmp_path: Path,
) -> None:
    conf = milter_config(tmp_path, None)
    conf.write()
    loaded = load_config(conf.path)
    assert loaded.onboarding.bootstrap == IANA_BOOTSTRAP
    assert loaded.messages.relay_ips == ()


def test_the_demo_ports_follow_the_port_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUP_TESTBED_PORT_OFFSET", "100")
    args = parse_args(["demo-up"])
    assert (args.redis_port, args.smtp_port, args.sink_port) == (6490, 2625, 2626)
    assert (args.web_port, args.metrics_port, args.rdap_port) == (8995, 8996, 8997)
    monkeypatch.delenv("AUP_TESTBED_PORT_OFFSET")
    assert parse_args(["demo-up"]).rdap_port == DEFAULT_PORTS["rdap"] == 8897


def test_the_start_up_text_shows_verify_domain_and_tenant_show_ready_to_paste(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AUP_TESTBED_PORT_OFFSET", raising=False)
    stack = build_stack(parse_args(["demo-up", "--run-dir", str(tmp_path)]))
    assert stack.onboarding and stack.rdap_port == 8897
    commands = [shlex.split(line) for line in try_it(stack).splitlines() if "tenant -c" in line]
    here = Path.cwd()
    path = stack.milter_config
    config = str(path.relative_to(here) if path.is_relative_to(here) else path)
    assert [words[1:] for words in commands] == [
        ["tenant", "-c", config, "verify-domain", "acme", "acme.example"],
        ["tenant", "-c", config, "show", "acme"],
    ]
    assert all(words[0].endswith("aup-milter") for words in commands)
    assert "http://127.0.0.1:8897" in try_it(stack)

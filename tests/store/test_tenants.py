"""`aup-milter tenant ...`: the admin operations and the command line, on a real Redis."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import cast

import pytest
import redis

from aupmilter.store.tenants import TenantAdmin, TenantError, validate_identity
from tests.support import ROOT, RedisServer, free_port


@pytest.fixture
def admin(redis_client: redis.Redis) -> TenantAdmin:
    return TenantAdmin(redis_client, clock=lambda: 1_700_000_000)


def test_add_writes_the_documented_keys(admin: TenantAdmin, redis_client: redis.Redis) -> None:
    admin.add("acme", "standard", ["acme"], ["Acme.Example", "acme.example."])
    assert redis_client.hgetall("aup:tenant:acme") == {
        "status": "active",
        "plan": "standard",
        "reason": "",
        "created_at": "1700000000",
        "updated_at": "1700000000",
    }
    assert redis_client.get("aup:login:acme") == "acme"
    assert redis_client.get("aup:domain:acme.example") == "acme"
    assert redis_client.smembers("aup:tenant:acme:logins") == {"acme"}
    assert redis_client.smembers("aup:tenant:acme:domains") == {"acme.example"}
    assert redis_client.smembers("aup:tenants") == {"acme"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("Acme", "standard", [], []), "invalid tenant id"),
        (("acme", "", [], []), "needs a plan"),
        (("acme", "standard", ["bad login"], []), "invalid login"),
        (("acme", "standard", [], ["not a domain"]), "invalid domain"),
        (("acme", "standard", [], [], "paused"), "invalid status 'paused'"),
    ],
)
def test_add_validates(admin: TenantAdmin, args: tuple[object, ...], message: str) -> None:
    with pytest.raises(TenantError, match=message):
        admin.add(*args)  # type: ignore[arg-type]


def test_add_refuses_taken_names(admin: TenantAdmin, redis_client: redis.Redis) -> None:
    admin.add("acme", "standard", ["acme"], ["acme.example"])
    with pytest.raises(TenantError, match="already exists"):
        admin.add("acme", "standard", [], [])
    with pytest.raises(TenantError, match="aup:login:acme is already mapped to tenant 'acme'"):
        admin.add("other", "standard", ["acme"], [])
    with pytest.raises(TenantError, match=r"aup:domain:acme\.example is already mapped"):
        admin.add("other", "standard", [], ["ACME.example"])
    assert not redis_client.exists("aup:tenant:other")


def test_set_status_updates_reason_and_time(admin: TenantAdmin, redis_client: redis.Redis) -> None:
    admin.add("acme", "standard", ["acme"], [])
    admin._clock = lambda: 1_700_000_100
    info = admin.set_status("acme", "suspended", "complaints")
    assert info.fields["status"] == "suspended"
    assert info.fields["reason"] == "complaints"
    assert info.fields["updated_at"] == "1700000100"
    assert info.fields["created_at"] == "1700000000"
    with pytest.raises(TenantError, match="no tenant 'ghost'"):
        admin.set_status("ghost", "active")
    with pytest.raises(TenantError, match="invalid status"):
        admin.set_status("acme", "on-hold")


def test_every_status_change_is_audited_and_a_return_to_active_is_a_lift(
    admin: TenantAdmin, redis_client: redis.Redis
) -> None:
    admin.add("acme", "standard", ["acme"], [])
    redis_client.hset(
        "aup:tenant:acme",
        mapping={"status": "suspended", "reason": "automatic suspension: complaints 0.5 %"},
    )
    admin.set_status("acme", "active", "customer cleaned the list")
    admin.set_status("acme", "terminated", "repeat offender")
    entries = cast(list[tuple[str, dict[str, str]]], redis_client.xrange("aup:audit"))
    events = [f for _id, f in entries]
    assert [(e["event"], e["tenant"], e["by"]) for e in events] == [
        ("lifted", "acme", "cli"),
        ("status-changed", "acme", "cli"),
    ]
    assert events[0]["detail"] == (
        "tenant acme: suspended -> active (customer cleaned the list);"
        " was: automatic suspension: complaints 0.5 %"
    )
    assert events[1]["detail"].startswith("tenant acme: active -> terminated")


def test_remove_deletes_only_what_the_tenant_owns(
    admin: TenantAdmin, redis_client: redis.Redis
) -> None:
    admin.add("acme", "standard", ["acme"], ["acme.example"])
    # A mapping re-pointed by hand to another tenant must survive the removal.
    redis_client.sadd("aup:tenant:acme:domains", "shared.example")
    redis_client.set("aup:domain:shared.example", "globex")
    admin.remove("acme")
    assert redis_client.keys("aup:tenant:acme*") == []
    assert not redis_client.exists("aup:login:acme", "aup:domain:acme.example")
    assert redis_client.get("aup:domain:shared.example") == "globex"
    assert redis_client.smembers("aup:tenants") == set()
    with pytest.raises(TenantError, match="no tenant"):
        admin.remove("acme")


def test_list_includes_tenants_made_by_hand(admin: TenantAdmin, redis_client: redis.Redis) -> None:
    admin.add("acme", "standard", ["acme"], [])
    redis_client.hset("aup:tenant:handmade", mapping={"status": "active", "plan": "bulk"})
    assert [t.tenant_id for t in admin.list()] == ["acme", "handmade"]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "aupmilter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_cli_round_trip(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    base = ("tenant", "-c", "/nonexistent.toml", "--redis", redis_server.url)
    out = cli(
        *base, "add", "acme", "--plan", "standard", "--login", "acme", "--domain", "acme.example"
    )
    assert "acme" in out.stdout and "standard" in out.stdout
    cli(
        *base,
        "add",
        "globex",
        "--plan",
        "business",
        "--login",
        "globex",
        "--domain",
        "globex.example",
    )
    listed = json.loads(cli(*base, "list", "--json").stdout)
    assert [t["id"] for t in listed] == ["acme", "globex"]
    shown = json.loads(
        cli(*base, "set-status", "acme", "suspended", "--reason", "spam", "--json").stdout
    )
    assert (shown["status"], shown["reason"], shown["logins"]) == ("suspended", "spam", ["acme"])
    table = cli(*base, "list").stdout.splitlines()
    assert table[0].split() == ["ID", "STATUS", "PLAN", "LOGINS", "DOMAINS", "UPDATED", "REASON"]
    assert table[1].split()[:5] == ["acme", "suspended", "standard", "acme", "acme.example"]
    shown_text = cli(*base, "show", "acme").stdout.splitlines()
    assert shown_text[2].startswith("complaint rate 0.00 % (0 complaints / 0 delivered")
    assert shown_text[3].startswith("bounce rate 0.00 % (0 bounces / 0 delivered")
    assert cli(*base, "remove", "globex").stdout.strip() == "removed tenant globex"
    missing = cli(*base, "show", "globex", check=False)
    assert missing.returncode == 1 and "no tenant 'globex'" in missing.stderr


def test_cli_checks_plan_against_config(redis_server: RedisServer, tmp_path: Path) -> None:
    config = tmp_path / "aup-milter.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_server.url}"\n[policy]\nplans_dir = "{ROOT / "policies"}"\n'
    )
    refused = cli("tenant", "-c", str(config), "add", "x", "--plan", "platinum", check=False)
    assert refused.returncode == 1
    assert "unknown plan 'platinum'" in refused.stderr and "standard" in refused.stderr


def test_cli_reports_unreachable_redis() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = cli("tenant", "-c", "/nonexistent.toml", "--redis", url, "list", check=False)
    assert result.returncode == 69
    assert f"cannot use Redis at {url}" in result.stderr


def test_cli_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(f'[policy]\nplans_dir = "{ROOT / "policies"}"\n')
    ok = cli("check", "-c", str(good))
    assert ok.stdout.startswith(f"{good}: OK")
    assert "  plan standard: at most 100 recipients per message\n" in ok.stdout
    assert "window sender-recipients-hour: 2000 recipients per hour, per sender\n" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[policy]\nunknown_sender = "bounce"\n')
    failed = cli("check", "-c", str(bad), check=False)
    assert failed.returncode == 1
    assert f"{bad}: key 'policy.unknown_sender': expected 'reject' or 'accept'" in failed.stderr


def test_cli_version() -> None:
    assert cli("--version").stdout.startswith("aup-milter ")


def test_set_identity_writes_the_documented_fields(
    admin: TenantAdmin, redis_client: redis.Redis
) -> None:
    admin.add("initech", "newsletter", ["initech"], ["initech.example"])
    identity = validate_identity(
        " Initech, Inc. ", ["4120 Freidrich Lane", "Austin, TX 78744\nUSA"], "https://i.example/c"
    )
    admin.set_identity("initech", identity)
    fields = redis_client.hgetall("aup:tenant:initech")
    assert fields["identity_name"] == "Initech, Inc."
    assert fields["identity_address"] == "4120 Freidrich Lane\nAustin, TX 78744\nUSA"
    assert fields["identity_contact"] == "https://i.example/c"
    with pytest.raises(TenantError, match="no tenant 'nobody'"):
        admin.set_identity("nobody", identity)


@pytest.mark.parametrize(
    ("name", "address", "contact", "message"),
    [
        ("", ["1 Main St"], "a@b.example", "invalid name"),
        ("Acme", [], "a@b.example", "needs 1-8 lines"),
        ("Acme", ["x"] * 9, "a@b.example", "needs 1-8 lines"),
        ("Acme", ["1 Main St"], "call us", "expected an http(s) URL or a mailbox address"),
        ("Acme", ["1 Main\tSt"], "a@b.example", "invalid address line"),
        ("A" * 201, ["1 Main St"], "a@b.example", "1-200 printable characters"),
    ],
)
def test_identity_is_validated(name: str, address: list[str], contact: str, message: str) -> None:
    with pytest.raises(TenantError, match=re.escape(message)):
        validate_identity(name, address, contact)


def test_cli_set_identity_and_check_warning(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    base = ("tenant", "-c", "/nonexistent.toml", "--redis", redis_server.url)
    cli(*base, "add", "initech", "--plan", "newsletter", "--domain", "initech.example")
    config = tmp_path / "aup-milter.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_server.url}"\n[policy]\nplans_dir = "{ROOT / "policies"}"\n'
    )
    warned = cli("check", "-c", str(config))
    assert "warning: tenant initech is on plan newsletter (footer insert)" in warned.stderr
    assert "name, address, contact" in warned.stderr
    shown = json.loads(
        cli(
            *base, "set-identity", "initech", "--name", "Initech, Inc.", "--address",
            "4120 Freidrich Lane", "--address", "Austin, TX 78744", "--contact",
            "https://initech.example/contact", "--json",
        ).stdout
    )  # fmt: skip
    assert shown["identity_address"] == "4120 Freidrich Lane\nAustin, TX 78744"
    assert "warning" not in cli("check", "-c", str(config)).stderr
    refused = cli(
        *base, "set-identity", "initech", "--name", "I", "--address", "x", "--contact", "no",
        check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and "invalid contact 'no'" in refused.stderr

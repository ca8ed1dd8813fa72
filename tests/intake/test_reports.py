"""`aup-milter intake --reports`: corpus reports acted on against a real Redis.

The exit codes are checked on the real command (a subprocess reading stdin,
as Postfix's pipe runs it); what each report changes is checked in process
through `process_report`, which the command calls, to keep the file fast.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import cast

import pytest
import redis

from aupmilter.config import load_config
from aupmilter.policy.reputation import ReputationPlan
from aupmilter.store import keys
from aupmilter.store.suppression import SuppressionStore
from aupmilter.store.tenants import TenantAdmin
from aupmilter.unsubscribe.report_intake import Acted, process_report
from tests.corpus.report_corpus import REPORTS_DIR, CorpusStore
from tests.milter.harness import PLANS_DIR, child_env
from tests.support import RedisServer, free_port
from tests.web.harness import write_config

ACME = "aup:{acme}:suppressed"
GLOBEX = "aup:{globex}:suppressed"


@pytest.fixture
def config(redis_server: RedisServer, tmp_path: Path) -> Path:
    return write_config(tmp_path, redis_server.url, 8895)


@pytest.fixture
def tenants(redis_client: redis.Redis) -> redis.Redis:
    admin = TenantAdmin(redis_client)
    admin.add("acme", "standard", [], ["acme.example"])
    admin.add("globex", "business", [], ["globex.example"])
    return redis_client


def sample(name: str, client: redis.Redis | None = None) -> bytes:
    """The corpus file with its token placeholders filled, their references stored in Redis."""
    store = CorpusStore(time.time())
    raw = store.fill((REPORTS_DIR / name).read_bytes())
    if client is not None:
        SuppressionStore(client).store_references(store.stored(), 3600)
    return raw


def act(config: Path, client: redis.Redis, raw: bytes) -> Acted:
    """One more report like `raw` (a Message-ID of its own: the intake acts on a report once)."""
    return process_report(another(raw), load_config(config), client, time.time())


def another(raw: bytes) -> bytes:
    """`raw` as a different report: its Message-ID replaced (or added)."""
    fresh = f"Message-ID: <{uuid.uuid4().hex}@reports.test>".encode()
    head, sep, body = raw.partition(b"\r\n\r\n" if b"\r\n\r\n" in raw else b"\n\n")
    lines = [line for line in head.splitlines() if not line.lower().startswith(b"message-id:")]
    newline = b"\r\n" if sep.startswith(b"\r") else b"\n"
    return newline.join([fresh, *lines]) + sep + body


def intake(config: Path, raw: bytes) -> subprocess.CompletedProcess[bytes]:
    argv = [sys.executable, "-m", "aupmilter", "intake", "--reports", "-c", str(config)]
    return subprocess.run(argv, input=raw, capture_output=True, env=child_env(), timeout=60)


def audit(client: redis.Redis) -> list[tuple[str, dict[str, str]]]:
    return cast(list[tuple[str, dict[str, str]]], client.xrange("aup:audit"))


def snapshot(client: redis.Redis) -> dict[str, object]:
    """Every key but the audit stream, with its value: what a report must not change.

    The metrics counts (keys.SHARED_COUNTS) count every report, acted on or not.
    """
    found: dict[str, object] = {}
    for key in client.scan_iter():
        if key == keys.SHARED_COUNTS:
            continue
        kind = client.type(key)
        if kind == "hash":
            found[key] = client.hgetall(key)
        elif kind == "string":
            found[key] = client.get(key)
        elif kind == "set":
            found[key] = client.smembers(key)
        elif kind == "stream":
            found[key] = client.xlen(key)
    return found


@pytest.mark.parametrize(
    ("name", "key", "address"),
    [
        ("arf-yahoo-complainer-in-to.eml", ACME, "dana@example.com"),
        ("arf-aol-redacted-token.eml", ACME, "carol@example.net"),
        ("arf-microsoft-jmrp-base64-mixed.eml", GLOBEX, "erin@example.com"),
    ],
)
def test_complaint_suppresses_the_complainer(
    config: Path, tenants: redis.Redis, name: str, key: str, address: str
) -> None:
    done = intake(config, sample(name, tenants))
    assert done.returncode == 0, done.stderr
    assert tenants.hkeys(key) == [address]
    assert str(tenants.hget(key, address)).startswith("complaint ")
    events = [fields for _id, fields in audit(tenants)]
    assert [(e["event"], e["address"], e["source"]) for e in events] == [
        ("suppress", address, "complaint")
    ]
    assert b"report complaint" in done.stderr and b"Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("name", "key", "addresses"),
    [
        ("dsn-postfix-550-user-unknown.eml", ACME, ["bob@example.com"]),
        ("dsn-o365-ndr.eml", GLOBEX, ["zack@example.com"]),
        ("bounce-qmail.eml", ACME, ["hank@example.net"]),
        ("dsn-mixed-failed-delayed.eml", GLOBEX, ["rita@example.net"]),
    ],
)
def test_hard_bounce_suppresses_with_source_bounce(
    config: Path, tenants: redis.Redis, name: str, key: str, addresses: list[str]
) -> None:
    acted = act(config, tenants, sample(name, tenants))
    assert list(acted.suppressed) == addresses
    assert sorted(tenants.hkeys(key)) == addresses
    assert all(str(v).startswith("bounce ") for v in tenants.hvals(key))


def test_soft_bounces_become_hard_after_the_plan_s_count(
    config: Path, tenants: redis.Redis
) -> None:
    counter = "aup:{acme}:soft:quinn@example.com"
    for expected in (1, 2):
        acted = act(config, tenants, sample("dsn-postfix-450-expired.eml", tenants))
        assert acted.report.kind == "soft-bounce" and acted.suppressed == ()
        assert acted.counted == (f"quinn@example.com soft {expected}/3",)
        assert tenants.get(counter) == str(expected)
        assert 0 < tenants.ttl(counter) <= 7 * 86_400
    done = intake(config, sample("dsn-postfix-450-expired.eml", tenants))
    assert done.returncode == 0, done.stderr
    stored = tenants.hget(ACME, "quinn@example.com")
    assert stored is not None and str(stored).startswith("bounce ")
    assert tenants.exists(counter) == 0, "the count that suppressed is spent"
    detail = [f.get("detail", "") for _id, f in audit(tenants)]
    assert detail and detail[-1].startswith("3 soft bounces within 604800s")


def test_the_plan_sets_the_count_and_the_window(
    tmp_path: Path, redis_server: RedisServer, tenants: redis.Redis
) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    text = (PLANS_DIR / "plans.toml").read_text()
    marker = "[plan.standard]\n"
    plans.joinpath("plans.toml").write_text(
        text.replace(marker, marker + "soft_bounces_to_suppress = 1\nsoft_bounce_window = 3600\n")
    )
    config = write_config(tmp_path, redis_server.url, 8895)
    config.write_text(config.read_text().replace(str(PLANS_DIR), str(plans)))
    acted = act(config, tenants, sample("dsn-postfix-450-expired.eml", tenants))
    assert acted.suppressed == ("quinn@example.com",)
    # A mixed DSN's soft recipient counts too; globex is on another plan (3).
    acted = act(config, tenants, sample("dsn-mixed-failed-delayed.eml", tenants))
    assert acted.counted == ("sam@example.net soft 1/3", "tina@example.net delayed 1")
    assert 3500 < tenants.ttl("aup:{globex}:delayed:tina@example.net") <= 7 * 86_400


def test_delays_are_counted_and_never_suppress(config: Path, tenants: redis.Redis) -> None:
    for expected in range(1, 6):
        acted = act(config, tenants, sample("dsn-postfix-450-delayed.eml", tenants))
        assert acted.counted == (f"paul@example.com delayed {expected}",)
    assert tenants.exists(ACME) == 0
    assert tenants.exists("aup:{acme}:soft:paul@example.com") == 0


@pytest.mark.parametrize(
    "name",
    [
        "autoreply-vacation.eml",
        "autoreply-exchange-ooo.eml",
        "challenge-response-plain.eml",
        "dsn-challenge-response.eml",
        "arf-rfc6591-auth-failure.eml",
        "arf-not-spam.eml",
        "dsn-positive-delivered.eml",
        "plain-reply-quoting-a-bounce.eml",
    ],
)
def test_what_is_not_a_report_changes_nothing(
    config: Path, tenants: redis.Redis, name: str
) -> None:
    raw = sample(name, tenants)
    before = snapshot(tenants)
    done = intake(config, raw)
    assert done.returncode == 0, done.stderr
    assert snapshot(tenants) == before
    lines = [line for line in done.stderr.splitlines() if b"report " in line]
    assert len(lines) == 1 and b"not-a-report" in lines[0], done.stderr


@pytest.mark.parametrize(
    "name",
    [
        "hostile-deep-nesting.eml",
        "hostile-many-parts.eml",
        "hostile-broken-mime.eml",
        "hostile-no-header.eml",
    ],
)
def test_unparseable_is_discarded_with_a_warning(
    config: Path, tenants: redis.Redis, name: str
) -> None:
    before = snapshot(tenants)
    done = intake(config, sample(name))
    assert done.returncode == 0, done.stderr
    assert snapshot(tenants) == before
    assert b"unparseable" in done.stderr and b"WARNING" in done.stderr.upper()
    assert b"Traceback" not in done.stderr


def test_a_huge_report_is_read_within_the_bound(config: Path, tenants: redis.Redis) -> None:
    raw = sample("arf-yahoo-complainer-in-to.eml") + b"x" * (11 * 1024 * 1024)
    done = intake(config, raw)
    assert done.returncode == 0, done.stderr
    assert b"larger than 10 MiB" in done.stderr
    assert tenants.exists(ACME) == 0


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("arf-rfc5965-complex.eml", b"tenant unknown"),
        ("dsn-rfc3464-multi-recipient.eml", b"tenant unknown"),
    ],
)
def test_tenant_unknown_suppresses_no_one(
    config: Path, tenants: redis.Redis, name: str, why: bytes
) -> None:
    before = snapshot(tenants)
    done = intake(config, sample(name))
    assert done.returncode == 0, done.stderr
    assert why in done.stderr
    assert snapshot(tenants) == before


def test_a_tenant_named_but_not_stored_suppresses_no_one(
    config: Path, redis_client: redis.Redis
) -> None:
    redis_client.set("aup:domain:acme.example", "acme")  # a stale mapping, no tenant hash
    acted = act(config, redis_client, sample("arf-yahoo-complainer-in-to.eml"))
    assert acted.report.tenant == "acme" and acted.suppressed == ()
    assert "not a tenant here" in acted.note
    assert redis_client.exists(ACME) == 0


@pytest.mark.parametrize(
    "name", ["arf-yahoo-complainer-in-to.eml", "dsn-postfix-550-user-unknown.eml"]
)
def test_redis_down_defers(tmp_path: Path, name: str) -> None:
    config = write_config(tmp_path, f"redis://127.0.0.1:{free_port()}/0", 8895)
    done = intake(config, sample(name))
    assert done.returncode == 75, done.stderr
    assert b"try again later" in done.stderr and b"Traceback" not in done.stderr


def test_a_report_is_not_an_unsubscribe(config: Path, tenants: redis.Redis) -> None:
    """Without --reports the message is read as an unsubscribe, as before: no token, no change."""
    argv = [sys.executable, "-m", "aupmilter", "intake", "-c", str(config)]
    raw = sample("dsn-postfix-550-user-unknown.eml", tenants)
    done = subprocess.run(argv, input=raw, capture_output=True, env=child_env(), timeout=60)
    assert done.returncode in (64, 67), done.stderr
    assert tenants.exists(ACME) == 0


WEEK = 7 * 86_400


def delivered(client: redis.Redis, tenant: str, count: int) -> None:
    """The delivered recipients the end-of-message script would have charged by now."""
    window = ReputationPlan().counter(keys.RATE_DELIVERED)
    bucket = int(time.time() * 1000) // window.bucket_ms
    client.hset(
        keys.rate_counter(tenant, keys.RATE_DELIVERED, window.period_ms), str(bucket), count
    )


def test_complaints_past_the_threshold_suspend_with_the_figures(
    config: Path, tenants: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    delivered(tenants, "acme", 1000)
    raw = sample("arf-yahoo-complainer-in-to.eml", tenants)
    for _ in range(2):
        acted = act(config, tenants, raw)
        assert acted.rate.endswith(": review"), acted.rate
    assert tenants.hget("aup:tenant:acme", "status") == "active"
    with caplog.at_level("WARNING", logger="aupmilter.reports.intake"):
        acted = act(config, tenants, raw)
    assert acted.rate.endswith(": suspended"), acted.rate
    fields = tenants.hgetall("aup:tenant:acme")
    assert fields["status"] == "suspended"
    assert fields["reason"] == (
        "automatic suspension: complaint rate 0.30 % (3 complaints / 1000 delivered"
        " recipients; review 0.10 %, suspend 0.30 %, from 1000 delivered)"
    )
    assert fields["auto_suspended_at"] == fields["updated_at"]
    assert "suspended automatically" in caplog.text
    events = [f["event"] for _id, f in audit(tenants)]
    assert events.count("auto-review") == 2 and events[-1] == "auto-suspend"
    counted = tenants.hgetall(keys.SHARED_COUNTS)  # the metrics' automatic actions
    assert (counted["action:auto-review"], counted["action:auto-suspend"]) == ("2", "1")
    assert counted["suppression:complaint"] == "1", "the same complainer, suppressed once"
    # Suspended: further complaints suppress but are not counted, nothing else fires.
    acted = act(config, tenants, raw)
    assert acted.rate == "complaints not counted: tenant is suspended"
    assert [f["event"] for _id, f in audit(tenants)][-1] == "suppress"


def test_a_lifted_suspension_does_not_fire_again_on_the_same_evidence(
    config: Path, tenants: redis.Redis
) -> None:
    delivered(tenants, "acme", 1000)
    raw = sample("arf-yahoo-complainer-in-to.eml", tenants)
    for _ in range(3):
        act(config, tenants, raw)
    assert tenants.hget("aup:tenant:acme", "status") == "suspended"
    TenantAdmin(tenants).set_status("acme", "active", "investigated: a bought list, cleaned")
    acted = act(config, tenants, raw)
    assert acted.rate.startswith("complaint rate 0.10 % (1 complaints"), acted.rate
    assert tenants.hget("aup:tenant:acme", "status") == "active"


def test_the_same_report_sent_again_counts_nothing(config: Path, tenants: redis.Redis) -> None:
    delivered(tenants, "acme", 1000)
    raw = another(sample("arf-yahoo-complainer-in-to.eml", tenants))
    first = process_report(raw, load_config(config), tenants, time.time())
    assert first.rate.startswith("complaint rate 0.10 % (1 complaints"), first.rate
    again = process_report(raw, load_config(config), tenants, time.time())
    assert again.note == "the same report was acted on before: nothing counted again"
    assert again.rate == "" and again.suppressed == ()
    other = act(config, tenants, raw)
    assert other.rate.startswith("complaint rate 0.20 % (2 complaints"), other.rate


def test_complaints_below_the_minimum_volume_do_not_suspend(
    config: Path, tenants: redis.Redis
) -> None:
    delivered(tenants, "acme", 999)
    raw = sample("arf-yahoo-complainer-in-to.eml", tenants)
    for _ in range(5):
        acted = act(config, tenants, raw)
    assert acted.rate.endswith("below the minimum volume of 1000"), acted.rate
    assert tenants.hget("aup:tenant:acme", "status") == "active"
    assert [f["event"] for _id, f in audit(tenants)] == ["suppress"] * 5


def test_bounce_rate_review_logs_a_warning_and_an_audit_event(
    config: Path, tenants: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    delivered(tenants, "acme", 200)
    raw = sample("dsn-postfix-550-user-unknown.eml", tenants)
    with caplog.at_level("WARNING", logger="aupmilter.reports.intake"):
        for _ in range(10):
            acted = act(config, tenants, raw)
    assert acted.rate.startswith("bounce rate 5.00 % (10 bounces / 200"), acted.rate
    assert acted.rate.endswith(": review")
    assert "tenant acme needs review: bounce rate 5.00 %" in caplog.text
    [review] = [f for _id, f in audit(tenants) if f["event"] == "auto-review"]
    assert (review["measure"], review["events"], review["delivered"]) == ("bounces", "10", "200")
    assert tenants.hget("aup:tenant:acme", "status") == "active"


@pytest.mark.parametrize(
    ("name", "counted", "suppressed"),
    [
        ("dsn-testbed-450-delay-postmaster.eml", "refuse-450-full@example.net delayed 1", ()),
        ("dsn-testbed-450-bounce-postmaster.eml", "refuse-450-full@example.net soft 1/3", ()),
        ("dsn-testbed-550-bounce-postmaster.eml", None, ("refuse-550-gone@example.net",)),
    ],
)
def test_the_postmaster_copies_the_test_bed_s_postfix_made(
    config: Path,
    tenants: redis.Redis,
    name: str,
    counted: str | None,
    suppressed: tuple[str, ...],
) -> None:
    """What bounces@ receives in production: from double-bounce@, about acme's mail."""
    raw = sample(name)
    acted = process_report(raw, load_config(config), tenants, time.time(), "double-bounce@relay")
    assert acted.report.tenant == "acme", acted.report.reason
    assert acted.counted == ((counted,) if counted else ())
    assert acted.suppressed == suppressed

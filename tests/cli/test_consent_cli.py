"""`aup-milter consent` against a real Redis (modelled on test_suppress_cli)."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import redis

from aupmilter.cli.main import main
from aupmilter.store.keys import AUDIT_STREAM
from aupmilter.store.tenants import TenantAdmin
from tests.support import RedisServer

Cli = Callable[..., int]
LEDGER, SOURCES, LAST = "aup:{acme}:consent", "aup:{acme}:consent:src", "aup:{acme}:lastbulk"
NOW = int(time.time())
PLAN = """
[plan.ledger]
description = "consent enforced"
[plan.ledger.consent]
mode = "enforce"
lapse = "90d"
"""


@pytest.fixture
def config(redis_server: RedisServer, tmp_path: Path) -> Path:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "plans.toml").write_text(PLAN)
    path = tmp_path / "aup-milter.toml"
    path.write_text(f'[redis]\nurl = "{redis_server.url}"\n[policy]\nplans_dir = "policies"\n')
    return path


@pytest.fixture
def cli(redis_client: redis.Redis, config: Path) -> Cli:
    TenantAdmin(redis_client).add("acme", "ledger", ["acme"], ["acme.example"])

    def run(*args: str) -> int:
        return main(["consent", "-c", str(config), *args])

    return run


def test_import_reports_bad_lines_and_goes_on(
    cli: Cli, tmp_path: Path, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "ledger.csv"
    data.write_text(
        "email,consented_at,source\n"
        "a@example.net,2024-05-01T10:00:00Z,signup-form\n"
        "B@Example.NET,1714557600\n"
        "# a comment\n"
        "\n"
        "broken-line,2024-05-01\n"
        "c@example.net\n"
        "d@example.net,yesterday\n"
        f"e@example.net,{NOW + 10 * 86400}\n"
        "f@example.net,2024-05-01,\x01bad\n"
        "a@example.net,2023-01-01,older\n"
        "g@example.net,2024-06-01\n"
    )
    assert cli("import", "-t", "acme", str(data)) == 65
    captured = capsys.readouterr()
    assert f"{data}:6: expected local-part@domain" in captured.err
    assert f"{data}:7: no time of consent" in captured.err
    assert f"{data}:8: time 'yesterday' is neither epoch seconds nor ISO 8601" in captured.err
    assert f"{data}:9: time '{NOW + 10 * 86400}' is in the future" in captured.err
    assert f"{data}:10: source must be printable ASCII" in captured.err
    assert "3 recorded, 0 updated to a later consent, 1 kept" in captured.out
    assert "5 refused" in captured.out
    assert redis_client.hgetall(LEDGER) == {
        "a@example.net": "1714557600",
        "B@example.net": "1714557600",
        "g@example.net": "1717200000",
    }
    assert redis_client.hgetall(SOURCES) == {
        "a@example.net": "signup-form",
        "B@example.net": "import",
        "g@example.net": "import",
    }
    entries = cast(list[tuple[str, dict[str, str]]], redis_client.xrange(AUDIT_STREAM))
    events = [f for _id, f in entries]
    assert [(e["event"], e["added"], e["refused"]) for e in events] == [
        ("consent-import", "3", "5")
    ]

    newer = tmp_path / "newer.csv"
    newer.write_text("a@example.net,2025-01-01,reconfirmed\n")
    assert cli("import", "-t", "acme", "--source", "x", str(newer)) == 0
    assert "0 recorded, 1 updated to a later consent" in capsys.readouterr().out
    assert redis_client.hget(SOURCES, "a@example.net") == "reconfirmed"


def test_refusals(cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "x.csv"
    data.write_text("a@example.net,2024-01-01\n")
    assert cli("import", "-t", "ghost", str(data)) == 1
    assert "no tenant 'ghost'" in capsys.readouterr().err
    assert cli("import", "-t", "Bad Id", str(data)) == 1
    assert cli("import", "-t", "acme", str(tmp_path / "absent.csv")) == 1
    assert "cannot read" in capsys.readouterr().err


def test_show_remove_export_prune(
    cli: Cli, tmp_path: Path, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    redis_client.hset(LEDGER, mapping={"old@example.net": NOW - 100 * 86400,
                                       "fresh@example.net": NOW - 86400})  # fmt: skip
    redis_client.hset(SOURCES, "fresh@example.net", "shop")
    redis_client.hset(
        LAST, mapping={"fresh@example.net": NOW, "ancient@example.net": NOW - 200 * 86400}
    )

    assert cli("show", "-t", "acme", "--json", "old@example.net") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["standing"] == "lapsed" and shown["lapses_at"] == NOW - 10 * 86400
    assert cli("show", "-t", "acme", "fresh@EXAMPLE.net") == 0
    text = capsys.readouterr().out
    assert "standing:     current" in text and "source:       shop" in text

    assert cli("export", "-t", "acme") == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["address", "consented_at", "source", "last_bulk"]
    assert sorted(r[0] for r in rows[1:]) == ["fresh@example.net", "old@example.net"]
    exported = tmp_path / "export.csv"
    exported.write_text("\n".join(",".join(r) for r in rows) + "\n")
    redis_client.delete(LEDGER)
    assert cli("import", "-t", "acme", str(exported)) == 0, "an export imports back"
    assert "2 recorded" in capsys.readouterr().out

    assert cli("prune", "-t", "acme") == 0, "default: the plan's 90 days + 30"
    assert "1 last-bulk entries older than 120 days dropped; 1 left" in capsys.readouterr().out
    assert redis_client.hkeys(LAST) == ["fresh@example.net"]

    assert cli("remove", "-t", "acme", "fresh@example.net", "nobody@example.net") == 0
    out = capsys.readouterr().out
    assert "fresh@example.net: removed" in out and "nobody@example.net: was not recorded" in out
    assert not redis_client.hexists(LAST, "fresh@example.net")


def test_large_import_with_progress(
    cli: Cli, tmp_path: Path, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = 120_000
    data = tmp_path / "big.csv"
    with data.open("w") as handle:
        for i in range(lines):
            handle.write(f"user{i}@example.net,{NOW - i}\n" if i % 1000 != 999 else "bad line\n")
    started = time.monotonic()
    assert cli("import", "-t", "acme", "--progress", "always", str(data)) == 65
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    refused = lines // 1000
    assert f"{lines - refused} recorded, 0 updated" in captured.out
    assert "[##############################] 100%" in captured.err, "the bar ends full"
    assert f"... and {refused - 100} more refused lines" in captured.err
    assert redis_client.hlen(LEDGER) == lines - refused
    assert elapsed < 60, f"import of {lines} lines took {elapsed:.1f} s"

"""`aup-milter suppress` against a real Redis."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from aupmilter.cli.main import main
from aupmilter.store.keys import AUDIT_STREAM
from aupmilter.store.tenants import TenantAdmin
from tests.support import RedisServer

Cli = Callable[..., int]


@pytest.fixture
def cli(redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path) -> Cli:
    TenantAdmin(redis_client).add("acme", "standard", ["acme"], ["acme.example"])
    missing_config = tmp_path / "absent.toml"

    def run(*args: str) -> int:
        return main(["suppress", "-c", str(missing_config), "--redis", redis_server.url, *args])

    return run


def test_add_list_remove(
    cli: Cli, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("add", "-t", "acme", "Bob@Example.NET", "carol@example.net") == 0
    out = capsys.readouterr().out
    assert "Bob@example.net: suppressed (manual," in out
    assert cli("add", "-t", "acme", "--source", "complaint", "Bob@example.net") == 0
    assert "already suppressed (manual" in capsys.readouterr().out
    assert cli("list", "-t", "acme", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted((e["address"], e["source"]) for e in listed) == [
        ("Bob@example.net", "manual"),
        ("carol@example.net", "manual"),
    ]
    assert cli("remove", "-t", "acme", "carol@example.net", "nobody@example.net") == 0
    out = capsys.readouterr().out
    assert "carol@example.net: removed" in out and "nobody@example.net: was not suppressed" in out
    assert redis_client.hkeys("aup:{acme}:suppressed") == ["Bob@example.net"]
    assert redis_client.xlen(AUDIT_STREAM) == 4  # add, add, add again, remove


def test_refusals(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("add", "-t", "ghost", "a@example.net") == 1
    assert "no tenant 'ghost'" in capsys.readouterr().err
    assert cli("add", "-t", "Bad Id", "a@example.net") == 1
    assert cli("add", "-t", "acme", "--source", "whim", "a@example.net") == 1
    assert "invalid source" in capsys.readouterr().err
    assert cli("add", "-t", "acme", "not-an-address", "ok@example.net") == 65
    captured = capsys.readouterr()
    assert "'not-an-address'" in captured.err and "ok@example.net: suppressed" in captured.out


def test_redis_down_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    code = main(["suppress", "-c", str(tmp_path / "x.toml"), "--redis", url,
                 "list", "-t", "acme"])  # fmt: skip
    assert code == 69 and "cannot use Redis" in capsys.readouterr().err


def test_import_reports_bad_lines_and_goes_on(
    cli: Cli,
    tmp_path: Path,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "list.csv"
    data.write_text(
        "email,source\n"
        "a@example.net\n"
        "b@Example.net,bounce\n"
        "# a comment\n"
        "\n"
        "broken-line\n"
        "c@example.net,unknown-source\n"
        '"d@example.net",complaint\n'
        "a@example.net\n"
    )
    assert cli("import", "-t", "acme", str(data)) == 65
    captured = capsys.readouterr()
    assert f"{data}:6: expected local-part@domain" in captured.err
    assert f"{data}:7: unknown source 'unknown-source'" in captured.err
    assert "3 suppressed, 1 already suppressed, 2 refused" in captured.out
    assert redis_client.hgetall("aup:{acme}:suppressed").keys() == {
        "a@example.net",
        "b@example.net",
        "d@example.net",
    }
    assert str(redis_client.hget("aup:{acme}:suppressed", "b@example.net")).startswith("bounce ")


def test_large_import_with_progress_and_export(
    cli: Cli,
    tmp_path: Path,
    redis_client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = 120_000
    data = tmp_path / "big.csv"
    with data.open("w") as handle:
        for i in range(lines):
            handle.write(f"user{i}@example.net\n" if i % 1000 != 999 else "bad line\n")
    started = time.monotonic()
    assert cli("import", "-t", "acme", "--progress", "always", str(data)) == 65
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    refused = lines // 1000
    assert f"{lines - refused} suppressed, 0 already suppressed, {refused} refused" in captured.out
    assert "[##############################] 100%" in captured.err, "the bar ends full"
    assert f"... and {refused - 100} more refused lines" in captured.err
    assert redis_client.hlen("aup:{acme}:suppressed") == lines - refused
    assert elapsed < 60, f"import of {lines} lines took {elapsed:.1f} s"

    assert cli("export", "-t", "acme") == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == ["address", "source", "since"]
    assert len(rows) == lines - refused + 1
    assert {r[1] for r in rows[1:]} == {"manual"}

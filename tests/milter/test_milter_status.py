"""`aup-milter status` against the real daemon and Redis: Nagios exit codes, text and JSON.

Run as a monitoring system runs it: a subprocess, its exit status and its
first line. Each failure is made for real: a socket nothing listens on, a
listener that never answers, a Redis port nothing serves, SCRIPT FLUSH, a
config file with mistakes.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.milter.harness import Daemon, StartDaemon, child_env
from tests.support import RedisServer, free_port

OK, WARNING, CRITICAL, UNKNOWN, USAGE = 0, 1, 2, 3, 64
RCPTS = ["r@dest.example"]


def status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aupmilter", "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=child_env(),
    )


def status_json(*args: str) -> tuple[int, dict[str, Any]]:
    done = status(*args, "--json")
    return done.returncode, json.loads(done.stdout)


def mail_once(daemon: Daemon, queue_id: str = "ST1") -> None:
    """One message through the daemon: it loads its scripts on first use."""
    with daemon.client() as client:
        result = client.send_message("a@acme.example", RCPTS, auth_login="acme", queue_id=queue_id)
    assert result.refused_at is None and result.eom is not None, result


@pytest.fixture
def served(start_daemon: StartDaemon, acme: str) -> Daemon:
    """The daemon with mail passed through it, so its scripts are in Redis."""
    daemon = start_daemon()
    mail_once(daemon)
    return daemon


@pytest.fixture
def silent_listener(socket_dir: Path) -> Iterator[str]:
    """A unix socket that accepts connections and never says a word."""
    path = socket_dir / "silent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(8)
        yield f"unix:{path}"


def test_a_serving_daemon_is_ok(served: Daemon) -> None:
    mark = served.log.mark()
    done = status("-c", str(served.config_path))
    assert done.returncode == OK, done.stdout + done.stderr
    first, *rest = done.stdout.splitlines()
    assert first.startswith("AUP-MILTER OK - milter answers (protocol 6) in "), first
    assert (
        "; redis " in first
        and "; scripts loaded; tenant registry present; config valid | milter=" in first
    ), first
    assert [line.split(":")[0] for line in rest] == [
        "milter",
        "redis",
        "scripts",
        "registry",
        "config",
    ]
    assert f"{served.address} answered option negotiation" in rest[0]
    # Negotiation and quit: no transaction, nothing for the daemon to complain about.
    complaints = [e for e in served.log.entries(mark) if e.get("level") in ("warning", "error")]
    assert complaints == []


def test_json_has_each_check_with_status_detail_and_latency(served: Daemon) -> None:
    code, report = status_json("-c", str(served.config_path))
    assert code == OK
    assert report["status"] == "ok" and report["exit_code"] == OK
    assert report["summary"].startswith("AUP-MILTER OK - ")
    checks = report["checks"]
    assert list(checks) == ["milter", "redis", "scripts", "registry", "config"]
    for name, check in checks.items():
        assert check["status"] == "ok", name
        assert isinstance(check["detail"], str) and check["detail"], name
        assert "latency_ms" in check, name
    assert checks["milter"]["latency_ms"] > 0 and checks["redis"]["latency_ms"] > 0
    assert checks["milter"]["version"] == 6 and checks["milter"]["address"] == served.address
    assert "quarantine" in checks["milter"]["actions"]
    assert sorted(checks["scripts"]["loaded"]) == ["charge.lua", "sender_state.lua"]
    assert checks["scripts"]["missing"] == []
    assert checks["config"]["problems"] == []


def test_scripts_not_loaded_warn_until_mail_passes(
    served: Daemon, shared_redis: RedisServer
) -> None:
    with shared_redis.client() as client:
        client.script_flush()
    code, report = status_json("-c", str(served.config_path))
    assert code == WARNING, report
    assert report["status"] == "warning"
    assert report["summary"].startswith("AUP-MILTER WARNING - ")
    assert sorted(report["checks"]["scripts"]["missing"]) == ["charge.lua", "sender_state.lua"]
    assert report["checks"]["milter"]["status"] == "ok"

    mail_once(served, "ST2")  # the daemon reloads what it needs by itself
    assert status("-c", str(served.config_path)).returncode == OK


def test_milter_down_is_critical(served: Daemon, socket_dir: Path) -> None:
    dead = socket_dir / "dead.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(str(dead))  # the file exists, nothing listens: connection refused
        done = status("-c", str(served.config_path), "--socket", f"unix:{dead}")
    assert done.returncode == CRITICAL, done.stdout
    first = done.stdout.splitlines()[0]
    assert first.startswith(f"AUP-MILTER CRITICAL - milter: cannot connect to unix:{dead}: ")
    assert "redis " in first and "scripts loaded" in first and "config valid" in first

    missing = status("-c", str(served.config_path), "--socket", f"unix:{socket_dir}/none.sock")
    assert missing.returncode == CRITICAL
    assert "No such file or directory" in missing.stdout


def test_a_stopped_daemon_is_critical(served: Daemon) -> None:
    served.kill()
    code, report = status_json("-c", str(served.config_path))
    assert code == CRITICAL
    assert report["checks"]["milter"]["status"] == "critical"
    assert report["checks"]["redis"]["status"] == "ok"


def test_a_milter_that_does_not_answer_is_critical_within_the_timeout(
    served: Daemon, silent_listener: str
) -> None:
    done = status("-c", str(served.config_path), "--socket", silent_listener, "--timeout", "0.5")
    assert done.returncode == CRITICAL, done.stdout
    assert "did not answer option negotiation in time" in done.stdout.splitlines()[0]


def test_redis_down_is_critical_and_scripts_unknown(served: Daemon) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    code, report = status_json("-c", str(served.config_path), "--redis", url, "--timeout", "1")
    assert code == CRITICAL, report
    checks = report["checks"]
    assert checks["redis"]["status"] == "critical" and checks["redis"]["latency_ms"] is None
    assert "Connection refused" in checks["redis"]["detail"]
    assert checks["scripts"]["status"] == "unknown"
    assert checks["milter"]["status"] == "ok"
    assert report["summary"].startswith("AUP-MILTER CRITICAL - milter answers (protocol 6)")


def test_a_redis_password_is_not_shown(served: Daemon) -> None:
    url = f"redis://ops:s3cret@127.0.0.1:{free_port()}/0"
    done = status("-c", str(served.config_path), "--redis", url, "--timeout", "1")
    assert done.returncode == CRITICAL
    assert "s3cret" not in done.stdout and "ops:***@127.0.0.1" in done.stdout


def test_a_bad_config_is_critical_with_its_problems_listed(served: Daemon) -> None:
    served.reconfigure(policy={"on_store_error": "maybe"}, milter={"timeout": 0})
    code, report = status_json("-c", str(served.config_path))
    assert code == CRITICAL
    config = report["checks"]["config"]
    assert config["status"] == "critical" and len(config["problems"]) == 2
    assert any("on_store_error" in p for p in config["problems"])
    # The socket and Redis come from the file all the same: both still answer.
    assert report["checks"]["milter"]["status"] == "ok"
    assert report["checks"]["redis"]["status"] == "ok"
    assert "config invalid (2 problems)" in report["summary"]

    text = status("-c", str(served.config_path)).stdout.splitlines()
    assert text[-2].startswith("  ") and "on_store_error" in "".join(text[-2:])


def test_a_missing_config_is_critical(served: Daemon, tmp_path: Path) -> None:
    redis_url = str(served.settings["redis"]["url"])
    missing = tmp_path / "none.toml"
    code, report = status_json("-c", str(missing), "--socket", served.address, "--redis", redis_url)
    assert code == CRITICAL
    assert report["checks"]["config"]["problems"] == [f"{missing}: file not found"]
    assert report["checks"]["milter"]["status"] == "ok"


def test_systemd_listen_without_socket_is_unknown(served: Daemon) -> None:
    served.reconfigure(milter={"listen": "systemd"})
    done = status("-c", str(served.config_path))
    assert done.returncode == UNKNOWN, done.stdout
    assert done.stdout.startswith("AUP-MILTER UNKNOWN - milter not checked")
    assert "--socket" in done.stdout

    given = status("-c", str(served.config_path), "--socket", served.address)
    assert given.returncode == OK, given.stdout


@pytest.mark.parametrize(
    "args",
    [["--socket", "systemd"], ["--socket", "tcp:1"], ["--redis", "http://x"], ["--timeout", "0"]],
    ids=str,
)
def test_usage_errors_exit_64(args: list[str]) -> None:
    done = status(*args)
    assert done.returncode == USAGE, done.stderr
    assert "usage: aup-milter status" in done.stderr

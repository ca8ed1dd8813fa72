"""`aup-milter status` without a daemon: the verdict of the checks, the script list, the probe.

The daemon and Redis cases are in tests/milter/test_milter_status.py; here
only what needs neither: how check results add up to one Nagios status, the
redaction of Redis passwords, and the milter probe against sockets that are
not a milter (real sockets, served by a thread of the test).
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from aupmilter import exitcodes
from aupmilter.cli import status
from aupmilter.config import ListenAddress
from aupmilter.miltercheck import MilterCheckError, negotiate, socket_target
from aupmilter.store.client import load_script

SCRIPTS = Path(status.__file__).resolve().parents[1] / "store" / "scripts"


def check(name: str, state: str, latency: float | None = None) -> status.Check:
    return status.Check(name, state, f"{name} {state}", f"{name} is {state}", latency)


@pytest.mark.parametrize(
    ("states", "worst", "code"),
    [
        (["ok", "ok"], "ok", 0),
        (["ok", "warning"], "warning", 1),
        (["warning", "unknown"], "unknown", 3),
        (["unknown", "critical", "warning"], "critical", 2),
        ([], "ok", 0),
    ],
)
def test_the_worst_check_decides_the_exit_status(states: list[str], worst: str, code: int) -> None:
    report = status.Report([check(f"c{i}", s) for i, s in enumerate(states)])
    assert report.status == worst
    assert report.exit_code == code


def test_the_codes_are_nagios_and_live_in_the_table() -> None:
    assert (exitcodes.EX_OK, exitcodes.EX_WARNING) == (0, 1)
    assert (exitcodes.EX_CRITICAL, exitcodes.EX_UNKNOWN) == (2, 3)


def test_summary_line_then_one_line_per_check_and_perfdata() -> None:
    report = status.Report([check("milter", "ok", 2.0), check("config", "critical")])
    report.checks[1].extra["problems"] = ["a.toml: key 'x': wrong", "a.toml: key 'y': wrong"]
    lines = report.text().splitlines()
    assert lines[0] == "AUP-MILTER CRITICAL - milter ok; config critical | milter=2.000ms;;;0"
    assert lines[1:] == [
        "milter: OK - milter is ok",
        "config: CRITICAL - config is critical",
        "  a.toml: key 'x': wrong",
        "  a.toml: key 'y': wrong",
    ]
    assert status.Report([check("config", "ok")]).summary == "AUP-MILTER OK - config ok"


def test_the_scripts_are_the_packaged_lua_files_with_redis_py_shas() -> None:
    names = status.script_names()
    on_demand = {"warmup_mark.lua"}  # a warm-up change loads it, rarely: not expected loaded
    assert names == sorted(p.name for p in SCRIPTS.glob("*.lua") if p.name not in on_demand)
    assert "charge.lua" in names and "sender_state.lua" in names
    unconnected = redis.Redis(port=1)  # register_script computes the sha without a connection
    for name in names:
        text = load_script(name)
        sha = unconnected.register_script(text).sha
        assert sha == hashlib.sha1(text.encode("utf-8")).hexdigest()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@redis.example:6380/2", "redis://:***@redis.example:6380/2"),
        ("rediss://ops:pw@redis.example/0", "rediss://ops:***@redis.example/0"),
        ("unix:///run/redis/redis.sock?db=1", "unix:///run/redis/redis.sock?db=1"),
    ],
)
def test_passwords_are_redacted(url: str, shown: str) -> None:
    assert status.redact(url) == shown


def test_socket_targets() -> None:
    assert socket_target(ListenAddress("unix", path=Path("/run/m.sock"))) == (
        socket.AF_UNIX,
        "/run/m.sock",
    )
    assert socket_target(ListenAddress("inet", port=8891)) == (socket.AF_INET, ("127.0.0.1", 8891))
    assert socket_target(ListenAddress("inet6", host="::1", port=9)) == (
        socket.AF_INET6,
        ("::1", 9),
    )
    with pytest.raises(MilterCheckError):
        socket_target(ListenAddress("systemd"))


@pytest.fixture
def answering() -> Iterator[tuple[ListenAddress, list[bytes]]]:
    """A TCP listener on loopback that answers one connection with canned bytes."""
    replies: list[bytes] = []
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(5)

    def serve() -> None:
        """One connection: read the offer, send the canned reply (or close), read the quit."""
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(64)
                if replies:
                    conn.sendall(replies[0])
                    conn.recv(64)
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield ListenAddress("inet", host="127.0.0.1", port=server.getsockname()[1]), replies
    thread.join(timeout=5)
    server.close()


def test_a_web_server_is_not_a_milter(answering: tuple[ListenAddress, list[bytes]]) -> None:
    listen, replies = answering
    replies.append(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(MilterCheckError, match="not a milter reply"):
        negotiate(listen, timeout=2)


def test_a_close_without_answer_is_an_error(answering: tuple[ListenAddress, list[bytes]]) -> None:
    listen, _ = answering
    with pytest.raises(MilterCheckError, match="closed the connection"):
        negotiate(listen, timeout=2)


def test_an_optneg_reply_is_read(answering: tuple[ListenAddress, list[bytes]]) -> None:
    listen, replies = answering
    body = b"O" + (6).to_bytes(4, "big") + (0x21).to_bytes(4, "big") + (0).to_bytes(4, "big")
    replies.append(len(body).to_bytes(4, "big") + body)
    answer = negotiate(listen, timeout=2)
    assert (answer.version, answer.actions, answer.protocol) == (6, 0x21, 0)
    assert answer.action_names == ("add-header", "quarantine")
    assert answer.seconds > 0


def test_another_reply_than_optneg_is_an_error(
    answering: tuple[ListenAddress, list[bytes]],
) -> None:
    listen, replies = answering
    replies.append(b"\x00\x00\x00\x01c")  # SMFIR_CONTINUE: a milter, but not answering OPTNEG
    with pytest.raises(MilterCheckError, match="not an SMFIC_OPTNEG reply"):
        negotiate(listen, timeout=2)

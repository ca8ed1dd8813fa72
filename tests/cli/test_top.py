"""`aup-milter top`: the model (events in, rows out) table by table, one rendering
checked as text, and one frame printed from a real Redis."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import redis
from rich.console import Console

from aupmilter.cli import top_model
from aupmilter.cli.main import main
from aupmilter.cli.top import cbreak, quit_pressed, render
from aupmilter.cli.top_model import ActionRow, Frame, Rate, bar, frame
from aupmilter.exitcodes import EX_OK
from aupmilter.policy.limits import Scope, Unit, Window, WindowFill
from aupmilter.policy.window_view import window_status
from aupmilter.store import keys
from testbed.parts.service import python_env
from tests.support import RedisServer, as_from_a_terminal

NOW = 1_796_083_200.0  # 2026-12-01T00:00:00Z


def verdict(
    ago: float, tenant: str, verdict: str = "accept", **fields: str
) -> tuple[str, dict[str, str]]:
    at = NOW - ago
    event = {"event": "verdict", "ts": f"{at:.3f}", "tenant": tenant, "verdict": verdict}
    event.update(fields)
    return f"{int(at * 1000)}-0", event


def event(ago: float, kind: str, **fields: str) -> tuple[str, dict[str, str]]:
    at = NOW - ago
    return f"{int(at * 1000)}-0", {"event": kind, "ts": str(at), **fields}


@pytest.mark.parametrize(
    ("entries", "tenants", "senders"),
    [
        ([], [], []),
        # Recipients per minute: passing verdicts of the last minute, less suppressed ones.
        (
            [
                verdict(5, "acme", recipients="10", auth="bob", sender="b@acme.example"),
                verdict(10, "acme", recipients="4", sender="news@ACME.example"),
                verdict(20, "globex", "quarantine", recipients="30", sender="x@globex.example"),
                verdict(30, "acme", recipients="3", auth="bob", suppressed='["a@x", "b@y"]'),
            ],
            [("globex", 30, 1), ("acme", 15, 3)],
            [
                ("globex", "x@globex.example", 30, 1),
                ("acme", "bob", 11, 2),
                ("acme", "news@acme.example", 4, 1),
            ],
        ),
        # Older than a minute, refused, or without a tenant: not a rate; shadow mode counts.
        (
            [
                verdict(61, "acme", recipients="50"),
                verdict(5, "acme", "reject", recipients="50"),
                verdict(5, "", recipients="50"),
                verdict(5, "initech", "would-reject", recipients="7", sender=""),
            ],
            [("initech", 7, 1)],
            [("initech", "<>", 7, 1)],
        ),
    ],
)
def test_busiest_tenants_and_senders(
    entries: list[tuple[str, dict[str, str]]],
    tenants: list[tuple[str, int, int]],
    senders: list[tuple[str, str, int, int]],
) -> None:
    made = frame(entries, NOW, 600)
    assert [(r.tenant, r.recipients, r.messages) for r in made.tenants] == tenants
    assert [(r.tenant, r.sender, r.recipients, r.messages) for r in made.senders] == senders


@pytest.mark.parametrize(
    ("entries", "refusals", "held", "actions"),
    [
        (
            [
                verdict(5, "acme", "tempfail", rule="window"),
                event(6, "recipient-refused", tenant="acme", rule="window"),
                event(7, "recipient-refused", tenant="acme", rule="recipient-cap"),
                verdict(8, "acme", "reject", rule="alignment"),
                verdict(9, "acme", "reject"),
                verdict(700, "acme", "reject", rule="old"),  # before the span
            ],
            [("window", 2), ("-", 1), ("alignment", 1), ("recipient-cap", 1)],
            (0, []),
            [],
        ),
        (
            [
                verdict(5, "acme", "quarantine", rule="tenant-suspended"),
                verdict(400, "acme", "quarantine", rule="near-cap-repeat"),
                verdict(6, "globex", "quarantine"),
                verdict(7, "globex", "would-quarantine"),  # shadow: passed, not held
            ],
            [],
            (3, [("acme", 2), ("globex", 1)]),
            [],
        ),
        (
            [
                event(100, "auto-suspend", tenant="acme", measure="complaints", detail="0.5 %"),
                event(10, "sender-suspended", tenant="acme", subject="bob", detail="offence 1"),
                event(20, "lifted", tenant="acme", subject="bob"),  # by hand: not automatic
                event(30, "window-reset", tenant="acme", subject="bob"),
            ],
            [],
            (0, []),
            [
                ("sender-suspended", "acme", "bob", "offence 1"),
                ("auto-suspend", "acme", "complaints", "0.5 %"),
            ],
        ),
    ],
)
def test_refusals_held_and_actions(
    entries: list[tuple[str, dict[str, str]]],
    refusals: list[tuple[str, int]],
    held: tuple[int, list[tuple[str, int]]],
    actions: list[tuple[str, str, str, str]],
) -> None:
    made = frame(entries, NOW, 600)
    assert made.refusals == refusals
    assert (made.held, made.held_by_tenant) == held
    assert [(a.event, a.tenant, a.subject, a.detail) for a in made.actions] == actions
    assert made.events == len([e for e in entries if float(e[1]["ts"]) >= NOW - 600])


def test_rows_are_cut_to_top_n() -> None:
    entries = [verdict(1, f"t{i:02}", recipients=str(i)) for i in range(30)]
    made = frame(entries, NOW, 600, top=3)
    assert [r.tenant for r in made.tenants] == ["t29", "t28", "t27"]
    assert top_model.busiest_senders(made) == [("t29", "<>"), ("t28", "<>"), ("t27", "<>")]


@pytest.mark.parametrize(
    ("fraction", "text"),
    [(0.0, "[..........]"), (0.5, "[#####.....]"), (0.84, "[########..]"), (1.7, "[##########]")],
)
def test_bars(fraction: float, text: str) -> None:
    assert bar(fraction, 10) == text


HOUR = Window("sender-recipients-hour", Scope.SENDER, Unit.RECIPIENTS, 2000, 3_600_000)
DAY = Window("tenant-messages-day", Scope.TENANT, Unit.MESSAGES, 100, 86_400_000)


def test_one_frame_rendered_as_text() -> None:
    now_ms = int(NOW * 1000)
    full = window_status(DAY, 100, WindowFill(100, ((now_ms // 1_440_000, 100),)), now_ms)
    half = window_status(HOUR, 2000, WindowFill(1000), now_ms, "bob")
    shown = Frame(
        now=NOW,
        span_s=600,
        tenants=[Rate("acme", None, 1200, 40)],
        senders=[Rate("acme", "bob", 1000, 30)],
        refusals=[("window", 7)],
        held=2,
        held_by_tenant=[("acme", 2)],
        actions=[
            ActionRow(NOW - 30, "sender-suspended", "acme", "bob", "near-cap-repeat offence 1")
        ],
        windows=[("acme", full), ("acme", half)],
        events=321,
    )
    console = Console(record=True, width=120, color_system=None)
    console.print(render(shown, "redis://127.0.0.1:6379/0"))
    text = console.export_text()
    lines = [line.rstrip() for line in text.splitlines()]
    assert lines[0] == (
        "aup-milter top  2026-12-01 00:00:00Z  321 events in the last 10 min  held: 2"
        "  redis://127.0.0.1:6379/0"
    )
    for title in (
        "Busiest tenants (last minute)",
        "Busiest senders (last minute)",
        "Refusals by rule (last 10 min)",
        "Held in the hold queue (last 10 min)",
        "Window fill",
        "Automatic actions (last 10 min)",
    ):
        assert any(title in line for line in lines), title
    row = next(line for line in lines if "tenant-messages-day" in line)
    assert row.split() == [
        "acme",
        "tenant-messages-day",
        "-",
        "[" + "#" * 20 + "]",
        "100/100",
        "1d",
    ]
    row = next(line for line in lines if "sender-recipients-hour" in line)
    assert row.split()[:5] == [
        "acme",
        "sender-recipients-hour",
        "bob",
        "[##########..........]",
        "1000/2000",
    ]
    assert any(line.split()[:3] == ["acme", "1200", "40"] for line in lines)
    assert any("window" in line and "7" in line.split() for line in lines)
    action = next(line for line in lines if "sender-suspended" in line)
    assert action.split()[:4] == ["23:59:30", "sender-suspended", "acme", "bob"]
    assert "near-cap-repeat offence 1" in action


def test_once_prints_one_plain_frame_from_redis(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    now = time.time()
    for i in range(3):
        fields = {"event": "verdict", "ts": f"{now - i:.3f}", "tenant": "acme", "verdict": "accept",
                  "recipients": "5", "auth": "bob"}  # fmt: skip
        redis_client.xadd(keys.AUDIT_STREAM, fields)  # type: ignore[arg-type]
    redis_client.xadd(
        keys.AUDIT_STREAM,
        {"event": "verdict", "ts": str(now), "tenant": "acme", "verdict": "quarantine"},
    )
    absent = str(tmp_path / "absent.toml")
    assert main(["top", "-c", absent, "--redis", redis_server.url, "--once"]) == EX_OK
    out = capsys.readouterr().out
    assert "4 events in the last 10 min  held: 1" in out
    # The held message passed into the MTA too: a message, no recipients counted.
    assert any(
        line.split()[:6] == ["acme", "15", "4", "acme", "bob", "15"] for line in out.splitlines()
    ), out
    assert "\x1b[" not in out  # plain text: no escape sequences


def test_q_quits_and_other_keys_do_not(tmp_path: Path) -> None:
    read, write = os.pipe()
    try:
        os.write(write, b"x")
        assert quit_pressed(read, 0.05) is False
        os.write(write, b"q")
        assert quit_pressed(read, 1.0) is True
    finally:
        os.close(read)
        os.close(write)
    with (tmp_path / "f").open("w") as plain, cbreak(plain) as fd:
        assert fd is None  # not a terminal: nothing to set
    assert quit_pressed(None, 0.01) is False


def _on_a_terminal(url: str) -> tuple[subprocess.Popen[bytes], int]:
    """`aup-milter top` with a pseudo-terminal for its stdin and stdout, 120x40."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    command = [sys.executable, "-m", "aupmilter", "top", "-c", "/nonexistent", "--redis", url]
    env = python_env({"TERM": "xterm"})
    process = subprocess.Popen(
        [*command, "--interval", "0.2"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        preexec_fn=as_from_a_terminal,  # SIGINT as a terminal gives it, whoever runs the tests
    )
    os.close(slave)
    return process, master


def _read_until(master: int, wanted: bytes, timeout: float = 15.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                seen += os.read(master, 65536)
            except OSError:
                break
    return seen


@pytest.mark.parametrize("stop", ["q", "ctrl-c"])
def test_on_a_terminal_it_redraws_until_q_or_ctrl_c(redis_server: RedisServer, stop: str) -> None:
    process, master = _on_a_terminal(redis_server.url)
    try:
        seen = _read_until(master, b"Busiest tenants")
        assert b"Busiest tenants" in seen and b"(q quits)" in seen
        seen = _read_until(master, b"Busiest tenants")  # redrawn
        assert b"Busiest tenants" in seen
        if stop == "q":
            os.write(master, b"q")
        else:
            process.send_signal(signal.SIGINT)
        assert process.wait(10) == EX_OK
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)

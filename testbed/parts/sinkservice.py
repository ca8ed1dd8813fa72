"""Where the stack's Postfix relays to: ``testbed.sink`` (keeps mail) or ``smtp-sink`` (drops it).

``files``: every message is an .eml file in ``mail_dir``, with the envelope
the sink saw (what the end-to-end tests read). ``smtp-sink``: Postfix's own
load tool, which keeps nothing and costs little (for benchmarks).
"""

from __future__ import annotations

import email
import email.policy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Literal, get_args

from testbed.client import TOKEN_HEADER
from testbed.parts.service import HOST, Service, command_line, python_env, require_free_port
from testbed.proc import TestbedError, smtp_banner, wait_until

SinkKind = Literal["files", "smtp-sink"]
# smtp-sink refuses to run as root unless told whose privileges to drop to.
SMTP_SINK_USER = "postfix"
SMTP_SINK_BACKLOG = 256


@dataclass(frozen=True)
class SinkMessage:
    """One message delivered to the sink, with the envelope the sink recorded."""

    path: Path
    mail_from: str
    rcpt_to: tuple[str, ...]
    message: EmailMessage

    @property
    def raw(self) -> bytes:
        return self.path.read_bytes()


def read_sink_message(path: Path) -> SinkMessage:
    raw = path.read_bytes()
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    mail_from = str(message.get("Return-Path", "")).strip().strip("<>")
    rcpts = str(message.get("X-Sink-Rcpt-To", ""))
    rcpt_to = tuple(r.strip().strip("<>") for r in rcpts.split(",") if r.strip())
    return SinkMessage(path=path, mail_from=mail_from, rcpt_to=rcpt_to, message=message)


class SinkService(Service):
    """An SMTP sink of ``kind`` on ``host:port``."""

    def __init__(
        self,
        run_dir: Path,
        port: int,
        kind: SinkKind = "files",
        *,
        host: str = HOST,
        python: str = sys.executable,
        timeout: float = 30.0,
    ) -> None:
        if kind not in get_args(SinkKind):
            raise ValueError(f"sink must be one of {get_args(SinkKind)}, not {kind!r}")
        files = kind == "files"
        super().__init__(
            run_dir,
            stem="sink",
            marker="testbed.sink" if files else "smtp-sink",
            what="SMTP sink" if files else "smtp-sink",
            timeout=timeout,
        )
        self.port = port
        self.kind: SinkKind = kind
        self.host = host
        self.python = python

    @property
    def mail_dir(self) -> Path:
        return self.run_dir / "mail"

    def start(self) -> None:
        """Start it unless it already runs from ``run_dir``; return once it greets."""
        if self.running:
            return
        require_free_port(self.host, self.port, "the SMTP sink", self.run_dir)
        if self.kind == "smtp-sink":
            self._start_smtp_sink()
            return
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        argv = command_line(
            self.python, "-m", "testbed.sink",
            host=self.host, port=self.port, maildir=self.mail_dir, pidfile=self.pidfile,
        )  # fmt: skip
        # The sink writes its pidfile itself once bound; accepting SMTP is the real test.
        self.launch(argv, env=python_env(), record_pid=False)
        self.wait_ready(lambda: self.pidfile.exists() and self.greets())

    def _start_smtp_sink(self) -> None:
        # smtp-sink has no pidfile option: the pid is recorded for it.
        argv = [
            "smtp-sink",
            "-u",
            SMTP_SINK_USER,
            f"{self.host}:{self.port}",
            str(SMTP_SINK_BACKLOG),
        ]
        try:
            self.launch(argv)
        except FileNotFoundError:
            raise TestbedError(
                "smtp-sink is not installed (it comes with the postfix package)"
            ) from None
        self.wait_ready(self.greets)

    def greets(self) -> bool:
        return smtp_banner(self.host, self.port) is not None

    def messages(self) -> list[SinkMessage]:
        """Messages delivered so far, oldest first."""
        return [read_sink_message(path) for path in sorted(self.mail_dir.glob("*.eml"))]

    def find(self, token: str) -> SinkMessage | None:
        """The delivered message carrying ``token`` (see testbed.client.make_message)."""
        for message in self.messages():
            if message.message.get(TOKEN_HEADER) == token:
                return message
        return None

    def wait_for(
        self, token: str, timeout: float = 20.0, on_timeout: Callable[[], str] | None = None
    ) -> SinkMessage:
        """Wait until the message carrying ``token`` reached the sink."""
        return wait_until(
            lambda: self.find(token),
            timeout=timeout,
            what=f"the message with {TOKEN_HEADER} {token} in {self.mail_dir}",
            on_timeout=on_timeout,
        )

    def clear(self) -> None:
        for path in self.mail_dir.glob("*.eml"):
            path.unlink(missing_ok=True)

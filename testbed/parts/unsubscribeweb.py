"""The stack's one-click unsubscribe service: ``aup-milter web`` with the milter's config."""

from __future__ import annotations

import sys
from pathlib import Path

from testbed.parts.service import HOST, Service, python_env, require_free_port
from testbed.proc import http_answers


class UnsubscribeWeb(Service):
    """``aup-milter web -c CONFIG`` on ``host:port`` (the config's ``[web] listen``)."""

    def __init__(
        self,
        run_dir: Path,
        port: int,
        config_path: Path,
        *,
        host: str = HOST,
        python: str = sys.executable,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(
            run_dir, stem="web", marker="aupmilter", what="unsubscribe web service",
            timeout=timeout,
        )  # fmt: skip
        self.port = port
        self.config_path = config_path
        self.host = host
        self.python = python

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Start it unless it already runs from ``run_dir``; return once /healthz answers."""
        if self.running:
            return
        require_free_port(self.host, self.port, "the unsubscribe web service", self.run_dir)
        argv = [self.python, "-m", "aupmilter", "web", "-c", str(self.config_path)]
        self.launch(argv, env=python_env())
        self.wait_ready(lambda: http_answers(self.host, self.port, "/healthz"))

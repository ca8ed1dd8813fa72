"""The stack's RDAP server: ``python -m testbed.rdapserver`` serving the recorded answers.

A process of its own, unlike the in-process ``testbed.rdapserver.RdapServer``
of the fast tests: the demo keeps it running after ``make demo`` returns, so
``aup-milter tenant verify-domain`` in the demo finds the registrant of
``acme.example`` on a machine without internet. The milter config's
``[onboarding] rdap_bootstrap`` is its ``bootstrap_url``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from testbed.parts.service import HOST, Service, command_line, python_env, require_free_port
from testbed.proc import http_answers
from testbed.rdapserver import ANSWERS_DIR, BOOTSTRAP_PATH


class RdapService(Service):
    """The bootstrap file and the answers in the folder ``answers``, HTTP on ``host:port``."""

    def __init__(
        self,
        run_dir: Path,
        port: int,
        *,
        answers: Path = ANSWERS_DIR,
        host: str = HOST,
        python: str = sys.executable,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(
            run_dir, stem="rdap", marker="testbed.rdapserver", what="RDAP server",
            timeout=timeout,
        )  # fmt: skip
        self.port = port
        self.answers = answers
        self.host = host
        self.python = python

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def bootstrap_url(self) -> str:
        """The RFC 9224 bootstrap file, as ``[onboarding] rdap_bootstrap`` takes it."""
        return f"{self.base_url}{BOOTSTRAP_PATH}"

    def start(self) -> None:
        """Start it unless it already runs from ``run_dir``; return once the bootstrap answers."""
        if self.running:
            return
        require_free_port(self.host, self.port, "the RDAP server", self.run_dir)
        argv = command_line(
            self.python, "-m", "testbed.rdapserver",
            host=self.host, port=self.port, answers=self.answers, pidfile=self.pidfile,
        )  # fmt: skip
        # The server writes its pidfile itself once it serves.
        self.launch(argv, env=python_env(), record_pid=False)
        self.wait_ready(
            lambda: self.pidfile.exists() and http_answers(self.host, self.port, BOOTSTRAP_PATH)
        )

"""The real `aup-milter web` in a subprocess, a real Redis, plain HTTP requests.

Requests go through http.client, which never follows redirects: a 3xx from the
service would be seen as such.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import toml
from tests.milter.harness import PLANS_DIR, child_env
from tests.support import HarnessError, free_port, tail, wait_until

SECRET = "web-tests-secret-0123456789abcdef0123456789"


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: str


def write_config(folder: Path, redis_url: str, port: int, **web: Any) -> Path:
    secrets = folder / "unsubscribe.secrets"
    secrets.write_text(SECRET + "\n")
    secrets.chmod(0o600)
    settings = {
        "redis": {"url": redis_url, "timeout": 0.5, "connect_timeout": 0.5},
        "policy": {"plans_dir": str(PLANS_DIR)},
        "log": {"format": "json", "level": "info"},
        "unsubscribe": {
            "url_base": f"http://127.0.0.1:{port}",
            "mailto_domain": "unsub.relay.example",
            "secrets_file": str(secrets),
        },
        "web": {"listen": f"127.0.0.1:{port}", **web},
    }
    path = folder / "aup-milter.toml"
    path.write_text(toml.dumps(settings))
    return path


class WebService:
    def __init__(self, folder: Path, redis_url: str, **web: Any) -> None:
        self.folder = folder
        self.port = free_port()
        self.config = write_config(folder, redis_url, self.port, **web)
        self.log_path = folder / "web.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "aupmilter", "web", "-c", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, env=child_env(),
            )  # fmt: skip
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise HarnessError(f"aup-milter web exited {proc.returncode}{tail(self.log_path)}")
            try:
                return self.request("GET", "/healthz").status == 200
            except OSError:
                return False

        wait_until(ready, timeout=20, what="aup-milter web", on_timeout=lambda: tail(self.log_path))

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            reply = conn.getresponse()
            return Response(reply.status, reply.headers, reply.read().decode("utf-8", "replace"))
        finally:
            conn.close()

    def post_form(
        self, path: str, fields: dict[str, str], headers: dict[str, str] | None = None
    ) -> Response:
        body = urllib.parse.urlencode(fields).encode()
        all_headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        return self.request("POST", path, body, all_headers)

"""The real `aup-milter web` in a subprocess, a real Redis, plain HTTP requests.

The service is the test bed's own part (``testbed.parts.unsubscribeweb``), so
these tests start it the way the stack does; what they add is the config
under test and the requests. Requests go through http.client, which never
follows redirects: a 3xx from the service would be seen as such.
"""

from __future__ import annotations

import http.client
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import toml
from testbed.parts.unsubscribeweb import UnsubscribeWeb
from tests.milter.harness import PLANS_DIR
from tests.support import free_port

SECRET = "web-tests-secret-0123456789abcdef0123456789"
START_TIMEOUT = 20.0


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


class WebService(UnsubscribeWeb):
    """``aup-milter web`` on a free port of its own, with the settings ``web`` under test."""

    def __init__(self, folder: Path, redis_url: str, **web: Any) -> None:
        port = free_port()
        config = write_config(folder, redis_url, port, **web)
        super().__init__(folder, port, config, timeout=START_TIMEOUT)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
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

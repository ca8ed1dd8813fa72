"""The message corpus: ``manifest.toml`` entries and the bytes to send for each.

Each entry names an ``.eml`` file and the reply it must get. Files hold
placeholders that are filled when a message is used, so dates are always
relative to the run's clock and Message-IDs unique: ``{{DATE}}`` (now),
``{{DATE_OBS}}`` (now, obsolete form), ``{{DATE_OLD}}`` (5 days ago),
``{{DATE_FUTURE}}`` (in a day), ``{{ID}}``. ``sign = SELECTOR`` signs the
filled message with the test key for acme.example (``tamper`` then changes
the body or Subject after signing).
"""

from __future__ import annotations

import tomllib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import dkim

from testbed.zones import private_key_path

CORPUS_DIR = Path(__file__).resolve().parent
PLANS_FILE = CORPUS_DIR / "plans.toml"
KEY_OF_SELECTOR = {"test4096": "test-rsa4096"}
"""Other selectors (test2048, revoked, missing, slow) are signed with the 2048-bit key."""


@dataclass(frozen=True)
class Entry:
    file: str
    about: str
    expect: str
    check: str | None = None
    sender: str = "alice@acme.example"
    domains: tuple[str, ...] = ("acme.example",)
    allowed: tuple[str, ...] = ()
    plan: str = "standard"
    smtputf8: bool = False
    sign: str | None = None
    tamper: str | None = None
    stage: str = "eom"
    warnings: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    e2e: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return CORPUS_DIR / self.file

    def message(self, now: datetime, first_headers: bytes = b"") -> bytes:
        """The message to send: placeholders filled, ``first_headers`` on top, signed if asked."""
        raw = first_headers + fill(self.path.read_bytes(), now)
        if self.sign:
            key = private_key_path(KEY_OF_SELECTOR.get(self.sign, "test-rsa2048")).read_bytes()
            signature = dkim.sign(
                raw,
                self.sign.encode(),
                b"acme.example",
                key,
                include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
            )
            raw = bytes(signature) + raw
        if self.tamper == "body":
            raw += b"A line added after signing.\r\n"
        elif self.tamper == "subject":
            raw = raw.replace(b"Subject: Quarterly report", b"Subject: Quarterly rep0rt", 1)
        return raw


def fill(raw: bytes, now: datetime) -> bytes:
    values = {
        "{{DATE}}": format_datetime(now),
        "{{DATE_OBS}}": now.strftime("%d %b %y %H:%M:%S GMT"),
        "{{DATE_OLD}}": format_datetime(now - timedelta(days=5)),
        "{{DATE_FUTURE}}": format_datetime(now + timedelta(days=1)),
        "{{ID}}": uuid.uuid4().hex,
    }
    for placeholder, value in values.items():
        raw = raw.replace(placeholder.encode(), value.encode())
    return raw


def load_manifest() -> list[Entry]:
    with (CORPUS_DIR / "manifest.toml").open("rb") as handle:
        data = tomllib.load(handle)
    entries = []
    for item in data["message"]:
        known = {k: v for k, v in item.items() if k in Entry.__dataclass_fields__}
        for key in ("domains", "allowed", "warnings", "added"):
            if key in known:
                known[key] = tuple(known[key])
        entries.append(Entry(**known))
    return entries

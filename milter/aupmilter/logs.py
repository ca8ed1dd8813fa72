"""Logging to stderr (the journal under systemd) as JSON lines or plain text.

Every line about an SMTP connection carries its connection id, so one
connection's story can be pulled out of a busy log with one grep.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any

from aupmilter.config import LogSettings

_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key == "event" and isinstance(value, dict):
                line.update(value)
            elif key not in _RESERVED and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        conn = getattr(record, "conn", None)
        if conn:
            prefix = f" {record.name} "
            text = text.replace(prefix, f"{prefix}[{conn}] ", 1)
        event = getattr(record, "event", None)
        if event is not None:
            text += " " + json.dumps(event, default=str, ensure_ascii=False)
        return text


def configure(settings: LogSettings) -> None:
    """Install (or re-install on reload) the single stderr handler."""
    root = logging.getLogger()
    formatter: logging.Formatter = JsonFormatter() if settings.format == "json" else TextFormatter()
    handler = next((h for h in root.handlers if getattr(h, "_aup", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler._aup = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(formatter)
    root.setLevel(settings.level_number)


class ConnectionLog(logging.LoggerAdapter[logging.Logger]):
    """A logger that stamps the connection id on every record."""

    def __init__(self, logger: logging.Logger, conn_id: str) -> None:
        super().__init__(logger, {"conn": conn_id})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs

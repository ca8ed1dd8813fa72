"""What the milter knows about one SMTP connection and one transaction.

A `Connection` lives as long as the MTA's milter session (one SMTP session);
a `Transaction` is rebuilt at each MAIL FROM and dropped at end of message or
abort, because one connection carries many transactions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace


@dataclass(frozen=True, slots=True)
class Connection:
    conn_id: str
    client_name: str
    client_addr: str | None = None
    daemon_name: str | None = None


@dataclass(frozen=True, slots=True)
class Transaction:
    sender: str
    """MAIL FROM address without angle brackets; empty for the null sender."""
    auth_login: str | None
    """`{auth_authen}` exactly as the MTA reported it; None when not authenticated."""
    queue_id: str | None = None
    recipients: tuple[str, ...] = field(default=())
    stream: str | None = None
    """The sender's message stream set in Redis ("bulk" or "transactional"), if any."""

    def with_recipients(self, rcpts: Iterable[str]) -> Transaction:
        return replace(self, recipients=(*self.recipients, *rcpts))

    def with_stream(self, stream: str | None) -> Transaction:
        return self if stream == self.stream else replace(self, stream=stream)

    def with_queue_id(self, queue_id: str | None) -> Transaction:
        if not queue_id or queue_id == self.queue_id:
            return self
        return replace(self, queue_id=queue_id)

"""An SMTP client for tests that want every reply code, not exceptions.

smtplib raises on the first refusal, and a test then cannot tell *where*
(MAIL FROM, RCPT TO, end of data) the milter said no. :class:`SmtpClient`
returns each step's :class:`Reply` instead and keeps the session usable, so
one connection can carry several transactions.

Every client connects from :data:`CLIENT_ADDRESS`, not from 127.0.0.1: the
testbed's Postfix listens on 127.0.0.1, and a client on one of Postfix's own
``inet_interfaces`` is local to it (``local_header_rewrite_clients =
permit_inet_interfaces``, Postfix's default), so cleanup would fill in a
missing From:, Date: and Message-Id: before the milter sees the header. A
tenant of a shared relay connects from elsewhere; so do the testbed's.
"""

from __future__ import annotations

import re
import smtplib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from types import TracebackType
from typing import Literal

TOKEN_HEADER = "X-Testbed-Token"
# Another loopback address: on Linux all of 127.0.0.0/8 is local, so no setup is
# needed; it lies inside the testbed's mynetworks (127.0.0.0/8), so relaying
# rights stay what they were.
CLIENT_ADDRESS = "127.0.0.2"
_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\b")
_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")


@dataclass(frozen=True)
class Reply:
    code: int
    text: str

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 enhanced status code the reply starts with, if any."""
        match = _ENHANCED.match(self.text)
        return match.group(1) if match else None

    @property
    def queue_id(self) -> str | None:
        """Postfix's queue id from a ``250 ... queued as ID`` reply."""
        match = _QUEUED_AS.search(self.text)
        return match.group(1) if match else None

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


@dataclass
class Outcome:
    """The replies of one transaction, up to the step that ended it."""

    mail: Reply
    rcpts: list[Reply] = field(default_factory=list)
    data: Reply | None = None

    @property
    def accepted(self) -> bool:
        return self.data is not None and self.data.code == 250

    @property
    def last(self) -> Reply:
        """The reply that decided the transaction."""
        if self.data is not None:
            return self.data
        return self.rcpts[-1] if self.rcpts else self.mail

    @property
    def queue_id(self) -> str | None:
        return self.data.queue_id if self.data is not None else None


def make_message(
    sender: str,
    recipients: list[str],
    *,
    subject: str = "testbed message",
    body: str = "Hello from the testbed.\n",
) -> tuple[EmailMessage, str]:
    """A plain message with a unique token header, to find it again in the sink."""
    token = uuid.uuid4().hex
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = f"{subject} [{token[:8]}]"
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = f"<{token}@client.testbed.invalid>"
    message[TOKEN_HEADER] = token
    message.set_content(body)
    return message, token


def _reply(code: int, text: bytes | str) -> Reply:
    decoded = text.decode(errors="replace") if isinstance(text, bytes) else text
    # Multi-line replies come joined with newlines; one line reads better in asserts.
    return Reply(code, " ".join(decoded.split()))


class SmtpClient:
    """One SMTP connection to the relay under test (plaintext, loopback only)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 30.0,
        helo: str = "client.testbed.invalid",
        source: str = CLIENT_ADDRESS,
    ) -> None:
        # local_hostname given: without it smtplib asks getfqdn(), a DNS query to the
        # machine's resolver (off loopback) for every session, which may stall for seconds.
        self._smtp = smtplib.SMTP(local_hostname=helo, timeout=timeout, source_address=(source, 0))
        self._smtp.connect(host, port)
        code, text = self._smtp.ehlo(helo)
        if code != 250:
            raise smtplib.SMTPHeloError(code, text)

    def __enter__(self) -> SmtpClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._smtp.quit()
        except (smtplib.SMTPException, OSError):
            self._smtp.close()

    def login(
        self, user: str, password: str, mechanism: Literal["PLAIN", "LOGIN"] = "PLAIN"
    ) -> Reply:
        """AUTH with ``mechanism``; the reply (235 on success) rather than an exception."""
        self._smtp.user, self._smtp.password = user, password
        method = self._smtp.auth_plain if mechanism == "PLAIN" else self._smtp.auth_login
        try:
            code, text = self._smtp.auth(
                mechanism, method, initial_response_ok=mechanism == "PLAIN"
            )
        except smtplib.SMTPAuthenticationError as exc:
            return _reply(exc.smtp_code, exc.smtp_error)
        return _reply(code, text)

    def mail(self, sender: str) -> Reply:
        return _reply(*self._smtp.mail(sender))

    def rcpt(self, recipient: str) -> Reply:
        return _reply(*self._smtp.rcpt(recipient))

    def data(self, message: EmailMessage | bytes) -> Reply:
        payload = message if isinstance(message, bytes) else message.as_bytes()
        try:
            return _reply(*self._smtp.data(payload))
        except smtplib.SMTPDataError as exc:
            return _reply(exc.smtp_code, exc.smtp_error)

    def rset(self) -> Reply:
        return _reply(*self._smtp.rset())

    def send(self, sender: str, recipients: list[str], message: EmailMessage | bytes) -> Outcome:
        """MAIL, RCPT each, DATA; stops at the first refusal (and RSETs, so the
        connection can carry the next transaction)."""
        outcome = Outcome(mail=self.mail(sender))
        if outcome.mail.code != 250:
            self.rset()
            return outcome
        outcome.rcpts = [self.rcpt(r) for r in recipients]
        if not any(r.code in (250, 251) for r in outcome.rcpts):
            self.rset()
            return outcome
        outcome.data = self.data(message)
        if outcome.data.code != 250:
            self.rset()
        return outcome


# What the e2e `connect` fixture is: open a (possibly authenticated) client.
ClientFactory = Callable[..., SmtpClient]

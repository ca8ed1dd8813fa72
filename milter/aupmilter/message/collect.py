"""One message as the MTA streams it to the milter: header fields (bounded) and body (spooled).

The header fields are kept while within the plan's collection limits and
only counted past them, so a message with a million fields costs the milter
a counter, not memory; the checks then refuse it. The body is spooled only
when end of message needs it (a DKIM signature to verify, the content
fingerprint, signing), in memory up to a bound and on disk past it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aupmilter import replies
from aupmilter.config import MessageSettings
from aupmilter.message.spool import Spool, SpoolError, SpoolFull
from aupmilter.message.wire import render_header_section
from aupmilter.policy.headers import HeaderBlock, HeaderField, field_size


@dataclass
class Collected:
    """Header fields (bounded) and the body (spooled) of one message."""

    settings: MessageSettings
    fields: list[HeaderField] = field(default_factory=list)
    seen_fields: int = 0
    seen_bytes: int = 0
    body_size: int = 0
    spool: Spool | None = None
    body_fault: replies.Reply | None = None
    keep_body: bool = False
    """Set at MAIL FROM when the end of message needs the body anyway (signing, fingerprint)."""
    _body_decided: bool = False

    def add_header(self, name: str, raw: bytes) -> None:
        """Keeps fields while within the limits; past them only counts (the check refuses)."""
        self.seen_fields += 1
        self.seen_bytes += field_size(name, raw)
        rules = self.settings.header_rules
        if self.seen_fields <= rules.max_fields and self.seen_bytes <= rules.max_bytes:
            self.fields.append(HeaderField(name, raw))

    def block(self) -> HeaderBlock:
        return HeaderBlock(tuple(self.fields), self.seen_fields, self.seen_bytes)

    def keeps_body(self) -> bool:
        """The body is spooled only when needed: a DKIM signature to verify, or `keep_body`."""
        return self.keep_body or any(f.key == "dkim-signature" for f in self.fields)

    @property
    def complete(self) -> bool:
        """Every header field was kept (none dropped past the collection limits)."""
        return self.seen_fields == len(self.fields)

    def body_bytes(self) -> bytes | None:
        """The body as received (CRLF line ends); None when it was not kept."""
        if self.body_fault is not None:
            return None
        if self.spool is None:
            return b"" if self.body_size == 0 and self.keeps_body() else None
        return self.spool.read_all()

    def add_body(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        if not self._body_decided:
            self._body_decided = True
            if self.keeps_body():
                self.spool = Spool(self.settings.spool)
        if self.body_size > self.settings.spool.hard_limit:
            self.body_fault = replies.MESSAGE_TOO_LARGE
            self._drop_spool()
        if self.spool is None or self.body_fault is not None:
            return
        try:
            self.spool.write(chunk)
        except SpoolFull:
            self.body_fault = replies.MESSAGE_TOO_LARGE
            self._drop_spool()
        except SpoolError:
            self.body_fault = replies.SPOOL_UNAVAILABLE
            self._drop_spool()

    def message_bytes(self) -> bytes | None:
        """Header section + CRLF + body, CRLF line ends; None when the body was not kept."""
        if self.spool is None:
            return None
        return render_header_section(self.fields) + b"\r\n" + self.spool.read_all()

    def _drop_spool(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def close(self) -> None:
        self._drop_spool()

"""What a stage asks the MTA to do to an accepted message, as values.

A stage returns its verdict and a list of these; the milter glue applies the
list in one place, in order, at end of message (libmilter allows header,
recipient and quarantine changes only there). Values, not calls, so a stage
can be tested without an MTA and the audit line can say what was done.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class AddHeader:
    """Append a header field (smfi_addheader); `value` without its leading space."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class InsertHeader:
    """Insert a header field at `index` among the fields (smfi_insheader; 0 is the top)."""

    name: str
    value: str
    index: int = 0


@dataclass(frozen=True, slots=True)
class ChangeHeader:
    """Change the `index`-th (1-based) field called `name` (smfi_chgheader); "" deletes it."""

    name: str
    index: int
    value: str = ""


@dataclass(frozen=True, slots=True)
class DeleteRecipient:
    """Remove an envelope recipient (smfi_delrcpt), given as the client wrote it."""

    address: str


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Put the message in the MTA's hold queue (smfi_quarantine) with this reason."""

    reason: str


@dataclass(frozen=True, slots=True)
class ReplaceBody:
    """Replace the whole body (smfi_replacebody) with `body`, CRLF line ends, as signed."""

    body: bytes = field(repr=False)
    reason: str = ""
    """What changed, for the log (the body itself is not logged)."""


MilterAction = AddHeader | InsertHeader | ChangeHeader | DeleteRecipient | Quarantine | ReplaceBody

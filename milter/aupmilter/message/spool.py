"""A bounded buffer for one message's body: memory first, a temporary file past a threshold.

The milter needs the whole message for DKIM (verifying now, signing later),
but holding every concurrent message in memory would let a few large ones
exhaust it. `Spool` keeps up to `memory_limit` bytes in memory, then moves to
an anonymous temporary file (`tempfile.SpooledTemporaryFile`: unlinked at
once, so nothing is left behind even on a crash), and refuses anything past
`hard_limit` with `SpoolFull`. `SpoolError` is any failure to store it (a full
disk): the caller tempfails.

    spool = Spool(SpoolLimits(memory_limit=1 << 20, hard_limit=50 << 20))
    spool.write(chunk)        # per body chunk; raises SpoolFull past hard_limit
    spool.size                # bytes written
    with spool.reader() as fh: ...   # a binary file positioned at the start
    spool.read_all()          # everything, as bytes (for dkimpy, which wants bytes)
    spool.close()             # releases memory or the file; idempotent
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast


class SpoolError(Exception):
    """The body could not be stored (e.g. no space for the temporary file)."""


class SpoolFull(SpoolError):
    """The body is larger than the hard limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"message body exceeds {limit} bytes")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class SpoolLimits:
    memory_limit: int = 1 << 20
    """Bytes kept in memory before moving to a temporary file."""
    hard_limit: int = 64 << 20
    """Bytes beyond which the body is refused."""
    directory: Path | None = None
    """Where temporary files go (None: the system default, $TMPDIR or /tmp)."""

    def __post_init__(self) -> None:
        if not 0 < self.memory_limit <= self.hard_limit:
            raise ValueError("spool limits need 0 < memory_limit <= hard_limit")


class Spool:
    def __init__(self, limits: SpoolLimits) -> None:
        self.limits = limits
        self._file: tempfile.SpooledTemporaryFile[bytes] | None = None
        self._size = 0
        self._closed = False

    @property
    def size(self) -> int:
        return self._size

    @property
    def on_disk(self) -> bool:
        """True once the body outgrew memory (for tests and metrics)."""
        return self._file is not None and bool(getattr(self._file, "_rolled", False))

    def write(self, chunk: bytes) -> None:
        if self._closed:
            raise SpoolError("spool is closed")
        if self._size + len(chunk) > self.limits.hard_limit:
            raise SpoolFull(self.limits.hard_limit)
        if not chunk:
            return
        try:
            if self._file is None:
                directory = str(self.limits.directory) if self.limits.directory else None
                self._file = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - lives past this call
                    max_size=self.limits.memory_limit, mode="w+b", dir=directory
                )
            self._file.write(chunk)
        except OSError as exc:
            raise SpoolError(f"cannot store the message body: {exc}") from exc
        self._size += len(chunk)

    @contextmanager
    def reader(self) -> Iterator[IO[bytes]]:
        """The stored bytes from the start; do not write until the block ends."""
        if self._closed:
            raise SpoolError("spool is closed")
        if self._file is None:
            yield io.BytesIO()  # nothing written: an empty body
            return
        handle = self._file
        try:
            handle.seek(0)
            yield cast(IO[bytes], handle)
        except OSError as exc:
            raise SpoolError(f"cannot read the message body back: {exc}") from exc
        finally:
            handle.seek(0, 2)

    def read_all(self) -> bytes:
        with self.reader() as handle:
            return handle.read()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._closed = True

"""The body spool: memory, then a temporary file, then a hard limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from aupmilter.message.spool import Spool, SpoolError, SpoolFull, SpoolLimits


def test_small_bodies_stay_in_memory(tmp_path: Path) -> None:
    spool = Spool(SpoolLimits(memory_limit=100, hard_limit=1000, directory=tmp_path))
    spool.write(b"hello ")
    spool.write(b"world")
    assert spool.size == 11 and not spool.on_disk
    assert spool.read_all() == b"hello world"
    assert list(tmp_path.iterdir()) == []
    spool.close()


def test_large_bodies_move_to_an_unlinked_file(tmp_path: Path) -> None:
    spool = Spool(SpoolLimits(memory_limit=100, hard_limit=10_000, directory=tmp_path))
    chunks = [bytes([n]) * 64 for n in range(50)]
    for chunk in chunks:
        spool.write(chunk)
    assert spool.on_disk
    assert list(tmp_path.iterdir()) == [], "the temporary file has no name to leak"
    assert spool.read_all() == b"".join(chunks)
    spool.write(b"more")  # writing resumes at the end after a read
    with spool.reader() as handle:
        assert handle.read().endswith(b"more")
    spool.close()
    spool.close()  # idempotent


def test_hard_limit() -> None:
    spool = Spool(SpoolLimits(memory_limit=10, hard_limit=20))
    spool.write(b"x" * 20)
    with pytest.raises(SpoolFull) as info:
        spool.write(b"y")
    assert info.value.limit == 20
    assert spool.size == 20


def test_empty_and_closed() -> None:
    spool = Spool(SpoolLimits())
    assert spool.read_all() == b""
    spool.close()
    with pytest.raises(SpoolError):
        spool.write(b"x")


def test_unwritable_directory_is_a_spool_error(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    spool = Spool(SpoolLimits(memory_limit=4, hard_limit=100, directory=missing))
    spool.write(b"abc")
    with pytest.raises(SpoolError):
        spool.write(b"defgh")  # rolls over to a file in a directory that does not exist


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        SpoolLimits(memory_limit=100, hard_limit=10)

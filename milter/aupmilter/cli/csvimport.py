"""What `suppress import` and `consent import` share: one CSV file in, pipelined batches out.

The file (or '-' for standard input) is read as UTF-8 (a BOM is skipped,
undecodable bytes become U+FFFD and fail the line's own check), line by line:
empty lines and lines starting with '#' are skipped, so is a header line whose
first cell is a known column name. Each usable line goes to the caller's batch;
a full batch (the store's BATCH_SIZE) is written with the caller's `flush` in
pipelined round trips, so 100k lines take seconds and memory stays bounded by
one batch. A line that cannot be used is reported with its file and line
number and skipped, never fatal; at most MAX_REPORTED_ERRORS are printed, the
rest counted. A progress bar on stderr (when it is a terminal, or always)
redraws at most ten times a second.

Exit status: 0 when every line was used, 65 (EX_DATAERR) when some were
refused, 1 when the file cannot be opened.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO, TypeVar

from aupmilter.exitcodes import EX_DATAERR, EX_FAILURE, EX_OK

MAX_REPORTED_ERRORS = 100
T = TypeVar("T")


def tenant_option(parser: argparse.ArgumentParser) -> None:
    """`--tenant ID`, which every action on one tenant's list or ledger takes."""
    parser.add_argument("--tenant", "-t", required=True, metavar="ID", help="the tenant id")


def add_import_parser(
    actions: argparse._SubParsersAction,  # type: ignore[type-arg]
    help_text: str,
    default_source: str,
) -> argparse.ArgumentParser:
    """The `import` action both commands have: tenant, file, default source, progress bar."""
    imp: argparse.ArgumentParser = actions.add_parser("import", help=help_text)
    tenant_option(imp)
    imp.add_argument("file", metavar="FILE.csv", help="'-' reads standard input")
    imp.add_argument("--source", default=default_source, help="source for lines without one")
    imp.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="progress bar on stderr (auto: when stderr is a terminal)",
    )
    return imp


@dataclass
class ImportReport:
    lines: int = 0
    added: int = 0
    already: int = 0
    """Lines that changed nothing (already suppressed; a consent not newer than the one kept)."""
    updated: int = 0
    """Lines that replaced what was stored (a newer consent)."""
    errors: int = 0
    messages: list[str] = field(default_factory=list)

    def refuse(self, where: str, reason: str) -> None:
        self.errors += 1
        if len(self.messages) < MAX_REPORTED_ERRORS:
            self.messages.append(f"{where}: {reason}")


def rows(
    handle: IO[str], name: str, report: ImportReport, header_names: frozenset[str]
) -> Iterator[tuple[str, int, list[str]]]:
    """(where, line number, stripped cells) of every line that is not blank, a comment or
    the header; every line read is counted in the report."""
    reader = csv.reader(handle)
    for row in reader:
        number = reader.line_num
        report.lines += 1
        cells = [cell.strip() for cell in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and cells[0].lower() in header_names:
            continue
        yield f"{name}:{number}", number, cells


class Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, total_bytes: int | None, enabled: bool, out: TextIO | None = None) -> None:
        self.total = total_bytes
        self.enabled = enabled
        self.out = out or sys.stderr
        self.started = time.monotonic()
        self._drawn = 0.0

    def update(self, done_bytes: int | None, report: ImportReport, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._drawn < 0.1):
            return
        self._drawn = now
        rate = report.lines / max(now - self.started, 1e-6)
        bar = ""
        if self.total and done_bytes is not None:
            share = min(1.0, done_bytes / self.total) if not final else 1.0
            filled = int(share * 30)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {share * 100:3.0f}% "
        updated = f" {report.updated} updated," if report.updated else ""
        self.out.write(
            f"\r{bar}{report.lines} lines, {report.added} added,{updated} {report.already}"
            f" already, {report.errors} errors, {rate:,.0f} lines/s"
        )
        if final:
            self.out.write("\n")
        self.out.flush()


Parse = Callable[[IO[str], str, ImportReport], Iterator[T]]
Flush = Callable[[list[T], ImportReport], None]


def run_import(
    prog: str,
    file: str,
    parse: Parse[T],
    flush: Flush[T],
    *,
    batch_size: int,
    progress: str,
    summary: Callable[[str, ImportReport], str],
) -> int:
    """Read `file` through `parse`, write it through `flush` in batches, report; the exit status.

    `progress`: "always", "never" or "auto" (when stderr is a terminal). `summary`
    makes the last line (on stdout) from the file's name and the report.
    """
    if file == "-":
        handle: IO[str] = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
        name, total = "<stdin>", None
        raw_size: Callable[[], int | None] = lambda: None  # noqa: E731
    else:
        path = Path(file)
        try:
            binary = path.open("rb")
        except OSError as exc:
            print(f"{prog}: cannot read {file}: {exc.strerror}", file=sys.stderr)
            return EX_FAILURE
        handle = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="replace", newline="")
        name, total = file, os.fstat(binary.fileno()).st_size

        def raw_size() -> int | None:
            return binary.tell()

    enabled = progress == "always" or (progress == "auto" and sys.stderr.isatty())
    bar = Progress(total, enabled)
    report = ImportReport()
    with handle:
        batch: list[T] = []
        for line in parse(handle, name, report):
            batch.append(line)
            if len(batch) >= batch_size:
                flush(batch, report)
                batch = []
                bar.update(raw_size(), report)
        if batch:
            flush(batch, report)
        bar.update(raw_size(), report, final=True)
    for message in report.messages:
        print(message, file=sys.stderr)
    if report.errors > len(report.messages):
        print(f"... and {report.errors - len(report.messages)} more refused lines", file=sys.stderr)
    print(summary(name, report))
    return EX_DATAERR if report.errors else EX_OK

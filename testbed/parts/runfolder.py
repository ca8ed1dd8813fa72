"""Where a stack lives: its run folder, and the offset of its fixed ports.

A run folder holds everything of one stack (configs, pidfiles, logs, the
Postfix queue, the delivered mail). Postfix's daemons run as ``postfix`` and
must traverse into it to reach the milter socket and the sasldb; and a
marker file says the folder is the test bed's, so that only such a folder is
ever wiped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from testbed.parts.service import REPO_ROOT
from testbed.proc import TestbedError

RUN_DIR_MARKER = ".testbed-run-dir"


def untraversable_parent(path: Path) -> Path | None:
    """The first existing folder at or above ``path`` that other users cannot enter."""
    for folder in (path, *path.parents):
        if folder.exists() and not folder.stat().st_mode & 0o001:
            return folder
    return None


def port_offset() -> int:
    """``AUP_TESTBED_PORT_OFFSET`` shifts the fixed test ports: checkouts can test side by side."""
    raw = os.environ.get("AUP_TESTBED_PORT_OFFSET", "0")
    if not raw.isdigit() or int(raw) > 20000:
        raise ValueError(f"AUP_TESTBED_PORT_OFFSET: expected a number from 0 to 20000, got {raw!r}")
    return int(raw)


def default_run_dir(name: str) -> Path:
    """``run/NAME`` in the checkout, or /var/tmp when ``postfix`` cannot reach the checkout.

    smtpd runs as ``postfix`` and must traverse to the milter socket and the
    sasldb; a checkout under a private directory (mode 0700 above it) cannot
    host the run folder.
    """
    preferred = REPO_ROOT / "run" / name
    if untraversable_parent(preferred) is None:
        return preferred
    return Path("/var/tmp") / f"aup-milter-{name}-{os.getuid()}"


def prepare(run_dir: Path) -> None:
    """Create ``run_dir`` with its marker; fail if ``postfix`` could not traverse into it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RUN_DIR_MARKER).touch()
    folder = untraversable_parent(run_dir)
    if folder is not None:
        raise TestbedError(
            f"{folder} is not traversable by other users (mode "
            f"{folder.stat().st_mode & 0o777:o}); the postfix user cannot reach "
            f"{run_dir}. Use a run folder outside such a directory."
        )


def wipe(run_dir: Path, status: Callable[[], Mapping[str, int | None]]) -> None:
    """Delete ``run_dir``: only if it carries the marker and nothing of ``status`` runs."""
    if not run_dir.exists():
        return
    if not (run_dir / RUN_DIR_MARKER).exists():
        raise TestbedError(
            f"refusing to wipe {run_dir}: it has no {RUN_DIR_MARKER} marker, "
            "so it was not created by the testbed"
        )
    running = {name: pid for name, pid in status().items() if pid is not None}
    if running:
        raise TestbedError(f"refusing to wipe {run_dir}: still running: {running}")
    shutil.rmtree(run_dir)

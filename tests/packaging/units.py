"""Reading systemd unit files: sections of Key=Value lines, keys may repeat."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT_DIR = ROOT / "systemd"
SERVICES = ("aup-milter.service", "aup-milter-web.service")
SOCKETS = ("aup-milter.socket",)
MAX_EXPOSURE = 2.0

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    sections: Unit = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not Key=Value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def exposure(unit_path: Path) -> tuple[float, str]:
    """systemd-analyze's overall exposure level for a unit file, and its report."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", report)
    assert match, f"no exposure level in:\n{report}"
    return float(match.group(1)), report

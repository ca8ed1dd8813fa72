"""pymilter owns the top-level names `milter`, `Milter` and `mime`: nothing here may shadow them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_milter_from_repository_root() -> None:
    probe = (
        "import Milter, milter, mime, aupmilter.callbacks; "
        "assert hasattr(Milter, 'Base'), Milter.__file__; "
        "assert hasattr(milter, 'register'), milter.__file__; "
        "print(Milter.__file__)"
    )
    for extra_path in ("", "milter"):
        env_path = str(ROOT / extra_path) if extra_path else str(ROOT)
        result = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=ROOT,
            env={"PYTHONPATH": f"{env_path}:{ROOT / 'milter'}", "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        found = Path(result.stdout.strip())
        assert "site-packages" in found.parts, f"Milter resolved to {found}, not pymilter"


def test_source_root_is_not_a_package() -> None:
    assert not (ROOT / "milter" / "__init__.py").exists()
    for name in ("milter", "Milter", "mime"):
        assert not (ROOT / "milter" / "aupmilter" / f"{name}.py").exists()
        assert not (ROOT / f"{name}.py").exists()

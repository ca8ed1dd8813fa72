"""doc/architecture.md is the project's map: its module table must match the tree."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "milter" / "aupmilter"
MAP = ROOT / "doc" / "architecture.md"
ROW = re.compile(r"^\| `([^`]+)` \| (.+?) \|$")


def mapped_modules() -> dict[str, str]:
    """Module path (relative to the package) -> its one responsibility, from the map's table."""
    text = MAP.read_text("utf-8")
    section = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    rows = (ROW.match(line.strip()) for line in section.splitlines())
    return {m.group(1): m.group(2).strip() for m in rows if m is not None}


def tree_modules() -> set[str]:
    found = {
        str(path.relative_to(PACKAGE))
        for pattern in ("*.py", "*.lua")
        for path in PACKAGE.rglob(pattern)
        if path.name != "__init__.py"
    }
    return found


def test_every_module_is_on_the_map_and_every_mapped_module_exists() -> None:
    mapped = mapped_modules()
    tree = tree_modules()
    assert sorted(tree - set(mapped)) == [], "modules missing from doc/architecture.md"
    assert sorted(set(mapped) - tree) == [], "doc/architecture.md names modules that do not exist"


def test_each_module_has_one_responsibility_written() -> None:
    for module, responsibility in mapped_modules().items():
        assert len(responsibility.split()) >= 3, f"{module}: say what it is for"


def test_readme_layout_points_to_the_map() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    layout = readme.split("## Layout", 1)[1]
    assert "doc/architecture.md" in layout

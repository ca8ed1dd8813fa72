"""The policy layer is pure by construction: it imports only itself, the reply table and the stdlib.

Policy rules must be testable without Redis, DNS or a config file, and must not drag
dnspython, dkimpy or redis into every importer. Reading the source with `ast` (instead of
importing it) also catches imports inside functions and under `if TYPE_CHECKING:`, which
an import-time check would miss.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "milter" / "aupmilter"
POLICY = PACKAGE_ROOT / "policy"
ALLOWED_PACKAGES = ("aupmilter.policy", "aupmilter.replies")

PENDING: dict[str, frozenset[str]] = {}


class Import(NamedTuple):
    line: int
    module: str
    """The module judged: `from aupmilter import config` counts as `aupmilter.config`."""
    statement: str


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def allowed(module: str) -> bool:
    if module.split(".")[0] in sys.stdlib_module_names:
        return True
    return any(module == p or module.startswith(f"{p}.") for p in ALLOWED_PACKAGES)


def imports(tree: ast.AST, importer: str, is_package: bool) -> list[Import]:
    """Every import anywhere in the tree (functions, `if TYPE_CHECKING:`), made absolute."""
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(Import(node.lineno, a.name, ast.unparse(node)) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                # A module's `.` is its package; an __init__'s `.` is the package itself.
                anchor = importer.split(".")
                drop = node.level - 1 if is_package else node.level
                anchor = anchor[: len(anchor) - drop]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            for alias in node.names:
                # Only a parent of an allowed package (`aupmilter`) needs the name to judge.
                parent = any(p.startswith(f"{base}.") for p in ALLOWED_PACKAGES)
                module = f"{base}.{alias.name}" if parent else base
                found.append(Import(node.lineno, module, ast.unparse(node)))
    return found


def forbidden(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    found = imports(tree, module_name(path), path.name == "__init__.py")
    return [i for i in found if not allowed(i.module)]


POLICY_MODULES = sorted(POLICY.rglob("*.py"))


def test_policy_modules_are_found() -> None:
    assert len(POLICY_MODULES) > 5, f"no policy modules under {POLICY}"


@pytest.mark.parametrize("path", POLICY_MODULES, ids=module_name)
def test_policy_imports_only_policy_replies_and_stdlib(path: Path) -> None:
    name = module_name(path)
    pending = PENDING.get(name, frozenset())
    found = forbidden(path)
    unexpected = sorted(
        {f"{name} line {i.line}: {i.statement}" for i in found if i.module not in pending}
    )
    assert not unexpected, (
        "outside aupmilter.policy, aupmilter.replies and the stdlib:\n" + "\n".join(unexpected)
    )
    gone = pending - {i.module for i in found}
    assert not gone, f"{name} no longer imports {sorted(gone)}: drop them from PENDING"


def test_the_check_sees_every_kind_of_import() -> None:
    tree = ast.parse(
        "from __future__ import annotations\n"
        "import re, dns.resolver\n"
        "from typing import TYPE_CHECKING\n"
        "from aupmilter import replies, config\n"
        "from . import findings\n"
        "from ..store import keys\n"
        "from .. import replies as table\n"
        "if TYPE_CHECKING:\n"
        "    from aupmilter.mailauth.resolver import Answer\n"
        "def later() -> None:\n"
        "    import redis\n"
    )
    found = imports(tree, "aupmilter.policy.probe", is_package=False)
    assert [i.module for i in found if not allowed(i.module)] == [
        "dns.resolver",
        "aupmilter.config",
        "aupmilter.store",
        "aupmilter.mailauth.resolver",
        "redis",
    ]
    assert {"aupmilter.policy", "aupmilter.replies"} <= {i.module for i in found}

"""The manual pages render without groff warnings and document what exists.

Every subcommand of the command line and every key of the sample
configuration must appear in the pages: a new option without documentation
fails here.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from aupmilter.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "doc"
PAGES = ("aup-milter.8", "aup-milter.toml.5")


def render(page: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    return subprocess.run(
        ["man", "--warnings=all", "-E", "UTF-8", "-l", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def plain(page: str) -> str:
    """The rendered page, with hyphenation and line breaks undone."""
    text = render(DOC / page).stdout
    text = re.sub(r"[\u2010\u00ad-]\n\s*", "-", text)
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_without_warnings(page: str) -> None:
    result = render(DOC / page)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    assert "NAME" in result.stdout and "SEE ALSO" in result.stdout


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    names = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                names.append(name)
                names += [f"{name} {inner}" for inner in _subcommands(sub)]
    return names


def test_every_command_is_documented() -> None:
    text = plain("aup-milter.8")
    missing = [c for c in _subcommands(build_parser()) if f"{c} " not in text]
    assert missing == [], f"doc/aup-milter.8 does not document: {missing}"


def test_every_sample_key_is_documented() -> None:
    text = plain("aup-milter.toml.5")
    with (ROOT / "etc" / "aup-milter.toml").open("rb") as handle:
        sample = tomllib.load(handle)
    missing = [
        f"{section}.{key}"
        for section, table in sample.items()
        for key in table
        if f"[{section}]" not in text or key not in text
    ]
    assert missing == [], f"doc/aup-milter.toml.5 does not document: {missing}"


def test_every_plan_key_is_documented() -> None:
    text = plain("aup-milter.toml.5")
    keys: set[str] = set()
    for path in (ROOT / "policies").glob("*.toml"):
        with path.open("rb") as handle:
            for plan in tomllib.load(handle)["plan"].values():
                keys |= {key for key in plan if key != "windows"}
                for window in plan.get("windows", {}).values():
                    keys |= set(window)
    missing = sorted(key for key in keys if key not in text)
    assert missing == [], f"doc/aup-milter.toml.5 does not document plan keys: {missing}"

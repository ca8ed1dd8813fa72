"""One exit-code table: every command uses it, usage errors included, and the manual lists it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from aupmilter import exitcodes
from aupmilter.cli.main import main
from tests.milter.harness import child_env

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "milter" / "aupmilter"
TABLE = {name: value for name, value in vars(exitcodes).items() if name.startswith("EX_")}


def test_the_table_is_the_only_home_of_exit_codes() -> None:
    defined = re.compile(r"^(EX_[A-Z]+)\s*=", re.MULTILINE)
    elsewhere = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "exitcodes.py"
        for name in defined.findall(path.read_text("utf-8"))
    ]
    assert elsewhere == []


def test_codes_are_sysexits_but_for_the_generic_failure() -> None:
    assert TABLE["EX_OK"] == 0 and TABLE["EX_FAILURE"] == 1
    sysexits = {"EX_USAGE": 64, "EX_DATAERR": 65, "EX_NOINPUT": 66, "EX_NOUSER": 67}
    sysexits |= {"EX_UNAVAILABLE": 69}
    sysexits |= {"EX_TEMPFAIL": 75, "EX_CONFIG": 78}
    assert {k: v for k, v in TABLE.items() if v >= 64} == sysexits


@pytest.mark.parametrize(
    "argv",
    [
        ["no-such-command"],
        [],
        ["tenant", "add", "acme"],
        ["suppress", "add", "--tenant"],
        ["intake", "--no-such-option"],
        ["report", "classify"],
    ],
    ids=str,
)
def test_usage_errors_exit_ex_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == exitcodes.EX_USAGE
    assert "usage: aup-milter" in capsys.readouterr().err


def test_help_and_version_still_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--version"], ["--help"], ["suppress", "--help"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == exitcodes.EX_OK, argv
    capsys.readouterr()


def test_the_intake_as_postfix_runs_it_bounces_bad_arguments() -> None:
    """Postfix's pipe bounces on 64 as on any permanent sysexits code; 2 meant nothing to it."""
    done = subprocess.run(
        [sys.executable, "-m", "aupmilter", "intake", "--recipient"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == exitcodes.EX_USAGE, done.stderr


def test_the_manual_lists_every_code_of_the_table() -> None:
    page = (ROOT / "doc" / "aup-milter.8").read_text("utf-8")
    section = page.split(".SH EXIT STATUS\n", 1)[1].split("\n.SH ", 1)[0]
    listed = {int(code) for code in re.findall(r"^\.B (\d+)$", section, re.MULTILINE)}
    assert listed == set(TABLE.values())
    for name, value in TABLE.items():
        if value >= 64:
            assert f"({name})" in section, name

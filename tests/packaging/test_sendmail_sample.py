"""The Sendmail snippet builds a sendmail.cf with the filter and the macros aup-milter needs.

m4 with Debian's sendmail-cf (the same macros `sendmailconfig` uses) turns a
minimal sendmail.mc that includes the snippet into a sendmail.cf; the test
reads the filter definition and the macro lists out of the result.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from testbed.postfix import SAMPLE_MILTER_SOCKET

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = ROOT / "postfix-sample" / "sendmail.mc.milter"
CF_M4 = Path("/usr/share/sendmail/cf/m4/cf.m4")


@pytest.fixture(scope="module")
def sendmail_cf(tmp_path_factory: pytest.TempPathFactory) -> str:
    assert CF_M4.exists(), "sendmail-cf is not installed (scripts/bootstrap.sh installs it)"
    mc = tmp_path_factory.mktemp("sendmail") / "sendmail.mc"
    mc.write_text(
        "divert(-1)\n"
        f"include(`{CF_M4}')dnl\n"
        "divert(0)dnl\n"
        "OSTYPE(`debian')dnl\n"
        "DOMAIN(`generic')dnl\n"
        f"include(`{SNIPPET}')dnl\n"
        "MAILER(`local')dnl\n"
        "MAILER(`smtp')dnl\n"
    )
    result = subprocess.run(
        ["m4", str(mc)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout


def _option(cf: str, name: str) -> str:
    match = re.search(rf"^O {re.escape(name)}=(.*)$", cf, re.MULTILINE)
    assert match, f"sendmail.cf has no O {name}"
    return match.group(1)


def test_filter_is_defined_with_tempfail_and_timeouts(sendmail_cf: str) -> None:
    assert _option(sendmail_cf, "InputMailFilters") == "aup-milter"
    match = re.search(r"^Xaup-milter, (.*)$", sendmail_cf, re.MULTILINE)
    assert match, "no X line for aup-milter"
    fields = dict(part.split("=", 1) for part in match.group(1).split(", "))
    # The same socket as the Postfix sample and the shipped config.
    assert fields["S"] == "local:" + SAMPLE_MILTER_SOCKET.removeprefix("unix:")
    assert fields["F"] == "T"
    timeouts = dict(item.split(":") for item in fields["T"].split(";"))
    assert set(timeouts) == {"C", "S", "R", "E"}


def test_macros_include_the_login_and_the_queue_id(sendmail_cf: str) -> None:
    envfrom = [m.strip() for m in _option(sendmail_cf, "Milter.macros.envfrom").split(",")]
    assert "{auth_authen}" in envfrom
    assert "i" in envfrom
    assert "i" in _option(sendmail_cf, "Milter.macros.eom").split(", ")

"""``make demo`` as a new user meets it: ``python -m testbed demo-up``, its printed commands, then
``demo-down``; here in a run folder and on ports of its own, so a running demo is not touched.

The demo runs the RDAP server as a part of its own (testbed/parts/rdapservice.py), so the
``tenant verify-domain`` command it prints passes every check with no internet: the ownership
token, SPF and DKIM from the test DNS, DMARC, the RDAP registrant. ``demo-down`` leaves no
process of the run folder behind and every port free again.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.parts.service import HOST, python_env
from testbed.proc import tcp_port_free
from testbed.stack import default_run_dir, port_offset

pytestmark = pytest.mark.e2e

RUN_DIR = default_run_dir("e2e-demo")
BASE = port_offset()
PORTS = {
    "redis": 6398 + BASE, "smtp": 2555 + BASE, "sink": 2556 + BASE, "web": 2558 + BASE,
    "metrics": 2560 + BASE, "rdap": 2561 + BASE,
}  # fmt: skip
LISTENING = {**PORTS, "dns": PORTS["sink"] + 1, "intake": PORTS["sink"] + 3}
"""Every port the demo listens on: the DNS server and the mailto intake follow the sink's."""
ARGS = [
    "--run-dir", str(RUN_DIR),
    *(word for name, port in PORTS.items() for word in (f"--{name}-port", str(port))),
]  # fmt: skip
CHECKS = ("ownership", "spf", "dkim", "dmarc", "rdap")


def processes_in(folder: Path) -> dict[int, str]:
    """Every process whose working directory is ``folder`` or under it: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cwd == folder or folder in cwd.parents:
            found[int(entry.name)] = command
    return found


def run_testbed(command: str) -> subprocess.CompletedProcess[str]:
    """``python -m testbed COMMAND`` as ``make demo`` runs it, on this test's folder and ports."""
    argv = [sys.executable, "-m", "testbed", command, *ARGS]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=180, check=False, env=python_env()
    )


def printed_command(text: str, pattern: str) -> list[str]:
    """The one command line of the start-up text that matches ``pattern``, as words."""
    found = [line for line in text.splitlines() if re.search(pattern, line)]
    assert len(found) == 1, f"{pattern!r} in:\n{text}"
    return shlex.split(found[0])


def paste(words: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a printed command as a person pastes it (from the directory the demo started in)."""
    return subprocess.run(
        words, capture_output=True, text=True, timeout=60, check=False, env=python_env()
    )


@pytest.fixture
def demo() -> Iterator[str]:
    """The demo brought up (from clean); what it printed. Stopped again whatever happens."""
    run_testbed("demo-down")  # a killed earlier run may have left its parts running
    try:
        up = run_testbed("demo-up")
        assert up.returncode == 0, up.stdout + up.stderr
        yield up.stdout
    finally:
        run_testbed("demo-down")


def test_the_demo_verifies_acme_offline_and_stops_every_part_it_started(demo: str) -> None:
    status = run_testbed("demo-status")
    assert status.returncode == 0, status.stdout + status.stderr
    pids = dict(re.findall(r"^(\w+)\s+running, pid (\d+)$", status.stdout, re.M))
    assert {"redis", "sink", "dns", "rdap", "milter", "web", "postfix"} <= set(pids)
    assert len(set(pids.values())) == len(pids), "each part is a process of its own"
    rdap_url = f"http://{HOST}:{PORTS['rdap']}/bootstrap/dns.json"
    assert f'rdap_bootstrap = "{rdap_url}"' in (RUN_DIR / "aup-milter.toml").read_text()

    verify = paste(printed_command(demo, r" verify-domain acme acme\.example$"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    for check in CHECKS:
        assert re.search(rf"^  {check} +pass ", verify.stdout, re.M), verify.stdout
    assert "registrant organization Acme Corporation" in verify.stdout
    assert re.search(r"^result: pass, recorded at ", verify.stdout, re.M), verify.stdout
    with_json = paste([*printed_command(demo, r" verify-domain acme acme\.example$"), "--json"])
    findings = json.loads(with_json.stdout)["findings"]
    assert {f["check"]: f["status"] for f in findings} == dict.fromkeys(CHECKS, "pass")

    show = paste(printed_command(demo, r" tenant -c \S+ show acme$"))
    assert show.returncode == 0, show.stdout + show.stderr
    assert re.search(r"^domain acme\.example: verification pass at ", show.stdout, re.M)

    down = run_testbed("demo-down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert processes_in(RUN_DIR) == {}
    assert [name for name, port in LISTENING.items() if not tcp_port_free(HOST, port)] == []
    assert sorted(p.name for p in RUN_DIR.glob("*.pid")) == []
    stopped = run_testbed("demo-status")
    assert stopped.returncode == 3
    assert re.findall(r"^(\w+)\s+stopped$", stopped.stdout, re.M)[:7] == [
        "redis", "sink", "dns", "rdap", "milter", "web", "postfix",
    ]  # fmt: skip

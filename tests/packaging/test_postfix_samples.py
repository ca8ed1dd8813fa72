"""The Postfix snippets in postfix-sample/ merge into a working configuration.

A fresh config directory gets a minimal base, every main.cf snippet and,
after Debian's stock master.cf (smtpd chrooted), every master.cf snippet; the
transport map is built with postmap. Postfix itself then judges it:
`postconf -n`, `postconf -M`, `postconf -P` and `postfix check` must succeed
without a single warning (Postfix reports a misspelt or orphaned parameter,
such as a transport_destination_recipient_limit for a service that does not
exist, only as a warning).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.postfix import MILTER_SNIPPET, SAMPLE_MILTER_SOCKET

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "postfix-sample"
MAIN_SNIPPETS = ("main.cf.milter", "main.cf.queue", "main.cf.intake")
MASTER_SNIPPETS = ("master.cf.submission", "master.cf.intake")
TRANSPORT_MAP = "aup-intake-transport"
DEBIAN_MASTER_CF = Path("/usr/share/postfix/master.cf.dist")
CHROOT_MILTER = "unix:/aup-milter/aup-milter.sock"


@dataclass(frozen=True)
class Checked:
    config_dir: Path
    outputs: dict[str, subprocess.CompletedProcess[str]]

    def postconf(self, *args: str) -> str:
        return _run(["postconf", "-c", str(self.config_dir), *args]).stdout


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def merge_samples(workdir: Path, main_texts: list[str]) -> Path:
    """A config dir: base settings + the main.cf texts, stock master.cf + the samples."""
    config_dir = workdir / "etc"
    config_dir.mkdir()
    (workdir / "spool").mkdir()
    (workdir / "data").mkdir()
    base = [
        "compatibility_level = 3.6",
        f"queue_directory = {workdir / 'spool'}",
        f"data_directory = {workdir / 'data'}",
        "myhostname = relay.example.net",
        "mydestination =",
        "",
    ]
    (config_dir / "main.cf").write_text("\n".join(base) + "\n".join(main_texts))
    master = [DEBIAN_MASTER_CF.read_text()]
    master += [(SAMPLES / name).read_text() for name in MASTER_SNIPPETS]
    (config_dir / "master.cf").write_text("\n".join(master))
    shutil.copy(SAMPLES / TRANSPORT_MAP, config_dir / TRANSPORT_MAP)
    return config_dir


def check(config_dir: Path) -> Checked:
    outputs: dict[str, subprocess.CompletedProcess[str]] = {}
    c = ["-c", str(config_dir)]
    outputs["postmap"] = _run(["postmap", *c, f"hash:{config_dir / TRANSPORT_MAP}"])
    outputs["postconf -n"] = _run(["postconf", *c, "-n"])
    outputs["postconf -M"] = _run(["postconf", *c, "-M"])
    outputs["postconf -P"] = _run(["postconf", *c, "-P"])
    outputs["postfix check"] = _run(["postfix", *c, "check"])
    return Checked(config_dir, outputs)


def assert_clean(checked: Checked) -> None:
    for name, result in checked.outputs.items():
        assert result.returncode == 0, f"{name} failed:\n{result.stderr}"
        assert result.stderr == "", f"{name} warned:\n{result.stderr}"


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> Checked:
    workdir = tmp_path_factory.mktemp("postfix-samples")
    texts = [(SAMPLES / name).read_text() for name in MAIN_SNIPPETS]
    return check(merge_samples(workdir, texts))


def test_all_snippets_merge_without_a_warning(merged: Checked) -> None:
    assert_clean(merged)


def test_milter_settings_take_effect(merged: Checked) -> None:
    assert merged.postconf("-h", "smtpd_milters").strip() == SAMPLE_MILTER_SOCKET
    assert merged.postconf("-h", "milter_default_action").strip() == "tempfail"
    assert merged.postconf("-h", "milter_protocol").strip() == "6"
    assert "{auth_authen}" in merged.postconf("-h", "milter_mail_macros")


def test_no_smtp_client_gets_its_header_filled_in(merged: Checked) -> None:
    # Set explicitly (postconf -n lists only what main.cf sets), to empty: cleanup adds
    # no From, Date or Message-Id that the milter would then take for the client's.
    explicit = merged.outputs["postconf -n"].stdout.splitlines()
    assert "local_header_rewrite_clients =" in explicit
    assert merged.postconf("-h", "local_header_rewrite_clients").strip() == ""
    assert merged.postconf("-h", "always_add_missing_headers").strip() == "no"


def test_retry_window_is_48_hours(merged: Checked) -> None:
    assert merged.postconf("-h", "maximal_queue_lifetime").strip() == "2d"
    assert merged.postconf("-h", "bounce_queue_lifetime").strip() == "2d"
    assert merged.postconf("-h", "delay_warning_time").strip() == "4h"


def test_submission_service_requires_sasl(merged: Checked) -> None:
    assert merged.postconf("-P", "submission/inet/smtpd_sasl_auth_enable").strip() == (
        "submission/inet/smtpd_sasl_auth_enable = yes"
    )


def test_intake_domain_is_routed_to_the_pipe_service(merged: Checked) -> None:
    domain = merged.postconf("-h", "relay_domains").strip()
    transport_map = merged.postconf("-xh", "transport_maps").strip()
    route = _run(["postmap", "-c", str(merged.config_dir), "-q", domain, transport_map])
    assert route.stdout.strip() == "aup-intake:", route.stderr
    service = merged.postconf("-M", "aup-intake/unix")
    assert re.search(r"\bpipe\b", service), service
    assert "user=aup-milter" in service
    assert "/usr/bin/aup-milter intake -c /etc/aup-milter/aup-milter.toml" in service
    # One recipient per delivery; misnaming the service would leave this unused (a warning).
    assert merged.postconf("-h", "aup-intake_destination_recipient_limit").strip() == "1"


def test_bounce_notices_go_to_the_report_intake(merged: Checked) -> None:
    domain = merged.postconf("-h", "relay_domains").strip()
    classes = merged.postconf("-h", "notify_classes")
    assert "bounce" in classes and "delay" in classes
    transport_map = merged.postconf("-xh", "transport_maps").strip()
    for name in ("bounce_notice_recipient", "delay_notice_recipient"):
        recipient = merged.postconf("-h", name).strip()
        assert recipient.endswith("@" + domain)
        route = _run(["postmap", "-c", str(merged.config_dir), "-q", recipient, transport_map])
        assert route.stdout.strip() == "aup-reports:", (name, route.stderr)


def test_report_address_is_routed_to_the_report_service(merged: Checked) -> None:
    domain = merged.postconf("-h", "relay_domains").strip()
    transport_map = merged.postconf("-xh", "transport_maps").strip()
    query = ["postmap", "-c", str(merged.config_dir), "-q", f"reports@{domain}", transport_map]
    route = _run(query)
    assert route.stdout.strip() == "aup-reports:", route.stderr
    service = merged.postconf("-M", "aup-reports/unix")
    assert re.search(r"\bpipe\b", service) and "user=aup-milter" in service, service
    assert "aup-milter intake --reports -c /etc/aup-milter/aup-milter.toml" in service
    assert merged.postconf("-h", "aup-reports_destination_recipient_limit").strip() == "1"


def test_chroot_variant_is_valid_on_debians_chrooted_smtpd(tmp_path: Path) -> None:
    text = MILTER_SNIPPET.read_text()
    commented = f"#smtpd_milters = {CHROOT_MILTER}\n"
    assert commented in text, "main.cf.milter lost its chroot alternative"
    variant = text.replace(f"smtpd_milters = {SAMPLE_MILTER_SOCKET}\n", "").replace(
        commented, commented[1:]
    )
    checked = check(merge_samples(tmp_path, [variant]))
    assert_clean(checked)
    assert checked.postconf("-h", "smtpd_milters").strip() == CHROOT_MILTER
    # Debian's stock master.cf, which the samples are merged into, chroots smtpd.
    assert re.search(r"^smtp\s+inet\s+n\s+-\s+y\s", checked.postconf("-M", "smtp/inet"))

"""The systemd units: sandboxed below an exposure of 2.0, and consistent with the daemon.

`systemd-analyze security --offline=yes` rates the unit files as shipped.
(`systemd-analyze verify` needs the installed binary, user and manual pages:
tests/packaging/test_deb.py runs it against the installed package.)
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from aupmilter import daemon
from aupmilter.exitcodes import EX_CONFIG

from .units import MAX_EXPOSURE, ROOT, SERVICES, SOCKETS, UNIT_DIR, exposure, parse_unit

SAMPLE_CONFIG = ROOT / "etc" / "aup-milter.toml"
CONFIG_PATH = "/etc/aup-milter/aup-milter.toml"


@pytest.mark.parametrize("name", SERVICES)
def test_service_exposure_is_at_most_2(name: str) -> None:
    level, report = exposure(UNIT_DIR / name)
    assert level <= MAX_EXPOSURE, report


def test_exposure_check_can_fail(tmp_path: Path) -> None:
    # The same service without its sandbox must rate far above the limit.
    unit = parse_unit(UNIT_DIR / "aup-milter.service")
    bare = tmp_path / "bare.service"
    service = unit["Service"]
    bare.write_text(
        "[Service]\n"
        + "".join(f"{key}={service[key][0]}\n" for key in ("Type", "ExecStart", "User"))
    )
    level, _ = exposure(bare)
    assert level > MAX_EXPOSURE


@pytest.mark.parametrize("name", SERVICES)
def test_service_runs_unprivileged_and_hardened(name: str) -> None:
    service = parse_unit(UNIT_DIR / name)["Service"]
    assert service["User"] == ["aup-milter"]
    assert service["ExecStart"][0].endswith(f" -c {CONFIG_PATH}")
    assert service["CapabilityBoundingSet"] == [""]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "MemoryDenyWriteExecute"):  # fmt: skip
        assert service[key] == ["yes"], key
    assert service["ProtectSystem"] == ["strict"]
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert service["SystemCallFilter"][0] == "@system-service"
    # A config that does not validate exits with EX_CONFIG; restarting cannot fix it.
    assert str(EX_CONFIG) in service["RestartPreventExitStatus"]


@pytest.mark.parametrize("name", SERVICES)
def test_no_reload_by_signal(name: str) -> None:
    # libmilter stops on SIGHUP; the daemon watches its files instead.
    service = parse_unit(UNIT_DIR / name)["Service"]
    assert "ExecReload" not in service


def test_milter_service_is_notify_and_outlasts_the_drain() -> None:
    service = parse_unit(UNIT_DIR / "aup-milter.service")["Service"]
    assert service["Type"] == ["notify"]
    with SAMPLE_CONFIG.open("rb") as handle:
        grace = float(tomllib.load(handle)["milter"]["shutdown_grace"])
    stop_timeout = float(service["TimeoutStopSec"][0])
    # systemd must not SIGKILL a daemon that is still draining open transactions.
    assert stop_timeout > grace + daemon.STOP_TIMEOUT


def test_service_can_write_where_the_sample_listens() -> None:
    with SAMPLE_CONFIG.open("rb") as handle:
        listen = tomllib.load(handle)["milter"]["listen"]
    socket_dir = str(Path(listen.removeprefix("unix:")).parent)
    service = parse_unit(UNIT_DIR / "aup-milter.service")["Service"]
    writable = " ".join(service["ReadWritePaths"]).split()
    assert socket_dir in writable
    tmpfiles = (UNIT_DIR / "tmpfiles.d" / "aup-milter.conf").read_text()
    assert f"d {socket_dir} 0755 aup-milter aup-milter -" in tmpfiles


@pytest.mark.parametrize("name", SOCKETS)
def test_socket_matches_the_sample_config(name: str) -> None:
    with SAMPLE_CONFIG.open("rb") as handle:
        milter = tomllib.load(handle)["milter"]
    socket = parse_unit(UNIT_DIR / name)["Socket"]
    assert socket["ListenStream"] == [milter["listen"].removeprefix("unix:")]
    assert socket["SocketGroup"] == [milter["socket_group"]]
    assert socket["SocketMode"] == [milter["socket_mode"]]

"""The Debian and RPM packaging agree with the project and with each other.

The package build itself runs in `make test-deb`; these checks are quick
and catch the drift that the build would only show later: a version bumped
in one place, a unit or manual page one package forgets.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEBIAN = ROOT / "packaging" / "debian"
SPEC = ROOT / "packaging" / "rpm" / "aup-milter.spec"
# Debian 12 package names of the libraries, by the PyPI name pyproject.toml uses.
DEBIAN_NAMES = {
    "pymilter": "python3-milter",
    "redis": "python3-redis",
    "dnspython": "python3-dnspython",
    "pyspf": "python3-spf",
    "dkimpy": "python3-dkim",
    "pynacl": "python3-nacl",
    "cryptography": "python3-cryptography",
    "publicsuffix2": "python3-publicsuffix2",
    "aiohttp": "python3-aiohttp",
    "flufl.bounce": "python3-flufl.bounce",
    "rich": "python3-rich",
    "prometheus-client": "python3-prometheus-client",
}


def project() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        table: dict[str, object] = tomllib.load(handle)["project"]
    return table


def runtime_requirements() -> list[str]:
    requirements = project()["dependencies"]
    assert isinstance(requirements, list)
    return [re.split(r"[\[<>=!~ ;]", str(r), maxsplit=1)[0].lower() for r in requirements]


def test_versions_agree() -> None:
    version = project()["version"]
    changelog = (DEBIAN / "changelog").read_text().splitlines()[0]
    assert changelog.startswith(f"aup-milter ({version}-"), changelog
    assert re.search(rf"^Version:\s+{re.escape(str(version))}$", SPEC.read_text(), re.MULTILINE)


def test_every_runtime_library_is_a_package_dependency() -> None:
    control = (DEBIAN / "control").read_text()
    spec = SPEC.read_text()
    for name in runtime_requirements():
        assert name in DEBIAN_NAMES, f"{name}: which Debian 12 package provides it?"
        assert re.search(rf"\b{DEBIAN_NAMES[name]}\b", control), f"control lacks {name}"
        # python3dist() takes the PEP 503 form of the name: flufl.bounce is flufl-bounce.
        assert f"python3dist({re.sub(r'[-_.]+', '-', name)})" in spec, f"the RPM spec lacks {name}"


def test_both_packages_ship_the_same_files() -> None:
    install = (DEBIAN / "aup-milter.install").read_text()
    manpages = (DEBIAN / "aup-milter.manpages").read_text()
    spec = SPEC.read_text()
    for unit in sorted((ROOT / "systemd").glob("aup-milter*.*")):
        assert f"systemd/{unit.name}" in install, unit.name
        assert f"%{{_unitdir}}/{unit.name}" in spec, unit.name
    for page in sorted((ROOT / "doc").glob("aup-milter*.[1-8]")):
        assert f"doc/{page.name}" in manpages, page.name
        assert f"doc/{page.name}" in spec, page.name
    for config in ("etc/aup-milter.toml", "policies/*.toml"):
        assert config in install and config in spec, config
    assert "systemd/tmpfiles.d/aup-milter.conf" in install
    assert "systemd/tmpfiles.d/aup-milter.conf" in spec


def test_nothing_is_enabled_or_started_on_install() -> None:
    rules = (DEBIAN / "rules").read_text()
    calls = [line for line in rules.splitlines() if line.strip().startswith("dh_installsystemd")]
    assert calls, "debian/rules does not configure dh_installsystemd"
    for call in calls:
        assert "--no-enable" in call and "--no-start" in call, call
    postinst = (DEBIAN / "postinst").read_text()
    assert "systemctl" not in postinst and "deb-systemd-invoke" not in postinst

"""The built Debian package, installed for real (make test-deb).

Installs the .deb named by AUP_DEB_PACKAGE with apt-get (which pulls in
Debian's python3-milter, python3-redis, ...), checks what it put on the
system, runs the installed program with Debian's interpreter and libraries
(not this checkout, not the .venv), and purges it at the end. The daemon runs
as the package's account under the parts of the unit's sandbox that can be
had without systemd as PID 1: no_new_privs, and MemoryDenyWriteExecute's
kernel equivalent (prctl PR_SET_MDWE). Tests run in file order: the purge
test comes last.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testbed import toml
from testbed.dnsserver import DnsServer
from tests.milter.mta import Kind, MilterClient
from tests.support import RedisServer, free_port, tail, wait_until

from .conftest import DEB_PACKAGE_ENV
from .units import MAX_EXPOSURE, SERVICES, SOCKETS, UNIT_DIR, exposure

pytestmark = pytest.mark.deb

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "aup-milter"
ACCOUNT = "aup-milter"
PROGRAM = Path("/usr/bin/aup-milter")
SYSTEM_PYTHON = "/usr/bin/python3"
CONFIG_DIR = Path("/etc/aup-milter")
CONFIG = CONFIG_DIR / "aup-milter.toml"
SOCKET_DIR = Path("/run/aup-milter")
SYSTEM_UNITS = Path("/lib/systemd/system")
DIST_PACKAGES = "/usr/lib/python3/dist-packages/"
SYSTEM_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]
STARTUP_TIMEOUT = 20.0
# Linux >= 6.3: refuse memory that is, or was, writable from becoming executable,
# what systemd's MemoryDenyWriteExecute=yes enforces with seccomp.
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
MDWE_EXEC = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:\n"
    "    sys.exit('prctl(PR_SET_MDWE): ' + os.strerror(ctypes.get_errno()))\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)
# Everything the package owns, or makes in its maintainer scripts.
PACKAGE_PATHS = (
    PROGRAM,
    CONFIG_DIR,
    SOCKET_DIR,
    Path(DIST_PACKAGES) / "aupmilter",
    Path("/usr/lib/tmpfiles.d/aup-milter.conf"),
    Path("/usr/share/man/man8/aup-milter.8.gz"),
    Path("/usr/share/man/man5/aup-milter.toml.5.gz"),
    Path("/usr/share/doc/aup-milter"),
    Path("/usr/share/aup-milter"),
    *(SYSTEM_UNITS / name for name in (*SERVICES, *SOCKETS)),
)


def run(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, env=SYSTEM_ENV
    )


def package_status() -> str:
    return run(["dpkg-query", "-W", "-f=${Status}", PACKAGE]).stdout.strip()


def purge() -> subprocess.CompletedProcess[str]:
    return run([*APT, "purge", PACKAGE], timeout=600)


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        version: str = tomllib.load(handle)["project"]["version"]
    return version


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    deb = Path(os.environ[DEB_PACKAGE_ENV]).resolve()
    assert deb.is_file(), f"{DEB_PACKAGE_ENV}={deb}: no such package (make deb builds it)"
    if package_status().startswith("install"):
        # Left over from an interrupted run: start from a clean system.
        assert purge().returncode == 0
    if run(["apt-cache", "show", "python3-milter"]).returncode != 0:
        # No package lists yet (a fresh machine whose tools were all present).
        assert run(["apt-get", "update", "-q"], timeout=600).returncode == 0
    result = run([*APT, "install", "--no-install-recommends", str(deb)], timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert package_status() == "install ok installed"
    yield deb
    if package_status() != "":
        purge()


# --- what the package installs ------------------------------------------------------


def test_version_is_the_projects(installed: Path) -> None:
    result = run([str(PROGRAM), "--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"aup-milter {project_version()}"


def test_program_uses_debians_python_and_libraries(installed: Path) -> None:
    assert PROGRAM.read_text().splitlines()[0] == f"#!{SYSTEM_PYTHON}"
    modules = ("aupmilter", "Milter", "milter", "redis", "hiredis", "dns.resolver", "spf",
               "dkim", "publicsuffix2", "aiohttp", "flufl.bounce", "rich",
               "prometheus_client")  # fmt: skip
    probe = "import importlib\n" + "".join(
        f"print({name!r}, importlib.import_module({name!r}).__file__)\n" for name in modules
    )
    result = run([SYSTEM_PYTHON, "-I", "-c", probe])
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        name, path = line.split(" ", 1)
        assert path.startswith(DIST_PACKAGES), f"{name} comes from {path}, not a Debian package"
    redis_version = run([SYSTEM_PYTHON, "-I", "-c", "import redis; print(redis.__version__)"])
    owner = run(["dpkg-query", "-W", "-f=${Version}", "python3-redis"]).stdout
    assert owner.startswith(redis_version.stdout.strip())


def test_shipped_config_checks_ok(installed: Path) -> None:
    result = run([str(PROGRAM), "check", "-c", str(CONFIG)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{CONFIG}: OK")


def test_config_files_are_the_samples_and_conffiles(installed: Path) -> None:
    assert CONFIG.read_bytes() == (ROOT / "etc" / "aup-milter.toml").read_bytes()
    for plan in (ROOT / "policies").glob("*.toml"):
        assert (CONFIG_DIR / "policies" / plan.name).read_bytes() == plan.read_bytes()
    conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", PACKAGE]).stdout.split()
    assert str(CONFIG) in conffiles
    assert str(CONFIG_DIR / "policies" / "plans.toml") in conffiles
    # It may hold a Redis password: readable by the daemon's group only.
    info = CONFIG.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640
    assert (pwd.getpwuid(info.st_uid).pw_name, grp.getgrgid(info.st_gid).gr_name) == (
        "root",
        ACCOUNT,
    )


def test_units_manpages_and_examples_are_installed(installed: Path) -> None:
    for name in (*SERVICES, *SOCKETS):
        assert (SYSTEM_UNITS / name).read_bytes() == (UNIT_DIR / name).read_bytes()
    for section, page in (("8", "aup-milter"), ("5", "aup-milter.toml")):
        found = run(["man", "-w", section, page])
        assert found.stdout.strip() == f"/usr/share/man/man{section}/{page}.{section}.gz"
    examples = Path("/usr/share/doc/aup-milter/examples")
    for sample in (ROOT / "postfix-sample").iterdir():
        assert (examples / sample.name).read_bytes() == sample.read_bytes()
    monitoring = Path("/usr/share/aup-milter/monitoring")
    for shipped in (ROOT / "packaging" / "monitoring").iterdir():
        assert (monitoring / shipped.name).read_bytes() == shipped.read_bytes()


def test_system_account(installed: Path) -> None:
    user = pwd.getpwnam(ACCOUNT)
    assert 100 <= user.pw_uid < 1000, "not a system account"
    assert grp.getgrgid(user.pw_gid).gr_name == ACCOUNT
    assert user.pw_dir == "/nonexistent"
    assert user.pw_shell == "/usr/sbin/nologin"
    # The shipped config hands the socket to group postfix (Postfix is installed here).
    assert ACCOUNT in grp.getgrnam("postfix").gr_mem


def test_socket_folder_made_by_tmpfiles(installed: Path) -> None:
    info = SOCKET_DIR.stat()
    assert stat.S_ISDIR(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o755
    assert pwd.getpwuid(info.st_uid).pw_name == ACCOUNT


def test_nothing_is_enabled_or_running(installed: Path) -> None:
    for name in (*SERVICES, *SOCKETS):
        enabled = run(["deb-systemd-helper", "--quiet", "was-enabled", name])
        assert enabled.returncode != 0, f"{name} was enabled by the package"
    links = [p for p in Path("/etc/systemd/system").rglob("aup-milter*")]
    assert links == []
    uid = pwd.getpwnam(ACCOUNT).pw_uid
    running = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _owner(p) == uid]
    assert running == [], "a process runs as aup-milter right after installation"


def _owner(proc_dir: Path) -> int | None:
    try:
        return proc_dir.stat().st_uid
    except OSError:
        return None


def test_installed_units_verify_and_stay_below_exposure_2(installed: Path) -> None:
    units = [str(SYSTEM_UNITS / name) for name in (*SERVICES, *SOCKETS)]
    result = run(["systemd-analyze", "verify", *units])
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    for name in SERVICES:
        level, report = exposure(SYSTEM_UNITS / name)
        assert level <= MAX_EXPOSURE, report


# --- the installed daemon, running --------------------------------------------------


@dataclass
class Workspace:
    """A folder the daemon's account can read, with a private Redis."""

    path: Path
    redis: RedisServer
    dns: DnsServer
    metrics_port: int = 0

    def config(self, **milter: object) -> Path:
        """The shipped config, pointed at this Redis and DNS, the installed plans and ``milter``."""
        with CONFIG.open("rb") as handle:
            settings = tomllib.load(handle)
        settings["milter"].update(milter)
        settings["redis"]["url"] = self.redis.url
        # The senders' domains must resolve (bounce route); Debian's dnspython asks this server.
        settings["dns"] = {"nameservers": [self.dns.address], "timeout": 1.0, "lifetime": 2.0}
        settings["policy"]["plans_dir"] = str(CONFIG_DIR / "policies")
        # The shipped 127.0.0.1:8896 may be a running demo's: a port of this test's own.
        self.metrics_port = free_port()
        settings["metrics"]["listen"] = f"127.0.0.1:{self.metrics_port}"
        path = self.path / "aup-milter.toml"
        path.write_text(toml.dumps(settings))
        path.chmod(0o644)
        return path

    def cli(self, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return run([str(PROGRAM), *args[:1], "-c", str(config), *args[1:]])


@pytest.fixture
def workspace(installed: Path) -> Iterator[Workspace]:
    # Not under pytest's root-only tmp folder: the daemon runs as aup-milter.
    path = Path(tempfile.mkdtemp(prefix="aup-deb-", dir="/tmp"))
    path.chmod(0o755)
    redis_dir = path / "redis"
    redis_dir.mkdir()
    server = RedisServer(redis_dir)
    server.start()
    dns = DnsServer().start()
    try:
        yield Workspace(path, server, dns)
    finally:
        dns.stop()
        server.stop()
        shutil.rmtree(path, ignore_errors=True)


def as_account(argv: list[str]) -> list[str]:
    """``argv`` run as aup-milter (with its groups), no_new_privs, and MDWE, exec by exec."""
    return [
        "setpriv", f"--reuid={ACCOUNT}", f"--regid={ACCOUNT}", "--init-groups",
        "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all",
        SYSTEM_PYTHON, "-I", "-c", MDWE_EXEC, *argv,
    ]  # fmt: skip


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    log: Path
    notify: socket.socket

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}{tail(self.log)}")
            with contextlib.suppress(TimeoutError):
                if self.notify.recv(4096) == b"READY=1":
                    return
        raise AssertionError(f"no READY=1 within {STARTUP_TIMEOUT} s{tail(self.log)}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"daemon ignored SIGTERM{tail(self.log)}") from None


@contextlib.contextmanager
def daemon(workspace: Workspace, argv: list[str]) -> Iterator[Daemon]:
    notify_path = workspace.path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify_path.chmod(0o777)
    notify.settimeout(0.5)
    log = workspace.path / "daemon.log"
    env = dict(SYSTEM_ENV, NOTIFY_SOCKET=str(notify_path))
    with log.open("ab") as log_handle:
        proc = subprocess.Popen(argv, stdout=log_handle, stderr=subprocess.STDOUT, env=env)
    running = Daemon(proc, log, notify)
    try:
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        notify.close()


def add_tenants(workspace: Workspace, config: Path) -> None:
    for tenant_id, status in (("acme", "active"), ("globex", "suspended")):
        result = workspace.cli(
            config, "tenant", "add", tenant_id, "--plan", "standard", "--login", tenant_id,
            "--domain", f"{tenant_id}.example", "--status", status,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr


def assert_policy_is_enforced(address: str) -> None:
    with MilterClient(address, timeout=15) as client:
        client.open_session()
        delivered = client.send_message("a@acme.example", ["x@example.net"], auth_login="acme")
        assert delivered.refused_at is None
        assert delivered.final.kind in (Kind.CONTINUE, Kind.ACCEPT)
        assert delivered.quarantine_reason is None
        held = client.send_message("b@globex.example", ["x@example.net"], auth_login="globex")
        assert held.quarantine_reason is not None and "globex" in held.quarantine_reason
        refused = client.send_message("c@unknown.example", ["x@example.net"])
        assert refused.refused_at == "mail"
        assert refused.final.reply == "550 5.7.1"
        # The plan's cap, from the installed plan file; the window charge at end
        # of message runs the Lua script through Debian's python3-redis.
        with (CONFIG_DIR / "policies" / "plans.toml").open("rb") as handle:
            cap = tomllib.load(handle)["plan"]["standard"]["max_recipients_per_message"]
        rcpts = [f"r{n}@example.net" for n in range(cap + 1)]
        capped = client.send_message("a@acme.example", rcpts, auth_login="acme")
        assert [r.reply for _, r in capped.rcpts if r.refuses] == ["452 4.5.3"]
        assert capped.final.kind in (Kind.CONTINUE, Kind.ACCEPT)


def test_daemon_runs_as_its_account_with_debians_libraries(workspace: Workspace) -> None:
    sockets = workspace.path / "sockets"
    sockets.mkdir()
    shutil.chown(sockets, ACCOUNT, ACCOUNT)
    milter_socket = sockets / "milter.sock"
    config = workspace.config(listen=f"unix:{milter_socket}")
    add_tenants(workspace, config)

    with daemon(workspace, as_account([str(PROGRAM), "run", "-c", str(config)])) as running:
        running.wait_ready()
        info = milter_socket.stat()
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert grp.getgrgid(info.st_gid).gr_name == "postfix"
        assert pwd.getpwuid(info.st_uid).pw_name == ACCOUNT
        assert_policy_is_enforced(f"unix:{milter_socket}")
        assert_metrics_count_it(workspace.metrics_port)
        assert_status_ok(config, milter_socket)
        assert running.stop() == 0
    assert "stopped cleanly" in running.log.read_text()


def assert_metrics_count_it(port: int) -> None:
    """The endpoint (Debian's python3-prometheus-client) counted assert_policy_is_enforced."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    transactions = {
        dict(labels)["verdict"]: value
        for (name, labels), value in found.items()
        if name == "aup_transactions_total"
    }
    assert transactions == {"accept": 2, "quarantine": 1, "reject": 1}, transactions
    refused = ("aup_recipients_refused_total", (("rule", "recipient-cap"), ("verdict", "tempfail")))
    assert found[refused] == 1


def assert_status_ok(config: Path, milter_socket: Path) -> None:
    """`aup-milter status` under Debian's python3: the daemon, its Redis and scripts, its config."""
    result = run([str(PROGRAM), "status", "-c", str(config), "--json"])
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["summary"].startswith("AUP-MILTER OK - milter answers (protocol 6)")
    assert report["checks"]["milter"]["address"] == f"unix:{milter_socket}"
    assert {name: check["status"] for name, check in report["checks"].items()} == {
        "milter": "ok",
        "redis": "ok",
        "scripts": "ok",
        "registry": "ok",
        "config": "ok",
    }


def test_daemon_takes_its_socket_from_socket_activation(workspace: Workspace) -> None:
    milter_socket = workspace.path / "activated.sock"
    config = workspace.config(listen="systemd")
    add_tenants(workspace, config)
    # systemd-socket-activate listens as root, like aup-milter.socket, and execs
    # the daemon on the first connection with LISTEN_FDS=1 (and only the
    # environment variables named with -E).
    argv = ["systemd-socket-activate", "-l", str(milter_socket), "-E", "NOTIFY_SOCKET",
            *as_account([str(PROGRAM), "run", "-c", str(config)])]  # fmt: skip
    with daemon(workspace, argv) as running:
        wait_until(milter_socket.exists, timeout=STARTUP_TIMEOUT, what="the activation socket")
        assert_policy_is_enforced(f"unix:{milter_socket}")
        running.wait_ready()
        assert running.stop() == 0
    assert "listening on systemd socket activation" in running.log.read_text()


def test_socket_group_it_is_not_in_is_a_startup_error(workspace: Workspace) -> None:
    sockets = workspace.path / "sockets"
    sockets.mkdir()
    shutil.chown(sockets, ACCOUNT, ACCOUNT)
    config = workspace.config(listen=f"unix:{sockets / 'milter.sock'}", socket_group="root")
    argv = as_account([str(PROGRAM), "run", "-c", str(config)])
    with daemon(workspace, argv) as running:
        assert running.proc.wait(timeout=STARTUP_TIMEOUT) == 78
    assert "not a member" in running.log.read_text()


# --- purge (last) -------------------------------------------------------------------


def test_purge_removes_everything(installed: Path) -> None:
    result = purge()
    assert result.returncode == 0, result.stderr
    assert package_status() in ("", "unknown ok not-installed")
    left = [str(path) for path in PACKAGE_PATHS if path.exists()]
    assert left == []
    with pytest.raises(KeyError):
        pwd.getpwnam(ACCOUNT)
    with pytest.raises(KeyError):
        grp.getgrnam(ACCOUNT)
    assert ACCOUNT not in grp.getgrnam("postfix").gr_mem
    state = Path("/var/lib/systemd/deb-systemd-helper-enabled")
    assert not state.exists() or not [p for p in state.rglob("aup-milter*")]

"""The unsubscribe side of the testbed: secrets, DKIM keys, the intake wiring in Postfix.

With ``Stack(unsubscribe=True)`` (the demo and the end-to-end tests):

- the milter config gets ``[unsubscribe]`` (links to the stack's own web
  service, ``http://127.0.0.1:WEB_PORT``) and ``[dkim.tenant.*]`` for the demo
  tenants, signing with the test key ``testbed/dkim/test-rsa2048`` whose public
  half the test DNS publishes as ``test2048._domainkey.<domain>``;
- Postfix gets the intake of ``postfix-sample/main.cf.intake`` and
  ``master.cf.intake`` (the pipe services run ``aup-milter intake``, and
  ``aup-milter intake --reports`` for REPORT_ADDRESS and BOUNCE_ADDRESS, which
  receives Postfix's own bounce and delay notices), plus a listener without
  the milter on INTAKE_PORT, as the sample recommends for the intake
  domain's MX;
- the secrets and keys are files of the intake's user (pipe never runs
  commands as root): ``nobody`` here, the package's ``aup-milter`` account
  in production;
- the pipe runs the intake with ``.venv-intake``, the environment
  ``scripts/bootstrap.sh`` makes with Debian's ``/usr/bin/python3`` (the
  interpreter of the package in production) for exactly this purpose.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import stat
from pathlib import Path

from testbed.proc import TestbedError
from testbed.zones import private_key_path

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "postfix-sample"
MAIN_SAMPLE = SAMPLES / "main.cf.intake"
MASTER_SAMPLE = SAMPLES / "master.cf.intake"
TRANSPORT_SAMPLE = SAMPLES / "aup-intake-transport"
SAMPLE_DOMAIN = "unsub.example.net"
SAMPLE_COMMAND = "/usr/bin/aup-milter"
SAMPLE_CONFIG = "/etc/aup-milter/aup-milter.toml"
SAMPLE_USER = "user=aup-milter"

INTAKE_USER = "nobody"
# Made by scripts/bootstrap.sh (INTAKE_VENV there); the pipe runs its python.
INTAKE_VENV = REPO_ROOT / ".venv-intake"
UNSUB_DOMAIN = "unsub.testbed.example"
UNSUB_LOCAL = "unsubscribe"
SIGNING_SELECTOR = "test2048"
SIGNING_KEY = "test-rsa2048"
SIGNED_TENANTS = {
    "acme": "acme.example",
    "globex": "globex.example",
    "initech": "initech.example",
}
# main.cf.intake settings the testbed takes: all but error_notice_recipient
# (postmaster has no mailbox here). The bounce and delay notices go to the
# report intake, as in production.
MAIN_SETTINGS = (
    "relay_domains",
    "transport_maps",
    "_destination_recipient_limit",
    "_time_limit",
    "notify_classes",
    "bounce_notice_recipient",
    "delay_notice_recipient",
)
SERVICES = ("aup-intake", "aup-reports")
"""The pipe services of master.cf.intake, each running SAMPLE_COMMAND."""
REPORT_ADDRESS = f"reports@{UNSUB_DOMAIN}"
BOUNCE_ADDRESS = f"bounces@{UNSUB_DOMAIN}"


def secrets_path(run_dir: Path) -> Path:
    return run_dir / "unsubscribe.secrets"


def key_path(run_dir: Path, tenant: str) -> Path:
    return run_dir / "dkim" / f"{tenant}.key"


def transport_map(run_dir: Path) -> Path:
    return run_dir / "postfix" / "aup-intake-transport"


def prepare_files(run_dir: Path) -> None:
    """A secret (made once per run folder) and the signing keys, owned by the intake's user."""
    owner = pwd.getpwnam(INTAKE_USER)
    secret_file = secrets_path(run_dir)
    if not secret_file.exists():
        secret_file.write_text(secrets.token_hex(32) + "\n")
    files = [secret_file]
    for tenant in SIGNED_TENANTS:
        target = key_path(run_dir, tenant)
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(private_key_path(SIGNING_KEY), target)
        files.append(target)
    for path in files:
        os.chown(path, owner.pw_uid, owner.pw_gid)
        path.chmod(0o600)


def milter_sections(run_dir: Path, web_port: int) -> dict[str, object]:
    return {
        "unsubscribe": {
            "url_base": f"http://127.0.0.1:{web_port}",
            "mailto_local": UNSUB_LOCAL,
            "mailto_domain": UNSUB_DOMAIN,
            "secrets_file": str(secrets_path(run_dir)),
        },
        "web": {"listen": f"127.0.0.1:{web_port}", "trusted_proxies": []},
        "dkim": {
            "tenant": {
                tenant: {
                    "domain": domain,
                    "selector": SIGNING_SELECTOR,
                    "key_file": str(key_path(run_dir, tenant)),
                }
                for tenant, domain in SIGNED_TENANTS.items()
            }
        },
    }


def _readable_by_others(path: Path) -> bool:
    if not path.stat().st_mode & stat.S_IROTH:
        return False
    return all(folder.stat().st_mode & stat.S_IXOTH for folder in path.parents)


def intake_python() -> Path:
    """The interpreter of the intake's environment, checked to be usable by the intake's user.

    Not this process's interpreter: ``.venv`` may be made by a Python that
    ``nobody`` cannot read (pyenv under /root), and lending its site-packages
    to another interpreter misses whatever pip installed only for the other
    version (redis-py's async-timeout below Python 3.11.3).
    """
    python = INTAKE_VENV / "bin" / "python"
    config = INTAKE_VENV / "pyvenv.cfg"
    if not python.exists() or not config.exists():
        raise TestbedError(
            f"{INTAKE_VENV} is missing: the pipe transport runs the intake with it; "
            "run scripts/bootstrap.sh (make test and make demo do) to make it"
        )
    if not _readable_by_others(config):
        raise TestbedError(
            f"{config} (or a folder above it) is not readable by {INTAKE_USER}, "
            "who runs the intake under Postfix's pipe transport (which never runs as root): "
            "clone the project under a folder others can enter (e.g. /srv/aup-milter), "
            "or let them in with chmod o+x on the folder that keeps them out (a home "
            "such as /root is mode 700)"
        )
    return python


def main_cf_lines(run_dir: Path) -> list[str]:
    """The sample's intake routing, for the stack's domain and transport map."""
    lines = []
    for line in MAIN_SAMPLE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#") or "=" not in line:
            continue
        name = line.split("=", 1)[0].strip()
        if not any(name == key or name.endswith(key) for key in MAIN_SETTINGS):
            continue
        line = line.replace(SAMPLE_DOMAIN, UNSUB_DOMAIN)
        line = line.replace("$config_directory/aup-intake-transport", str(transport_map(run_dir)))
        lines.append(line)
    return lines


def transport_lines() -> str:
    text = TRANSPORT_SAMPLE.read_text().replace(SAMPLE_DOMAIN, UNSUB_DOMAIN)
    return "".join(f"{line}\n" for line in text.splitlines() if not line.startswith("#"))


def master_cf_lines(config: Path, intake_port: int) -> list[str]:
    """The sample's pipe service running this checkout's intake, and a milter-free listener."""
    text = MASTER_SAMPLE.read_text()
    # The environment has this checkout installed in editable mode: no PYTHONPATH.
    command = f"{intake_python()} -m aupmilter"
    blocks = []
    for name in SERVICES:
        service = re.search(rf"^{name}\s.*\n(?:[ \t]+\S.*\n)*", text, re.MULTILINE)
        if service is None or SAMPLE_COMMAND not in service.group(0):
            raise ValueError(f"{MASTER_SAMPLE}: no {name} pipe service running {SAMPLE_COMMAND}")
        block = service.group(0).replace(SAMPLE_COMMAND, command)
        block = block.replace(SAMPLE_CONFIG, str(config))
        blocks.append(block.replace(SAMPLE_USER, f"user={INTAKE_USER}").rstrip("\n"))
    # The sample's chroot column is n already; the testbed never chroots.
    listener = (
        f"127.0.0.1:{intake_port} inet n - n - - smtpd\n"
        "  -o syslog_name=postfix/intake\n"
        "  -o smtpd_milters=\n"
        "  -o smtpd_sasl_auth_enable=no\n"
        "  -o smtpd_relay_restrictions=reject_unauth_destination\n"
    )
    return [*blocks, listener.rstrip("\n")]

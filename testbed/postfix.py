"""Configuration of the testbed's private Postfix instance.

main.cf is the testbed's own base settings (directories, logging, no DNS,
SASL, relaying to the sink) followed by ``postfix-sample/main.cf.milter``
verbatim, with only its socket path replaced: the milter wiring under test is
the documented one, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MILTER_SNIPPET = REPO_ROOT / "postfix-sample" / "main.cf.milter"
# The socket path the sample uses; the testbed substitutes its own.
SAMPLE_MILTER_SOCKET = "unix:/run/aup-milter/aup-milter.sock"
MYHOSTNAME = "relay.testbed.invalid"


@dataclass(frozen=True)
class PostfixLayout:
    """Where a private instance keeps its files (all under the run folder)."""

    run_dir: Path

    @property
    def config_dir(self) -> Path:
        return self.run_dir / "postfix"

    @property
    def queue_dir(self) -> Path:
        return self.run_dir / "spool"

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "postfix-data"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "postfix.log"

    @property
    def sasldb(self) -> Path:
        return self.run_dir / "sasldb2"

    @property
    def sasl_conf(self) -> Path:
        # Debian's Postfix reads the Cyrus config from CONFIG_DIRECTORY/sasl/.
        return self.config_dir / "sasl" / "smtpd.conf"

    @property
    def master_pidfile(self) -> Path:
        return self.queue_dir / "pid" / "master.pid"


def milter_snippet(milter_socket: Path | None) -> str:
    """The sample's milter settings, pointed at ``milter_socket`` (None: milter off)."""
    text = MILTER_SNIPPET.read_text()
    if SAMPLE_MILTER_SOCKET not in text:
        raise ValueError(
            f"{MILTER_SNIPPET} no longer contains {SAMPLE_MILTER_SOCKET!r}; "
            "update testbed.postfix.SAMPLE_MILTER_SOCKET to match"
        )
    target = f"unix:{milter_socket}" if milter_socket is not None else ""
    return text.replace(SAMPLE_MILTER_SOCKET, target)


def snippet_settings(milter_socket: Path) -> dict[str, str]:
    """The ``name = value`` settings of the sample snippet (comments skipped)."""
    settings: dict[str, str] = {}
    for line in milter_snippet(milter_socket).splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            settings[name.strip()] = value.strip()
    return settings


def main_cf(
    layout: PostfixLayout,
    *,
    smtp_port: int,
    sink_port: int,
    milter_socket: Path | None,
    sasl_realm: str | None,
    overrides: Mapping[str, str],
    extra: Sequence[str] = (),
) -> str:
    """``extra``: main.cf lines from other samples (e.g. the intake's), before the overrides."""
    run = layout.run_dir
    base: dict[str, str] = {
        "compatibility_level": "3.6",
        "queue_directory": str(layout.queue_dir),
        "data_directory": str(layout.data_dir),
        "command_directory": "/usr/sbin",
        "daemon_directory": "/usr/lib/postfix/sbin",
        "shlib_directory": "/usr/lib/postfix",
        # Read-only use of the package's postfix-files; nothing is written there.
        "meta_directory": "/etc/postfix",
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": MYHOSTNAME,
        "mydomain": "testbed.invalid",
        "myorigin": "$myhostname",
        "mydestination": "",
        "local_recipient_maps": "",
        "local_transport": "error:local delivery disabled in the testbed",
        "relay_domains": "",
        "alias_maps": "",
        "alias_database": "",
        # Clients connect from testbed.client.CLIENT_ADDRESS (127.0.0.2): inside
        # mynetworks, so unauthenticated tests relay as before, but not one of
        # Postfix's own addresses, so to cleanup they are remote, as a tenant is.
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "relayhost": f"[127.0.0.1]:{sink_port}",
        # Loopback only: no resolver may be consulted, not even for the relayhost.
        "smtp_dns_support_level": "disabled",
        "smtp_host_lookup": "native",
        "smtpd_peername_lookup": "no",
        "biff": "no",
        # No syslog daemon here: postlogd writes this file.
        "maillog_file": str(layout.log_file),
        "maillog_file_prefixes": str(run),
        # Tests want deliveries and retries quickly, not Internet-friendly backoff.
        "queue_run_delay": "10s",
        "minimal_backoff_time": "10s",
        "maximal_backoff_time": "30s",
        "smtpd_relay_restrictions": (
            "permit_sasl_authenticated, permit_mynetworks, reject_unauth_destination"
        ),
        "smtpd_sasl_auth_enable": "yes",
        "smtpd_sasl_type": "cyrus",
        "smtpd_sasl_path": "smtpd",
        "smtpd_sasl_security_options": "noanonymous",
        # Plaintext AUTH is acceptable only because everything is on loopback.
        "smtpd_tls_auth_only": "no",
        "smtpd_sasl_local_domain": sasl_realm or "",
    }
    # A setting of `extra` or `overrides` that comes earlier replaces it in place: a
    # duplicate entry makes every daemon warn at start, and postlogd, logging its own
    # warnings to the socket it has not begun to read, then blocks every logger.
    added: dict[str, str] = {}
    for line in extra:
        name, _, value = line.partition("=")
        if name.strip() in base:
            base[name.strip()] = value.strip()
        else:
            added[name.strip()] = value.strip()
    rest: dict[str, str] = {}
    for name, value in overrides.items():
        if name in base:
            base[name] = value
        elif name in added:
            added[name] = value
        else:
            rest[name] = value
    lines = ["# Generated by testbed.postfix; edits are overwritten on start.", ""]
    lines += [f"{key} = {value}" for key, value in base.items()]
    lines += ["", f"# ---- {MILTER_SNIPPET.relative_to(REPO_ROOT)} ----", ""]
    lines.append(milter_snippet(milter_socket))
    if added:
        lines += ["", "# ---- intake (postfix-sample/main.cf.intake) ----"]
        lines += [f"{key} = {value}" for key, value in added.items()]
    if rest:
        lines += ["", "# ---- overrides from the Stack ----"]
        lines += [f"{key} = {value}" for key, value in rest.items()]
    return "\n".join(lines) + "\n"


# Every service Postfix needs for SMTP in and SMTP out, chroot off (a chroot
# would need copies of /etc inside the private spool). type, private,
# unpriv, chroot, wakeup, maxproc, command.
_SERVICES: tuple[tuple[str, str, str, str, str, str, str, str], ...] = (
    ("pickup", "unix", "n", "-", "n", "60", "1", "pickup"),
    ("cleanup", "unix", "n", "-", "n", "-", "0", "cleanup"),
    ("qmgr", "unix", "n", "-", "n", "300", "1", "qmgr"),
    ("rewrite", "unix", "-", "-", "n", "-", "-", "trivial-rewrite"),
    ("bounce", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("defer", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("trace", "unix", "-", "-", "n", "-", "0", "bounce"),
    ("verify", "unix", "-", "-", "n", "-", "1", "verify"),
    ("flush", "unix", "n", "-", "n", "1000?", "0", "flush"),
    ("proxymap", "unix", "-", "-", "n", "-", "-", "proxymap"),
    ("proxywrite", "unix", "-", "-", "n", "-", "1", "proxymap"),
    ("smtp", "unix", "-", "-", "n", "-", "-", "smtp"),
    ("relay", "unix", "-", "-", "n", "-", "-", "smtp"),
    ("showq", "unix", "n", "-", "n", "-", "-", "showq"),
    ("error", "unix", "-", "-", "n", "-", "-", "error"),
    ("retry", "unix", "-", "-", "n", "-", "-", "error"),
    ("discard", "unix", "-", "-", "n", "-", "-", "discard"),
    ("local", "unix", "-", "n", "n", "-", "-", "local"),
    ("anvil", "unix", "-", "-", "n", "-", "1", "anvil"),
    ("scache", "unix", "-", "-", "n", "-", "1", "scache"),
    ("postlog", "unix-dgram", "n", "-", "n", "-", "1", "postlogd"),
)


def master_cf(smtp_port: int, extra: Sequence[str] = ()) -> str:
    """``extra``: more service entries, as master.cf text (e.g. the intake's)."""
    rows = [("127.0.0.1:" + str(smtp_port), "inet", "n", "-", "n", "-", "-", "smtpd")]
    rows += list(_SERVICES)
    lines = ["# Generated by testbed.postfix; edits are overwritten on start."]
    lines += ["{:<20} {:<10} {:<4} {:<4} {:<4} {:<6} {:<4} {}".format(*row) for row in rows]
    lines += list(extra)
    return "\n".join(lines) + "\n"


def sasl_smtpd_conf(layout: PostfixLayout) -> str:
    return (
        "pwcheck_method: auxprop\n"
        "auxprop_plugin: sasldb\n"
        "mech_list: PLAIN LOGIN\n"
        f"sasldb_path: {layout.sasldb}\n"
    )

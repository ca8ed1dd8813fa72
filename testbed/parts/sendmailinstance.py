"""A private Sendmail: Debian's sendmail-bin unpacked beside the checkout, wired to the milter.

``scripts/bootstrap.sh`` unpacks the package with ``dpkg -x`` into ``.sendmail/``
(installing it would remove Postfix: the two packages conflict). The
``sendmail.cf`` is built with m4 and sendmail-cf's ``cf.m4`` from a small
wrapper ``.mc``: the test bed's own settings (files under the run folder, a
loopback port, the sink as smart host, no DNS, SMTP AUTH from a sasldb), then
``postfix-sample/sendmail.mc.milter`` verbatim with only its socket path
replaced, as the Postfix instance does with ``main.cf.milter``.

Sendmail runs as root, in the foreground (``-bD``), and in a UTS and mount
namespace of its own (``unshare``), where

- the host name is ``HOSTNAME``: Sendmail looks its host name up before it
  reads its config, and an unqualified one (``vm``) costs a 60 s sleep ("unable
  to qualify my own domain name") before it listens, whatever ``Dj`` says;
- ``/etc/hosts`` is the run folder's (that name, no DNS needed for it);
- ``/usr/lib/sasl2``, on Cyrus SASL's config path, is the run folder's
  ``sendmail/sasl``: Cyrus finds the test bed's ``Sendmail.conf`` (sasldb in
  the run folder, PLAIN and LOGIN) there, and the machine's folder is untouched.

Every command-line call (``mailq``, queue runs) runs in the same kind of
namespace: each invocation looks its host name up again. There is no syslog
here: Sendmail's ``-X`` traffic log (``sendmail-traffic.log``: every SMTP line
in and out) is what a timeout's diagnostics show.
"""

from __future__ import annotations

import hashlib
import re
import stat
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from testbed import postfix as pf
from testbed.parts.service import HOST, REPO_ROOT, Service, require_free_port
from testbed.proc import TestbedError, run, smtp_banner, tail, wait_until

SENDMAIL_ROOT = REPO_ROOT / ".sendmail"
"""Where scripts/bootstrap.sh unpacks sendmail-bin (``dpkg -x``)."""
SENDMAIL_BIN = SENDMAIL_ROOT / "usr" / "libexec" / "sendmail" / "sendmail"
HELP_FILE = SENDMAIL_ROOT / "etc" / "mail" / "helpfile"
CF_M4 = Path("/usr/share/sendmail/cf/m4/cf.m4")
SAMPLE = REPO_ROOT / "postfix-sample" / "sendmail.mc.milter"
SAMPLE_SOCKET = "local:" + pf.SAMPLE_MILTER_SOCKET.removeprefix("unix:")
HOSTNAME = pf.MYHOSTNAME
"""Sendmail's host name (and $j), the Postfix instance's: SASL users live in that realm."""
SASL_CONFIG_DIR = Path("/usr/lib/sasl2")
"""On Cyrus SASL's config path (/etc/sasl2:/etc/sasl:.../sasl2:/usr/lib/sasl2), and present."""
MARKER = "sendmail"
# The DATA reply: "250 2.0.0 5B20ab1C012345 Message accepted for delivery".
_ACCEPTED = re.compile(r"^2\.0\.0 ([0-9A-Za-z]+) Message accepted")
# The namespace's set-up, then the command: $1 hosts file, $2 SASL config dir, $3 host name.
_NAMESPACE_SCRIPT = (
    'mount --bind "$1" /etc/hosts && mount --bind "$2" ' + str(SASL_CONFIG_DIR) + " && "
    'hostname "$3" && shift 3 && exec "$@"'
)
QUEUE_FILE_PREFIXES = ("qf", "hf", "df", "xf", "tf", "Qf")
"""Control (qf; hf when quarantined), data, transcript, temporary and lost queue files."""


def queue_id_of(reply_text: str) -> str | None:
    """Sendmail's queue id from its ``250 2.0.0 ID Message accepted for delivery``."""
    match = _ACCEPTED.match(reply_text)
    return match.group(1) if match else None


SAFE_RUN_ROOT = Path("/run/aup-milter-testbed")


def safe_run_dir(preferred: Path) -> Path:
    """`preferred`, unless a directory above it is world-writable (a checkout under /tmp).

    Sendmail refuses files and sockets whose path crosses a world-writable directory
    ("unsafe: World writable directory"), so the run folder then moves to a
    root-owned one under /run, named after `preferred`.
    """
    for parent in preferred.resolve().parents:
        if parent.exists() and parent.stat().st_mode & stat.S_IWOTH:
            digest = hashlib.sha256(str(preferred.resolve()).encode()).hexdigest()[:12]
            return SAFE_RUN_ROOT / f"{preferred.name}-{digest}"
    return preferred


@dataclass(frozen=True)
class QueuedMessage:
    """One message in Sendmail's queue, read from its control file."""

    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    quarantine: str | None
    """The ``q`` line of a quarantined message (``hf`` file): the milter's reason."""
    control_file: Path


def read_control_file(path: Path) -> QueuedMessage:
    """A ``qf``/``hf`` file: ``S<sender>``, ``R<flags>:<address>``, ``q<reason>``."""
    sender, quarantine = "", None
    recipients: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("S"):
            sender = line[1:].strip().strip("<>")
        elif line.startswith("R"):
            recipients.append(line[1:].partition(":")[2].strip().strip("<>"))
        elif line.startswith("q"):
            quarantine = line[1:]
    return QueuedMessage(
        queue_id=path.name[2:],
        sender=sender,
        recipients=tuple(recipients),
        quarantine=quarantine,
        control_file=path,
    )


@dataclass(frozen=True)
class SendmailLayout:
    """Where the private Sendmail keeps its files (all under the run folder)."""

    run_dir: Path

    @property
    def config_dir(self) -> Path:
        return self.run_dir / "sendmail"

    @property
    def mc(self) -> Path:
        return self.config_dir / "sendmail.mc"

    @property
    def cf(self) -> Path:
        return self.config_dir / "sendmail.cf"

    @property
    def sample_copy(self) -> Path:
        """The shipped sample with the test bed's socket: what the wrapper includes."""
        return self.config_dir / "sendmail.mc.milter"

    @property
    def queue_dir(self) -> Path:
        return self.run_dir / "sendmail-queue"

    @property
    def hosts(self) -> Path:
        return self.config_dir / "hosts"

    @property
    def sasl_dir(self) -> Path:
        return self.config_dir / "sasl"

    @property
    def sasldb(self) -> Path:
        return self.config_dir / "sasldb2"

    @property
    def traffic_log(self) -> Path:
        return self.run_dir / "sendmail-traffic.log"

    @property
    def daemon_pidfile(self) -> Path:
        """Sendmail's own PidFile (the Service's pidfile is the run folder's sendmail.pid)."""
        return self.config_dir / "daemon.pid"


def namespace_available() -> bool:
    """True if this process may make UTS and mount namespaces (root, and a kernel allowing it)."""
    try:
        done = subprocess.run(
            ["unshare", "--uts", "--mount", "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


class SendmailInstance(Service):
    """Sendmail under ``run_dir``: SMTP on ``smtp_port``, relaying to the sink on ``sink_port``.

    The milter is the sample's filter on ``milter_socket``. ``sasl_users``
    (login -> password) can AUTH PLAIN or LOGIN; kept by reference, like the
    Postfix instance's, so ``testbed.parts.tenantadmin.TenantAdmin`` adds the
    demo tenants' users here too.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        smtp_port: int,
        sink_port: int,
        milter_socket: Path,
        sasl_users: dict[str, str],
        host: str = HOST,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(run_dir, stem="sendmail", marker=MARKER, what="sendmail", timeout=timeout)
        self.layout = SendmailLayout(self.run_dir)
        self.smtp_port = smtp_port
        self.sink_port = sink_port
        self.milter_socket = milter_socket
        self.sasl_users = sasl_users
        self.host = host

    def auth_authen(self, login: str) -> str:
        """What the milter sees in ``{auth_authen}`` once ``login`` authenticated: the login."""
        return login

    # ---- configuration -------------------------------------------------------

    def sample_text(self) -> str:
        """``postfix-sample/sendmail.mc.milter`` pointed at this stack's milter socket."""
        text = SAMPLE.read_text()
        if SAMPLE_SOCKET not in text:
            raise ValueError(f"{SAMPLE} no longer contains {SAMPLE_SOCKET!r}")
        return text.replace(SAMPLE_SOCKET, f"local:{self.milter_socket}")

    def mc_text(self) -> str:
        """The wrapper .mc: the test bed's settings, then the sample, then the mailers."""
        layout = self.layout
        return f"""divert(-1)
# Generated by testbed.parts.sendmailinstance; edits are overwritten on start.
include(`{CF_M4}')
divert(0)dnl
VERSIONID(`aup-milter test bed: a private Sendmail on loopback')dnl
OSTYPE(`linux')dnl
dnl Files under the run folder, not /etc/mail and /var/spool.
define(`confDOMAIN_NAME', `{HOSTNAME}')dnl
define(`QUEUE_DIR', `{layout.queue_dir}')dnl
define(`confPID_FILE', `{layout.daemon_pidfile}')dnl
define(`STATUS_FILE', `{layout.config_dir / "statistics"}')dnl
define(`ALIAS_FILE', `{layout.config_dir / "aliases"}')dnl
define(`HELP_FILE', `{HELP_FILE}')dnl
define(`confCW_FILE', `{layout.config_dir / "local-host-names"}')dnl
define(`confDEAD_LETTER_DROP', `{layout.config_dir / "dead.letter"}')dnl
dnl No DNS: host names from the files only (the namespace's /etc/hosts), no MX lookups.
define(`confSERVICE_SWITCH_FILE', `{layout.config_dir / "service.switch"}')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confTO_IDENT', `0')dnl
FEATURE(`nocanonify')dnl
FEATURE(`accept_unresolvable_domains')dnl
dnl Deliver whatever the load: a busy test machine must not turn delivery into queueing.
define(`confQUEUE_LA', `1000')dnl
define(`confREFUSE_LA', `1000')dnl
dnl Loopback only, on a port of its own; no MSA on 587.
DAEMON_OPTIONS(`Port={self.smtp_port}, Addr={self.host}, Name=MTA')dnl
FEATURE(`no_default_msa')dnl
dnl Everything to the sink; clients on 127/8 may relay, as Postfix's mynetworks.
define(`SMART_HOST', `relay:[{HOST}]')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {self.sink_port}')dnl
RELAY_DOMAIN(`127')dnl
dnl SMTP AUTH: Cyrus SASL with a sasldb (sendmail/sasl/Sendmail.conf), plaintext on loopback.
define(`confAUTH_MECHANISMS', `PLAIN LOGIN')dnl
TRUST_AUTH_MECH(`PLAIN LOGIN')dnl
dnl ---- {SAMPLE.relative_to(REPO_ROOT)}, its socket the test bed's ----
include(`{layout.sample_copy}')dnl
MAILER(`local')dnl
MAILER(`smtp')dnl
"""

    def write_config(self) -> None:
        """The .mc, the sample copy, the side files; the .cf built from them with m4."""
        layout = self.layout
        if not SENDMAIL_BIN.exists():
            raise TestbedError(
                f"{SENDMAIL_BIN} is missing: scripts/bootstrap.sh unpacks sendmail-bin there"
            )
        if not CF_M4.exists():
            raise TestbedError(f"{CF_M4} is missing: scripts/bootstrap.sh installs sendmail-cf")
        layout.config_dir.mkdir(parents=True, exist_ok=True)
        layout.sasl_dir.mkdir(exist_ok=True)
        # Sendmail refuses a queue folder others can write, and root owns it.
        layout.queue_dir.mkdir(mode=0o700, exist_ok=True)
        layout.queue_dir.chmod(0o700)
        files = {
            layout.sample_copy: self.sample_text(),
            layout.mc: self.mc_text(),
            layout.hosts: f"127.0.0.1 {HOSTNAME} localhost\n",
            layout.config_dir / "service.switch": "hosts files\naliases files\n",
            layout.config_dir / "aliases": "postmaster: root\n",
            layout.config_dir / "local-host-names": "",
            layout.sasl_dir / "Sendmail.conf": (
                "pwcheck_method: auxprop\n"
                "auxprop_plugin: sasldb\n"
                "mech_list: PLAIN LOGIN\n"
                f"sasldb_path: {layout.sasldb}\n"
            ),
        }
        for path, text in files.items():
            path.write_text(text)
        done = run(["m4", str(layout.mc)], what="m4 sendmail.mc")
        if done.stderr.strip():
            raise TestbedError(f"m4 {layout.mc} complained:\n{done.stderr.strip()}")
        layout.cf.write_text(done.stdout)
        for login, password in self.sasl_users.items():
            self.add_sasl_user(login, password)

    def add_sasl_user(self, login: str, password: str) -> None:
        """Create (or update) a SASL user that can AUTH to this Sendmail."""
        argv = ["saslpasswd2", "-p", "-c", "-f", str(self.layout.sasldb), "-u", HOSTNAME, login]
        run(argv, what=f"creating SASL user {login}", input_text=password)
        # Sendmail runs as root and refuses a group-readable sasldb by default.
        self.layout.sasldb.chmod(0o600)

    # ---- the process ---------------------------------------------------------

    def namespaced(self, *argv: str) -> list[str]:
        """``argv`` run in a UTS and mount namespace of its own (see the module's docstring)."""
        layout = self.layout
        return [
            "unshare", "--uts", "--mount", "--", "sh", "-c", _NAMESPACE_SCRIPT, "sh",
            str(layout.hosts), str(layout.sasl_dir), HOSTNAME, *argv,
        ]  # fmt: skip

    def command(self, *args: str) -> list[str]:
        """A Sendmail command line with this instance's .cf, in its namespace."""
        return self.namespaced(str(SENDMAIL_BIN), "-C", str(self.layout.cf), *args)

    def start(self) -> None:
        """(Re)start Sendmail with its config written afresh; return once it greets.

        One already running from ``run_dir`` is stopped first: it reads its .cf only at start.
        """
        if self.running:
            self.stop()
        if not SASL_CONFIG_DIR.is_dir():
            raise TestbedError(f"{SASL_CONFIG_DIR} is missing (libsasl2-2 and sasl2-bin make it)")
        if not namespace_available():
            raise TestbedError(
                "the private Sendmail needs `unshare --uts --mount` (root, and a kernel that "
                "allows namespaces): see testbed/parts/sendmailinstance.py"
            )
        self.write_config()
        require_free_port(self.host, self.smtp_port, "sendmail", self.run_dir)
        self.launch(self.command("-bD", "-X", str(self.layout.traffic_log)))
        self.wait_ready(self.greets)

    def greets(self) -> bool:
        return smtp_banner(self.host, self.smtp_port) is not None

    def log_text(self) -> str:
        """Sendmail's own output and its traffic log."""
        try:
            traffic = self.layout.traffic_log.read_text(errors="replace")
        except FileNotFoundError:
            traffic = ""
        return super().log_text() + traffic

    def diagnostics(self, *logs: Path) -> str:
        """The queue listing and the tails of Sendmail's logs and ``logs``, for a timeout."""
        try:
            queue = self.mailq() + self.mailq(quarantined=True)
        except TestbedError as exc:
            queue = str(exc)
        tails = tail(self.log_path) + tail(self.layout.traffic_log, 60)
        return f"\n--- mailq ---\n{queue}{tails}" + "".join(tail(log) for log in logs)

    # ---- the queue -----------------------------------------------------------

    def cli(self, *args: str, what: str, timeout: float = 60.0) -> str:
        """Run ``sendmail -C CF ARGS`` (as root, in the namespace); its output."""
        return run(self.command(*args), what=what, timeout=timeout).stdout

    def mailq(self, *, quarantined: bool = False) -> str:
        """``mailq`` (``sendmail -bp``); with ``quarantined``, the quarantine (``-qQ``)."""
        return self.cli("-bp", *(["-qQ"] if quarantined else []), what="mailq")

    def queued(self) -> list[QueuedMessage]:
        """Every message in the queue, quarantined ones included."""
        found = [
            read_control_file(path)
            for prefix in ("qf", "hf")
            for path in self.layout.queue_dir.glob(f"{prefix}*")
        ]
        return sorted(found, key=lambda message: message.queue_id)

    def wait_for_quarantine(
        self, queue_id: str, timeout: float = 20.0, on_timeout: Callable[[], str] | None = None
    ) -> QueuedMessage:
        """Wait until message ``queue_id`` sits in the quarantine (an ``hf`` file with a reason)."""

        def probe() -> QueuedMessage | None:
            path = self.layout.queue_dir / f"hf{queue_id}"
            if not path.exists():
                return None
            message = read_control_file(path)
            return message if message.quarantine else None

        return wait_until(
            probe,
            timeout=timeout,
            what=f"message {queue_id} in Sendmail's quarantine",
            on_timeout=on_timeout or (lambda: self.diagnostics()),
        )

    def release_quarantine(self, queue_id: str | None = None) -> None:
        """Release message ``queue_id`` (default: every one) from the quarantine; run the queue.

        ``sendmail -qQ [-qIID] -Q``: ``-qQ`` picks quarantined messages, ``-qI``
        one queue id, and ``-Q`` without a reason lifts their quarantine.
        """
        pick = [f"-qI{queue_id}"] if queue_id else []
        self.cli("-qQ", *pick, "-Q", what="sendmail -qQ -Q (release the quarantine)")
        self.run_queue()

    def run_queue(self) -> None:
        """Deliver what the queue holds now (``sendmail -qf``: once, in the foreground)."""
        self.cli("-qf", what="sendmail -qf")

    def delete_queued(self, queue_ids: Sequence[str] | None = None) -> None:
        """Remove the queue files of ``queue_ids`` (default: every message)."""
        for path in list(self.layout.queue_dir.iterdir()):
            prefix, queue_id = path.name[:2], path.name[2:]
            if prefix not in QUEUE_FILE_PREFIXES or not path.is_file():
                continue
            if queue_ids is None or queue_id in queue_ids:
                path.unlink(missing_ok=True)

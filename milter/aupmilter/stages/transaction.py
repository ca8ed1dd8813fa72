"""What the milter knows about one SMTP connection and the transaction in progress.

A `Connection` lives as long as the MTA's milter session (one SMTP session).
A `Transaction` is made at MAIL FROM and holds everything learnt since: the
configuration snapshot it runs under, the tenant and plan resolved once, the
RCPT gate, the message being collected, the verdict so far and the list-mail
plan. It is dropped at end of message, abort or close by one assignment, so
nothing of one transaction can leak into the next one on the same connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aupmilter.audit import Envelope
from aupmilter.live_config import Runtime
from aupmilter.logs import ConnectionLog
from aupmilter.policy.limits import RecipientGate, WindowFill
from aupmilter.policy.plans import Plan
from aupmilter.policy.tenancy import TenantRecord
from aupmilter.policy.verdict import Verdict
from aupmilter.policy.warmup import Ramp
from aupmilter.stages.listmail import ListMail
from aupmilter.stages.message_checks import MessageChecks


@dataclass(frozen=True, slots=True)
class Connection:
    conn_id: str
    client_name: str
    client_addr: str | None = None
    daemon_name: str | None = None
    mta_host: str | None = None
    """The MTA's own host name (macro `j`), for the Message-ID the milter may add."""


@dataclass(slots=True, eq=False)
class Transaction:
    runtime: Runtime
    """The configuration and store in force at MAIL FROM: a reload does not change it midway."""
    connection: Connection
    log: ConnectionLog
    sender: str
    """MAIL FROM address without angle brackets; empty for the null sender."""
    auth_login: str | None
    """`{auth_authen}` exactly as the MTA reported it; None when not authenticated."""
    queue_id: str | None
    smtputf8: bool
    now_ms: int
    """When MAIL FROM arrived: the windows' snapshot is taken at this time."""
    verdict: Verdict | None = None
    """The verdict so far: set by MAIL FROM, refined at end of message."""
    tenant: TenantRecord | None = None
    plan: Plan | None = None
    stream: str | None = None
    """The sender's message stream set in Redis ("bulk" or "transactional"), if any."""
    fills: tuple[WindowFill, ...] = ()
    """The windows' fill at MAIL FROM, in the plan's window order."""
    offences: int = 0
    """The sender's near-cap-repeat offences before this transaction (the MAIL FROM read)."""
    ramp: Ramp | None = None
    """The tenant's warm-up ramp at MAIL FROM (policy.warmup); None before the tenant read."""
    gate: RecipientGate | None = None
    """Decides each RCPT locally; None when no tenant's limits apply."""
    ungated: list[str] = field(default_factory=list)
    """Recipients of a transaction without a gate (nothing to count them against)."""
    unsubscribe_at_rcpt: bool = False
    """RCPT does unsubscribe work (suppression lookup or one recipient per bulk message)."""
    suppression_at_rcpt: bool = False
    listmail: ListMail | None = None
    checks: MessageChecks | None = None
    """Collects the message and runs its checks; None after collecting failed."""
    fingerprint_recipients: int | None = None
    shadow: bool = False
    """The tenant (or its plan) is in shadow mode: refusals are recorded, not given."""
    shadowed: list[Verdict] = field(default_factory=list)
    """In shadow mode, what the stages would have done, in order."""

    @property
    def conn_id(self) -> str:
        return self.connection.conn_id

    @property
    def mta_host(self) -> str | None:
        return self.connection.mta_host

    @property
    def recipients(self) -> list[str]:
        """Accepted recipients, as the client wrote them, in order."""
        return list(self.gate.accepted.values()) if self.gate is not None else self.ungated

    @property
    def envelope(self) -> Envelope:
        return Envelope(self.sender, self.auth_login, self.queue_id, len(self.recipients))

    def overrules(self, verdict: Verdict) -> bool:
        """True when shadow mode lets a refusing verdict pass (and keeps it for the record)."""
        if not self.shadow or not verdict.refuses:
            return False
        self.shadowed.append(verdict)
        return True

    def close(self) -> None:
        """Release what the transaction holds outside memory (the body spool)."""
        if self.checks is not None:
            self.checks.close()
            self.checks = None

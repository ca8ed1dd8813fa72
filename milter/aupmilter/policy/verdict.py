"""Typed verdicts returned by the policy functions and applied by the glue."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from aupmilter.replies import Reply


class Action(StrEnum):
    ACCEPT = "accept"
    QUARANTINE = "quarantine"
    REJECT = "reject"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    reason: str
    tenant: str | None = None
    reply: Reply | None = None
    warnings: tuple[str, ...] = ()
    """Findings of checks a plan sets to `warn`: the message goes on, the audit line keeps them."""
    rule: str = ""
    """The rule that decided, as a short stable name (`tenant-suspended`, `window`, a check's
    name, ...): what `aup-milter log --rule` filters on. Empty for a plain accept."""
    evidence: Mapping[str, object] | None = None
    """The numbers behind the decision (a window's fill and limit, the DNS answer, ...),
    JSON-ready, for the audit trail."""

    def __post_init__(self) -> None:
        refuses = self.action in (Action.REJECT, Action.TEMPFAIL)
        if refuses != (self.reply is not None):
            raise ValueError(f"{self.action} verdicts carry a reply exactly when they refuse")
        if self.reply is not None and self.reply.is_temporary != (self.action == Action.TEMPFAIL):
            raise ValueError(f"reply {self.reply.code} does not match action {self.action}")

    @classmethod
    def accept(cls, reason: str, tenant: str | None = None, *, rule: str = "") -> Verdict:
        return cls(Action.ACCEPT, reason, tenant, rule=rule)

    @classmethod
    def quarantine(
        cls,
        reason: str,
        tenant: str | None = None,
        *,
        rule: str,
        evidence: Mapping[str, object] | None = None,
    ) -> Verdict:
        return cls(Action.QUARANTINE, reason, tenant, rule=rule, evidence=evidence)

    @classmethod
    def refuse(
        cls,
        reply: Reply,
        reason: str,
        tenant: str | None = None,
        *,
        rule: str,
        evidence: Mapping[str, object] | None = None,
    ) -> Verdict:
        action = Action.TEMPFAIL if reply.is_temporary else Action.REJECT
        return cls(action, reason, tenant, reply, rule=rule, evidence=evidence)

    @property
    def refuses(self) -> bool:
        return self.reply is not None

"""The plan types the policy rules read: a plan, its unsubscribe settings, the relay's service.

The configuration loader (`aupmilter.config`) reads them from TOML and builds
these frozen values; the rules only read them. They live in `policy/` so that a
rule needs no config loader (and none of the libraries it pulls in) to be
imported or tested.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aupmilter.policy.consent import ConsentPlan
from aupmilter.policy.findings import PlanChecks
from aupmilter.policy.footer import FooterPlan
from aupmilter.policy.ladder import LadderPlan
from aupmilter.policy.limits import Limits
from aupmilter.policy.onboarding import OnboardingPlan
from aupmilter.policy.reputation import ReputationPlan
from aupmilter.policy.warmup import WarmupPlan


@dataclass(frozen=True, slots=True)
class UnsubscribePlan:
    """A plan's unsubscribe and bulk-classification settings."""

    bulk_recipients: int | None = None
    """A message to at least this many recipients is bulk; None: the count alone never is."""
    bulk_fingerprint_recipients: int | None = None
    """Bulk once the same content went to at least this many recipients in the window."""
    bulk_fingerprint_window: int = 86_400
    on_noncompliant_unsubscribe: Literal["replace", "reject"] = "replace"
    bulk_one_recipient_per_message: bool = False


@dataclass(frozen=True, slots=True)
class BouncePlan:
    """What the report intake does with a tenant's temporary failures."""

    soft_bounces_to_suppress: int = 3
    """This many soft bounces of one address within `soft_bounce_window` suppress it (bounce)."""
    soft_bounce_window: int = 7 * 86_400
    """Seconds a soft-bounce count lives from its first bounce: the intake never sees a delivery,
    so "in a row" means within this span; it also bounds the counters' memory."""


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    description: str
    source: Path
    limits: Limits
    checks: PlanChecks = field(default_factory=PlanChecks)
    unsubscribe: UnsubscribePlan = field(default_factory=UnsubscribePlan)
    bounces: BouncePlan = field(default_factory=BouncePlan)
    ladder: LadderPlan = field(default_factory=LadderPlan)
    """`[plan.NAME.ladder]`: near-cap repeats and the sender -> domain -> tenant ladder."""
    reputation: ReputationPlan = field(default_factory=ReputationPlan)
    footer: FooterPlan = field(default_factory=FooterPlan)
    """`[plan.NAME.footer]`: the sender-identity footer of bulk mail (policy.footer)."""
    warmup: WarmupPlan = field(default_factory=WarmupPlan)
    """`[plan.NAME.warmup]`: new tenants' windows scaled down by a ramp (policy.warmup)."""
    onboarding: OnboardingPlan = field(default_factory=OnboardingPlan)
    """`[plan.NAME.onboarding]`: bulk mail needs a verified domain (policy.onboarding)."""
    consent: ConsentPlan = field(default_factory=ConsentPlan)
    """`[plan.NAME.consent]`: the consent ledger's lapse and new-recipient share."""
    mode: Literal["enforce", "shadow"] = "enforce"
    """`shadow`: every check runs and the audit trail says what it would have done
    (`would-reject`, ...), but the mail passes unchanged; a tenant's `mode` field wins."""


@dataclass(frozen=True, slots=True)
class UnsubscribeSettings:
    """`[unsubscribe]`: the relay's unsubscribe service that bulk mail's links point at."""

    url_base: str
    """scheme://host[:port] of the unsubscribe service; links are URL_BASE/u/TOKEN."""
    mailto_local: str
    mailto_domain: str
    secrets_file: Path
    token_lifetime_days: int
    secrets: tuple[bytes, ...] = field(repr=False, default=())
    """From secrets_file: the first signs, all verify."""

    def url(self, token: str) -> str:
        return f"{self.url_base}/u/{token}"

    def mailto(self, token: str) -> str:
        return f"mailto:{self.mailto_local}+{token}@{self.mailto_domain}"

"""Load and validate the daemon configuration (TOML) and the plan files.

Every error names the file, the key and the expected form. Unknown keys are
errors: a typo must not silently fall back to a default. The result is a tree
of frozen objects; a reload builds a new tree and swaps it in whole.

One module per group of sections, all reading through `loader.Section`:
`daemon` ([milter], [redis], [log], [audit], [metrics]), `plans` ([policy] and the plan files),
`messages` ([messages], [dns]), `unsubscribe` ([unsubscribe], [web], [dkim])
and `feedback` ([feedback_id]). The plan types are the policy layer's
(`aupmilter.policy.plans`); they are re-exported here because the loader
builds them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aupmilter.config.daemon import (
    AuditSettings,
    ListenAddress,
    LogSettings,
    MetricsSettings,
    MilterSettings,
    RedisSettings,
    parse_listen,
    read_audit,
    read_log,
    read_metrics,
    read_milter,
    read_redis,
)
from aupmilter.config.feedback import FeedbackIdSettings, read_feedback_id
from aupmilter.config.loader import ConfigError, Section, read_toml
from aupmilter.config.messages import MessageSettings, read_dns, read_messages
from aupmilter.config.onboarding import read_onboarding
from aupmilter.config.plans import (
    PolicySettings,
    load_plans,
    parse_period,
    plan_files,
    read_policy,
)
from aupmilter.config.unsubscribe import (
    DkimSettings,
    SigningIdentity,
    WebSettings,
    read_unsubscribe_sections,
)
from aupmilter.mailauth.rdap import RdapSettings
from aupmilter.mailauth.resolver import DnsSettings
from aupmilter.policy.plans import Plan, UnsubscribePlan, UnsubscribeSettings

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AuditSettings",
    "Config",
    "ConfigError",
    "DkimSettings",
    "FeedbackIdSettings",
    "ListenAddress",
    "LogSettings",
    "MessageSettings",
    "MetricsSettings",
    "MilterSettings",
    "Plan",
    "PolicySettings",
    "RedisSettings",
    "SigningIdentity",
    "UnsubscribePlan",
    "UnsubscribeSettings",
    "WebSettings",
    "load_config",
    "load_plans",
    "parse_listen",
    "parse_period",
    "plan_files",
]

DEFAULT_CONFIG_PATH = Path("/etc/aup-milter/aup-milter.toml")


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    milter: MilterSettings
    redis: RedisSettings
    policy: PolicySettings
    log: LogSettings
    plans: Mapping[str, Plan]
    dns: DnsSettings = field(default_factory=DnsSettings)
    messages: MessageSettings = field(default_factory=MessageSettings)
    unsubscribe: UnsubscribeSettings | None = None
    """None without an [unsubscribe] section: bulk mail then gets no List-Unsubscribe."""
    web: WebSettings = field(default_factory=WebSettings)
    dkim: DkimSettings = field(default_factory=DkimSettings)
    feedback_id: FeedbackIdSettings | None = None
    """None without a [feedback_id] section: bulk mail then gets no Feedback-ID."""
    audit: AuditSettings = field(default_factory=AuditSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    onboarding: RdapSettings = field(default_factory=RdapSettings)
    """`[onboarding]`: the RDAP bootstrap `tenant verify-domain` uses (config.onboarding)."""

    @property
    def plan_names(self) -> frozenset[str]:
        return frozenset(self.plans)


def load_config(path: Path) -> Config:
    """Read and validate `path` and the plan files it points at; raise ConfigError."""
    path = path.resolve() if path.exists() else path
    data = read_toml(path)
    problems: list[str] = []
    root = Section(path, "", data, problems)

    def section(name: str) -> Section:
        return Section(path, name, root.subtable(name), problems)

    # The order of the sections is the order of the problems in the report.
    milter_settings = read_milter(section("milter"))
    redis_settings = read_redis(section("redis"))
    policy_settings = read_policy(section("policy"))
    log_settings = read_log(section("log"))
    audit_settings = read_audit(section("audit"))
    metrics_settings = read_metrics(section("metrics"))
    dns_settings = read_dns(section("dns"))
    message_settings = read_messages(section("messages"))
    unsubscribe_settings, web_settings, dkim_settings = read_unsubscribe_sections(
        path, root, problems
    )
    feedback_id_settings = read_feedback_id(path, root, problems)
    onboarding_settings = read_onboarding(path, root, problems)
    root.reject_unknown()

    plans: dict[str, Plan] = {}
    plans_dir = policy_settings.plans_dir
    if plans_dir.is_dir():
        plans = load_plans(plans_dir, problems)
    else:
        problems.append(
            f"{path}: key 'policy.plans_dir': expected an existing directory,"
            f" got {str(plans_dir)!r}"
        )
    if problems:
        raise ConfigError(problems)
    return Config(
        path=path,
        milter=milter_settings,
        redis=redis_settings,
        policy=policy_settings,
        log=log_settings,
        plans=plans,
        dns=dns_settings,
        messages=message_settings,
        unsubscribe=unsubscribe_settings,
        web=web_settings,
        dkim=dkim_settings,
        feedback_id=feedback_id_settings,
        audit=audit_settings,
        metrics=metrics_settings,
        onboarding=onboarding_settings,
    )

"""The consent ledger's rules: when a bulk recipient's permission has lapsed, and a list's newness.

MiniCRM's AUP: mass mail only with explicit permission, and "permissions shall
lapse after some months ... we suggest you do not send mass emails to such
addresses". A tenant on a plan with `[plan.NAME.consent]` may import a ledger
(`aup-milter consent import`: address, time of consent, source), and the relay
records the last time each recipient got bulk mail from that tenant. The
end-of-message script (store/scripts/charge.lua) applies these rules to the
message's bulk recipients inside its one call; the functions here are the same
rules in Python, for the tests, `aup-milter consent show` and the replies.

Per bulk recipient (after suppression), with ``consent`` its ledger time and
``last_bulk`` the last time the tenant's bulk mail reached it (Unix seconds,
either absent):

- the tenant has a ledger (its consent hash holds at least one entry):
  last contact = max(consent, last_bulk); older than the plan's `lapse`:
  LAPSED (removed from the message like a suppressed recipient, or the
  message refused when no recipient is left); neither present: UNRECORDED,
  judged by the plan's `unrecorded`: "new" (default: it counts as a
  never-mailed address for the share rule below; the ledger is the evidence
  for old addresses, and a subscriber collected yesterday may not be imported
  yet) or "lapsed" (strict: no permission on record, no mail);
- no ledger: no lapse (there is no consent to lapse); an address the tenant's
  bulk mail never reached is NEW.

The share rule ("a purchased list looks like that"): a bulk message with at
least `new_recipient_min` recipients (after suppression), more than
`new_recipient_share` of them NEW, is refused whole (550 5.7.1, saying to
import the consent ledger or to send to fewer new addresses per message).
Below `new_recipient_min` it never applies, so a new tenant's small first
messages go out and build its history; the bound it gives is per message,
not per day: the windows (and a warm-up ramp) bound the rate of new
addresses. Unset `new_recipient_share`: the rule is off.

Only recipients a charged bulk message is actually delivered to update
last_bulk: a lapsed recipient (removed, or only warned about) does not, or
the lapse would heal itself on the next message. `warn` mode removes and
refuses nothing; the audit trail records what enforce would have done.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DAY = 86_400
DEFAULT_LAPSE_DAYS = 180
MIN_LAPSE_DAYS = 1
MAX_LAPSE_DAYS = 3650
DEFAULT_NEW_RECIPIENT_MIN = 20
PPM = 1_000_000


class ConsentMode(StrEnum):
    OFF = "off"
    WARN = "warn"
    ENFORCE = "enforce"


class Unrecorded(StrEnum):
    """A ledger tenant's bulk recipient with neither a consent record nor a past bulk mail."""

    NEW = "new"
    LAPSED = "lapsed"


class Standing(StrEnum):
    """One bulk recipient judged."""

    CURRENT = "current"
    LAPSED = "lapsed"
    NEW = "new"


@dataclass(frozen=True, slots=True)
class ConsentPlan:
    """`[plan.NAME.consent]`; the default is off (nothing read, nothing recorded)."""

    mode: ConsentMode = ConsentMode.OFF
    lapse: int = DEFAULT_LAPSE_DAYS * DAY
    """Seconds after the last contact (consent or bulk mail) that a permission lapses."""
    unrecorded: Unrecorded = Unrecorded.NEW
    new_recipient_share_ppm: int | None = None
    """Refuse above this share of never-mailed recipients (parts per million); None: off."""
    new_recipient_min: int = DEFAULT_NEW_RECIPIENT_MIN
    """The share rule applies only to messages with at least this many bulk recipients."""

    @property
    def enabled(self) -> bool:
        return self.mode is not ConsentMode.OFF

    @property
    def enforced(self) -> bool:
        return self.mode is ConsentMode.ENFORCE

    @property
    def lapse_days(self) -> int:
        return self.lapse // DAY

    def describe(self) -> str:
        """One line for `aup-milter check`."""
        share = self.new_recipient_share_ppm
        rule = (
            "no new-recipient share rule"
            if share is None
            else f"refused above {share / 10_000:g} % never-mailed recipients"
            f" (from {self.new_recipient_min} recipients)"
        )
        return (
            f"{self.mode}, lapse {self.lapse_days} days, unrecorded recipients {self.unrecorded};"
            f" {rule}"
        )


def standing(
    consent: int | None,
    last_bulk: int | None,
    now: int,
    plan: ConsentPlan,
    *,
    has_ledger: bool,
) -> Standing:
    """One bulk recipient, as charge.lua judges it (times in Unix seconds)."""
    if not has_ledger:
        return Standing.CURRENT if last_bulk is not None else Standing.NEW
    if consent is None and last_bulk is None:
        return Standing.LAPSED if plan.unrecorded is Unrecorded.LAPSED else Standing.NEW
    last_contact = max(consent or 0, last_bulk or 0)
    return Standing.LAPSED if now - last_contact > plan.lapse else Standing.CURRENT


def too_many_new(new: int, considered: int, plan: ConsentPlan) -> bool:
    """The share rule over one message: ``new`` of ``considered`` bulk recipients never mailed.

    Integer arithmetic (parts per million), the same comparison as charge.lua's.
    """
    share = plan.new_recipient_share_ppm
    if share is None or considered < plan.new_recipient_min or considered == 0:
        return False
    return new * PPM > share * considered


def lapses_at(consent: int | None, last_bulk: int | None, plan: ConsentPlan) -> int | None:
    """When a recipient's permission lapses (Unix seconds) if no bulk mail reaches it first."""
    if consent is None and last_bulk is None:
        return None
    return max(consent or 0, last_bulk or 0) + plan.lapse

"""End of message for list mail: classify, decide the unsubscribe headers, sign.

The glue calls this in two steps around the one end-of-message Redis call:

- `ListMail.before_charge`: a message that is bulk by its stream, its headers
  or its recipient count, and carries broken unsubscribe headers on a plan
  that rejects them, is refused before any window is charged;
- `ListMail.links_for_charge`: the links the message would carry if it is
  bulk (a recipient token for one recipient, else a message token), made
  before the call so that what the token stands for is stored *in* that
  call, and only when the message is charged and bulk: two round trips;
- `ListMail.after_charge`: with the suppressed recipients gone and the
  content fingerprint's count known, the final classification and header
  decision, using those same links, and on bulk mail the relay's
  Feedback-ID (`policy.feedback`, when `[feedback_id]` is configured).

`signature` then signs the header list as the MTA will deliver it (the
message's fields minus the deletions, plus the added fields, in order) with
the tenant's DKIM identity. Bulk mail is signed (RFC 8058 needs a signature
over both unsubscribe headers, Gmail's feedback loop one over the
Feedback-ID); transactional mail is left to the tenant.

No I/O here except the CPU work of signing: the tokens are pure (time passed
in), and what the tokens stand for is returned for the glue to store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from aupmilter.config import Config, SigningIdentity
from aupmilter.mailauth.dkimsign import sign
from aupmilter.policy.actions import AddHeader, InsertHeader
from aupmilter.policy.classify import Classification, MailClass, classify, header_values
from aupmilter.policy.feedback import FeedbackStamp, feedback_stamp, needs_fingerprint
from aupmilter.policy.fingerprint import body_fingerprint
from aupmilter.policy.footer import FooterPlan
from aupmilter.policy.headers import HeaderField
from aupmilter.policy.limits import Scope, Unit, Window
from aupmilter.policy.plans import Plan, UnsubscribePlan, UnsubscribeSettings
from aupmilter.policy.tokens import Reference, TokenSigner
from aupmilter.policy.unsubscribe import (
    HeaderDeletion,
    UnsubscribeAction,
    UnsubscribeDecision,
    UnsubscribeLinks,
    compliance_problem,
    decide_unsubscribe,
    edited_headers,
    issue_links,
)
from aupmilter.policy.verdict import Verdict
from aupmilter.store.client import ReferenceWrite

FINGERPRINT_WINDOW = "content-fingerprint"
Headers = Sequence[HeaderField]


@dataclass(frozen=True, slots=True)
class ListMailOutcome:
    classification: Classification
    decision: UnsubscribeDecision
    references: tuple[Reference, ...] = ()
    """What the issued token stands for: store it before the message leaves."""
    feedback: FeedbackStamp | None = None

    @property
    def deletions(self) -> tuple[HeaderDeletion, ...]:
        """The message's fields to delete: the unsubscribe decision's, then the Feedback-IDs."""
        feedback = self.feedback.delete if self.feedback is not None else ()
        return (*self.decision.delete, *feedback)

    @property
    def additions(self) -> tuple[AddHeader, ...]:
        """The fields to append, in order: the unsubscribe pair, then the Feedback-ID."""
        feedback = (self.feedback.add,) if self.feedback is not None else ()
        return (*self.decision.add, *feedback)

    @property
    def changes_headers(self) -> bool:
        return bool(self.deletions or self.additions)

    def log_fields(self) -> dict[str, object]:
        fields: dict[str, object] = {
            "class": self.classification.mail_class.value,
            "class_reason": self.classification.reason,
            "unsubscribe": self.decision.action.value,
        }
        if self.decision.links is not None:
            fields["unsubscribe_token"] = self.decision.links.issued.reference.kind.name.lower()
        if self.feedback is not None:
            fields["feedback_id"] = self.feedback.value
            fields["feedback_campaign"] = self.feedback.campaign_source.value
            if self.feedback.delete:
                fields["feedback_id_replaced"] = len(self.feedback.delete)
        return fields


@dataclass(frozen=True, slots=True)
class ListMail:
    tenant: str
    stream: str | None
    plan: UnsubscribePlan
    settings: UnsubscribeSettings | None
    identity: SigningIdentity | None
    feedback_relay_id: str | None = None
    """`[feedback_id] relay_id`; None: bulk mail gets no Feedback-ID."""
    footer: FooterPlan = field(default_factory=FooterPlan)
    """The plan's sender footer (policy.footer): checked or inserted on bulk mail."""

    @property
    def acts(self) -> bool:
        """The class matters only with unsubscribe links, a Feedback-ID or a signing identity."""
        return (
            self.settings is not None
            or self.identity is not None
            or self.feedback_relay_id is not None
        )

    @property
    def counts_fingerprints(self) -> bool:
        """The content counter matters only when no stream decides and the plan has a threshold."""
        return (
            self.acts
            and self.stream not in (MailClass.BULK, MailClass.TRANSACTIONAL)
            and self.plan.bulk_fingerprint_recipients is not None
        )

    @property
    def needs_body(self) -> bool:
        """Signing, the content counter, a Feedback-ID whose campaign may be the content,
        or the footer of mail that may be bulk (a transactional stream never is)."""
        return (
            self.counts_fingerprints
            or self.identity is not None
            or self.feedback_relay_id is not None
            or self.checks_footer
        )

    @property
    def checks_footer(self) -> bool:
        return self.footer.enabled and self.stream != MailClass.TRANSACTIONAL

    def known_bulk(self, headers: Headers, recipient_count: int) -> bool:
        """Bulk before the charge: by stream, headers or recipient count (not yet by content)."""
        return classify(self.stream, headers, recipient_count, None, self.plan).bulk

    def fingerprint_window(self) -> Window:
        return Window(
            name=FINGERPRINT_WINDOW,
            scope=Scope.TENANT,
            unit=Unit.RECIPIENTS,
            limit=-1,
            period_ms=self.plan.bulk_fingerprint_window * 1000,
        )

    def before_charge(self, headers: Headers, recipient_count: int) -> Verdict | None:
        """The refusal that needs no Redis answer (a reject plan's broken headers on bulk mail)."""
        if self.plan.on_noncompliant_unsubscribe != "reject":
            return None
        classification = classify(self.stream, headers, recipient_count, None, self.plan)
        decision = decide_unsubscribe(classification, headers, self.plan, None, self.tenant)
        return decision.verdict if decision.action is UnsubscribeAction.REJECT else None

    def links_for_charge(
        self, headers: Headers, recipients: Sequence[str], message_id: str, now: float
    ) -> tuple[UnsubscribeLinks | None, ReferenceWrite | None]:
        """The links this message gets if it is bulk, and their references for the charge call.

        `recipients`: those accepted, normalised. None when the relay would add
        no link (no [unsubscribe] service, a transactional stream, or the
        message's own compliant one-click headers, which are kept).
        """
        settings = self.settings
        if settings is None or not recipients or self.stream == MailClass.TRANSACTIONAL:
            return None, None
        if compliance_problem(headers) is None:
            return None, None
        signer = TokenSigner(settings.secrets, settings.token_lifetime_days)
        links = issue_links(signer, settings, self.tenant, recipients, message_id, now)
        known = classify(self.stream, headers, len(recipients), None, self.plan)
        if not known.bulk and not self.counts_fingerprints:
            return None, None
        write = ReferenceWrite(
            references=(links.issued.reference,),
            ttl_seconds=settings.token_lifetime_days * 86_400 + 86_400,
            known_bulk=known.bulk,
            bulk_from_counter=(
                self.plan.bulk_fingerprint_recipients if self.counts_fingerprints else None
            ),
        )
        return links, write

    def after_charge(
        self,
        headers: Headers,
        recipients: Sequence[str],
        fingerprint_recipients: int | None,
        links: UnsubscribeLinks | None,
        body: bytes | None = None,
        fingerprint: str | None = None,
    ) -> ListMailOutcome:
        """`recipients`: those left after suppression, normalised; `links` from
        `links_for_charge` (their references were stored with the charge if bulk);
        `fingerprint`: the content's, if the charge already computed it from `body`."""
        classification = classify(
            self.stream, headers, len(recipients), fingerprint_recipients, self.plan
        )
        if not classification.bulk or not recipients:
            links = None
        decision = decide_unsubscribe(classification, headers, self.plan, links, self.tenant)
        references: tuple[Reference, ...] = ()
        if decision.links is not None:
            references = (decision.links.issued.reference,)
        feedback = None
        if classification.bulk and self.feedback_relay_id is not None:
            # Hashing the body costs CPU: only when no header names the campaign.
            if fingerprint is None and body is not None and needs_fingerprint(headers):
                fingerprint = message_fingerprint(headers, body)
            feedback = feedback_stamp(
                headers,
                tenant=self.tenant,
                stream=classification.mail_class.value,
                relay_id=self.feedback_relay_id,
                fingerprint=fingerprint,
            )
        return ListMailOutcome(classification, decision, references, feedback)

    def signature(
        self,
        headers: Headers,
        added_before: Sequence[AddHeader],
        outcome: ListMailOutcome,
        body: bytes | None,
    ) -> InsertHeader | None:
        """DKIM-Signature for bulk mail, over the final header list; None when not signing.

        `added_before`: fields the milter adds ahead of the outcome's (e.g. a
        Message-ID), in the order they are added.
        """
        if self.identity is None or body is None or not outcome.classification.bulk:
            return None
        final = edited_headers(headers, outcome.deletions, [*added_before, *outcome.additions])
        return sign(final, body, self.identity)


def message_fingerprint(headers: Headers, body: bytes) -> str:
    content_type = next(iter(header_values(headers, "Content-Type")), None)
    encoding = next(iter(header_values(headers, "Content-Transfer-Encoding")), None)
    return body_fingerprint(content_type, encoding, body)


def list_mail_for(config: Config, tenant: str, stream: str | None, plan: Plan) -> ListMail:
    """The tenant's list-mail settings for one transaction (built at MAIL FROM)."""
    return ListMail(
        tenant=tenant,
        stream=stream,
        plan=plan.unsubscribe,
        settings=config.unsubscribe,
        identity=config.dkim.identity_for(tenant),
        feedback_relay_id=config.feedback_id.relay_id if config.feedback_id else None,
        footer=plan.footer,
    )

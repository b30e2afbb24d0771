"""The one place where the decisions meet the store.

Every entry point (SMTP, LMTP, the ``ingest`` pipe command, later the reprocessing of
quarantined mail) calls :func:`ingest`. It stores the raw mail and what became of it in one
transaction, so a mail we answered 250 for is always in the ledger exactly once: as a
ticket, a comment, ignored with a reason, or quarantined with its error. Only a database
that cannot be written escapes as :class:`StoreUnavailable`, so the sender retries.
"""

from __future__ import annotations

import hashlib
import logging
import traceback
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate.config import Config
from mailgate.errors import StoreUnavailable
from mailgate.models import Attachment, Comment, Organization, Outcome, Participant, Status, Ticket
from mailgate.models import InboundMessage as InboundRow
from mailgate.parser import InboundMessage, UnparseableMessage, parse, synthesized_message_id
from mailgate.routing import RouteDecision, Router
from mailgate.store import Store, ensure_blob, ensure_user, is_temporary

log = logging.getLogger(__name__)

DUPLICATE = "duplicate"
UNPARSEABLE = "unparseable"  # reason prefix: the input is no mail (pipe exit 65)
NO_SUBJECT = "(no subject)"


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope: who handed the mail to us and for whom."""

    mail_from: str = ""
    rcpt_to: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What became of one mail; ``as_json`` is the contract ``mailgate ingest`` prints."""

    action: str  # created | commented | duplicate | ignored | quarantined
    ticket: int | None
    organization: str | None
    message_id: str
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "ticket": self.ticket,
            "organization": self.organization,
            "message_id": self.message_id,
            "reason": self.reason,
        }


# Header fields that identify a mail; trace fields (Received, Return-Path, DKIM, ARC, …)
# are added in transit and differ between two deliveries of the same mail.
_IDENTITY_FIELDS = (b"from", b"to", b"cc", b"subject", b"date", b"message-id")


def dedup_key(message_id: str, raw: bytes) -> str:
    """The idempotency key: the Message-ID plus what the sender wrote.

    A redelivery of the same mail (an MTA retrying after 451, the same mail via two MX
    hosts, CRLF or LF line endings) gets the same key and is a duplicate. A *different*
    mail that reuses a Message-ID (broken mailers, scanners, test tools do) gets another
    key and is stored, because mailgate never drops mail it answered 250 for.
    """
    text = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    head, sep, body = text.partition(b"\n\n")
    if not sep:
        body = b""
    fields: list[bytes] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b" " + line.strip()
        else:
            fields.append(line.strip())
    digest = hashlib.sha256(message_id.encode("utf-8", "replace"))
    for field in sorted(fields):
        name, _, value = field.partition(b":")
        if name.strip().lower() in _IDENTITY_FIELDS:
            digest.update(b"\0" + name.strip().lower() + b":" + b" ".join(value.split()))
    digest.update(b"\0" + body.rstrip())
    return digest.hexdigest()


def ingest(
    store: Store,
    config: Config,
    raw: bytes,
    envelope: Envelope,
    now: datetime,
    router: Router | None = None,
) -> IngestResult:
    """Store one mail and turn it into a ticket; idempotent per mail.

    ``router`` is built from ``config`` when not given; long-running callers build it once
    per config load and pass it in.
    """
    try:
        message = parse(raw)
    except UnparseableMessage as exc:
        reason = f"{UNPARSEABLE}: {exc}"
        return _quarantine(store, raw, envelope, now, synthesized_message_id(raw), reason, None)
    try:
        return _ingest_parsed(store, router or Router(config), raw, envelope, message, now)
    except StoreUnavailable:
        raise
    except Exception as exc:
        if is_temporary(exc):
            raise StoreUnavailable(str(exc)) from exc
        # A bug or an input we did not foresee: keep the mail, with the error, for an admin.
        log.exception("processing %s failed; quarantined", message.message_id)
        return _quarantine(
            store,
            raw,
            envelope,
            now,
            message.message_id,
            f"processing failed: {type(exc).__name__}: {exc}",
            traceback.format_exc(),
        )


def _new_inbound(
    session: Session,
    raw: bytes,
    envelope: Envelope,
    now: datetime,
    message_id: str,
    outcome: Outcome,
    reason: str,
) -> InboundRow | None:
    """Insert the raw mail; None when this mail is already stored (a redelivery)."""
    key = dedup_key(message_id, raw)
    if session.scalar(select(InboundRow.id).where(InboundRow.dedup_key == key)):
        return None
    row = InboundRow(
        message_id=message_id,
        dedup_key=key,
        mail_from=envelope.mail_from,
        rcpt_to=list(envelope.rcpt_to),
        raw=raw,
        size=len(raw),
        sha256=hashlib.sha256(raw).hexdigest(),
        received_at=now,
        outcome=outcome.value,
        reason=reason,
    )
    # A savepoint, so a concurrent instance storing the same mail first makes this a
    # duplicate instead of failing the whole transaction.
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except sa_exc.IntegrityError:
        return None
    return row


def _duplicate(message_id: str) -> IngestResult:
    return IngestResult(DUPLICATE, None, None, message_id, "this mail is already stored")


def _quarantine(
    store: Store,
    raw: bytes,
    envelope: Envelope,
    now: datetime,
    message_id: str,
    reason: str,
    error: str | None,
) -> IngestResult:
    with store.transaction() as session:
        row = _new_inbound(session, raw, envelope, now, message_id, Outcome.QUARANTINED, reason)
        if row is None:
            return _duplicate(message_id)
        row.error = error
    log.warning("quarantined %s: %s", message_id, reason)
    return IngestResult(Outcome.QUARANTINED.value, None, None, message_id, reason)


def requester_address(message: InboundMessage, envelope: Envelope) -> tuple[str, str] | None:
    """Who asks: the From header, else the envelope sender; None when there is neither."""
    if message.from_ is not None and message.from_.email:
        return message.from_.email, message.from_.name
    if envelope.mail_from and "@" in envelope.mail_from:
        return envelope.mail_from.lower(), ""
    return None


def is_ours(email: str, config: Config) -> bool:
    """An address on one of our own domains (the support address and its aliases)."""
    domain = email.rpartition("@")[2].lower()
    return domain in config.mail.domains


def participant_addresses(
    message: InboundMessage, requester: str, config: Config
) -> tuple[tuple[str, str], ...]:
    """To/Cc addresses of a new ticket that are neither ours, the requester nor agents."""
    seen: dict[str, str] = {}
    for address in (*message.to, *message.cc):
        email = address.email
        if (
            not email
            or email == requester
            or is_ours(email, config)
            or email in config.agents.addresses
        ):
            continue
        seen.setdefault(email, address.name)
    return tuple(seen.items())


def _ingest_parsed(
    store: Store,
    router: Router,
    raw: bytes,
    envelope: Envelope,
    message: InboundMessage,
    now: datetime,
) -> IngestResult:
    sender = requester_address(message, envelope)
    if sender is None:
        return _quarantine(
            store, raw, envelope, now, message.message_id, "no sender address (From)", None
        )
    email, name = sender
    config = router.config
    subject = message.subject.strip() or NO_SUBJECT
    recipients = (*envelope.rcpt_to, *(a.email for a in (*message.to, *message.cc)))
    decision: RouteDecision = router.route(email, subject, recipients)

    with store.transaction() as session:
        inbound = _new_inbound(
            session, raw, envelope, now, message.message_id, Outcome.CREATED, decision.reason
        )
        if inbound is None:
            return _duplicate(message.message_id)
        requester = ensure_user(session, email, name, now)
        org = None
        if decision.organization is not None:
            org = session.scalar(
                select(Organization).where(Organization.name == decision.organization)
            )
        ticket = Ticket(
            subject=decision.subject or subject,
            status=Status.NEW.value,
            organization=org,
            requester=requester,
            created_at=now,
            updated_at=now,
            routing_reason=decision.reason,
            routing_score=decision.score,
            priority=decision.priority or "normal",
            tags=list(decision.tags),
        )
        session.add(ticket)
        for p_email, p_name in participant_addresses(message, email, config):
            ticket.participants.append(Participant(user=ensure_user(session, p_email, p_name, now)))
        comment = Comment(
            author=requester,
            body=message.text,
            public=True,
            message_id=message.message_id,
            inbound_message_id=inbound.id,
            created_at=now,
        )
        ticket.comments.append(comment)
        for part in message.attachments:
            comment.attachments.append(
                Attachment(
                    filename=part.filename,
                    content_type=part.content_type,
                    content_id=part.content_id,
                    size=part.size,
                    sha256=ensure_blob(session, part.data),
                )
            )
        session.flush()
        inbound.ticket_id = ticket.id
        ticket_id = ticket.id
    org_name = org.name if org is not None else None
    log.info("%s from %s: created ticket #%s (%s)", message.message_id, email, ticket_id, org_name)
    return IngestResult(
        Outcome.CREATED.value, ticket_id, org_name, message.message_id, decision.reason
    )

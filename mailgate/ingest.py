"""The one place where the decisions meet the store.

Every entry point (SMTP, LMTP, the ``ingest`` pipe command, later the reprocessing of
quarantined mail) calls :func:`ingest`. It stores the raw mail and what became of it in one
transaction, so a mail we answered 250 for is always in the ledger exactly once: as a
ticket, a comment, ignored with a reason, or quarantined with its error. Only a database
that cannot be written escapes as :class:`StoreUnavailable`, so the sender retries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailgate.bounces import analyse_bounce, is_bounce
from mailgate.config import Config
from mailgate.dkim_check import DkimResult, DnsLookup
from mailgate.dkim_check import verify as verify_dkim
from mailgate.errors import NotFound, Refused, StoreUnavailable
from mailgate.filters import auto_reply_reason
from mailgate.health import INGEST_SECONDS, MESSAGES
from mailgate.models import (
    Attachment,
    Comment,
    Follower,
    Membership,
    Organization,
    Outbox,
    Outcome,
    Participant,
    Status,
    Suppression,
    Ticket,
    User,
)
from mailgate.models import InboundMessage as InboundRow
from mailgate.outbound import LOOP_HEADER
from mailgate.parser import InboundMessage, UnparseableMessage, parse, synthesized_message_id
from mailgate.quotes import forwarded_original, strip_quoted
from mailgate.routing import RouteDecision, Router, domain_of, normalize_subject
from mailgate.secrets_scan import mask_secrets as scan_and_mask
from mailgate.store import (
    Store,
    ensure_blob,
    ensure_secret,
    ensure_user,
    is_temporary,
    update_ticket,
)
from mailgate.threads import (
    COMMANDS,
    NO_REFERENCE,
    Command,
    Reference,
    ThreadMatch,
    TicketFacts,
    is_private,
    match_thread,
    split_commands,
    status_after_reply,
    ticket_from_tag,
    ticket_from_token,
)

log = logging.getLogger(__name__)

DUPLICATE = "duplicate"
UNPARSEABLE = "unparseable"  # reason prefix: the input is no mail (pipe exit 65)
RATE_LIMITED = "rate_limited"  # reason prefix: too many new tickets from one sender
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
    reprocess: int | None = None,
    dkim_dns: DnsLookup | None = None,
) -> IngestResult:
    """Store one mail and turn it into a ticket; idempotent per mail.

    ``router`` is built from ``config`` when not given; long-running callers build it once
    per config load and pass it in. ``reprocess`` names a quarantined ledger entry whose
    raw mail this is: it is processed again in place, exactly once.
    """
    started = time.perf_counter()
    prepared = prepare(config, raw, envelope, now, dkim_dns)
    result = _store(store, router or Router(config), prepared, reprocess)
    seconds = time.perf_counter() - started
    log_result(result, seconds)
    count_result(result, seconds)
    return result


def ingest_batch(
    store: Store,
    router: Router,
    mails: Sequence[tuple[bytes, Envelope, datetime]],
    dkim_dns: DnsLookup | None = None,
) -> list[tuple[IngestResult | StoreUnavailable, float]]:
    """Store mails that arrived together in one transaction (group commit).

    Each mail gets what :func:`ingest` would give it, with the seconds it took, or the
    :class:`StoreUnavailable` that means 451 for its sender. Parsing and the other pure
    work happen before the write lock is taken, so another process can write meanwhile.
    When the group cannot be committed, every mail is stored on its own, so one mail's
    trouble never makes the others' senders retry.
    """
    started = time.perf_counter()
    prepared = [
        prepare(router.config, raw, envelope, now, dkim_dns) for raw, envelope, now in mails
    ]
    outcomes: list[IngestResult | StoreUnavailable] = []
    try:
        with store.batch():
            outcomes = [_store(store, router, p, None) for p in prepared]
    except StoreUnavailable as exc:
        if len(prepared) == 1:
            outcomes = [exc]
        else:
            log.warning("group of %d mails not committed (%s); storing each alone", len(mails), exc)
            outcomes = []
            for p in prepared:
                try:
                    outcomes.append(_store(store, router, p, None))
                except StoreUnavailable as single:
                    outcomes.append(single)
    seconds = time.perf_counter() - started
    for outcome in outcomes:
        if isinstance(outcome, IngestResult):
            log_result(outcome, seconds)
    return [(outcome, seconds) for outcome in outcomes]


def log_result(result: IngestResult, seconds: float) -> None:
    """One line per mail, key=value, for the log pipeline and for people."""
    log.log(
        logging.WARNING if result.action == Outcome.QUARANTINED else logging.INFO,
        "message_id=%s action=%s ticket=%s organization=%s duration_ms=%.1f reason=%s",
        json.dumps(result.message_id),
        result.action,
        result.ticket,
        json.dumps(result.organization, ensure_ascii=False),
        seconds * 1000,
        json.dumps(result.reason, ensure_ascii=False),
    )


def count_result(result: IngestResult, seconds: float) -> None:
    """The metrics of the process that serves ``/metrics`` (workers report back to it)."""
    MESSAGES.labels(result.action).inc()
    INGEST_SECONDS.observe(seconds)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A mail after the pure part of ingest: parsed (or why not) and checked."""

    raw: bytes
    envelope: Envelope
    now: datetime
    message: InboundMessage | None
    unparseable: str | None = None
    dkim: DkimResult | None = None


def prepare(
    config: Config,
    raw: bytes,
    envelope: Envelope,
    now: datetime,
    dkim_dns: DnsLookup | None = None,
) -> Prepared:
    """Parse and check one mail without the database; never raises for any input."""
    try:
        message = parse(raw)
    except UnparseableMessage as exc:
        return Prepared(raw, envelope, now, None, f"{UNPARSEABLE}: {exc}")
    dkim = verify_dkim(raw, dkim_dns) if config.security.verify_dkim else None
    return Prepared(raw, envelope, now, message, dkim=dkim)


def _store(store: Store, router: Router, prepared: Prepared, reprocess: int | None) -> IngestResult:
    """The database part of ingest: the ledger entry and what the mail becomes."""
    raw, envelope, now, message = prepared.raw, prepared.envelope, prepared.now, prepared.message
    if message is None:
        reason = prepared.unparseable or UNPARSEABLE
        message_id = synthesized_message_id(raw)
        return _quarantine(store, raw, envelope, now, message_id, reason, None, reprocess)
    try:
        return _ingest_parsed(store, router, raw, envelope, message, now, reprocess, prepared.dkim)
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
            reprocess,
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


def _ledger_entry(
    session: Session,
    raw: bytes,
    envelope: Envelope,
    now: datetime,
    message_id: str,
    outcome: Outcome,
    reason: str,
    reprocess: int | None,
) -> InboundRow | None:
    """The ledger row for this mail: a new one, or the quarantined one being reprocessed.

    None means there is nothing to do: a redelivery, or an entry already reprocessed (the
    row lock and the outcome check make a second reprocess of the same entry a no-op).
    """
    if reprocess is None:
        return _new_inbound(session, raw, envelope, now, message_id, outcome, reason)
    row = session.get(InboundRow, reprocess, with_for_update=True)
    if row is None or row.outcome != Outcome.QUARANTINED:
        return None
    row.outcome, row.reason, row.error = outcome.value, reason, None
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
    reprocess: int | None = None,
) -> IngestResult:
    with store.transaction() as session:
        row = _ledger_entry(
            session, raw, envelope, now, message_id, Outcome.QUARANTINED, reason, reprocess
        )
        if row is None:
            return _duplicate(message_id)
        row.error = error
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
    return domain_of(email) in config.mail.domains


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
    reprocess: int | None = None,
    dkim: DkimResult | None = None,
) -> IngestResult:
    config = router.config
    if is_bounce(message, envelope.mail_from):
        return _bounce(store, config, raw, envelope, message, now, reprocess)
    sender = requester_address(message, envelope)
    if sender is None:
        reason = "no sender address (From)"
        return _quarantine(store, raw, envelope, now, message.message_id, reason, None, reprocess)
    recipients = (*envelope.rcpt_to, *(a.email for a in (*message.to, *message.cc)))
    mail = _Mail(message, sender[0], sender[1], recipients, auto_reply_reason(message), dkim)

    with store.transaction() as session:
        inbound = _ledger_entry(
            session, raw, envelope, now, message.message_id, Outcome.CREATED, "", reprocess
        )
        if inbound is None:
            return _duplicate(message.message_id)
        inbound.dkim = str(dkim) if dkim is not None else None
        secret = config.mail.secret or ensure_secret(session)
        token, references, tag = _thread_facts(session, mail, config, secret)
        match = match_thread(mail.sender, router.agents, token, references, tag)
        ticket = session.get(Ticket, match.ticket.id) if match.ticket is not None else None
        loop = own_mail(message, config)
        recent = _recent_tickets(session, mail.sender, now) if ticket is None else 0
        if loop is not None:
            outcome, reason, ticket = Outcome.IGNORED, loop, None
        elif ticket is None:
            if mail.auto_reply:
                outcome, reason = Outcome.IGNORED, f"auto-reply ({mail.auto_reply}) to no ticket"
            elif recent >= config.limits.tickets_per_hour:
                outcome = Outcome.QUARANTINED
                reason = f"{RATE_LIMITED}: {recent} new tickets from {mail.sender} in the last hour"
            else:
                quiet = recent >= config.limits.acks_per_hour
                ticket, reason = _new_ticket(session, router, mail, inbound, match, now, quiet)
                outcome = Outcome.CREATED
        elif ticket.status == Status.CLOSED:
            if mail.auto_reply:
                outcome = Outcome.IGNORED
                reason = f"auto-reply ({mail.auto_reply}) to closed ticket #{ticket.id}"
                ticket = None
            else:
                ticket = _follow_up(session, router, ticket, mail, inbound, now)
                outcome, reason = Outcome.CREATED, ticket.routing_reason
        else:
            reason = _reply(session, router, ticket, mail, inbound, match, now)
            outcome = Outcome.COMMENTED
        session.flush()
        inbound.outcome = outcome.value
        inbound.reason = reason
        inbound.ticket_id = ticket.id if ticket is not None else None
        ticket_id = ticket.id if ticket is not None else None
        org_name = ticket.organization.name if ticket and ticket.organization else None
    return IngestResult(outcome.value, ticket_id, org_name, message.message_id, reason)


@dataclass(frozen=True, slots=True)
class _Mail:
    """The parsed mail with the facts every branch of ingest needs."""

    message: InboundMessage
    sender: str
    name: str
    recipients: tuple[str, ...]
    auto_reply: str | None
    dkim: DkimResult | None = None

    @property
    def subject(self) -> str:
        return self.message.subject.strip() or NO_SUBJECT


def _bounce(
    store: Store,
    config: Config,
    raw: bytes,
    envelope: Envelope,
    message: InboundMessage,
    now: datetime,
    reprocess: int | None,
) -> IngestResult:
    """A bounce is never a ticket: mark the notification it returns, note it, suppress."""
    report = analyse_bounce(message)
    with store.transaction() as session:
        inbound = _ledger_entry(
            session, raw, envelope, now, message.message_id, Outcome.IGNORED, "", reprocess
        )
        if inbound is None:
            return _duplicate(message.message_id)
        rows = (
            list(session.scalars(select(Outbox).where(Outbox.message_id.in_(report.message_ids))))
            if report.message_ids
            else []
        )
        failed = ", ".join(f"{email} {status or '?'}" for email, status, _ in report.recipients)
        for row in rows:
            row.status = "bounced"
            row.last_error = f"bounced: {failed or 'no details'}"
            ticket = session.get(Ticket, row.ticket_id) if row.ticket_id else None
            if ticket is not None:
                note = f"Notification {row.kind} to {', '.join(row.recipients)} bounced: {failed}"
                system = ensure_user(session, config.mail.address, "mailgate", now)
                _add_comment(session, ticket, system, note, False, message, inbound, now)
                inbound.ticket_id = ticket.id
        for email, status, hard in report.recipients:
            if hard:
                until = now + config.outbound.suppress_for
                existing = session.get(Suppression, email)
                if existing is None:
                    session.add(Suppression(email=email, until=until, reason=f"bounce {status}"))
                else:
                    existing.until, existing.reason = until, f"bounce {status}"
        reason = f"bounce for {len(rows)} notification(s)" + (f": {failed}" if failed else "")
        inbound.reason = reason
        ticket_id = inbound.ticket_id
    return IngestResult(Outcome.IGNORED.value, ticket_id, None, message.message_id, reason)


def own_mail(message: InboundMessage, config: Config) -> str | None:
    """Our own notification coming back (a loop): the reason to ignore it, else None."""
    domain = config.mail.address.rpartition("@")[2]
    if (message.header(LOOP_HEADER) or "").strip().lower() == domain:
        return f"own mail ({LOOP_HEADER}), a loop"
    if message.from_ is not None and message.from_.email == config.mail.address:
        return "own mail (From is our address), a loop"
    return None


def _recent_tickets(session: Session, email: str, now: datetime) -> int:
    """New tickets this sender opened in the last hour (the rate limits count these)."""
    return (
        session.scalar(
            select(func.count(Ticket.id))
            .join(User, User.id == Ticket.requester_id)
            .where(User.email == email, Ticket.created_at > now - timedelta(hours=1))
        )
        or 0
    )


def _facts(session: Session, ticket_id: int | None) -> TicketFacts | None:
    """What threading needs to know of a ticket, from the database."""
    if ticket_id is None:
        return None
    ticket = session.get(Ticket, ticket_id)
    if ticket is None:
        return None
    members: frozenset[str] = frozenset()
    if ticket.organization_id is not None:
        members = frozenset(
            session.scalars(
                select(User.email)
                .join(Membership, Membership.user_id == User.id)
                .where(Membership.organization_id == ticket.organization_id)
            )
        )
    return TicketFacts(
        id=ticket.id,
        status=ticket.status,
        organization=ticket.organization.name if ticket.organization else None,
        requester=ticket.requester.email,
        participants=frozenset(p.user.email for p in ticket.participants),
        members=members,
    )


_MAX_REFERENCES = 50  # a References header can be long; the newest entries matter


def _thread_facts(
    session: Session, mail: _Mail, config: Config, secret: str
) -> tuple[TicketFacts | None, list[Reference], TicketFacts | None]:
    """The tickets behind the reply token, the referenced Message-IDs and the subject tag."""
    token = _facts(session, ticket_from_token(mail.recipients, secret))
    ids = list(dict.fromkeys((*mail.message.in_reply_to, *reversed(mail.message.references))))
    ids = ids[:_MAX_REFERENCES]
    references: list[Reference] = []
    if ids:
        found: dict[int, bool] = {}
        for ticket_id in session.scalars(
            select(Comment.ticket_id).where(Comment.message_id.in_(ids))
        ):
            found.setdefault(ticket_id, False)
        for ticket_id, recipients in session.execute(
            select(Outbox.ticket_id, Outbox.recipients).where(Outbox.message_id.in_(ids))
        ):
            if ticket_id is not None:
                found[ticket_id] = found.get(ticket_id, False) or mail.sender in recipients
        for ticket_id, sent_to_sender in found.items():
            facts = _facts(session, ticket_id)
            if facts is not None:
                references.append(Reference(facts, sent_to_sender))
    tag = _facts(session, ticket_from_tag(mail.subject, config.tickets.tag_regex))
    return token, references, tag


def _organization(session: Session, name: str | None) -> Organization | None:
    if name is None:
        return None
    return session.scalar(select(Organization).where(Organization.name == name))


def _add_comment(
    session: Session,
    ticket: Ticket,
    author: User,
    body: str,
    public: bool,
    message: InboundMessage,
    inbound: InboundRow,
    now: datetime,
) -> Comment:
    comment = Comment(
        author=author,
        body=body,
        public=public,
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
    return comment


def _add_participants(
    session: Session, ticket: Ticket, mail: _Mail, config: Config, now: datetime
) -> None:
    known = {p.user.email for p in ticket.participants} | {ticket.requester.email}
    for email, name in participant_addresses(mail.message, ticket.requester.email, config):
        if email not in known:
            ticket.participants.append(Participant(user=ensure_user(session, email, name, now)))
            known.add(email)


def forwarded_sender(message: InboundMessage) -> tuple[str, str] | None:
    """The original sender of a forwarded mail: an attached message/rfc822, else inline."""
    for part in message.attachments:
        if part.content_type.lower() == "message/rfc822":
            try:
                inner = parse(part.data)
            except UnparseableMessage:
                continue
            if inner.from_ is not None and inner.from_.email:
                return inner.from_.email, inner.from_.name
    found = forwarded_original(message.text)
    if found is None:
        return None
    name, email = found
    return email, name


def _new_ticket(
    session: Session,
    router: Router,
    mail: _Mail,
    inbound: InboundRow,
    match: ThreadMatch,
    now: datetime,
    quiet: bool = False,
) -> tuple[Ticket, str]:
    config = router.config
    requester, name, subject, note = mail.sender, mail.name, mail.subject, ""
    if mail.sender in router.agents:
        original = forwarded_sender(mail.message)
        if original is not None and original[0] not in router.agents:
            # An agent forwarding a customer's mail opens the ticket for that customer.
            requester, name = original
            subject = normalize_subject(subject, config.tickets.tag_regex) or NO_SUBJECT
            note = f"; forwarded by agent {mail.sender}"
    decision: RouteDecision = router.route(requester, subject, mail.recipients)
    reason = decision.reason + note
    if match.reason != NO_REFERENCE:
        reason += f"; {match.reason}"
    user = ensure_user(session, requester, name, now)
    # Another ticket's tag in a new ticket's subject would only confuse: it goes.
    untagged = " ".join(re.sub(config.tickets.tag_regex, " ", decision.subject or subject).split())
    subject_text, subject_secret = mask_secrets(untagged or NO_SUBJECT)
    body, body_secret = mask_secrets(mail.message.text)
    ticket = Ticket(
        subject=subject_text,
        status=Status.NEW.value,
        organization=_organization(session, decision.organization),
        requester=user,
        created_at=now,
        updated_at=now,
        routing_reason=reason,
        routing_score=decision.score,
        priority=decision.priority or "normal",
        tags=list(decision.tags),
    )
    session.add(ticket)
    _add_participants(session, ticket, mail, config, now)
    comment = _add_comment(session, ticket, user, body, True, mail.message, inbound, now)
    _announce(session, config, ticket, comment, now, acknowledge=not quiet)
    if subject_secret or body_secret:
        _warn_secret(session, config, ticket, mail.sender, now)
    if quiet:
        reason += f"; no acknowledgement (more than {config.limits.acks_per_hour} this hour)"
    return ticket, reason


def _announce(
    session: Session,
    config: Config,
    ticket: Ticket,
    comment: Comment,
    now: datetime,
    acknowledge: bool = True,
) -> None:
    """A new ticket: acknowledge it to the requester and tell the organization's followers."""
    session.flush()
    payload = {"comment": comment.id}
    facts = _facts(session, ticket.id)  # once for all rows: who the ticket knows
    if acknowledge:
        to = [ticket.requester.email]
        _queue(session, config, "ticket_created", ticket, to, payload, now, facts=facts)
    if ticket.organization_id is None:
        return
    members = select(Membership.user_id).where(Membership.organization_id == ticket.organization_id)
    followers = session.scalars(
        select(User.email)
        .join(Follower, Follower.user_id == User.id)
        .where(Follower.organization_id == ticket.organization_id, User.id.in_(members))
        .order_by(User.email)
    )
    for email in followers:  # one mail each: followers do not see each other's addresses
        if email != ticket.requester.email:
            _queue(
                session, config, "new_ticket_follower", ticket, [email], payload, now, facts=facts
            )


def _follow_up(
    session: Session,
    router: Router,
    closed: Ticket,
    mail: _Mail,
    inbound: InboundRow,
    now: datetime,
) -> Ticket:
    """A reply to a closed ticket opens a new one: closed tickets are locked (user rule)."""
    ticket = Ticket(
        subject=closed.subject,
        status=Status.NEW.value,
        organization=closed.organization,
        requester=closed.requester,
        created_at=now,
        updated_at=now,
        follow_up_of=closed.id,
        routing_reason=f"follow-up of closed ticket #{closed.id}",
        routing_score=None,
        priority=closed.priority,
        tags=list(closed.tags),
    )
    session.add(ticket)
    for participant in closed.participants:
        ticket.participants.append(Participant(user=participant.user))
    author = ensure_user(session, mail.sender, mail.name, now)
    body, secret = mask_secrets(strip_quoted(mail.message.text))
    comment = _add_comment(session, ticket, author, body, True, mail.message, inbound, now)
    _announce(session, router.config, ticket, comment, now)
    if secret:
        _warn_secret(session, router.config, ticket, mail.sender, now)
    return ticket


def _reply(
    session: Session,
    router: Router,
    ticket: Ticket,
    mail: _Mail,
    inbound: InboundRow,
    match: ThreadMatch,
    now: datetime,
) -> str:
    """A comment on an open ticket, with the status, participant and notification rules."""
    config = router.config
    by_agent = mail.sender in router.agents
    body = strip_quoted(mail.message.text)
    commands: tuple[Command, ...] = ()
    if by_agent:  # only agents' commands count; a customer's "#status solved" is text
        commands, body = split_commands(body)
    body, secret = mask_secrets(body)
    public = not (mail.auto_reply or is_private(commands))
    author = ensure_user(session, mail.sender, mail.name, now)
    comment = _add_comment(session, ticket, author, body, public, mail.message, inbound, now)
    status = status_after_reply(ticket.status, by_agent, mail.auto_reply is not None)
    if status != ticket.status:
        ticket.status = status
        ticket.solved_at = None
    ticket.updated_at = now
    if by_agent or mail.sender == ticket.requester.email:
        _add_participants(session, ticket, mail, config, now)
    session.flush()
    errors: list[str] = []
    if (
        commands
        and config.security.require_dkim_for_commands
        and not (mail.dkim is not None and mail.dkim.signed_by(mail.sender))
    ):
        # A forged From of an agent must not solve or move tickets.
        domain = domain_of(mail.sender)
        errors = [
            f"{c.line}: refused: commands need a valid DKIM signature of {domain} "
            f"(this mail: {mail.dkim or 'not checked'})"
            for c in commands
            if c.name not in ("note", "private")
        ]
        commands = tuple(c for c in commands if c.name in ("note", "private"))
    errors += _apply_commands(session, router, ticket, commands, now) if commands else []
    audience = [ticket.requester.email, *(p.user.email for p in ticket.participants)]
    if by_agent and public:
        _queue(session, config, "agent_reply", ticket, audience, {"comment": comment.id}, now)
    elif not by_agent and not mail.auto_reply:
        _queue(
            session,
            config,
            "customer_reply",
            ticket,
            list(router.agents),
            {"comment": comment.id},
            now,
            exclude=mail.sender,
        )
    if errors:
        _queue(session, config, "command_error", ticket, [mail.sender], {"errors": errors}, now)
    if secret:
        _warn_secret(session, config, ticket, mail.sender, now)
    reason = match.reason
    if mail.auto_reply:
        reason += f"; auto-reply ({mail.auto_reply}) kept as internal note"
    return reason


def mask_secrets(text: str) -> tuple[str, bool]:
    """The text with credentials masked (the raw mail keeps the original), and whether any."""
    masked, findings = scan_and_mask(text)
    return masked, bool(findings)


def _warn_secret(
    session: Session, config: Config, ticket: Ticket, sender: str, now: datetime
) -> None:
    """Credentials never travel in plain mail: ask the sender to use the secret link."""
    _queue(session, config, "secret_warning", ticket, [sender], {}, now)


def _apply_commands(
    session: Session, router: Router, ticket: Ticket, commands: tuple[Command, ...], now: datetime
) -> list[str]:
    """Apply an agent's commands after the comment is recorded; explain each refusal."""
    errors: list[str] = []
    for command in commands:
        try:
            _apply_command(session, router, ticket, command, now)
        except (Refused, NotFound) as exc:
            errors.append(f"{command.line}: {exc}")
    return errors


def _apply_command(
    session: Session, router: Router, ticket: Ticket, command: Command, now: datetime
) -> None:
    if command.name in ("note", "private"):
        return
    if command.name not in COMMANDS:
        raise Refused(f"unknown command; known are {', '.join('#' + c for c in COMMANDS)}")
    if not command.argument:
        raise Refused("needs an argument")
    if command.name == "status":
        status = command.argument.lower()
        if status not in (Status.OPEN, Status.PENDING, Status.SOLVED):
            raise Refused("status must be open, pending or solved")
        update_ticket(session, ticket, now, status=status)
    elif command.name == "org":
        candidates = router.index.search(command.argument, limit=2)
        threshold = router.config.routing.threshold
        if not candidates or candidates[0][1] < threshold:
            raise Refused(f"no organization matches {command.argument!r}")
        if (
            len(candidates) > 1
            and candidates[0][1] - candidates[1][1] < (router.config.routing.ambiguity_margin)
            and candidates[0][1] < 100
        ):
            raise Refused(
                f"{command.argument!r} is ambiguous: {candidates[0][0]} or {candidates[1][0]}"
            )
        update_ticket(session, ticket, now, organization=candidates[0][0])
    elif command.name == "requester":
        email = command.argument.strip("<>").lower()
        if "@" not in email or " " in email:
            raise Refused(f"{command.argument!r} is not an email address")
        update_ticket(session, ticket, now, requester=email)


def _queue(
    session: Session,
    config: Config,
    kind: str,
    ticket: Ticket,
    recipients: list[str],
    payload: dict[str, Any],
    now: datetime,
    exclude: str | None = None,
    facts: TicketFacts | None = None,
) -> None:
    """An outbox row, in the transaction of the event that caused it.

    Only people the ticket knows receive it — requester, participants, members of its
    organization, agents (user rule: never send a ticket's content to someone outside).
    ``facts`` may be passed by a caller queueing several rows for one unchanged ticket.
    """
    agents = frozenset(config.agents.addresses)
    facts = facts or _facts(session, ticket.id)
    assert facts is not None
    # Never to ourselves (a loop); agents may share our domain.
    suppressed = set(
        session.scalars(
            select(Suppression.email).where(
                Suppression.email.in_(recipients), Suppression.until > now
            )
        )
    )
    to = [
        r
        for r in dict.fromkeys(recipients)
        if r
        and r != exclude
        and r not in suppressed  # hard-bounced recently: mail would only bounce again
        and (r in agents or not is_ours(r, config))
        and facts.knows(r, agents)
    ]
    if not to:
        return
    tag = config.tickets.tag.replace("{id}", str(ticket.id))
    session.add(
        Outbox(
            kind=kind,
            ticket_id=ticket.id,
            recipients=to,
            subject=f"{tag} {ticket.subject}",
            payload=payload,
            status="pending",
            created_at=now,
            next_attempt_at=now,
        )
    )


def reprocess_quarantined(
    store: Store, config: Config, now: datetime, ids: list[int] | None = None
) -> list[tuple[int, IngestResult]]:
    """Process quarantined mail again (after an admin fixed the config), each exactly once."""
    query = select(InboundRow.id).where(InboundRow.outcome == Outcome.QUARANTINED.value)
    if ids is not None:
        query = query.where(InboundRow.id.in_(ids))
    with store.transaction() as session:
        todo = list(session.scalars(query.order_by(InboundRow.id)))
    router = Router(config)
    results: list[tuple[int, IngestResult]] = []
    for entry in todo:
        with store.transaction() as session:
            row = session.get(InboundRow, entry)
            if row is None:
                continue
            raw, envelope = row.raw, Envelope(row.mail_from, tuple(row.rcpt_to))
        results.append((entry, ingest(store, config, raw, envelope, now, router, reprocess=entry)))
    return results

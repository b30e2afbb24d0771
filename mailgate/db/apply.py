"""Writing a decision: ticket, comment, attachments, participants, outbox rows.

The only SQL of ingest besides the ledger and the facts read before deciding. It runs in
the transaction that claimed the mail's ledger row, so a mail answered 250 is stored with
everything it caused, or not at all. Every mail runs these statements in the one SQLite
writer, so they are :class:`~mailgate.store.Prebuilt` on the session's connection (a
quarter of the ORM's CPU); the ORM stays for the rare paths (agent commands, bounces).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.orm import Session

from mailgate.config import Config
from mailgate.db.fastexec import Prebuilt
from mailgate.db.gather import ticket_facts
from mailgate.db.moves import apply_changes
from mailgate.db.outbox import queue_notification
from mailgate.db.records import ensure_blob, user_id
from mailgate.emergency import escalated
from mailgate.models import (
    Attachment,
    AuthorKind,
    NotificationKind,
    Organization,
    Outbox,
    OutboxStatus,
    Participant,
    Status,
    Suppression,
    Ticket,
    table_of,
)
from mailgate.models import Comment as CommentRow
from mailgate.parser import InboundMessage
from mailgate.pipeline.commands import Change
from mailgate.pipeline.decision import (
    Bounce,
    Comment,
    Decision,
    FollowUp,
    NewTicket,
    Notify,
    Quarantine,
)
from mailgate.pipeline.facts import TicketFacts
from mailgate.vault.store import store_secrets

_TICKETS = table_of(Ticket)
_ORGS = table_of(Organization)
_PARTICIPANTS = table_of(Participant)
_COMMENTS = table_of(CommentRow)
_ATTACHMENTS = table_of(Attachment)
_OUTBOX = table_of(Outbox)


@dataclass(frozen=True, slots=True)
class Applied:
    """The ticket the mail ended on, and its organization, for the ledger and the reply."""

    ticket: int | None = None
    organization: str | None = None


def apply(
    session: Session,
    config: Config,
    message: InboundMessage | None,
    entry: int,
    decision: Decision,
    now: datetime,
) -> Applied:
    """Write ``decision`` for the mail whose ledger row is ``entry``."""
    if isinstance(decision, NewTicket):
        assert message is not None
        return _new_ticket(session.connection(), config, decision, message, entry, now)
    if isinstance(decision, FollowUp):
        assert message is not None
        return _follow_up(session, config, decision, message, entry, now)
    if isinstance(decision, Comment):  # and InternalNote
        assert message is not None
        return _comment(session, config, decision, message, entry, now)
    if isinstance(decision, Bounce):
        assert message is not None
        return _bounce(session, config, decision, message, entry, now)
    if isinstance(decision, Quarantine):
        for note in decision.notify:  # to agents only: it belongs to no ticket
            queue_notification(session.connection(), config, None, None, note, now)
    return Applied()  # Ignore, Quarantine: the ledger row says it all


def _new_ticket(
    conn: Connection,
    config: Config,
    decision: NewTicket,
    message: InboundMessage,
    entry: int,
    now: datetime,
) -> Applied:
    requester_id = user_id(conn, decision.requester, decision.requester_name, now)
    organization = (
        _ORG_BY_NAME.run(conn, {"name": decision.organization}).first()
        if decision.organization is not None
        else None
    )
    org_id = organization.id if organization is not None else None
    values = {
        "subject": decision.subject,
        "status": Status.NEW.value,
        "organization_id": org_id,
        "requester_id": requester_id,
        "created_at": now,
        "updated_at": now,
        "routing_reason": decision.reason,
        "routing_score": decision.score,
        "priority": decision.priority,
        "tags": list(decision.tags),
    }
    ticket_id = _insert_ticket(conn, values)
    participants = _add_participants(conn, ticket_id, decision.participants, now)
    author = Author(requester_id, AuthorKind.CUSTOMER, decision.authentication)
    comment = _add_comment(conn, ticket_id, author, decision.body, True, message, entry, now)
    if decision.secrets:
        store_secrets(conn, config, ticket_id, comment, decision.secrets, now)
    facts = TicketFacts(
        id=ticket_id,
        status=Status.NEW.value,
        organization=organization.name if organization is not None else None,
        requester=decision.requester,
        participants=participants,
        subject=decision.subject,
        organization_id=org_id,
        requester_id=requester_id,
    )
    _notify(conn, config, facts, decision.notify, now, comment)
    return Applied(ticket_id, facts.organization)


def _follow_up(
    session: Session,
    config: Config,
    decision: FollowUp,
    message: InboundMessage,
    entry: int,
    now: datetime,
) -> Applied:
    """A new ticket with the closed one's requester and organization; an agent's commands
    apply to it, as to any open ticket."""
    conn = session.connection()
    closed = decision.closed
    values = {
        "subject": closed.subject,
        "status": decision.status,
        "organization_id": closed.organization_id,
        "requester_id": closed.requester_id,
        "created_at": now,
        "updated_at": now,
        "follow_up_of": closed.id,
        "routing_reason": decision.reason,
        "routing_score": None,
        "priority": closed.priority,
        "tags": list(closed.tags),
        # The closed ticket's owner keeps its follow-up, while still an agent.
        "assignee_id": closed.assignee_id if closed.assignee in config.agents.addresses else None,
    }
    if decision.emergency:
        priority, tags = escalated(closed.tags)
        values.update(priority=priority, tags=list(tags))
    ticket_id = _insert_ticket(conn, values)
    for person in _PARTICIPANT_IDS.run(conn, {"ticket": closed.id}).scalars():
        _INSERT_PARTICIPANT.run(conn, {"ticket_id": ticket_id, "user_id": person})
    author = Author(
        user_id(conn, decision.author, decision.author_name, now),
        decision.author_kind,
        decision.authentication,
    )
    comment = _add_comment(
        conn, ticket_id, author, decision.body, decision.public, message, entry, now
    )
    if decision.secrets:
        store_secrets(conn, config, ticket_id, comment, decision.secrets, now)
    # The participants copied above are the closed ticket's, already read for deciding.
    facts = replace(closed, id=ticket_id, status=decision.status, members=frozenset())
    notify = decision.notify
    if decision.changes:
        facts, notify = _commands(session, config, ticket_id, decision.changes, decision, now)
    _notify(conn, config, facts, notify, now, comment, decision.public)
    return Applied(ticket_id, facts.organization)


def _comment(
    session: Session,
    config: Config,
    decision: Comment,
    message: InboundMessage,
    entry: int,
    now: datetime,
) -> Applied:
    """A comment on an open ticket, its status and participants, and an agent's commands."""
    conn = session.connection()
    ticket = decision.ticket
    author = Author(
        user_id(conn, decision.author, decision.author_name, now),
        decision.author_kind,
        decision.authentication,
    )
    comment = _add_comment(
        conn, ticket.id, author, decision.body, decision.public, message, entry, now
    )
    if decision.secrets:
        store_secrets(conn, config, ticket.id, comment, decision.secrets, now)
    changes: dict[str, Any] = {"updated_at": now}
    if decision.status != ticket.status:
        changes.update(status=decision.status, solved_at=None)
    if decision.emergency:
        priority, tags = escalated(ticket.tags)
        changes.update(priority=priority, tags=list(tags))
    _UPDATE_TICKET.run(conn, {"ticket": ticket.id, **changes})
    added = _add_participants(conn, ticket.id, decision.participants, now)
    if decision.changes:
        facts, notify = _commands(session, config, ticket.id, decision.changes, decision, now)
    else:
        facts = replace(ticket, status=decision.status, participants=(*ticket.participants, *added))
        notify = decision.notify
    _notify(conn, config, facts, notify, now, comment, decision.public)
    return Applied(ticket.id, facts.organization)


def _commands(
    session: Session,
    config: Config,
    ticket_id: int,
    changes: tuple[Change, ...],
    decision: Comment | FollowUp,
    now: datetime,
) -> tuple[TicketFacts, tuple[Notify, ...]]:
    """An agent's commands, through the store's rules on the ORM ticket: the ticket's facts
    afterwards and the notifications, with what the store refused explained to the agent.

    The ticket is read afresh because the statements before changed the row behind the
    session's back; its requester or organization may move here (:mod:`mailgate.db.moves`).
    """
    orm_ticket = session.get(Ticket, ticket_id, populate_existing=True)
    assert orm_ticket is not None
    refused = apply_changes(session, config, orm_ticket, changes, decision.author, now)
    facts = ticket_facts(session.connection(), ticket_id)
    assert facts is not None
    notify = decision.notify
    if refused:  # the store refused what decide allowed: the agent is told all the same
        notify = _with_errors(notify, decision.author, refused)
    return facts, notify


def _with_errors(
    notify: tuple[Notify, ...], author: str, errors: tuple[str, ...]
) -> tuple[Notify, ...]:
    for index, note in enumerate(notify):
        if note.kind == NotificationKind.COMMAND_ERROR:
            merged = replace(note, errors=(*note.errors, *errors))
            return (*notify[:index], merged, *notify[index + 1 :])
    return (*notify, Notify(NotificationKind.COMMAND_ERROR, (author,), errors=errors))


def _bounce(
    session: Session,
    config: Config,
    decision: Bounce,
    message: InboundMessage,
    entry: int,
    now: datetime,
) -> Applied:
    """Mark the notifications that came back, note each on its ticket, suppress hard bounces."""
    conn = session.connection()
    ticket_id: int | None = None
    for sent in decision.returned:
        error = f"bounced: {decision.failed or 'no details'}"
        _MARK_BOUNCED.run(
            conn, {"row": sent.id, "new_status": OutboxStatus.BOUNCED.value, "error": error}
        )
        if sent.ticket_id is not None:
            note = (
                f"Notification {sent.kind} to {', '.join(sent.recipients)} bounced: "
                f"{decision.failed}"
            )
            system = Author(user_id(conn, config.mail.address, "mailgate", now), AuthorKind.SYSTEM)
            _add_comment(conn, sent.ticket_id, system, note, False, message, entry, now)
            ticket_id = sent.ticket_id
    for email, status in decision.suppress:
        until = now + config.outbound.suppress_for
        existing = session.get(Suppression, email)
        if existing is None:
            session.add(Suppression(email=email, until=until, reason=f"bounce {status}"))
        else:
            existing.until, existing.reason = until, f"bounce {status}"
    session.flush()
    return Applied(ticket_id)


def _notify(
    conn: Connection,
    config: Config,
    ticket: TicketFacts,
    notify: tuple[Notify, ...],
    now: datetime,
    comment: int,
    public: bool = True,
) -> None:
    for note in notify:
        queue_notification(conn, config, ticket, ticket.organization_id, note, now, comment, public)


def _insert_ticket(conn: Connection, values: dict[str, Any]) -> int:
    ticket_id: int = _INSERT_TICKET.run(conn, values).scalar_one()
    return ticket_id


def _add_participants(
    conn: Connection, ticket_id: int, people: tuple[tuple[str, str], ...], now: datetime
) -> tuple[str, ...]:
    """Copy the mail's To/Cc people onto the ticket; their addresses."""
    for email, name in people:
        person = user_id(conn, email, name, now)
        _INSERT_PARTICIPANT.run(conn, {"ticket_id": ticket_id, "user_id": person})
    return tuple(email for email, _ in people)


@dataclass(frozen=True, slots=True)
class Author:
    """Who wrote a comment: the user row, what kind of author, and how we know."""

    id: int
    kind: AuthorKind = AuthorKind.CUSTOMER
    authentication: str | None = None


def _add_comment(
    conn: Connection,
    ticket_id: int,
    author: Author,
    body: str,
    public: bool,
    message: InboundMessage,
    inbound: int,
    now: datetime,
) -> int:
    """The comment with the mail's attachments (content stored once per hash); its id."""
    values = {
        "ticket_id": ticket_id,
        "author_id": author.id,
        "author_kind": author.kind.value,
        "authentication": author.authentication,
        "body": body,
        "public": public,
        "message_id": message.message_id,
        "inbound_message_id": inbound,
        "created_at": now,
    }
    comment_id: int = _INSERT_COMMENT.run(conn, values).scalar_one()
    for part in message.attachments:
        attachment = {
            "comment_id": comment_id,
            "filename": part.filename,
            "content_type": part.content_type,
            "content_id": part.content_id,
            "size": part.size,
            "sha256": ensure_blob(conn, part.data),
        }
        _INSERT_ATTACHMENT.run(conn, attachment)
    return comment_id


_INSERT_COMMENT = Prebuilt(insert(_COMMENTS).returning(_COMMENTS.c.id))
_INSERT_ATTACHMENT = Prebuilt(insert(_ATTACHMENTS))
_INSERT_PARTICIPANT = Prebuilt(insert(_PARTICIPANTS))
_INSERT_TICKET = Prebuilt(insert(_TICKETS).returning(_TICKETS.c.id))
_UPDATE_TICKET = Prebuilt(update(_TICKETS).where(_TICKETS.c.id == bindparam("ticket")))
_ORG_BY_NAME = Prebuilt(select(_ORGS.c.id, _ORGS.c.name).where(_ORGS.c.name == bindparam("name")))
_PARTICIPANT_IDS = Prebuilt(  # the active ones: a follow-up leaves behind whom a move left
    select(_PARTICIPANTS.c.user_id).where(
        _PARTICIPANTS.c.ticket_id == bindparam("ticket"), _PARTICIPANTS.c.active.is_(True)
    )
)
_MARK_BOUNCED = Prebuilt(
    update(_OUTBOX)
    .where(_OUTBOX.c.id == bindparam("row"))
    .values(status=bindparam("new_status"), last_error=bindparam("error"))
)

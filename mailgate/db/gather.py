"""The facts a decision needs, read in the transaction that will write it.

Everything here is a read. It runs in the single SQLite writer for every mail, so each
statement is a :class:`~mailgate.store.Prebuilt` on the session's connection, and a
ticket named several times (reply token, References, subject tag) is read once.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Connection, bindparam, func, select

from mailgate.db.fastexec import Prebuilt
from mailgate.models import Comment as CommentRow
from mailgate.models import Membership, Organization, Outbox, Participant, Ticket, User, table_of
from mailgate.pipeline.facts import Facts, Reference, SentNotification, TicketFacts
from mailgate.pipeline.reading import Mail
from mailgate.pipeline.threads import ticket_from_tag, ticket_from_token

_TICKETS = table_of(Ticket)
_USERS = table_of(User)
_ORGS = table_of(Organization)
_MEMBERS = table_of(Membership)
_PARTICIPANTS = table_of(Participant)
_COMMENTS = table_of(CommentRow)
_OUTBOX = table_of(Outbox)

_ASSIGNEE = _USERS.alias("assignee")

_MAX_REFERENCES = 50  # a References header can be long; the newest entries matter


def gather(conn: Connection, mail: Mail, tag_regex: str, secret: str, now: datetime) -> Facts:
    """What :func:`~mailgate.pipeline.decide.decide` may ask about this mail.

    A bounce is decided on the notifications it returns alone; any other mail on the
    tickets it names and on how many tickets its sender opened in the last hour.
    """
    if mail.bounce is not None:
        return Facts(bounced=returned_notifications(conn, mail.bounce.message_ids))
    if not mail.sender:
        return Facts()
    known: dict[int, TicketFacts | None] = {}

    def named(ticket_id: int | None) -> TicketFacts | None:
        if ticket_id is None:
            return None
        if ticket_id not in known:
            known[ticket_id] = ticket_facts(conn, ticket_id)
        return known[ticket_id]

    token = named(ticket_from_token(mail.recipients, secret))
    references: list[Reference] = []
    message = mail.message
    ids = list(dict.fromkeys((*message.in_reply_to, *reversed(message.references))))
    ids = ids[:_MAX_REFERENCES]
    if ids:
        found: dict[int, bool] = {}
        for ticket_id in _COMMENTS_BY_MESSAGE.run(conn, {"ids": ids}).scalars():
            found.setdefault(ticket_id, False)
        for ticket_id, recipients in _OUTBOX_BY_MESSAGE.run(conn, {"ids": ids}):
            if ticket_id is not None:
                found[ticket_id] = found.get(ticket_id, False) or mail.sender in recipients
        for ticket_id, sent_to_sender in found.items():
            facts = named(ticket_id)
            if facts is not None:
                references.append(Reference(facts, sent_to_sender))
    tag = named(ticket_from_tag(mail.subject, tag_regex))
    since = now - timedelta(hours=1)
    recent = _RECENT_TICKETS.run(conn, {"email": mail.sender, "since": since}).scalar() or 0
    return Facts(token, tuple(references), tag, recent)


def ticket_facts(conn: Connection, ticket_id: int) -> TicketFacts | None:
    """One ticket with who it knows: requester, participants, its organization's members."""
    row = _TICKET_QUERY.run(conn, {"ticket": ticket_id}).first()
    if row is None:
        return None
    ticket, subject, status, org_id, org, requester_id, requester, priority, tags = row[:9]
    assignee_id, assignee = row[9:]
    active, inactive = participant_emails(conn, ticket)
    return TicketFacts(
        id=ticket,
        status=status,
        organization=org,
        requester=requester,
        participants=active,
        inactive=inactive,
        members=member_emails(conn, org_id),
        subject=subject,
        priority=priority,
        tags=tuple(tags or ()),
        assignee=assignee,
        organization_id=org_id,
        requester_id=requester_id,
        assignee_id=assignee_id,
    )


def participant_emails(conn: Connection, ticket_id: int) -> tuple[tuple[str, ...], frozenset[str]]:
    """Who is copied on the ticket, oldest user first (the order notifications list them),
    and who was and is no more (left behind by a move, removed by an agent)."""
    rows = _PARTICIPANT_EMAILS.run(conn, {"ticket": ticket_id}).all()
    return (
        tuple(email for email, active in rows if active),
        frozenset(email for email, active in rows if not active),
    )


def member_emails(conn: Connection, organization_id: int | None) -> frozenset[str]:
    if organization_id is None:
        return frozenset()
    return frozenset(_MEMBER_EMAILS.run(conn, {"org": organization_id}).scalars())


def returned_notifications(
    conn: Connection, message_ids: tuple[str, ...]
) -> tuple[SentNotification, ...]:
    """The outbox rows a bounce names by their Message-IDs."""
    if not message_ids:
        return ()
    rows = _OUTBOX_ROWS_BY_MESSAGE.run(conn, {"ids": list(message_ids)})
    return tuple(
        SentNotification(id, kind, ticket, tuple(recipients))
        for id, kind, ticket, recipients in rows
    )


_TICKET_QUERY = Prebuilt(
    select(
        _TICKETS.c.id,
        _TICKETS.c.subject,
        _TICKETS.c.status,
        _TICKETS.c.organization_id,
        _ORGS.c.name,
        _TICKETS.c.requester_id,
        _USERS.c.email,
        _TICKETS.c.priority,
        _TICKETS.c.tags,
        _TICKETS.c.assignee_id,
        _ASSIGNEE.c.email,
    )
    .select_from(
        _TICKETS.join(_USERS, _USERS.c.id == _TICKETS.c.requester_id)
        .outerjoin(_ORGS, _ORGS.c.id == _TICKETS.c.organization_id)
        .outerjoin(_ASSIGNEE, _ASSIGNEE.c.id == _TICKETS.c.assignee_id)
    )
    .where(_TICKETS.c.id == bindparam("ticket"))
)
_PARTICIPANT_EMAILS = Prebuilt(
    select(_USERS.c.email, _PARTICIPANTS.c.active)
    .join(_PARTICIPANTS, _PARTICIPANTS.c.user_id == _USERS.c.id)
    .where(_PARTICIPANTS.c.ticket_id == bindparam("ticket"))
    .order_by(_PARTICIPANTS.c.user_id)
)
_MEMBER_EMAILS = Prebuilt(
    select(_USERS.c.email)
    .join(_MEMBERS, _MEMBERS.c.user_id == _USERS.c.id)
    .where(_MEMBERS.c.organization_id == bindparam("org"))
)
_RECENT_TICKETS = Prebuilt(
    select(func.count(_TICKETS.c.id))
    .join(_USERS, _USERS.c.id == _TICKETS.c.requester_id)
    .where(_USERS.c.email == bindparam("email"), _TICKETS.c.created_at > bindparam("since"))
)
_COMMENTS_BY_MESSAGE = Prebuilt(
    select(_COMMENTS.c.ticket_id).where(
        _COMMENTS.c.message_id.in_(bindparam("ids", expanding=True))
    )
)
_OUTBOX_BY_MESSAGE = Prebuilt(
    select(_OUTBOX.c.ticket_id, _OUTBOX.c.recipients).where(
        _OUTBOX.c.message_id.in_(bindparam("ids", expanding=True))
    )
)
_OUTBOX_ROWS_BY_MESSAGE = Prebuilt(
    select(_OUTBOX.c.id, _OUTBOX.c.kind, _OUTBOX.c.ticket_id, _OUTBOX.c.recipients)
    .where(_OUTBOX.c.message_id.in_(bindparam("ids", expanding=True)))
    .order_by(_OUTBOX.c.id)
)

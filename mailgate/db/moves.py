"""A ticket that moves to another organization, who is copied on it, and who handles it.

Visibility follows organization membership (user rule). When an open ticket moves, the
participants outside its new organization stop receiving its mail (they stay in its
history, marked inactive), the move is written on the ticket as mailgate's own internal
comment, and the new organization's followers are told. An agent's ``#org`` and ``#cc``
and the admin's ``tickets set --org`` all come here, so the rule holds however a ticket
moves; only an agent's explicit ``#cc add`` copies someone on it again.

Moves are rare, so these are plain SQLAlchemy statements, not the fast path's
:class:`~mailgate.db.fastexec.Prebuilt` that every mail runs.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from mailgate.config import Config
from mailgate.db.gather import ticket_facts
from mailgate.db.outbox import queue_notification
from mailgate.db.records import ensure_user, update_ticket, user_id
from mailgate.errors import NotFound, Refused
from mailgate.models import (
    AuthorKind,
    Comment,
    Membership,
    Participant,
    Status,
    Ticket,
    User,
    table_of,
)
from mailgate.pipeline import notify
from mailgate.pipeline.commands import FIRST_ANSWER, Change

_PARTICIPANTS = table_of(Participant)
_MEMBERS = table_of(Membership)
_USERS = table_of(User)
_COMMENTS = table_of(Comment)

CLI_ACTOR = "admin (mailgate tickets set)"  # who a move by the CLI is written as done by


def apply_changes(
    session: Session,
    config: Config,
    ticket: Ticket,
    changes: tuple[Change, ...],
    by: str,
    now: datetime,
) -> tuple[str, ...]:
    """An agent's checked commands, in order; one explanation per change the store refuses.

    A move is judged once, from the organization before the first command to the one after
    the last, so ``#org A`` then ``#org B`` tells only B's followers. ``#cc`` lines come
    after it, whatever their place in the mail: an agent who moves a ticket and copies
    someone outside the new organization means that person to stay on it.
    """
    refused: list[str] = []
    old = _name(ticket)
    for change in changes:
        if change.field in ("cc_add", "cc_remove"):
            continue
        try:
            if change.field == "assignee":
                # Taken by answering: the answer on the ticket says so, no note needed.
                noted = change.line != FIRST_ANSWER
                assign(session, config, ticket, change.value or None, by, change.line, now, noted)
            else:
                update_ticket(session, ticket, now, **{change.field: change.value})
        except (Refused, NotFound) as exc:
            refused.append(f"{change.line}: {exc}")
    _after_changes(session, config, ticket, old, by, now)
    conn = session.connection()
    for change in changes:
        if change.field not in ("cc_add", "cc_remove"):
            continue
        try:
            cc(conn, ticket.id, change.value, change.field == "cc_add", now)
        except Refused as exc:
            refused.append(f"{change.line}: {exc}")
    return tuple(refused)


def set_ticket(
    session: Session,
    config: Config,
    ticket: Ticket,
    now: datetime,
    assignee: str | None = None,
    **changes: str | None,
) -> None:
    """The admin's ``tickets set``: :func:`update_ticket` with ``changes`` (status,
    organization, requester), what a move entails, and the ``assignee`` (an agent's
    address, or ``"none"``)."""
    old = _name(ticket)
    update_ticket(session, ticket, now, **changes)
    _after_changes(session, config, ticket, old, CLI_ACTOR, now)
    if assignee is not None:
        email = None if assignee.lower() == "none" else assignee.lower()
        assign(session, config, ticket, email, CLI_ACTOR, "tickets set --assignee", now)


def assign(
    session: Session,
    config: Config,
    ticket: Ticket,
    email: str | None,
    by: str,
    how: str,
    now: datetime,
    noted: bool = True,
) -> None:
    """Make ``email`` (an agent) the ticket's assignee, or nobody: noted on the ticket, and
    told to that agent when someone else gave it to them.

    Only agents handle tickets; a closed ticket is done and keeps who handled it.
    """
    if email is not None and email not in config.agents.addresses:
        raise Refused(
            f"{email} is not an agent address ([agents] addresses): only agents handle tickets"
        )
    if ticket.status == Status.CLOSED:
        raise Refused(f"ticket {ticket.id} is closed; its assignee stays who handled it")
    previous = ticket.assignee.email if ticket.assignee is not None else None
    if email == previous:
        return
    ticket.assignee = ensure_user(session, email, "", now) if email is not None else None
    ticket.updated_at = now
    conn = session.connection()
    if noted:
        system = user_id(conn, config.mail.address, "mailgate", now)
        session.add(
            Comment(
                ticket_id=ticket.id,
                author_id=system,
                body=(f"Assigned to {email}" if email else "Unassigned")
                + f" by {by} ({how}); before: {previous or 'nobody'}",
                public=False,
                author_kind=AuthorKind.SYSTEM.value,
                created_at=now,
            )
        )
    session.flush()
    notes = notify.assigned(email, by, previous)
    if not notes:  # taken by oneself (every first answer) or given back: nobody to tell
        return
    facts = ticket_facts(conn, ticket.id)
    assert facts is not None
    latest = conn.execute(_LATEST_CUSTOMER_COMMENT, {"ticket": ticket.id}).scalar()
    for note in notes:
        queue_notification(conn, config, facts, facts.organization_id, note, now, latest)


def _after_changes(
    session: Session, config: Config, ticket: Ticket, old: str | None, by: str, now: datetime
) -> None:
    session.flush()
    if _name(ticket) != old:
        record_move(session, config, ticket.id, old, by, now)


def record_move(
    session: Session, config: Config, ticket_id: int, old: str | None, by: str, now: datetime
) -> None:
    """What follows a move already written: outsiders left behind, the note, the followers.

    The ticket's requester stays whatever their organization (user rule: the requester
    always hears of their ticket); agents are never participants.
    """
    conn = session.connection()
    facts = ticket_facts(conn, ticket_id)
    assert facts is not None and facts.organization is not None
    conn.execute(
        _LEAVE_BEHIND,
        {
            "ticket": ticket_id,
            "requester": facts.requester_id,
            "org": facts.organization_id,
            "agents": list(config.agents.addresses),
        },
    )
    system = user_id(conn, config.mail.address, "mailgate", now)
    session.add(
        Comment(
            ticket_id=ticket_id,
            author_id=system,
            body=f"Moved from {old or 'no organization'} to {facts.organization} by {by}",
            public=False,
            author_kind=AuthorKind.SYSTEM.value,
            created_at=now,
        )
    )
    session.flush()
    after = ticket_facts(conn, ticket_id)  # without the participants left behind
    assert after is not None
    first = conn.execute(_FIRST_PUBLIC_COMMENT, {"ticket": ticket_id}).scalar()
    for note in notify.on_move(after.requester, old, facts.organization):
        queue_notification(conn, config, after, after.organization_id, note, now, first)


def cc(conn: Connection, ticket_id: int, email: str, active: bool, now: datetime) -> None:
    """``#cc add`` (``active``) copies ``email`` on the ticket again, ``#cc remove`` stops it."""
    requester = conn.execute(_REQUESTER, {"ticket": ticket_id}).scalar()
    if email == requester:
        raise Refused(f"{email} is the ticket's requester (#requester changes who that is)")
    person = user_id(conn, email, "", now)
    row = {"ticket": ticket_id, "user": person}
    current = conn.execute(_PARTICIPANT, row).scalar()
    if current is None and not active:
        raise Refused(f"{email} is not copied on ticket #{ticket_id}")
    if current is None:
        conn.execute(insert(_PARTICIPANTS), {"ticket_id": ticket_id, "user_id": person})
    elif current != active:
        conn.execute(_SET_ACTIVE, {**row, "value": active})


def _name(ticket: Ticket) -> str | None:
    return ticket.organization.name if ticket.organization is not None else None


_TICKETS = table_of(Ticket)
_LEAVE_BEHIND = (
    update(_PARTICIPANTS)
    .where(
        _PARTICIPANTS.c.ticket_id == bindparam("ticket"),
        _PARTICIPANTS.c.active.is_(True),
        _PARTICIPANTS.c.user_id != bindparam("requester"),
        _PARTICIPANTS.c.user_id.not_in(
            select(_MEMBERS.c.user_id).where(_MEMBERS.c.organization_id == bindparam("org"))
        ),
        _PARTICIPANTS.c.user_id.not_in(
            select(_USERS.c.id).where(_USERS.c.email.in_(bindparam("agents", expanding=True)))
        ),
    )
    .values(active=False)
)
_FIRST_PUBLIC_COMMENT = select(func.min(_COMMENTS.c.id)).where(
    _COMMENTS.c.ticket_id == bindparam("ticket"), _COMMENTS.c.public.is_(True)
)
_REQUESTER = (
    select(_USERS.c.email)
    .join(_TICKETS, _TICKETS.c.requester_id == _USERS.c.id)
    .where(_TICKETS.c.id == bindparam("ticket"))
)
_ONE_PARTICIPANT = (
    _PARTICIPANTS.c.ticket_id == bindparam("ticket"),
    _PARTICIPANTS.c.user_id == bindparam("user"),
)
_LATEST_CUSTOMER_COMMENT = select(func.max(_COMMENTS.c.id)).where(
    _COMMENTS.c.ticket_id == bindparam("ticket"),
    _COMMENTS.c.public.is_(True),
    _COMMENTS.c.author_kind == AuthorKind.CUSTOMER.value,
)
_PARTICIPANT = select(_PARTICIPANTS.c.active).where(*_ONE_PARTICIPANT)
_SET_ACTIVE = update(_PARTICIPANTS).where(*_ONE_PARTICIPANT).values(active=bindparam("value"))

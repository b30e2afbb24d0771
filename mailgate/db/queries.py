"""The CLI's read side: tickets and organizations, shaped as its JSON output promises.

Times are ISO 8601 in UTC (:func:`mailgate.db.lists.iso`); a ticket or organization that
does not exist is :class:`mailgate.errors.NotFound` (the CLI's exit code for it).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from mailgate.db.detail import ticket_detail_of, ticket_summary_of
from mailgate.db.lists import organization_id
from mailgate.errors import NotFound
from mailgate.models import Attachment, Blob, Comment, Organization, Participant, Ticket


def ticket_summary(session: Session, ticket: Ticket) -> dict[str, Any]:
    """The ticket as ``tickets list --json`` shows it, with what the session changed so far."""
    session.flush()
    return ticket_summary_of(session.connection(), ticket.id)


def ticket_detail(session: Session, ticket: Ticket) -> dict[str, Any]:
    """The ticket as ``tickets show`` prints it, with what the session changed so far."""
    session.flush()
    return ticket_detail_of(session.connection(), ticket.id)


def attachments(ticket: Ticket) -> list[Attachment]:
    """A ticket's attachments in the order they came, numbered from 1 by their place here:
    the number ``tickets show`` prints and ``tickets attachment`` takes."""
    return [a for comment in ticket.comments for a in comment.attachments]


def find_attachment(ticket: Ticket, which: str | None) -> tuple[int, Attachment]:
    """An attachment of the ticket by number or by file name, with its number.

    ``None`` is the ticket's only attachment. A name that several attachments share must be
    given as a number, so that the admin never saves the wrong file without noticing.
    """
    found = attachments(ticket)
    numbered = list(enumerate(found, 1))
    if not found:
        raise NotFound(f"ticket {ticket.id} has no attachments")
    if which is None:
        if len(found) > 1:
            raise NotFound(
                f"ticket {ticket.id} has {len(found)} attachments: give a number from 1 to "
                f"{len(found)} or a file name (`mailgate tickets show {ticket.id}` lists them)"
            )
        return 1, found[0]
    if which.isdigit() and 1 <= int(which) <= len(found):
        return int(which), found[int(which) - 1]
    named = [(n, a) for n, a in numbered if a.filename == which]
    if len(named) > 1:
        numbers = ", ".join(str(n) for n, _ in named)
        raise NotFound(
            f"ticket {ticket.id} has {len(named)} attachments named {which!r}: "
            f"give its number ({numbers})"
        )
    if not named:
        raise NotFound(
            f"ticket {ticket.id} has no attachment {which!r} (numbers 1 to {len(found)})"
        )
    return named[0]


def attachment_data(session: Session, attachment: Attachment) -> bytes:
    """The stored content, whole and byte for byte (also a large one written piecewise)."""
    data = session.execute(select(Blob.data).where(Blob.sha256 == attachment.sha256)).scalar()
    if data is None:
        raise NotFound(f"the content of attachment {attachment.filename!r} is missing")
    return bytes(data)


def get_ticket(session: Session, ticket_id: int) -> Ticket:
    ticket = session.scalar(
        select(Ticket)
        .where(Ticket.id == ticket_id)
        .options(
            selectinload(Ticket.comments).selectinload(Comment.attachments),
            selectinload(Ticket.comments).selectinload(Comment.author),
            selectinload(Ticket.participants).selectinload(Participant.user),
        )
    )
    if ticket is None:
        raise NotFound(f"ticket {ticket_id} not found")
    return ticket


def find_organization(session: Session, name: str) -> Organization:
    """An organization by exact name, case-insensitively (admins type them by hand)."""
    org = session.get(Organization, organization_id(session.connection(), name))
    assert org is not None
    return org

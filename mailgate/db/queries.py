"""The CLI's read side: tickets and organizations, shaped as its JSON output promises.

Times are ISO 8601 in UTC (:func:`iso`); a ticket or organization that does not exist is
:class:`mailgate.errors.NotFound` (the CLI's exit code for it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from mailgate.errors import NotFound
from mailgate.models import Comment, Organization, Participant, Ticket


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with offset, in UTC, as the JSON contract promises."""
    return value.isoformat() if value is not None else None


def ticket_summary(ticket: Ticket) -> dict[str, Any]:
    return {
        "id": ticket.id,
        "subject": ticket.subject,
        "status": ticket.status,
        "organization": ticket.organization.name if ticket.organization else None,
        "requester": ticket.requester.email,
        "created_at": iso(ticket.created_at),
        "updated_at": iso(ticket.updated_at),
    }


def ticket_detail(session: Session, ticket: Ticket) -> dict[str, Any]:
    detail = ticket_summary(ticket)
    detail.update(
        {
            "solved_at": iso(ticket.solved_at),
            "closed_at": iso(ticket.closed_at),
            "follow_up_of": ticket.follow_up_of,
            "routing": {"reason": ticket.routing_reason, "score": ticket.routing_score},
            "priority": ticket.priority,
            "tags": list(ticket.tags),
            "participants": [p.user.email for p in ticket.participants],
            "comments": [
                {
                    "author": c.author.email,
                    "public": c.public,
                    "body": c.body,
                    "created_at": iso(c.created_at),
                    "message_id": c.message_id,
                    "attachments": [
                        {
                            "filename": a.filename,
                            "content_type": a.content_type,
                            "size": a.size,
                            "sha256": a.sha256,
                        }
                        for a in c.attachments
                    ],
                }
                for c in ticket.comments
            ],
        }
    )
    return detail


def list_tickets(
    session: Session, organization: str | None = None, status: str | None = None
) -> list[Ticket]:
    query = (
        select(Ticket)
        .options(selectinload(Ticket.organization), selectinload(Ticket.requester))
        .order_by(Ticket.id)
    )
    if organization is not None:
        org = find_organization(session, organization)
        query = query.where(Ticket.organization_id == org.id)
    if status is not None:
        query = query.where(Ticket.status == status)
    return list(session.scalars(query))


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
    for org in session.scalars(select(Organization).order_by(Organization.position)):
        if org.name.casefold() == name.casefold():
            return org
    raise NotFound(f"organization {name!r} not found")

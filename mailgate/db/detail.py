"""``tickets show``: one ticket as its JSON promises, read with Core statements alone.

Why not the ORM: ``tickets show`` is the command an agent runs most, and importing the
ORM took longer than the whole command may (issue #21: 0.3 s with 1,000 organizations).
Four statements read the ticket with its names, its participants, its comments with their
authors, and their attachments. :func:`mailgate.db.queries.ticket_detail` is this, for
callers that hold a session.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from mailgate import schema
from mailgate.errors import NotFound

_TICKETS = schema.tickets
_USERS = schema.users
_ORGS = schema.organizations
_COMMENTS = schema.comments
_ATTACHMENTS = schema.attachments
_PARTICIPANTS = schema.participants


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with offset, in UTC, as the JSON contract promises."""
    return value.isoformat() if value is not None else None


def ticket_detail_of(conn: Connection, ticket_id: int) -> dict[str, Any]:
    """The ticket, its participants and comments with their attachments, numbered from 1
    in the order they came (the number ``tickets attachment`` takes)."""
    t = _TICKETS
    requester, assignee = _USERS.alias("requester"), _USERS.alias("assignee")
    row = conn.execute(
        select(
            t,
            _ORGS.c.name.label("organization_name"),
            requester.c.email.label("requester_email"),
            assignee.c.email.label("assignee_email"),
        )
        .select_from(
            t.join(requester, requester.c.id == t.c.requester_id)
            .outerjoin(_ORGS, _ORGS.c.id == t.c.organization_id)
            .outerjoin(assignee, assignee.c.id == t.c.assignee_id)
        )
        .where(t.c.id == ticket_id)
    ).one_or_none()
    if row is None:
        raise NotFound(f"ticket {ticket_id} not found")
    p = _PARTICIPANTS
    participants = conn.execute(
        select(_USERS.c.email, p.c.active)
        .join(_USERS, _USERS.c.id == p.c.user_id)
        .where(p.c.ticket_id == ticket_id)
        .order_by(p.c.user_id)
    ).all()
    c = _COMMENTS
    comments = conn.execute(
        select(c, _USERS.c.email.label("author_email"))
        .join(_USERS, _USERS.c.id == c.c.author_id)
        .where(c.c.ticket_id == ticket_id)
        .order_by(c.c.id)
    ).all()
    a = _ATTACHMENTS
    files: dict[int, list[Any]] = {}
    if comments:
        for found in conn.execute(
            select(a)
            .where(a.c.comment_id.in_([comment.id for comment in comments]))
            .order_by(a.c.id)
        ):
            files.setdefault(found.comment_id, []).append(found)
    number = 0

    def numbered(comment_id: int) -> list[dict[str, Any]]:
        nonlocal number
        shown = []
        for file in files.get(comment_id, []):
            number += 1
            shown.append(
                {
                    "number": number,
                    "filename": file.filename,
                    "content_type": file.content_type,
                    "size": file.size,
                    "sha256": file.sha256,
                }
            )
        return shown

    return {
        "id": row.id,
        "subject": row.subject,
        "status": row.status,
        "organization": row.organization_name,
        "requester": row.requester_email,
        "assignee": row.assignee_email,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "solved_at": iso(row.solved_at),
        "closed_at": iso(row.closed_at),
        "follow_up_of": row.follow_up_of,
        "routing": {"reason": row.routing_reason, "score": row.routing_score},
        "priority": row.priority,
        "tags": list(row.tags),
        "participants": [email for email, _ in participants],
        # Of those, the ones no longer sent anything: left behind by a move, or removed.
        "inactive_participants": [email for email, active in participants if not active],
        "comments": [
            {
                "author": comment.author_email,
                "author_kind": comment.author_kind,
                "authentication": comment.authentication,
                "public": comment.public,
                "body": comment.body,
                "created_at": iso(comment.created_at),
                "message_id": comment.message_id,
                "attachments": numbered(comment.id),
            }
            for comment in comments
        ],
    }

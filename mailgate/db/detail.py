"""``tickets show``: one ticket as its JSON promises, read with Core statements alone.

Why not the ORM: ``tickets show`` is the command an agent runs most, and importing the
ORM took longer than the whole command may (issue #21: 0.3 s with 1,000 organizations).
Four statements read the ticket with its names, its participants, its comments with their
authors, and their attachments. :func:`mailgate.db.queries.ticket_detail` is this, for
callers that hold a session.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, select

from mailgate import schema
from mailgate.db.lists import iso, ticket_row, tickets_with_names
from mailgate.errors import NotFound

_TICKETS = schema.tickets
_USERS = schema.users
_COMMENTS = schema.comments
_ATTACHMENTS = schema.attachments
_PARTICIPANTS = schema.participants


def _ticket(conn: Connection, ticket_id: int) -> Row[Any]:
    """The ticket's row with the names the lists show beside it (their very join)."""
    row = conn.execute(tickets_with_names(_TICKETS).where(_TICKETS.c.id == ticket_id)).one_or_none()
    if row is None:
        raise NotFound(f"ticket {ticket_id} not found")
    return row


def ticket_summary_of(conn: Connection, ticket_id: int) -> dict[str, Any]:
    """The ticket as ``tickets list --json`` shows it (and ``tickets set`` after a change)."""
    return ticket_row(_ticket(conn, ticket_id))


def ticket_detail_of(conn: Connection, ticket_id: int) -> dict[str, Any]:
    """The ticket, its participants and comments with their attachments, numbered from 1
    in the order they came (the number ``tickets attachment`` takes)."""
    row = _ticket(conn, ticket_id)
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
        **ticket_row(row),
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

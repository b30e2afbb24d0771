"""Queueing a notification: the one place every outbox row is written.

Ingest, agent commands and the auto-close job all come here, so the rules hold for every
kind of mail mailgate sends: nobody outside the ticket (its requester, participants, its
organization's members, the support team: agents and ``[agents] notify``) is sent its
content (user rule); never one of our own addresses (a loop) unless it is the team's;
never an address that hard-bounced recently; one mail per follower, who never see each
other's addresses. The row is written in the transaction of the event that caused it, so
no notification is lost when the relay is down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select

from mailgate.config import Config
from mailgate.db.fastexec import Prebuilt
from mailgate.models import (
    Follower,
    Membership,
    NotificationKind,
    Outbox,
    OutboxStatus,
    Suppression,
    User,
    table_of,
)
from mailgate.pipeline.decision import Notify
from mailgate.pipeline.facts import TicketFacts
from mailgate.pipeline.filters import is_ours
from mailgate.pipeline.reading import shown_subject

_USERS = table_of(User)
_MEMBERS = table_of(Membership)
_FOLLOWERS = table_of(Follower)
_SUPPRESSIONS = table_of(Suppression)
_OUTBOX = table_of(Outbox)


def queue_notification(
    conn: Connection,
    config: Config,
    ticket: TicketFacts | None,
    organization_id: int | None,
    note: Notify,
    now: datetime,
    comment: int | None = None,
    public: bool = True,
) -> int:
    """Queue ``note`` about ``ticket`` (facts as they are after the event); rows written.

    ``organization_id`` is the ticket's, for its followers; ``comment`` the comment the
    event wrote, for notifications that carry it, and ``public`` whether customers may
    read it: an internal comment goes to agents only, whoever asked. Without a ticket
    (an agent's mail kept in quarantine) the mail goes to agents only.
    """
    payload: dict[str, Any] = {}
    if note.with_comment:
        payload["comment"] = comment
    if note.errors:
        payload["errors"] = list(note.errors)
    if note.moved is not None:
        payload["moved"] = {"from": note.moved[0], "to": note.moved[1]}
    if note.unused_prefix is not None:
        payload["unused_prefix"] = note.unused_prefix.as_payload()
    if note.paged:
        payload["paged"] = True
    if note.by:
        payload["by"] = note.by
    if note.digest is not None:
        payload["digest"] = dict(note.digest)
    if note.about or note.about_id:
        payload.update(about=note.about, about_id=note.about_id)
    if ticket is None or (note.with_comment and not public):
        team = config.team
        note = replace(note, to=tuple(r for r in note.to if r in team), followers=False)
    if ticket is None:
        return _queue(conn, config, note.kind, None, note.to, note.exclude, payload, now)
    queued = 0
    batches = [(r,) for r in dict.fromkeys(note.to)] if note.each else [note.to]
    for to in (batch for batch in batches if batch):
        queued += _queue(conn, config, note.kind, ticket, to, note.exclude, payload, now)
    if note.followers and organization_id is not None:
        followers = follower_emails(conn, organization_id)
        # Followers are members (the query says so): the visibility rule lets them see it.
        seen = _with_members(ticket, followers)
        for email in followers:
            queued += _queue(conn, config, note.kind, seen, (email,), note.exclude, payload, now)
    return queued


def follower_emails(conn: Connection, organization_id: int) -> list[str]:
    """Members of the organization who follow it, by address."""
    return list(_FOLLOWER_EMAILS.run(conn, {"org": organization_id}).scalars())


def _with_members(ticket: TicketFacts, members: Sequence[str]) -> TicketFacts:
    if not members:
        return ticket
    return replace(ticket, members=ticket.members | frozenset(members))


def _queue(
    conn: Connection,
    config: Config,
    kind: str,
    ticket: TicketFacts | None,
    recipients: Sequence[str],
    exclude: Sequence[str],
    payload: dict[str, Any],
    now: datetime,
) -> int:
    agents = config.team  # the support team: agents and the addresses told of tickets
    suppressed = set(_SUPPRESSED.run(conn, {"emails": list(recipients), "now": now}).scalars())
    to = [
        r
        for r in dict.fromkeys(recipients)
        if r
        and r not in exclude
        and r not in suppressed  # hard-bounced recently: mail would only bounce again
        and (r in agents or not is_ours(r, config))  # never to ourselves; agents may share it
        and (r in agents if ticket is None else ticket.knows(r, agents))
    ]
    if not to:
        return 0
    about = str(payload.get("about", ""))
    # A page must stand out in an inbox full of tickets, and be told apart by a mail filter.
    flag = "EMERGENCY " if kind == NotificationKind.EMERGENCY else ""
    row = {
        "kind": kind,
        "ticket_id": ticket.id if ticket is not None else None,
        "recipients": to,
        "subject": shown_subject(
            f"{flag}{config.tickets.tag_for(ticket.id)} {ticket.subject}"
            if ticket is not None
            else about
        ),
        "payload": payload,
        "status": OutboxStatus.PENDING.value,
        "created_at": now,
        "next_attempt_at": now,
    }
    _INSERT_OUTBOX.run(conn, row)
    return 1


_INSERT_OUTBOX = Prebuilt(insert(_OUTBOX))
_FOLLOWER_EMAILS = Prebuilt(
    select(_USERS.c.email)
    .join(_FOLLOWERS, _FOLLOWERS.c.user_id == _USERS.c.id)
    .where(
        _FOLLOWERS.c.organization_id == bindparam("org"),
        _USERS.c.id.in_(
            select(_MEMBERS.c.user_id).where(_MEMBERS.c.organization_id == bindparam("org"))
        ),
    )
    .order_by(_USERS.c.email)
)
_SUPPRESSED = Prebuilt(
    select(_SUPPRESSIONS.c.email).where(
        _SUPPRESSIONS.c.email.in_(bindparam("emails", expanding=True)),
        _SUPPRESSIONS.c.until > bindparam("now"),
    )
)

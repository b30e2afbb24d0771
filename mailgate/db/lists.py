"""The statements behind the list commands: tickets, outbox, quarantine and followers.

Each list is a Core select of exactly the columns its views print (never a blob: raw mail,
rendered message, attachment data), built here so that the commands and the query-plan
test (``tests/test_query_plans.py``) run the very same SQL. Paging is keyset on the
primary key: ``id < before`` or ``id > after``, newest first, so a page costs the same on
page 1 and page 20,000 and a row written meanwhile never shifts what the next page shows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    String,
    bindparam,
    cast,
    exists,
    func,
    literal,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from mailgate import schema
from mailgate.db.sqlite import UNICODE_LOWER
from mailgate.errors import NotFound
from mailgate.schema import Outcome

# Core tables alone, no ORM: ``tickets show`` (mailgate.db.detail) reads through the same
# join and row shape as the lists, and must not pay for importing the ORM.
_TICKETS = schema.tickets
_USERS = schema.users
_ORGS = schema.organizations
_OUTBOX = schema.outbox
_LEDGER = schema.inbound_messages
_FOLLOWERS = schema.followers


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with offset, in UTC, as the JSON contract promises."""
    return value.isoformat() if value is not None else None


# How far the "N more" hint counts: an exact count of a million rows is a scan of a
# million rows; past this the hint says "over N".
COUNT_CAP = 10_000
STREAM_CHUNK = 500  # rows fetched per round trip while streaming (server-side cursor on PG)


@dataclass(frozen=True, slots=True)
class Page:
    """Which rows of a list: all of them (oldest first, the ``--json`` contract), or a page.

    A page is newest first: ``limit`` rows below ``before_id``, or the ``limit`` rows just
    above ``after_id`` (fetched oldest first and shown newest first).
    """

    limit: int | None = None
    before_id: int | None = None
    after_id: int | None = None
    newest_first: bool = True

    @property
    def ascending(self) -> bool:
        """Fetched oldest first: all rows for ``--json``, or the page just above
        ``after_id`` (turned newest first by the caller, who holds at most ``limit``)."""
        if not self.newest_first:
            return True
        return self.after_id is not None and self.limit is not None


@dataclass(frozen=True, slots=True)
class Filters:
    """What a list is narrowed to; ``None`` is "any". Times are aware (UTC)."""

    organization: str | None = None
    status: str | None = None
    requester: str | None = None
    assignee: str | None = None  # an address, or "none": unassigned
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    tag: str | None = None
    search: str | None = None
    # follow list: positional EMAIL and ORG
    email: str | None = None


@dataclass(frozen=True, slots=True)
class Listing:
    """One list's rows before paging: the select with its filters, its key, its JSON."""

    query: Select[Any]
    key: ColumnElement[Any]
    shape: Callable[[Any], dict[str, Any]]
    conditions: tuple[ColumnElement[bool], ...] = field(default=())
    source: Any = None  # what the count of remaining rows selects from
    order: Any = None  # what the page is sorted by, if not ``key`` (see :func:`_order`)

    def page(self, page: Page) -> Select[Any]:
        """The statement for ``page``: keyset bounds, order and limit on the key."""
        query = self.query
        if page.before_id is not None:
            query = query.where(self.key < page.before_id)
        if page.after_id is not None:
            query = query.where(self.key > page.after_id)
        order = self.key if self.order is None else self.order
        query = query.order_by(order if page.ascending else order.desc())
        return query.limit(page.limit) if page.limit is not None else query

    def remaining(self, below: int | None = None, above: int | None = None) -> Select[Any]:
        """How many rows match beyond the shown page (at most :data:`COUNT_CAP` + 1)."""
        inner = select(literal(1)).select_from(self.source).where(*self.conditions)
        if below is not None:
            inner = inner.where(self.key < below)
        if above is not None:
            inner = inner.where(self.key > above)
        capped = inner.limit(COUNT_CAP + 1).subquery()
        return select(func.count()).select_from(capped)


def user_id(email: str) -> Any:
    """The id of the user with this address, as a scalar subquery (no such user: none)."""
    return select(_USERS.c.id).where(_USERS.c.email == email.lower()).scalar_subquery()


def tickets_with_names(*columns: Any) -> Select[Any]:
    """``columns`` of tickets with the names people read beside them: ``organization``,
    ``requester`` and ``assignee`` (labelled), over the one join every ticket list uses."""
    t = _TICKETS
    requester, assignee = _USERS.alias("requester"), _USERS.alias("assignee")
    return select(
        *columns,
        _ORGS.c.name.label("organization"),
        requester.c.email.label("requester"),
        assignee.c.email.label("assignee"),
    ).select_from(
        t.join(requester, requester.c.id == t.c.requester_id)
        .outerjoin(_ORGS, _ORGS.c.id == t.c.organization_id)
        .outerjoin(assignee, assignee.c.id == t.c.assignee_id)
    )


def _contains(dialect: str, column: Any, text: str) -> ColumnElement[bool]:
    """Case-insensitive substring: ``lower(column) LIKE '%text%'`` (``%`` and ``_`` escaped).

    No index serves it (a leading ``%``): it reads the rows the other filters leave, newest
    first, until the page is full; a rare word may walk the whole table.
    """
    lower = func.lower if dialect == "postgresql" else getattr(func, UNICODE_LOWER)
    result: ColumnElement[bool] = lower(column).contains(text.lower(), autoescape=True)
    return result


def _has_tag(dialect: str, tag: str) -> ColumnElement[bool]:
    """The ticket's JSON ``tags`` holds ``tag``: ``json_each`` on SQLite, ``@>`` on PostgreSQL.

    Like ``--search`` it reads the tags of the rows the other filters leave (a handful of
    short strings each); a ``ticket_tags`` table would cost every new ticket an insert per
    tag, for a filter used by hand.
    """
    if dialect == "postgresql":
        wanted = cast(bindparam("tag", json.dumps([tag]), type_=String, unique=True), JSONB)
        return cast(_TICKETS.c.tags, JSONB).op("@>")(wanted)
    each = func.json_each(_TICKETS.c.tags).table_valued("value")
    return exists(select(literal(1)).select_from(each).where(each.c.value == tag))


def _order(dialect: str, table: Any, filters: Filters) -> Any:
    """``+id`` for SQLite when a time bound is given, else None (order by the key).

    SQLite prefers walking the primary key backwards (no sort) to the index of a range
    condition, and its walk stops only at LIMIT: ``--until`` last year would read every
    newer row first, ``--since`` with few matches the whole table. ``+id`` is the same
    order to the reader, but no index order to SQLite, so it takes the time index and
    sorts what matches. PostgreSQL weighs both with its statistics.
    """
    if dialect == "sqlite" and (filters.since is not None or filters.until is not None):
        return literal_column(f"+{table.name}.id")
    return None


def _between(column: Any, filters: Filters) -> list[ColumnElement[bool]]:
    found: list[ColumnElement[bool]] = []
    if filters.since is not None:
        found.append(column >= filters.since)
    if filters.until is not None:
        found.append(column < filters.until)
    return found


def ticket_listing(dialect: str, filters: Filters, organization_id: int | None = None) -> Listing:
    """``tickets list``: the fields of ``tickets list --json`` (see :func:`ticket_row`)."""
    t = _TICKETS
    conditions: list[ColumnElement[bool]] = []
    if organization_id is not None:
        conditions.append(t.c.organization_id == organization_id)
    if filters.status is not None:
        conditions.append(t.c.status == filters.status)
    if filters.assignee is not None and filters.assignee.lower() == "none":
        conditions.append(t.c.assignee_id.is_(None))
    elif filters.assignee is not None:
        conditions.append(t.c.assignee_id == user_id(filters.assignee))
    if filters.requester is not None:
        conditions.append(t.c.requester_id == user_id(filters.requester))
    conditions += _between(t.c.created_at, filters)
    if filters.tag is not None:
        conditions.append(_has_tag(dialect, filters.tag))
    if filters.search is not None:
        conditions.append(_contains(dialect, t.c.subject, filters.search))
    query = tickets_with_names(
        t.c.id, t.c.subject, t.c.status, t.c.created_at, t.c.updated_at
    ).where(*conditions)
    return Listing(query, t.c.id, ticket_row, tuple(conditions), t, _order(dialect, t, filters))


def ticket_row(row: Any) -> dict[str, Any]:
    """One ticket as ``tickets list --json`` has always printed it."""
    return {
        "id": row.id,
        "subject": row.subject,
        "status": row.status,
        "organization": row.organization,
        "requester": row.requester,
        "assignee": row.assignee,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


def outbox_listing(dialect: str, filters: Filters) -> Listing:
    """``outbox list``: metadata and delivery history, never the rendered message."""
    o = _OUTBOX
    conditions: list[ColumnElement[bool]] = []
    if filters.status is not None:
        conditions.append(o.c.status == filters.status)
    conditions += _between(o.c.created_at, filters)
    if filters.search is not None:
        conditions.append(_contains(dialect, o.c.subject, filters.search))
    query = select(
        o.c.id,
        o.c.kind,
        o.c.ticket_id,
        o.c.recipients,
        o.c.subject,
        o.c.status,
        o.c.attempts,
        o.c.last_error,
        o.c.created_at,
        o.c.sent_at,
        o.c.message_id,
        o.c.payload,
    ).where(*conditions)
    return Listing(query, o.c.id, outbox_row, tuple(conditions), o, _order(dialect, o, filters))


def outbox_row(row: Any) -> dict[str, Any]:
    """One outbox row as ``outbox list --json`` has always printed it."""
    payload = row.payload or {}
    return {
        "id": row.id,
        "kind": row.kind,
        "ticket": row.ticket_id,
        "to": list(row.recipients),
        "subject": row.subject,
        "status": row.status,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "created_at": iso(row.created_at),
        "sent_at": iso(row.sent_at),
        "message_id": row.message_id,
        "accepted": payload.get("accepted", []),  # who has it: never re-sent
        "refused": payload.get("refused", {}),  # refused for good, with the reply
        "history": payload.get("attempts", []),
    }


def quarantine_listing(dialect: str, filters: Filters) -> Listing:
    """``quarantine list``: who sent what and why it waits, never the raw mail."""
    q = _LEDGER
    conditions: list[ColumnElement[bool]] = [q.c.outcome == Outcome.QUARANTINED.value]
    conditions += _between(q.c.received_at, filters)
    if filters.search is not None:
        conditions.append(_contains(dialect, q.c.reason, filters.search))
    query = select(
        q.c.id, q.c.message_id, q.c.received_at, q.c.mail_from, q.c.size, q.c.reason
    ).where(*conditions)
    return Listing(query, q.c.id, quarantine_row, tuple(conditions), q)


def quarantine_row(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "message_id": row.message_id,
        "received_at": iso(row.received_at),
        "mail_from": row.mail_from,
        "size": row.size,
        "reason": row.reason,
    }


def follower_query(filters: Filters, organization_id: int | None = None) -> Select[Any]:
    """``follow list``: by organization, then address. Followers have no id to page by;
    their number is bounded by the config's members, so ``--limit`` is their only page."""
    query = (
        select(_USERS.c.email, _ORGS.c.name.label("organization"), _FOLLOWERS.c.source)
        .join(_FOLLOWERS, _FOLLOWERS.c.user_id == _USERS.c.id)
        .join(_ORGS, _ORGS.c.id == _FOLLOWERS.c.organization_id)
        .order_by(_ORGS.c.name, _USERS.c.email)
    )
    if filters.email is not None:
        query = query.where(_USERS.c.email == filters.email.lower())
    if organization_id is not None:
        query = query.where(_FOLLOWERS.c.organization_id == organization_id)
    return query


def follower_row(row: Any) -> dict[str, Any]:
    return {"email": row.email, "organization": row.organization, "source": row.source}


def organization_id(conn: Connection, name: str | None) -> int | None:
    """The id of an organization named by hand, by exact name in any case (admins type
    them); None when none is named."""
    if name is None:
        return None
    wanted = name.casefold()
    for id_, found in conn.execute(select(_ORGS.c.id, _ORGS.c.name).order_by(_ORGS.c.position)):
        if found.casefold() == wanted:
            return int(id_)
    raise NotFound(f"organization {name!r} not found")


def stream(conn: Connection, statement: Select[Any]) -> Iterator[Any]:
    """The rows of ``statement`` as they come: a server-side cursor on PostgreSQL, the
    cursor itself on SQLite; memory holds one chunk, however many rows match."""
    yield from conn.execute(statement, execution_options={"yield_per": STREAM_CHUNK})

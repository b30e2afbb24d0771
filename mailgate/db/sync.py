"""Config -> database: organizations, users, memberships, followers and agents.

:meth:`mailgate.store.Store.sync` decides whether the config changed since the last sync
and holds the lock that keeps instances from syncing at once; this makes the rows match.
Organizations that left the config are deactivated, never deleted (they keep their tickets);
memberships and followers added by hand (``source`` other than ``config``) are left alone.

Set-based: what the database holds is read in a few queries and compared with what the
config says, and only the difference is written (new users, memberships added and removed,
organizations moved), in batches. A config of 1,000 organizations with 20,000 members took
seconds when every address was looked up on its own; an edit of one member now writes one
row.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Table, delete, select, tuple_, update
from sqlalchemy.orm import Session

from mailgate.config import Config
from mailgate.db.fastexec import insert_for
from mailgate.db.records import update_each
from mailgate.models import Follower, Membership, Organization, User, table_of

_ORGS = table_of(Organization)
_USERS = table_of(User)
_BATCH = 500  # addresses per IN (…) and rows per statement

T = TypeVar("T")


def sync_config(session: Session, config: Config, now: datetime) -> None:
    """Write what the config says into the session's transaction (idempotent)."""
    conn = session.connection()
    org_ids = _organizations(conn, config)
    agents = set(config.agents.addresses)
    emails = set(agents)
    for org in config.organizations:
        emails.update(org.members)
        emails.update(org.followers)
    users = _users(conn, sorted(emails), now)
    _agents(conn, agents, users)
    for model, attr in ((Membership, "members"), (Follower, "followers")):
        wanted = {
            (users[email], org_ids[org.name])
            for org in config.organizations
            for email in getattr(org, attr)
        }
        _links(conn, table_of(model), wanted)


def _organizations(conn: Connection, config: Config) -> dict[str, int]:
    """Every organization of the config, in its order, active; the others inactive."""
    existing = {
        name: (id_, active, position)
        for id_, name, active, position in conn.execute(
            select(_ORGS.c.id, _ORGS.c.name, _ORGS.c.active, _ORGS.c.position)
        )
    }
    new = [
        {"name": org.name, "active": True, "position": position}
        for position, org in enumerate(config.organizations)
        if org.name not in existing
    ]
    for batch in _batches(new):
        conn.execute(insert_for(conn)(_ORGS), list(batch))
    changed = [
        (existing[org.name][0], {"active": True, "position": position})
        for position, org in enumerate(config.organizations)
        if org.name in existing and existing[org.name][1:] != (True, position)
    ]
    wanted = {org.name for org in config.organizations}
    changed += [
        (id_, {"active": False, "position": position})
        for name, (id_, active, position) in existing.items()
        if name not in wanted and active  # keeps its tickets; no new routing into it
    ]
    update_each(conn, _ORGS, changed)
    if not new:
        return {name: existing[name][0] for name in wanted}
    return {
        name: id_ for name, id_ in conn.execute(select(_ORGS.c.name, _ORGS.c.id)) if name in wanted
    }


def _users(conn: Connection, emails: Sequence[str], now: datetime) -> dict[str, int]:
    """The user id of each address, creating the users that do not exist yet."""
    found: dict[str, int] = {}
    for batch in _batches(emails):
        found.update(conn.execute(select(_USERS.c.email, _USERS.c.id).where(_in(batch))).all())
    missing = [e for e in emails if e not in found]
    rows = [{"email": e, "name": "", "is_agent": False, "created_at": now} for e in missing]
    insert = insert_for(conn)(_USERS).on_conflict_do_nothing(index_elements=["email"])
    for chunk in _batches(rows):
        conn.execute(insert, list(chunk))
    for batch in _batches(missing):
        found.update(conn.execute(select(_USERS.c.email, _USERS.c.id).where(_in(batch))).all())
    return found


def _in(emails: Iterable[str]) -> Any:
    return _USERS.c.email.in_(list(emails))


def _agents(conn: Connection, agents: set[str], users: dict[str, int]) -> None:
    """Exactly the configured agents carry ``is_agent``."""
    flagged = set(conn.execute(select(_USERS.c.id).where(_USERS.c.is_agent.is_(True))).scalars())
    wanted = {users[email] for email in agents}
    for value, ids in ((False, flagged - wanted), (True, wanted - flagged)):
        for batch in _batches(sorted(ids)):
            conn.execute(update(_USERS).where(_USERS.c.id.in_(batch)).values(is_agent=value))


def _links(conn: Connection, table: Table, wanted: set[tuple[int, int]]) -> None:
    """Memberships or followers from the config: add the new, remove the gone ones."""
    existing: set[tuple[int, int]] = set(
        (user, org)
        for user, org in conn.execute(
            select(table.c.user_id, table.c.organization_id).where(table.c.source == "config")
        ).all()
    )
    gone = sorted(existing - wanted)
    keys = tuple_(table.c.user_id, table.c.organization_id)
    for pairs in _batches(gone):
        conn.execute(delete(table).where(table.c.source == "config", keys.in_(pairs)))
    new = [
        {"user_id": user, "organization_id": org, "source": "config"}
        for user, org in sorted(wanted - existing)
    ]
    # A link added by hand (another source) stays as it is.
    insert = insert_for(conn)(table).on_conflict_do_nothing(
        index_elements=["user_id", "organization_id"]
    )
    for chunk in _batches(new):
        conn.execute(insert, list(chunk))


def _batches(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), _BATCH):
        yield items[start : start + _BATCH]

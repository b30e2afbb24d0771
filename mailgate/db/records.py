"""The write helpers that ingest, the CLI and the jobs share.

Users by address, the reply-token secret, content stored once by its hash, large values
written into SQLite piece by piece (and read back: :func:`raw_mail`), and an admin's change
to a ticket. They run inside a transaction the caller opened with
:class:`mailgate.store.Store`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, select, text, update
from sqlalchemy.orm import Session

from mailgate.db.fastexec import Prebuilt, insert_for, insert_once
from mailgate.db.queries import find_organization
from mailgate.errors import NotFound, RawMailPurged, Refused, StoreUnavailable, TicketLocked
from mailgate.models import Blob, LedgerEntry, Meta, Status, Ticket, User, table_of

_USERS = table_of(User)


def update_each(
    conn: Connection, table: Table, changes: Iterable[tuple[int, dict[str, Any]]]
) -> None:
    """Each row's new values by its ``id``, as one executemany per set of columns: a
    statement built, compiled and run per row was most of the cost of a batch (outbox
    results, purged raw mail, organizations a config changed)."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row_id, values in changes:
        groups.setdefault(tuple(sorted(values)), []).append({"row_id": row_id, **values})
    for params in groups.values():  # the SET clause is the parameters' other keys
        conn.execute(update(table).where(table.c.id == bindparam("row_id")), params)


def user_id(conn: Connection, email: str, name: str, now: datetime) -> int:
    """The id of the user with this address, created if new; safe against a concurrent insert.

    Core statements on the connection: every inbound mail calls this, and the ORM's
    per-statement overhead was most of a mail's CPU. A name learnt later fills an empty one.
    """
    email = email.lower()
    row = _USER_BY_EMAIL.run(conn, {"address": email}).first()
    if row is None:
        values = {"email": email, "name": name, "is_agent": False, "created_at": now}
        insert_once(conn, _USERS, "email").run(conn, values)
        row = _USER_BY_EMAIL.run(conn, {"address": email}).first()
        assert row is not None
    elif name and not row.name:
        _SET_USER_NAME.run(conn, {"user": row.id, "name": name})
    found: int = row.id
    return found


_USER_BY_EMAIL = Prebuilt(
    select(_USERS.c.id, _USERS.c.name).where(_USERS.c.email == bindparam("address")),
    "records.user_by_email",
)
_SET_USER_NAME = Prebuilt(
    update(_USERS).where(_USERS.c.id == bindparam("user")), "records.set_user_name"
)
_BLOBS = table_of(Blob)


def ensure_user(session: Session, email: str, name: str, now: datetime) -> User:
    """The user with this address as an ORM object, created if new (see :func:`user_id`)."""
    user = session.get(User, user_id(session.connection(), email, name, now))
    assert user is not None
    return user


def ensure_secret(session: Session) -> str:
    """The reply-token key kept in the database, generated once for all instances."""
    row = session.get(Meta, "secret")
    if row is None:
        stmt = insert_for(session)(Meta).values(key="secret", value=secrets.token_hex(32))
        session.execute(stmt.on_conflict_do_nothing(index_elements=["key"]))
        row = session.get(Meta, "secret")
        assert row is not None
    return row.value


def ensure_blob(db: Session | Connection, data: bytes, digest: str | None = None) -> str:
    """Store content once by its SHA-256 (given, or computed here) and return the hash."""
    conn = db if isinstance(db, Connection) else db.connection()
    digest = digest or hashlib.sha256(data).hexdigest()
    large = is_large(conn, data)
    values = {"sha256": digest, "size": len(data), "data": b"" if large else data}
    inserted = insert_once(conn, _BLOBS, "sha256").run(conn, values).rowcount
    if large and inserted:
        rowid = conn.execute(text("SELECT rowid FROM blobs WHERE sha256 = :d"), {"d": digest})
        write_large(conn, "blobs", "data", rowid.scalar_one(), data)
    return digest


def blob_data(db: Session | Connection, sha256: str) -> bytes:
    """A stored file's content by its SHA-256."""
    conn = db if isinstance(db, Connection) else db.connection()
    data = conn.execute(select(Blob.data).where(Blob.sha256 == sha256)).scalar()
    if data is None:
        raise NotFound(f"the content {sha256} is missing")
    return bytes(data)


def raw_mail(db: Session | Connection, row: LedgerEntry) -> bytes:
    """A ledger entry's raw mail.

    A large one (SQLite, see :func:`is_large`) lives in ``blobs`` under its SHA-256, with
    an empty ``raw``. There the content is the last column of its row: SQLite fills such a
    zeroblob piece by piece. In ``inbound_messages`` it is not last, and SQLite would hold
    the whole zeroblob, twice over, to write it (2x a 25 MB mail, measured). Entries
    written before keep their mail in ``raw``. An entry ``[retention]`` purged has only its
    headers left: :class:`RawMailPurged`, never those headers as if they were the mail.
    """
    if row.purged_at is not None:
        raise RawMailPurged(
            f"mail {row.id}: its raw mail was purged on {row.purged_at:%Y-%m-%d} by "
            "[retention]; the ledger keeps only its outcome, digest and headers"
        )
    if row.raw or not row.size:
        return row.raw
    conn = db if isinstance(db, Connection) else db.connection()
    data = conn.execute(select(Blob.data).where(Blob.sha256 == row.sha256)).scalar()
    if data is None:
        raise StoreUnavailable(f"the raw mail of ledger entry {row.id} is missing")
    return bytes(data)


# Values larger than this go into SQLite piece by piece (incremental BLOB I/O): binding a
# value makes SQLite copy it, and building the row copies it again, so a 25 MB mail cost
# twice its size in memory just to be inserted (measured with bench/memory.py).
_LARGE_VALUE = 1 << 20


def is_large(conn: Connection, data: bytes) -> bool:
    """Whether ``data`` is written with :func:`write_large` (SQLite only) after its row."""
    return conn.dialect.name == "sqlite" and len(data) > _LARGE_VALUE


def write_large(conn: Connection, table: str, column: str, rowid: int, data: bytes) -> None:
    """Fill a row's column with ``data`` through a zeroblob, a megabyte at a time."""
    conn.execute(
        text(f"UPDATE {table} SET {column} = zeroblob(:size) WHERE rowid = :rowid"),
        {"size": len(data), "rowid": rowid},
    )
    view = memoryview(data)
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    with dbapi.blobopen(table, column, rowid) as blob:
        for start in range(0, len(data), _LARGE_VALUE):
            blob.write(view[start : start + _LARGE_VALUE])


def update_ticket(
    session: Session,
    ticket: Ticket,
    now: datetime,
    status: str | None = None,
    organization: str | None = None,
    requester: str | None = None,
) -> None:
    """Apply an admin's change, enforcing that a closed ticket's requester and org are fixed."""
    if ticket.status == Status.CLOSED:
        if organization is not None or requester is not None:
            raise TicketLocked(
                f"ticket {ticket.id} is closed: its requester and organization can no longer change"
            )
        if status is not None and status != Status.CLOSED:
            raise Refused(
                f"ticket {ticket.id} is closed and cannot be reopened; a reply creates a "
                "follow-up ticket"
            )
    if organization is not None:
        org = find_organization(session, organization)
        ticket.organization = org
        ticket.routing_reason = f"set by admin to {org.name}"
        ticket.routing_score = None
    if requester is not None:
        ticket.requester = ensure_user(session, requester, "", now)
    if status is not None and status != ticket.status:
        ticket.status = status
        if status == Status.SOLVED:
            ticket.solved_at = now
        elif status == Status.CLOSED:
            ticket.closed_at = now
            ticket.solved_at = ticket.solved_at or now
        else:
            ticket.solved_at = None
    ticket.updated_at = now

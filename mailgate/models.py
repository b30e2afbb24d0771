"""The ORM's view of the schema: classes mapped onto :mod:`mailgate.schema`'s tables.

The tables, their columns and indexes are defined once, as Core tables, in
:mod:`mailgate.schema`; here each class names its table and the relationships the ingest
pipeline and the jobs navigate. The annotations type the mapped columns for mypy.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import DeclarativeBase, Mapped, relationship

from mailgate import schema
from mailgate.schema import (  # noqa: F401  (the enums and types, where they were always imported)
    AuthorKind,
    NotificationKind,
    OutboxStatus,
    Outcome,
    Status,
    UTCDateTime,
)


class Base(DeclarativeBase):
    metadata = schema.metadata


def table_of(model: type[Base]) -> Table:
    """A model's table, for Core statements (the ORM types it as any FromClause)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


class Meta(Base):
    """Small key/value facts about the database itself (e.g. the synced config's hash)."""

    __table__ = schema.meta
    key: Mapped[str]
    value: Mapped[str]


class Organization(Base):
    __table__ = schema.organizations
    id: Mapped[int]
    name: Mapped[str]
    # Organizations removed from the config keep their tickets; they are only deactivated.
    active: Mapped[bool]
    position: Mapped[int]


class User(Base):
    __table__ = schema.users
    id: Mapped[int]
    email: Mapped[str]
    name: Mapped[str]
    is_agent: Mapped[bool]
    created_at: Mapped[datetime]


class Membership(Base):
    """A user belongs to an organization; a user may belong to several."""

    __table__ = schema.memberships
    user_id: Mapped[int]
    organization_id: Mapped[int]
    source: Mapped[str]


class Follower(Base):
    """A user who is told of every new ticket in an organization."""

    __table__ = schema.followers
    user_id: Mapped[int]
    organization_id: Mapped[int]
    source: Mapped[str]


class Ticket(Base):
    __table__ = schema.tickets

    id: Mapped[int]
    subject: Mapped[str]
    status: Mapped[str]
    organization_id: Mapped[int | None]
    requester_id: Mapped[int]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    solved_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    follow_up_of: Mapped[int | None]
    routing_reason: Mapped[str]
    routing_score: Mapped[float | None]
    priority: Mapped[str]
    tags: Mapped[list[str]]
    # The agent who handles it: customer replies go to them, not to the whole team.
    assignee_id: Mapped[int | None]

    organization: Mapped[Organization | None] = relationship()
    requester: Mapped[User] = relationship(foreign_keys=[schema.tickets.c.requester_id])
    assignee: Mapped[User | None] = relationship(foreign_keys=[schema.tickets.c.assignee_id])
    comments: Mapped[list[Comment]] = relationship(
        back_populates="ticket", order_by="Comment.id", cascade="all, delete-orphan"
    )
    participants: Mapped[list[Participant]] = relationship(
        order_by="Participant.user_id", cascade="all, delete-orphan"
    )


class Participant(Base):
    """Someone copied on a ticket (To/Cc) who receives its public updates."""

    __table__ = schema.participants
    ticket_id: Mapped[int]
    user_id: Mapped[int]
    # False once a move to another organization left them outside it: kept in the history,
    # sent nothing more (an agent's ``#cc add`` makes them active again).
    active: Mapped[bool]
    user: Mapped[User] = relationship()


class LedgerEntry(Base):
    """The raw mail exactly as received: the ledger entry we answered 250 for."""

    __table__ = schema.inbound_messages
    id: Mapped[int]
    # Not unique on its own: some mailers reuse Message-IDs for different mails, and those
    # must not be dropped as duplicates. Redeliveries are recognised by ``dedup_key``.
    message_id: Mapped[str]
    dedup_key: Mapped[str]
    mail_from: Mapped[str]
    rcpt_to: Mapped[list[str]]
    raw: Mapped[bytes]
    size: Mapped[int]
    sha256: Mapped[str]
    received_at: Mapped[datetime]
    outcome: Mapped[str]
    reason: Mapped[str]
    error: Mapped[str | None]
    ticket_id: Mapped[int | None]
    dkim: Mapped[str | None]
    # Set when [retention] took the raw mail: ``raw`` keeps only its headers from then on.
    purged_at: Mapped[datetime | None]


class Comment(Base):
    __table__ = schema.comments
    id: Mapped[int]
    ticket_id: Mapped[int]
    author_id: Mapped[int]
    body: Mapped[str]
    public: Mapped[bool]
    # Who wrote it and how we know (issue: a forged From never speaks for the team).
    author_kind: Mapped[str]
    authentication: Mapped[str | None]
    message_id: Mapped[str | None]
    inbound_message_id: Mapped[int | None]
    created_at: Mapped[datetime]

    ticket: Mapped[Ticket] = relationship(back_populates="comments")
    author: Mapped[User] = relationship()
    attachments: Mapped[list[Attachment]] = relationship(
        order_by="Attachment.id", cascade="all, delete-orphan"
    )


class Blob(Base):
    """Attachment content, stored once however many mails carry it."""

    __table__ = schema.blobs
    sha256: Mapped[str]
    size: Mapped[int]
    data: Mapped[bytes]


class Attachment(Base):
    __table__ = schema.attachments
    id: Mapped[int]
    comment_id: Mapped[int]
    filename: Mapped[str]
    content_type: Mapped[str]
    content_id: Mapped[str | None]
    size: Mapped[int]
    sha256: Mapped[str]


class Outbox(Base):
    """A notification waiting to be delivered, written in the transaction of its cause."""

    __table__ = schema.outbox

    id: Mapped[int]
    kind: Mapped[str]
    ticket_id: Mapped[int | None]
    recipients: Mapped[list[str]]
    subject: Mapped[str]
    message_id: Mapped[str | None]
    message: Mapped[bytes | None]
    # Its length, kept beside it: what [retention] would free is summed from an index.
    message_size: Mapped[int | None]
    # What the renderer needs beyond the ticket: the comment to send, an error to explain.
    payload: Mapped[dict[str, Any]]
    status: Mapped[str]
    attempts: Mapped[int]
    last_error: Mapped[str | None]
    created_at: Mapped[datetime]
    next_attempt_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    # Set when an instance takes the row to send it; a stale claim (crash) is taken again.
    claimed_at: Mapped[datetime | None]


class Suppression(Base):
    """An address that hard-bounced: no notifications to it until ``until``."""

    __table__ = schema.suppressions
    email: Mapped[str]
    until: Mapped[datetime]
    reason: Mapped[str]


class Secret(Base):
    """A credential found in a mail, encrypted (``[secrets] vault``): shown once, then gone.

    The comment says ``[secret N]`` where the value stood. ``ciphertext`` is AES-GCM with the
    key of ``[secrets] key`` (never stored here), bound to this row's id and ticket; it is
    emptied by the one reveal, and by ``mailgate secrets purge`` once expired.
    """

    __table__ = schema.secrets
    id: Mapped[int]
    ticket_id: Mapped[int]
    comment_id: Mapped[int]
    number: Mapped[int]
    ciphertext: Mapped[bytes | None]
    nonce: Mapped[bytes | None]
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revealed_at: Mapped[datetime | None]
    revealed_by: Mapped[str | None]


class SecretLink(Base):
    """One agent's one-time link to a secret: only the SHA-256 of its token is kept.

    Made when the agent's notification is written, one per secret and recipient, so a
    reveal says who it was; the first reveal through any link uses the secret up.
    """

    __table__ = schema.secret_links
    id: Mapped[int]
    secret_id: Mapped[int]
    recipient: Mapped[str]
    token_hash: Mapped[str]
    created_at: Mapped[datetime]

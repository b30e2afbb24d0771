"""SQLAlchemy 2.x typed models: the one schema for SQLite and PostgreSQL.

The schema itself is created by the Alembic migrations in ``mailgate/migrations``; these
classes must stay in step with them (``tests/test_store.py`` checks that they do).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no offset, so we store naive UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("mailgate stores aware datetimes only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


class Status(enum.StrEnum):
    """A ticket's life: new → open ⇄ pending → solved → closed (locked)."""

    NEW = "new"
    OPEN = "open"
    PENDING = "pending"
    SOLVED = "solved"
    CLOSED = "closed"


class Outcome(enum.StrEnum):
    """What became of one inbound message that we answered 250 for (the ingest ledger)."""

    CREATED = "created"
    COMMENTED = "commented"
    IGNORED = "ignored"
    QUARANTINED = "quarantined"


class OutboxStatus(enum.StrEnum):
    """Where a notification in the outbox stands (the column ``outbox.status``)."""

    PENDING = "pending"  # written with its cause, not tried yet
    SENDING = "sending"  # claimed by a delivery run; a stale claim is taken again
    RETRY = "retry"  # a transient failure: tried again at ``next_attempt_at``
    SENT = "sent"
    FAILED = "failed"  # given up: a permanent failure, too old, or it could not be rendered
    BOUNCED = "bounced"  # sent, and a bounce for it came back


class NotificationKind(enum.StrEnum):
    """What a notification is about (the column ``outbox.kind``, one template each)."""

    TICKET_CREATED = "ticket_created"  # to the requester: we have it, here is its number
    NEW_TICKET_FOLLOWER = "new_ticket_follower"  # to each follower of the organization
    AGENT_REPLY = "agent_reply"  # an agent's answer, to requester and participants
    CUSTOMER_REPLY = "customer_reply"  # a customer's reply, to the agents
    TICKET_CLOSED = "ticket_closed"  # to the requester, when a solved ticket is closed
    COMMAND_ERROR = "command_error"  # to the agent whose email command was refused
    SECRET_WARNING = "secret_warning"  # to a sender who pasted credentials
    AGENT_UNVERIFIED = "agent_unverified"  # to an agent address whose mail was not authenticated
    TICKET_MOVED = "ticket_moved"  # to the new organization's followers after a move
    AGENT_NEW_TICKET = "agent_new_ticket"  # to each of [agents] notify: a new ticket or follow-up
    EMERGENCY = "emergency"  # to each of [support] emergency_notify, outside support hours
    TICKET_ASSIGNED = "ticket_assigned"  # to an agent someone else made a ticket's assignee
    AGENT_DIGEST = "agent_digest"  # each working morning: what waits on the team ([agents] digest)


class AuthorKind(enum.StrEnum):
    """Who wrote a comment, as far as mailgate can tell (``comments.author_kind``)."""

    CUSTOMER = "customer"
    AGENT = "agent"  # an agent address, and the mail authenticated for its domain
    UNVERIFIED_AGENT = "unverified_agent"  # an agent's From, not authenticated: kept internal
    SYSTEM = "system"  # written by mailgate itself: bounce notes, moves


class Base(DeclarativeBase):
    pass


def table_of(model: type[Base]) -> Table:
    """A model's table, for Core statements (the ORM types it as any FromClause)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


class Meta(Base):
    """Small key/value facts about the database itself (e.g. the synced config's hash)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Organization(Base):
    __tablename__ = "organizations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Organizations removed from the config keep their tickets; they are only deactivated.
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    position: Mapped[int] = mapped_column(Integer, default=0)  # order in the config file


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    is_agent: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Membership(Base):
    """A user belongs to an organization; a user may belong to several."""

    __tablename__ = "memberships"
    __table_args__ = (Index("ix_memberships_organization", "organization_id"),)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    source: Mapped[str] = mapped_column(String(20), default="config")


class Follower(Base):
    """A user who is told of every new ticket in an organization."""

    __tablename__ = "followers"
    __table_args__ = (Index("ix_followers_organization", "organization_id"),)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    source: Mapped[str] = mapped_column(String(20), default="config")


class Ticket(Base):
    __tablename__ = "tickets"
    __table_args__ = (
        Index("ix_tickets_org_status", "organization_id", "status"),
        Index("ix_tickets_requester_created", "requester_id", "created_at"),
        Index("ix_tickets_assignee_status", "assignee_id", "status"),
        # Auto-close, --status and the digest's waiting lists; --since/--until.
        Index("ix_tickets_status_solved", "status", "solved_at"),
        Index("ix_tickets_created", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=Status.NEW.value)
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id"))
    requester_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    solved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    follow_up_of: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    routing_reason: Mapped[str] = mapped_column(Text, default="")
    routing_score: Mapped[float | None] = mapped_column(Float)
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The agent who handles it: customer replies go to them, not to the whole team.
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))

    organization: Mapped[Organization | None] = relationship()
    requester: Mapped[User] = relationship(foreign_keys=[requester_id])
    assignee: Mapped[User | None] = relationship(foreign_keys=[assignee_id])
    comments: Mapped[list[Comment]] = relationship(
        back_populates="ticket", order_by="Comment.id", cascade="all, delete-orphan"
    )
    participants: Mapped[list[Participant]] = relationship(
        order_by="Participant.user_id", cascade="all, delete-orphan"
    )


class Participant(Base):
    """Someone copied on a ticket (To/Cc) who receives its public updates."""

    __tablename__ = "participants"
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    # False once a move to another organization left them outside it: kept in the history,
    # sent nothing more (an agent's ``#cc add`` makes them active again).
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    user: Mapped[User] = relationship()


class LedgerEntry(Base):
    """The raw mail exactly as received: the ledger entry we answered 250 for."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        # What still has raw mail to purge ([retention]), by outcome and age.
        Index(
            "ix_inbound_unpurged",
            "outcome",
            "received_at",
            "size",  # what a purge frees, summed from the index alone
            sqlite_where=text("purged_at IS NULL"),
            postgresql_where=text("purged_at IS NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Not unique on its own: some mailers reuse Message-IDs for different mails, and those
    # must not be dropped as duplicates. Redeliveries are recognised by ``dedup_key``.
    message_id: Mapped[str] = mapped_column(String(255), index=True)
    dedup_key: Mapped[str] = mapped_column(String(64), unique=True)
    mail_from: Mapped[str] = mapped_column(String(320), default="")
    rcpt_to: Mapped[list[str]] = mapped_column(JSON, default=list)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    dkim: Mapped[str | None] = mapped_column(String(300))  # "pass d=…", "fail", "none"
    # Set when [retention] took the raw mail: ``raw`` keeps only its headers from then on.
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Comment(Base):
    __tablename__ = "comments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    body: Mapped[str] = mapped_column(Text)
    public: Mapped[bool] = mapped_column(Boolean, default=True)
    # Who wrote it and how we know (issue: a forged From never speaks for the team).
    author_kind: Mapped[str] = mapped_column(String(20), default="customer")
    authentication: Mapped[str | None] = mapped_column(String(300))  # the verdict that counted
    message_id: Mapped[str | None] = mapped_column(String(255), index=True)
    inbound_message_id: Mapped[int | None] = mapped_column(ForeignKey("inbound_messages.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    ticket: Mapped[Ticket] = relationship(back_populates="comments")
    author: Mapped[User] = relationship()
    attachments: Mapped[list[Attachment]] = relationship(
        order_by="Attachment.id", cascade="all, delete-orphan"
    )


class Blob(Base):
    """Attachment content, stored once however many mails carry it."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Attachment(Base):
    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    comment_id: Mapped[int] = mapped_column(ForeignKey("comments.id"), index=True)
    filename: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(255))
    content_id: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))


class Outbox(Base):
    """A notification waiting to be delivered, written in the transaction of its cause."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_status_due", "status", "next_attempt_at"),
        Index("ix_outbox_created", "created_at"),  # outbox list --since/--until
        Index("ix_outbox_status_id", "status", "id"),  # outbox list --status, newest first
        # Sent rows that still hold their message ([retention] sent_notifications).
        Index(
            "ix_outbox_sent_message",
            "sent_at",
            "message_size",
            sqlite_where=text("message IS NOT NULL"),
            postgresql_where=text("message IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    ticket_id: Mapped[int | None] = mapped_column(ForeignKey("tickets.id"))
    recipients: Mapped[list[str]] = mapped_column(JSON, default=list)
    subject: Mapped[str] = mapped_column(Text, default="")
    message_id: Mapped[str | None] = mapped_column(String(255), index=True)
    message: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Its length, kept beside it: what [retention] would free is summed from an index.
    message_size: Mapped[int | None] = mapped_column(Integer)
    # What the renderer needs beyond the ticket: the comment to send, an error to explain.
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=OutboxStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set when an instance takes the row to send it; a stale claim (crash) is taken again.
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Suppression(Base):
    """An address that hard-bounced: no notifications to it until ``until``."""

    __tablename__ = "suppressions"
    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    until: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text, default="")


class Secret(Base):
    """A credential found in a mail, encrypted (``[secrets] vault``): shown once, then gone.

    The comment says ``[secret N]`` where the value stood. ``ciphertext`` is AES-GCM with the
    key of ``[secrets] key`` (never stored here), bound to this row's id and ticket; it is
    emptied by the one reveal, and by ``mailgate secrets purge`` once expired.
    """

    __tablename__ = "secrets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id"), index=True)
    comment_id: Mapped[int] = mapped_column(ForeignKey("comments.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # the N of "[secret N]" in the comment
    ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    nonce: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    revealed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revealed_by: Mapped[str | None] = mapped_column(String(320))


class SecretLink(Base):
    """One agent's one-time link to a secret: only the SHA-256 of its token is kept.

    Made when the agent's notification is written, one per secret and recipient, so a
    reveal says who it was; the first reveal through any link uses the secret up.
    """

    __tablename__ = "secret_links"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    secret_id: Mapped[int] = mapped_column(ForeignKey("secrets.id"), index=True)
    recipient: Mapped[str] = mapped_column(String(320))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

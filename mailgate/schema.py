"""The one schema for SQLite and PostgreSQL, as SQLAlchemy Core tables.

The schema itself is created by the Alembic migrations in ``mailgate/migrations``; these
tables must stay in step with them (``tests/test_store.py`` checks that they do). The ORM
classes in :mod:`mailgate.models` map onto these tables. Why Core, apart from the ORM: a
command that only reads (``tickets show``) needs no ORM, whose import alone took longer
than the whole command may (issue #21: 0.3 s).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect


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


metadata = MetaData()


def _not_null(name: str, *args: Any, **kwargs: Any) -> Column[Any]:
    return Column(name, *args, nullable=False, **kwargs)


meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    _not_null("value", Text),
)

organizations = Table(
    "organizations",
    metadata,
    Column("id", Integer, primary_key=True),
    _not_null("name", String(200), unique=True),
    # Organizations removed from the config keep their tickets; they are only deactivated.
    _not_null("active", Boolean, default=True),
    _not_null("position", Integer, default=0),  # order in the config file
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    _not_null("email", String(320), unique=True),
    _not_null("name", String(200), default=""),
    _not_null("is_agent", Boolean, default=False),
    _not_null("created_at", UTCDateTime),
)

# A user belongs to an organization; a user may belong to several.
memberships = Table(
    "memberships",
    metadata,
    Column("user_id", ForeignKey("users.id"), primary_key=True),
    Column("organization_id", ForeignKey("organizations.id"), primary_key=True),
    _not_null("source", String(20), default="config"),
    Index("ix_memberships_organization", "organization_id"),
)

# A user who is told of every new ticket in an organization.
followers = Table(
    "followers",
    metadata,
    Column("user_id", ForeignKey("users.id"), primary_key=True),
    Column("organization_id", ForeignKey("organizations.id"), primary_key=True),
    _not_null("source", String(20), default="config"),
    Index("ix_followers_organization", "organization_id"),
)

tickets = Table(
    "tickets",
    metadata,
    Column("id", Integer, primary_key=True),
    _not_null("subject", Text),
    _not_null("status", String(16), default=Status.NEW.value),
    Column("organization_id", ForeignKey("organizations.id")),
    _not_null("requester_id", ForeignKey("users.id")),
    _not_null("created_at", UTCDateTime),
    _not_null("updated_at", UTCDateTime),
    Column("solved_at", UTCDateTime),
    Column("closed_at", UTCDateTime),
    Column("follow_up_of", ForeignKey("tickets.id")),
    _not_null("routing_reason", Text, default=""),
    Column("routing_score", Float),
    _not_null("priority", String(16), default="normal"),
    _not_null("tags", JSON, default=list),
    # The agent who handles it: customer replies go to them, not to the whole team.
    Column("assignee_id", ForeignKey("users.id")),
    Index("ix_tickets_org_status", "organization_id", "status"),
    Index("ix_tickets_requester_created", "requester_id", "created_at"),
    Index("ix_tickets_assignee_status", "assignee_id", "status"),
    # Auto-close, --status and the digest's waiting lists; --since/--until.
    Index("ix_tickets_status_solved", "status", "solved_at"),
    Index("ix_tickets_created", "created_at"),
)

# Someone copied on a ticket (To/Cc) who receives its public updates.
participants = Table(
    "participants",
    metadata,
    Column("ticket_id", ForeignKey("tickets.id"), primary_key=True),
    Column("user_id", ForeignKey("users.id"), primary_key=True),
    # False once a move to another organization left them outside it: kept in the history,
    # sent nothing more (an agent's ``#cc add`` makes them active again).
    _not_null("active", Boolean, default=True),
)

# The raw mail exactly as received: the ledger entry we answered 250 for.
inbound_messages = Table(
    "inbound_messages",
    metadata,
    Column("id", Integer, primary_key=True),
    # Not unique on its own: some mailers reuse Message-IDs for different mails, and those
    # must not be dropped as duplicates. Redeliveries are recognised by ``dedup_key``.
    _not_null("message_id", String(255), index=True),
    _not_null("dedup_key", String(64), unique=True),
    _not_null("mail_from", String(320), default=""),
    _not_null("rcpt_to", JSON, default=list),
    _not_null("raw", LargeBinary),
    _not_null("size", Integer),
    _not_null("sha256", String(64)),
    _not_null("received_at", UTCDateTime),
    _not_null("outcome", String(16), index=True),
    _not_null("reason", Text, default=""),
    Column("error", Text),
    Column("ticket_id", ForeignKey("tickets.id")),
    Column("dkim", String(300)),  # "pass d=…", "fail", "none"
    # Set when [retention] took the raw mail: ``raw`` keeps only its headers from then on.
    Column("purged_at", UTCDateTime),
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

comments = Table(
    "comments",
    metadata,
    Column("id", Integer, primary_key=True),
    _not_null("ticket_id", ForeignKey("tickets.id"), index=True),
    _not_null("author_id", ForeignKey("users.id")),
    _not_null("body", Text),
    _not_null("public", Boolean, default=True),
    # Who wrote it and how we know (issue: a forged From never speaks for the team).
    _not_null("author_kind", String(20), default="customer"),
    Column("authentication", String(300)),  # the verdict that counted
    Column("message_id", String(255), index=True),
    Column("inbound_message_id", ForeignKey("inbound_messages.id")),
    _not_null("created_at", UTCDateTime),
)

# Attachment content, stored once however many mails carry it.
blobs = Table(
    "blobs",
    metadata,
    Column("sha256", String(64), primary_key=True),
    _not_null("size", Integer),
    _not_null("data", LargeBinary),
)

attachments = Table(
    "attachments",
    metadata,
    Column("id", Integer, primary_key=True),
    _not_null("comment_id", ForeignKey("comments.id"), index=True),
    _not_null("filename", Text),
    _not_null("content_type", String(255)),
    Column("content_id", Text),
    _not_null("size", Integer),
    _not_null("sha256", ForeignKey("blobs.sha256")),
)

# A notification waiting to be delivered, written in the transaction of its cause.
outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True),
    _not_null("kind", String(40)),
    Column("ticket_id", ForeignKey("tickets.id")),
    _not_null("recipients", JSON, default=list),
    _not_null("subject", Text, default=""),
    Column("message_id", String(255), index=True),
    Column("message", LargeBinary),
    # Its length, kept beside it: what [retention] would free is summed from an index.
    Column("message_size", Integer),
    # What the renderer needs beyond the ticket: the comment to send, an error to explain.
    _not_null("payload", JSON, default=dict),
    _not_null("status", String(16), default=OutboxStatus.PENDING.value),
    _not_null("attempts", Integer, default=0),
    Column("last_error", Text),
    _not_null("created_at", UTCDateTime),
    Column("next_attempt_at", UTCDateTime),
    Column("sent_at", UTCDateTime),
    # Set when an instance takes the row to send it; a stale claim (crash) is taken again.
    Column("claimed_at", UTCDateTime),
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

# An address that hard-bounced: no notifications to it until ``until``.
suppressions = Table(
    "suppressions",
    metadata,
    Column("email", String(320), primary_key=True),
    _not_null("until", UTCDateTime),
    _not_null("reason", Text, default=""),
)

# A credential found in a mail, encrypted ([secrets] vault): see mailgate.models.Secret.
secrets = Table(
    "secrets",
    metadata,
    Column("id", Integer, primary_key=True),
    _not_null("ticket_id", ForeignKey("tickets.id"), index=True),
    _not_null("comment_id", ForeignKey("comments.id"), index=True),
    _not_null("number", Integer),  # the N of "[secret N]" in the comment
    Column("ciphertext", LargeBinary),
    Column("nonce", LargeBinary),
    _not_null("created_at", UTCDateTime),
    _not_null("expires_at", UTCDateTime, index=True),
    Column("revealed_at", UTCDateTime),
    Column("revealed_by", String(320)),
)

# One agent's one-time link to a secret: see mailgate.models.SecretLink.
secret_links = Table(
    "secret_links",
    metadata,
    Column("id", Integer, primary_key=True),
    _not_null("secret_id", ForeignKey("secrets.id"), index=True),
    _not_null("recipient", String(320)),
    _not_null("token_hash", String(64), unique=True),
    _not_null("created_at", UTCDateTime),
)

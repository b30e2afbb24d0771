"""Retention: a ledger entry whose raw mail was purged says when, and the purge's queries
find what is due by index.

``purged_at`` marks an entry that keeps its outcome, digest and headers but no longer its
raw mail (``[retention] raw_mail``, ``quarantine``). The two partial indexes hold only what
still has bytes to free, so the purge and ``stats`` read just the due rows however many
were purged before.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import mailgate.models

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("purged_at", mailgate.models.UTCDateTime(), nullable=True))
    unpurged = sa.text("purged_at IS NULL")
    op.create_index(
        "ix_inbound_unpurged",
        "inbound_messages",
        ["outcome", "received_at"],
        sqlite_where=unpurged,
        postgresql_where=unpurged,
    )
    built = sa.text("message IS NOT NULL")
    op.create_index(
        "ix_outbox_sent_message",
        "outbox",
        ["sent_at"],
        sqlite_where=built,
        postgresql_where=built,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_sent_message", table_name="outbox")
    op.drop_index("ix_inbound_unpurged", table_name="inbound_messages")
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_column("purged_at")

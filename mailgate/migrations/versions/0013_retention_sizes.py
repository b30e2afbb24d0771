"""Retention: what a purge would free, read from indexes alone.

``stats`` says how many bytes ``[retention]`` would free now. Summing the length of each
stored message (or the size of each raw mail) made the database read every due row: 11
seconds at a million tickets, in a transaction. A sent row's message size is now kept
beside it, and both partial indexes carry the size, so the sums are index-only scans.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("message_size", sa.Integer(), nullable=True))
    op.execute("UPDATE outbox SET message_size = length(message) WHERE message IS NOT NULL")
    built, unpurged = sa.text("message IS NOT NULL"), sa.text("purged_at IS NULL")
    op.drop_index("ix_outbox_sent_message", table_name="outbox")
    op.create_index(
        "ix_outbox_sent_message",
        "outbox",
        ["sent_at", "message_size"],
        sqlite_where=built,
        postgresql_where=built,
    )
    op.drop_index("ix_inbound_unpurged", table_name="inbound_messages")
    op.create_index(
        "ix_inbound_unpurged",
        "inbound_messages",
        ["outcome", "received_at", "size"],
        sqlite_where=unpurged,
        postgresql_where=unpurged,
    )


def downgrade() -> None:
    built, unpurged = sa.text("message IS NOT NULL"), sa.text("purged_at IS NULL")
    op.drop_index("ix_inbound_unpurged", table_name="inbound_messages")
    op.create_index(
        "ix_inbound_unpurged",
        "inbound_messages",
        ["outcome", "received_at"],
        sqlite_where=unpurged,
        postgresql_where=unpurged,
    )
    op.drop_index("ix_outbox_sent_message", table_name="outbox")
    op.create_index(
        "ix_outbox_sent_message", "outbox", ["sent_at"], sqlite_where=built, postgresql_where=built
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("message_size")

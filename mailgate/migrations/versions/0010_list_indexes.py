"""Indexes for the lists and jobs, so that none reads a whole table as the database grows.

Auto-close (``status = 'solved' AND solved_at <= …``), ``tickets list --status`` and the
digest's "waiting" lists (``status IN ('new', 'open')``) start from
``ix_tickets_status_solved``; ``--since``/``--until`` of ``tickets list`` and ``outbox
list`` from the creation times. ``outbox list --status sent`` pages through
``ix_outbox_status_id`` in id order: through ``ix_outbox_status_due`` it sorted every sent
row first (0.5 s at 200,000 rows on SQLite, growing with the table). ``tests/test_query_plans.py`` asks both databases for the
plan of every list and job query and fails on a full scan.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tickets_status_solved", "tickets", ["status", "solved_at"])
    op.create_index("ix_tickets_created", "tickets", ["created_at"])
    op.create_index("ix_outbox_created", "outbox", ["created_at"])
    op.create_index("ix_outbox_status_id", "outbox", ["status", "id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_status_id", table_name="outbox")
    op.drop_index("ix_outbox_created", table_name="outbox")
    op.drop_index("ix_tickets_created", table_name="tickets")
    op.drop_index("ix_tickets_status_solved", table_name="tickets")

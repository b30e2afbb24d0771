"""Indexes for the look-ups every inbound mail makes.

The rate limit counts a sender's tickets of the last hour, and every new ticket asks for
its organization's members and followers. Without these indexes each of those scanned a
whole table, so storing a mail got slower the more tickets there were.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tickets_requester_created", "tickets", ["requester_id", "created_at"])
    op.create_index("ix_memberships_organization", "memberships", ["organization_id"])
    op.create_index("ix_followers_organization", "followers", ["organization_id"])


def downgrade() -> None:
    op.drop_index("ix_followers_organization", table_name="followers")
    op.drop_index("ix_memberships_organization", table_name="memberships")
    op.drop_index("ix_tickets_requester_created", table_name="tickets")

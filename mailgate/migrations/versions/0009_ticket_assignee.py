"""Who handles a ticket: its assignee, one of the agents, or nobody yet.

Customer replies go to the assignee instead of the whole team, and ``tickets list
--assignee`` lists an agent's work; the index serves that list and "unassigned, open".

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("assignee_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_tickets_assignee_id_users", "users", ["assignee_id"], ["id"]
        )
    op.create_index("ix_tickets_assignee_status", "tickets", ["assignee_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_tickets_assignee_status", table_name="tickets")
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_constraint("fk_tickets_assignee_id_users", type_="foreignkey")
        batch_op.drop_column("assignee_id")

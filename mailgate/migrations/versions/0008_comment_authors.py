"""Who wrote each comment and how we know; participants a move has left behind.

A forged From of an agent must never speak for the support team, so every comment records
the kind of its author (customer, agent, unverified agent, system) and the authentication
verdict that counted. A participant stays in a ticket's history when the ticket moves to
another organization, but stops receiving its mail: ``active`` says which.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("comments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "author_kind", sa.String(length=20), nullable=False, server_default="customer"
            )
        )
        batch_op.add_column(sa.Column("authentication", sa.String(length=300), nullable=True))
    # Comments written before: an agent's address made it an agent's; the support address
    # (bounce notes) made it the system's. Authentication was never recorded: null.
    op.execute(
        "UPDATE comments SET author_kind = 'agent' WHERE author_id IN "
        "(SELECT id FROM users WHERE is_agent = true)"
    )
    op.execute(
        "UPDATE comments SET author_kind = 'system' WHERE author_id IN "
        "(SELECT id FROM users WHERE name = 'mailgate')"
    )
    with op.batch_alter_table("participants", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("participants", schema=None) as batch_op:
        batch_op.drop_column("active")
    with op.batch_alter_table("comments", schema=None) as batch_op:
        batch_op.drop_column("authentication")
        batch_op.drop_column("author_kind")

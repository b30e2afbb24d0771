"""The vault: credentials found in mail, encrypted, each behind one-time links for agents.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secrets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("comment_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=True),
        sa.Column("nonce", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("revealed_at", sa.DateTime(), nullable=True),
        sa.Column("revealed_by", sa.String(length=320), nullable=True),
        sa.ForeignKeyConstraint(["ticket_id"], ["tickets.id"]),
        sa.ForeignKeyConstraint(["comment_id"], ["comments.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_secrets_ticket_id", "secrets", ["ticket_id"])
    op.create_index("ix_secrets_comment_id", "secrets", ["comment_id"])
    op.create_index("ix_secrets_expires_at", "secrets", ["expires_at"])
    op.create_table(
        "secret_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("secret_id", sa.Integer(), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["secret_id"], ["secrets.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_secret_links_secret_id", "secret_links", ["secret_id"])


def downgrade() -> None:
    op.drop_index("ix_secret_links_secret_id", table_name="secret_links")
    op.drop_table("secret_links")
    op.drop_index("ix_secrets_expires_at", table_name="secrets")
    op.drop_index("ix_secrets_comment_id", table_name="secrets")
    op.drop_index("ix_secrets_ticket_id", table_name="secrets")
    op.drop_table("secrets")

"""Alembic environment: runs on the connection mailgate hands over (see store.migrate)."""

from __future__ import annotations

from alembic import context

from mailgate.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - mailgate always passes its connection
    raise RuntimeError("mailgate migrations run through 'mailgate init-db', not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()

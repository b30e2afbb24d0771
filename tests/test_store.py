"""Schema and config sync on both backends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select

from mailgate.config import Config
from mailgate.models import Base, Follower, Membership, Organization, User
from mailgate.store import Store

from .conftest import BASE_CONFIG, Clock


def test_migrations_match_models(store: Store) -> None:
    """The Alembic migrations create exactly the schema the models describe."""
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_migrate_twice_is_a_no_op(store: Store) -> None:
    assert store.schema_is_current()
    store.migrate()
    assert store.schema_is_current()


def _memberships(store: Store) -> set[tuple[str, str]]:
    with store.transaction() as s:
        rows = s.execute(
            select(User.email, Organization.name)
            .join(Membership, Membership.user_id == User.id)
            .join(Organization, Organization.id == Membership.organization_id)
        )
        return {(email, org) for email, org in rows}


def test_sync_builds_memberships_followers_and_agents(store: Store) -> None:
    """A user can be in several organizations; followers and agents come from the config."""
    assert _memberships(store) == {
        ("anna@mueller-logistik.de", "Müller Logistik GmbH"),
        ("berater@agentur.de", "Müller Logistik GmbH"),
        ("chef@mueller-logistik.de", "Müller Logistik GmbH"),
        ("berater@agentur.de", "Agentur Blau"),
    }
    with store.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Follower)) == 1
        agent = s.scalar(select(User).where(User.email == "tech@support.example.com"))
        assert agent is not None and agent.is_agent


def test_sync_is_idempotent_and_follows_config_changes(
    store: Store, make_config: Callable[..., tuple[Config, Path]], clock: Clock
) -> None:
    """Syncing the same config twice writes nothing; a changed config is applied exactly."""
    config, _ = make_config()
    assert store.sync(config, clock()) is False
    orgs: list[dict[str, Any]] = [dict(o) for o in BASE_CONFIG["organizations"]]
    orgs[0]["members"] = ["anna@mueller-logistik.de"]
    orgs[0]["followers"] = []
    orgs = orgs[:1] + [{"name": "Neu AG", "members": ["berater@agentur.de"]}]
    changed, _ = make_config({"organizations": orgs, "agents": {"addresses": []}})
    assert store.sync(changed, clock()) is True
    assert store.sync(changed, clock()) is False
    assert _memberships(store) == {
        ("anna@mueller-logistik.de", "Müller Logistik GmbH"),
        ("berater@agentur.de", "Neu AG"),
    }
    with store.transaction() as s:
        blau = s.scalar(select(Organization).where(Organization.name == "Agentur Blau"))
        assert blau is not None and blau.active is False  # kept for its tickets
        agent = s.scalar(select(User).where(User.email == "tech@support.example.com"))
        assert agent is not None and not agent.is_agent


def test_sqlite_runs_in_wal_mode_with_full_sync(store: Store) -> None:
    """Readers never block the listener, and every commit is on disk before we answer 250."""
    if store.dialect != "sqlite":
        pytest.skip("SQLite only")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL

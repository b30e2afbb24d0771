"""Schema and config sync on both backends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from mailgate.config import Config
from mailgate.confload import fingerprint
from mailgate.db.fastexec import Prebuilt
from mailgate.db.records import ensure_blob
from mailgate.db.sqlite import WalFile
from mailgate.errors import StoreUnavailable
from mailgate.models import Base, Blob, Follower, Membership, Meta, Organization, Outbox, User
from mailgate.store import SYNCED_PARTS, Store

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


def test_sync_skips_config_changes_it_does_not_write(
    store: Store, make_config: Callable[..., tuple[Config, Path]], clock: Clock
) -> None:
    """Only organizations and agents are synced: another edit does not sync again."""
    config, _ = make_config()
    changed, _ = make_config({"limits": {"tickets_per_hour": 3}, "outbound": {"timeout": 5.0}})
    assert fingerprint(changed) != fingerprint(config)
    assert fingerprint(changed, SYNCED_PARTS) == fingerprint(config, SYNCED_PARTS)
    assert store.sync(changed, clock()) is False


def test_sqlite_runs_in_wal_mode_with_full_sync(store: Store) -> None:
    """Readers never block the listener, and every commit is on disk before we answer 250."""
    if store.dialect != "sqlite":
        pytest.skip("SQLite only")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_an_ingest_worker_commits_unsynced_and_flushes_the_log_itself(
    store: Store, config: Config, clock: Clock
) -> None:
    """synchronous=NORMAL only where Store.flush syncs SQLite's log before any 250."""
    worker = Store(config.database.url, config.database.lock_timeout, flush_later=True)
    try:
        if store.dialect != "sqlite":
            assert not worker.flushes_later  # PostgreSQL syncs its own log at commit
            worker.flush()
            return
        assert worker.flushes_later and not store.flushes_later
        with worker.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        with worker.transaction() as s:
            s.add(Meta(key="flushed", value="yes"))
        worker.flush()
        wal = Path(f"{make_url(config.database.url).database}-wal")
        assert worker._wal is not None and worker._wal.path == wal
        assert worker._wal._inode == (wal.stat().st_dev, wal.stat().st_ino)  # the log it wrote
        with store.transaction() as s:
            assert s.get(Meta, "flushed") is not None
    finally:
        worker.close()


def test_a_log_that_cannot_be_synced_is_a_temporary_failure(tmp_path: Path) -> None:
    """fdatasync refusing the file (procfs does) means 451 for the senders, not a dead
    flusher thread that never answers them."""
    WalFile(tmp_path / "not-there-yet").sync()  # nothing written: nothing to sync
    refusing = WalFile(Path("/proc/self/stat"))
    with pytest.raises(StoreUnavailable, match="could not sync the database log"):
        refusing.sync()
    refusing.close()


def test_prebuilt_statements_read_and_write_what_sqlalchemy_does(
    store: Store, clock: Clock
) -> None:
    """The cursor path gives the same rows, types and defaults as ``Connection.execute``.

    Each write goes once through each path; the rows read back through both paths must be
    equal (aware datetimes, JSON lists, Python-side defaults), and so must every SELECT
    shape ingest uses: joins, literals, RETURNING, an IN list, an empty IN list.
    """
    now = clock()
    outbox = Outbox.__table__
    insert_outbox = insert(outbox).returning(outbox.c.id)
    row = {
        "kind": "ack",
        "recipients": ["a@example.org", "b@example.org"],
        "created_at": now,
        "next_attempt_at": now,
    }
    read = select(
        outbox.c.id,
        outbox.c.kind,
        outbox.c.recipients,
        outbox.c.payload,
        outbox.c.status,
        outbox.c.attempts,
        outbox.c.created_at,
    ).where(outbox.c.kind == bindparam("kind"), outbox.c.status == "pending")
    by_recipients = select(outbox.c.id).where(outbox.c.kind.in_(bindparam("kinds", expanding=True)))
    prebuilt_read = Prebuilt(read)
    with store.transaction() as session:
        conn = session.connection()
        fast_id = Prebuilt(insert_outbox).run(conn, row).scalar_one()
        slow_id = conn.execute(insert_outbox, row).scalar_one()
        assert fast_id != slow_id
        fast = prebuilt_read.run(conn, {"kind": "ack"}).all()
        slow = [tuple(r) for r in conn.execute(read, {"kind": "ack"})]
        assert [tuple(r) for r in fast] == slow
        assert [r.id for r in fast] == [fast_id, slow_id]  # rows are named, like SQLAlchemy's
        first = fast[0]
        assert first.created_at == now and first.created_at.tzinfo is not None
        assert first.recipients == ["a@example.org", "b@example.org"]
        assert (first.payload, first.status, first.attempts) == ({}, "pending", 0)  # defaults
        assert Prebuilt(by_recipients).run(conn, {"kinds": ["ack", "x"]}).scalars() == [
            fast_id,
            slow_id,
        ]
        assert Prebuilt(by_recipients).run(conn, {"kinds": []}).scalars() == []
        changed = Prebuilt(update(outbox).where(outbox.c.id == bindparam("row")))
        assert changed.run(conn, {"row": fast_id, "status": "sent"}).rowcount == 1
        assert prebuilt_read.run(conn, {"kind": "ack"}).scalars() == [slow_id]
        assert Prebuilt(read).run(conn, {"kind": "none"}).first() is None


def test_prebuilt_statement_errors_are_sqlalchemy_errors(store: Store, clock: Clock) -> None:
    """A failing statement raises what ``Connection.execute`` would, so 451 stays 451."""
    users = User.__table__
    add = Prebuilt(insert(users))
    values = {"email": "x@example.org", "name": "", "is_agent": False, "created_at": clock()}
    with pytest.raises(sa_exc.IntegrityError), store.transaction() as session:
        add.run(session.connection(), values)
        add.run(session.connection(), values)


@pytest.mark.parametrize("size", [10, 2 << 20], ids=["small", "large"])
def test_a_blob_is_stored_once_and_whole_however_often_it_comes(store: Store, size: int) -> None:
    """Content is kept by its hash: the second insert does nothing, also to a large blob."""
    import hashlib
    import os

    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    with store.transaction() as session:
        assert ensure_blob(session, data) == digest
        assert ensure_blob(session, data) == digest
    with store.transaction() as session:
        assert ensure_blob(session, data, digest) == digest
        rows = session.execute(select(Blob.size, Blob.data).where(Blob.sha256 == digest)).all()
    assert [(row.size, bytes(row.data)) for row in rows] == [(size, data)]

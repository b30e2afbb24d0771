"""The store's face: one database, its engine, migrations, config sync and transactions.

Callers open a :meth:`Store.transaction` (or a :meth:`Store.batch` of them) and run their
statements in it; what runs there lives beside this module in :mod:`mailgate.db` (the fast
path for prebuilt statements, SQLite's writer lock and log, the config sync, the shared
write helpers and the CLI's read side). Failures that mean "cannot write now" (locks, a
database that is down, a full disk) are turned into :class:`StoreUnavailable` here, in one
place (:func:`temporary_failures`), because the SMTP layer must answer 451 for exactly those
and nothing else.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from mailgate.config import Config
from mailgate.confload import fingerprint
from mailgate.db.sqlite import READ_ONLY, WalFile, WriterLock, immediate_transactions
from mailgate.errors import ConfigError, StoreUnavailable

# The ORM, alembic and the config sync are imported where they are used: a command that
# only reads (``tickets show``) needs none of them, and importing the ORM alone took longer
# than such a command may take (issue #21).
if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from sqlalchemy.orm import Session

# The sections of the config that sync_config reads: Store.sync runs it again only when
# their fingerprint (mailgate.confload.fingerprint, kept in ``meta``) changed.
SYNCED_PARTS = ("organizations", "agents")

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
_REVISION = re.compile(r"^(down_revision|revision)\s*=\s*[\"']?([^\"'\s]+)", re.MULTILINE)


def schema_head() -> str:
    """The newest migration's revision, read from the files as alembic would find it: the
    one revision no other names as its ``down_revision``."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        text_ = path.read_text(encoding="utf-8")
        found: dict[str, str] = {m[1]: m[2] for m in _REVISION.finditer(text_)}
        if "revision" in found:
            revisions.add(found["revision"])
            parents.add(found.get("down_revision"))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


# Serialises migrations and config sync between instances sharing one PostgreSQL schema.
_PG_LOCK_KEY = 0x6D61696C67617465  # "mailgate"

# The errors that mean "the database cannot take this write now; try again later".
_TEMPORARY = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.InternalError,
    sa_exc.TimeoutError,
)


def is_temporary(exc: BaseException) -> bool:
    """True for database failures a retry can cure (lock, outage, disk full, read-only)."""
    if isinstance(exc, (StoreUnavailable, *_TEMPORARY)):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return " ".join(str(orig).split())[:300] or type(orig).__name__


@contextmanager
def temporary_failures() -> Iterator[None]:
    """Turn the database errors a retry can cure into :class:`StoreUnavailable`."""
    try:
        yield
    except StoreUnavailable:
        raise
    except Exception as exc:
        if is_temporary(exc):
            raise StoreUnavailable(f"database unavailable: {_describe(exc)}") from exc
        raise


def sqlite_file(url: str) -> Path | None:
    """The database file a SQLite URL names; None for PostgreSQL and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


class Store:
    """One database, shared by the SMTP listener, the CLI and the jobs."""

    def __init__(self, url: str, lock_timeout: float = 10.0, flush_later: bool = False) -> None:
        """``flush_later``: see :meth:`flush`; only an ingest worker that calls it sets it."""
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        connect_args: dict[str, Any] = {}
        if self.dialect == "sqlite":
            # Wait this long for another writer's lock before giving up with "locked".
            connect_args["timeout"] = lock_timeout
            connect_args["check_same_thread"] = False
            path = sqlite_file(url)
            if path is not None and not path.parent.is_dir():
                # Creating it would hide a typo behind a new, empty database.
                raise ConfigError(
                    f"[database].url: the directory {path.parent} does not exist "
                    f"(database file {path}); create it, or correct the URL"
                )
        else:
            ms = int(lock_timeout * 1000)
            options = parsed.query.get("options", "")
            if isinstance(options, tuple):
                options = " ".join(options)
            connect_args["options"] = f"{options} -c lock_timeout={ms}".strip()
            connect_args["connect_timeout"] = max(1, int(lock_timeout))
            parsed = parsed.difference_update_query(["options"])
        # A file has no connection to lose: pinging it before every transaction only costs.
        self.engine: Engine = create_engine(
            parsed, connect_args=connect_args, pool_pre_ping=self.dialect != "sqlite", future=True
        )
        self.lock_timeout = lock_timeout
        self._writer = WriterLock(None)
        self._wal: WalFile | None = None
        if self.dialect == "sqlite":
            on_disk = bool(parsed.database) and parsed.database != ":memory:"
            if flush_later and on_disk:
                self._wal = WalFile(Path(f"{parsed.database}-wal"))
            immediate_transactions(self.engine, self._wal is None)
            if on_disk:
                self._writer = WriterLock(Path(f"{parsed.database}-writer.lock"))
        self._local = threading.local()
        self._batch_connections: list[Connection] = []  # see _batch_connection

    @property
    def flushes_later(self) -> bool:
        """Commits are durable only after :meth:`flush` (SQLite, ``flush_later``)."""
        return self._wal is not None

    def flush(self) -> None:
        """Make every commit so far durable: one fsync of SQLite's write-ahead log.

        An ingest worker commits with ``synchronous=NORMAL`` (the log is written, not yet
        synced) and has a flusher thread call this before it answers the senders, while it
        already stores the next mails. The fsync was the writer's largest serial cost; now
        one fsync covers every group committed meanwhile, and no sender hears 250 before its
        mail is on disk. SQLite syncs the log itself before each checkpoint copies it into the
        database, so a commit is never only in a log that was reused.
        """
        if self._wal is not None:
            with temporary_failures():
                self._wal.sync()

    def close(self) -> None:
        for conn in self._batch_connections:
            conn.close()
        self.engine.dispose()
        self._writer.close()
        if self._wal is not None:
            self._wal.close()

    # --- transactions -------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction, committed on success; temporary failures → 451.

        Inside :meth:`batch` it is the batch's transaction instead, so the code that stores
        one mail is the same whether it commits alone or in a group. A failure there spoils
        the group: every later call raises :class:`StoreUnavailable`, the group is rolled
        back, and its mails are stored one by one (savepoints per mail cost more than the
        rare redo).
        """
        batch: Session | None = getattr(self._local, "batch", None)
        if batch is not None:
            if self._local.spoiled:
                raise StoreUnavailable("the group was rolled back; storing its mails one by one")
            try:
                with temporary_failures():
                    yield batch
            except BaseException:
                self._local.spoiled = True
                raise
            return
        from sqlalchemy.orm import Session

        with (
            self._writer.held(self.lock_timeout),
            temporary_failures(),
            Session(self.engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection in a read-only transaction: for lists that may stream for minutes,
        and the files of an outgoing mail, read beside the writer.

        It takes neither the writer lock nor, on SQLite, the write lock (``BEGIN``, not
        ``BEGIN IMMEDIATE``): in WAL mode its snapshot does not hold up ingest.
        """
        with temporary_failures(), self.engine.connect() as conn:
            conn.execution_options(**{READ_ONLY: True})
            with conn.begin():
                if self.dialect == "postgresql":
                    conn.execute(text("SET TRANSACTION READ ONLY"))
                yield conn

    @contextmanager
    def batch(self) -> Iterator[Session]:
        """Group commit: one transaction, one commit (one fsync) for several mails.

        Every :meth:`transaction` this thread opens meanwhile is part of it; after a failure
        in one of them the block raises :class:`StoreUnavailable` and nothing of the group
        is committed. Nothing of the group is durable before the commit at the end, so
        callers answer the senders only after this block returns.
        """
        from sqlalchemy.orm import Session

        with self._writer.held(self.lock_timeout), temporary_failures():
            conn = self._batch_connection()
            with conn.begin(), Session(bind=conn) as session:
                self._local.batch, self._local.spoiled = session, False
                try:
                    yield session
                    if self._local.spoiled:  # a failure was caught and handled by the caller
                        raise StoreUnavailable("a mail of the group failed; nothing was committed")
                finally:
                    self._local.batch = None

    @contextmanager
    def driver_connection(self) -> Iterator[Any]:
        """SQLite's own connection outside any transaction, with the write lock held: for
        what cannot run in one (``VACUUM``)."""
        with (
            self._writer.held(self.lock_timeout),
            temporary_failures(),
            self.engine.connect() as conn,
        ):
            yield conn.connection.driver_connection

    def _batch_connection(self) -> Connection:
        """This thread's connection for group commits, kept from one group to the next.

        A connection taken from the pool and given back for each group, with a session of
        its own transaction, cost about 0.15 ms per group in the writer; a session that
        joins the transaction of a connection kept open costs a third of that. A
        connection that broke is replaced at the next group (the broken group was 451).
        """
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None:
                conn.close()
            conn = self._local.conn = self.engine.connect()
            self._batch_connections.append(conn)
        return conn

    @contextmanager
    def _locked_connection(self) -> Iterator[Connection]:
        """One connection in a transaction that no other instance's migrate/sync overlaps."""
        with (
            self._writer.held(self.lock_timeout),
            temporary_failures(),
            self.engine.begin() as conn,
        ):
            if self.dialect == "postgresql":
                # One lock per schema: instances sharing a schema take turns; a database
                # holding several mailgate schemas (one per test, or per tenant) does not
                # make them wait for each other.
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtextextended(current_schema(), :k))"),
                    {"k": _PG_LOCK_KEY},
                )
            yield conn

    # --- schema -------------------------------------------------------------------------

    def _alembic_config(self) -> AlembicConfig:
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        return cfg

    def schema_is_current(self) -> bool:
        """One small query: alembic (a tenth of a second to import, more to read every
        migration) is loaded only when there is something to migrate."""
        with temporary_failures(), self.engine.connect() as conn:
            try:
                current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except sa_exc.DBAPIError:  # no such table: a new database
                conn.rollback()
                return False
        return current == schema_head()

    def migrate(self) -> None:
        """Bring the schema to the newest migration (cheap when it already is)."""
        if self.schema_is_current():
            return
        from alembic import command

        cfg = self._alembic_config()
        with self._locked_connection() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        log.info("database schema migrated to the newest revision")

    # --- config sync --------------------------------------------------------------------

    def sync(self, config: Config, now: datetime) -> bool:
        """Make organizations, users, memberships, followers and agents match the config.

        Idempotent, and skipped when the config has not changed since the last sync (its
        fingerprint is kept in ``meta``), so every CLI call can afford it. Returns whether
        anything was written.
        """
        if config.file_digest is not None and self.in_sync(config.file_digest):
            return False
        if config.partial:
            raise ValueError("a config loaded without its organizations is never synced")
        digest = fingerprint(config, SYNCED_PARTS)
        unchanged = self._noted("config") == digest
        if unchanged and config.file_digest is None:
            return False
        from sqlalchemy.orm import Session

        from mailgate.db.sync import sync_config
        from mailgate.models import Meta

        with self._locked_connection() as conn, Session(bind=conn) as session:
            if not unchanged:
                sync_config(session, config, now)
                session.merge(Meta(key="config", value=digest))
            if config.file_digest is not None:  # the file's bytes, for in_sync
                session.merge(Meta(key="config_file", value=config.file_digest))
            session.flush()
        if unchanged:
            return False
        log.info("organizations, members, followers and agents synced from %s", config.source)
        return True

    def in_sync(self, file_digest: str) -> bool:
        """Whether the database was last synced from a file with exactly these bytes."""
        return self._noted("config_file") == file_digest

    def _noted(self, key: str) -> str | None:
        """A fact ``meta`` keeps about the database, read without the ORM."""
        with temporary_failures(), self.engine.connect() as conn:
            value = conn.execute(text("SELECT value FROM meta WHERE key = :key"), {"key": key})
            return value.scalar()

"""Database access: engine set-up, migrations, config sync, transactions and queries.

Everything that touches SQLAlchemy lives here (plus the models), so the rest of mailgate
speaks in plain values. Failures that mean "cannot write now" (locks, a database that is
down, a full disk) are turned into :class:`StoreUnavailable` in one place, because the
SMTP layer must answer 451 for exactly those and nothing else.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import signal
import sqlite3
import threading
import time
from collections import namedtuple
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, bindparam, create_engine, event, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, selectinload

from mailgate.config import Config
from mailgate.errors import NotFound, Refused, StoreUnavailable, TicketLocked
from mailgate.models import (
    Blob,
    Comment,
    Follower,
    Membership,
    Meta,
    Organization,
    Participant,
    Status,
    Ticket,
    User,
)
from mailgate.models import InboundMessage as InboundRow

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# Serialises migrations and config sync between instances sharing one PostgreSQL.
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
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
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
        self._writer = _WriterLock(None)
        self._wal: _WalFile | None = None
        if self.dialect == "sqlite":
            on_disk = bool(parsed.database) and parsed.database != ":memory:"
            if flush_later and on_disk:
                self._wal = _WalFile(Path(f"{parsed.database}-wal"))
            _sqlite_immediate_transactions(self.engine, self._wal is None)
            if on_disk:
                self._writer = _WriterLock(Path(f"{parsed.database}-writer.lock"))
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
        with (
            self._writer.held(self.lock_timeout),
            temporary_failures(),
            Session(self.engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    @contextmanager
    def batch(self) -> Iterator[Session]:
        """Group commit: one transaction, one commit (one fsync) for several mails.

        Every :meth:`transaction` this thread opens meanwhile is part of it; after a failure
        in one of them the block raises :class:`StoreUnavailable` and nothing of the group
        is committed. Nothing of the group is durable before the commit at the end, so
        callers answer the senders only after this block returns.
        """
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
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            yield conn

    # --- schema -------------------------------------------------------------------------

    def _alembic_config(self) -> AlembicConfig:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        return cfg

    def schema_is_current(self) -> bool:
        head = ScriptDirectory.from_config(self._alembic_config()).get_current_head()
        with temporary_failures(), self.engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        return current == head

    def migrate(self) -> None:
        """Bring the schema to the newest migration (cheap when it already is)."""
        if self.schema_is_current():
            return
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
        fingerprint = config_fingerprint(config)
        with temporary_failures(), Session(self.engine) as probe:
            current = probe.get(Meta, "config")
            if current is not None and current.value == fingerprint:
                return False
        with self._locked_connection() as conn, Session(bind=conn) as session:
            _sync(session, config, now)
            session.merge(Meta(key="config", value=fingerprint))
            session.flush()
        log.info("organizations, members, followers and agents synced from %s", config.source)
        return True


class _WriterLock:
    """SQLite's one writer, taken in mailgate rather than in SQLite's busy handler.

    SQLite makes a blocked writer sleep in steps of up to 100 ms and retry; under load the
    waiters' sleeps, not the writes, made the latency. An exclusive ``flock`` on a file next
    to the database hands the write over within a millisecond, between the threads of one
    process (the thread lock) and between processes (ingest workers, other instances, the
    CLI). PostgreSQL writes in parallel and needs none (``path`` None: thread lock only
    for an in-memory SQLite).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd: int | None = None
        self._thread_lock = threading.RLock()
        self._depth = 0

    def _open(self) -> int:
        if self._fd is None:
            assert self.path is not None
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    @contextmanager
    def held(self, timeout: float) -> Iterator[None]:
        if self.path is None:
            yield
            return
        deadline = time.monotonic() + timeout
        if not self._thread_lock.acquire(timeout=timeout):
            raise StoreUnavailable(f"database busy: no write lock within {timeout:g} s")
        try:
            if self._depth == 0:
                self._flock(deadline, timeout)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _flock(self, deadline: float, timeout: float) -> None:
        try:
            fd = self._open()
        except OSError as exc:
            raise StoreUnavailable(f"cannot open the write lock {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if not _flock_waiting(fd, deadline - time.monotonic()):  # polls off the main thread
            raise StoreUnavailable(f"database busy: no write lock within {timeout:g} s")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _LockWait(Exception):
    """Raised by the alarm that ends a blocking wait for the write lock."""


def _flock_waiting(fd: int, seconds: float) -> bool:
    """Wait in the kernel for the write lock, woken the moment it is released.

    Polling woke a waiting writer up to a millisecond late at every hand-over. A blocking
    ``flock`` has no timeout, so an interval timer's signal ends the wait; signals reach
    only the main thread, so other threads poll. False when the time ran out.
    """
    if seconds <= 0:
        return False

    def alarm(signum: int, frame: Any) -> None:
        raise _LockWait

    try:
        previous = signal.signal(signal.SIGALRM, alarm)
    except ValueError:  # not the main thread of the main interpreter
        return _flock_polling(fd, seconds)
    if previous not in (signal.SIG_DFL, signal.SIG_IGN, None):  # someone else's alarm
        signal.signal(signal.SIGALRM, previous)
        return _flock_polling(fd, seconds)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except _LockWait:
            pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _LockWait:  # the alarm came just as the wait ended
        pass
    finally:
        signal.signal(signal.SIGALRM, previous)
    try:  # held already (the same open file) or free: we have it; else the time ran out
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _flock_polling(fd: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    pause = 0.0001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.001)


# What SQLite itself calls for synchronous=FULL where the system has it: the data and the
# size, not the modification time (one journal commit less for the file system).
_datasync = getattr(os, "fdatasync", os.fsync)


class _WalFile:
    """SQLite's write-ahead log, opened to sync it (any descriptor syncs the file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._inode: tuple[int, int] | None = None

    def sync(self) -> None:
        """fdatasync the log; a failure is :class:`StoreUnavailable` (451, the sender retries).

        An OSError escaping here would end the flusher thread, and with it every answer.
        """
        try:
            try:
                found = os.stat(self.path)
            except FileNotFoundError:  # nothing written yet, or checkpointed and removed
                return
            if self._fd is None or self._inode != (found.st_dev, found.st_ino):
                self.close()
                self._fd = os.open(self.path, os.O_RDONLY)
                opened = os.fstat(self._fd)
                self._inode = (opened.st_dev, opened.st_ino)
            _datasync(self._fd)
        except OSError as exc:
            raise StoreUnavailable(f"could not sync the database log: {exc}") from exc

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _sqlite_immediate_transactions(engine: Engine, sync_each_commit: bool = True) -> None:
    """Take SQLite's write lock at BEGIN, so concurrent writers wait instead of deadlocking."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        # WAL: readers (the CLI, the jobs) never block the listener's writes. synchronous=FULL
        # fsyncs the WAL at every commit; NORMAL would not, and a power cut could then lose
        # mail we already answered 250 for (RFC 5321 4.1.1.4) -- unless the caller syncs
        # the log itself before answering (Store.flush, the ingest workers).
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={'FULL' if sync_each_commit else 'NORMAL'}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # On the driver's connection: through SQLAlchemy's execution it cost more than the
        # BEGIN itself. Its errors ("database is locked") are SQLAlchemy's, as elsewhere.
        driver = conn.connection.driver_connection
        try:
            driver.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise sa_exc.DBAPIError.instance(
                "BEGIN IMMEDIATE", (), exc, sqlite3.Error, dialect=conn.dialect
            ) from exc


def config_fingerprint(config: Config) -> str:
    """A hash of the parts of the config that are synced into the database."""
    payload = {
        "organizations": [asdict(o) for o in config.organizations],
        "agents": list(config.agents.addresses),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class Prebuilt:
    """A Core statement that runs on the connection's DB-API cursor, compiled once.

    Ingest runs about fifteen statements per mail, all in the single SQLite writer.
    SQLAlchemy spends about 30 µs on each (cache key, execution context, result objects),
    the driver about 2 µs: the per-statement overhead was a third of the writer's time
    per mail. This keeps SQLAlchemy's SQL, types and defaults (compiled by SQLAlchemy once
    per dialect and set of parameter names) and skips only the per-call machinery.
    Statements it cannot run this way (another paramstyle, defaults computed in SQL, an
    empty IN list) go through ``Connection.execute`` unchanged.
    """

    __slots__ = ("statement", "_plans")

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._plans: dict[tuple[str, frozenset[str]], _Plan | None] = {}

    def run(self, conn: Connection, params: dict[str, Any] | None = None) -> Rows:
        params = params or {}
        key = (conn.dialect.name, frozenset(params))
        plan = self._plans.get(key, _UNPLANNED)
        if plan is _UNPLANNED:
            plan = self._plans[key] = _Plan.build(self.statement, conn.dialect, params)
        if (
            plan is None
            or not conn.in_transaction()
            or any(not params.get(name) for name in plan.expanding)  # IN () is spelt per dialect
        ):
            return Rows.of(conn.execute(self.statement, params))
        return plan.run(conn, params)


class Rows:
    """What a :class:`Prebuilt` statement returned: the calls ingest makes on a Result."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int = -1) -> None:
        self._rows = rows
        self.rowcount = rowcount

    @classmethod
    def of(cls, result: Any) -> Rows:
        rows = list(result) if result.returns_rows else []
        return cls(rows, result.rowcount)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return list(self._rows)

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def scalar(self) -> Any:
        return self._rows[0][0] if self._rows else None

    def scalar_one(self) -> Any:
        if not self._rows:
            raise sa_exc.NoResultFound("no row where exactly one was expected")
        if len(self._rows) > 1:
            raise sa_exc.MultipleResultsFound(f"{len(self._rows)} rows where one was expected")
        return self._rows[0][0]

    def scalars(self) -> list[Any]:
        return [row[0] for row in self._rows]


_UNPLANNED: Any = object()


class _Plan:
    """One statement compiled for one dialect and set of parameter names."""

    __slots__ = (
        "sql",
        "names",
        "binds",
        "defaults",
        "expanding",
        "positional",
        "columns",
        "processors",
        "row",
    )

    def __init__(self) -> None:
        self.sql = ""
        self.names: list[str] = []  # positional order (qmark) or the names (pyformat)
        self.binds: dict[str, tuple[Any, Any]] = {}  # name -> (processor, literal value)
        self.defaults: dict[str, Any] = {}  # Python-side column defaults not given
        self.expanding: frozenset[str] = frozenset()
        self.positional = True
        self.columns: list[Any] | None = None  # result columns, when it returns rows
        self.processors: list[Any] | None = None  # their result processors, from the first run
        self.row: Any = None  # named tuples, so rows read like SQLAlchemy's

    @classmethod
    def build(cls, statement: Any, dialect: Any, params: dict[str, Any]) -> _Plan | None:
        if dialect.paramstyle not in ("qmark", "pyformat"):
            return None
        dml = getattr(statement, "is_dml", False)
        compiled = statement.compile(dialect=dialect, column_keys=list(params) if dml else None)
        if compiled.escaped_bind_names or getattr(compiled, "postfetch", None):
            return None
        plan = cls()
        plan.sql = compiled.string
        plan.positional = dialect.paramstyle == "qmark"
        plan.names = list(compiled.positiontup or ()) if plan.positional else list(compiled.binds)
        prefetch = (
            *getattr(compiled, "insert_prefetch", ()),
            *getattr(compiled, "update_prefetch", ()),
        )
        for column in prefetch:
            default = column.default
            if default is None or not (default.is_scalar or default.is_callable):
                return None
            plan.defaults[column.key] = default
        for name, bind in compiled.binds.items():
            if bind.callable is not None:  # a value computed per execution: SQLAlchemy's job
                return None
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            literal = bind.effective_value if name not in params else None
            plan.binds[name] = (processor, literal)
        plan.expanding = frozenset(n for n, b in compiled.binds.items() if b.expanding)
        columns = statement.selected_columns if statement.is_select else statement.exported_columns
        if len(columns):
            plan.columns = list(columns)
            plan.row = namedtuple("Row", [c.key for c in columns], rename=True)  # type: ignore[misc]
        return plan

    def _value(self, name: str, params: dict[str, Any]) -> Any:
        processor, literal = self.binds[name]
        if name in params:
            value = params[name]
        elif name in self.defaults:
            default = self.defaults[name]
            value = default.arg if default.is_scalar else default.arg(None)
        else:
            value = literal
        if processor is None or value is None:
            return value
        if name in self.expanding:
            return [processor(v) for v in value]
        return processor(value)

    def run(self, conn: Connection, params: dict[str, Any]) -> Rows:
        values = {name: self._value(name, params) for name in self.binds}
        sql = self.sql
        for name in self.expanding:
            items = values[name]
            if self.positional:
                marks = ", ".join("?" * len(items))
            else:
                marks = ", ".join(f"%({name}_{i})s" for i in range(len(items)))
                values.update({f"{name}_{i}": v for i, v in enumerate(items)})
            sql = sql.replace(f"__[POSTCOMPILE_{name}]", marks)
        if self.positional:
            args: Any = []
            for name in self.names:
                if name in self.expanding:
                    args.extend(values[name])
                else:
                    args.append(values[name])
        else:
            args = {n: v for n, v in values.items() if n not in self.expanding}
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        cursor = dbapi.cursor()
        try:
            cursor.execute(sql, args)
            description = cursor.description
            rows = cursor.fetchall() if description is not None else []
            count = cursor.rowcount
        except conn.dialect.loaded_dbapi.Error as exc:
            invalidated = conn.dialect.is_disconnect(exc, dbapi, cursor)
            if invalidated:
                conn.invalidate(exc)
            raise sa_exc.DBAPIError.instance(
                sql,
                args,
                exc,
                conn.dialect.loaded_dbapi.Error,
                connection_invalidated=invalidated,
                dialect=conn.dialect,
            ) from exc
        finally:
            cursor.close()
        if rows and self.columns is not None:
            rows = self._process(conn.dialect, description, rows)
        return Rows(rows, count)

    def _process(self, dialect: Any, description: Any, rows: list[Any]) -> list[Any]:
        processors = self.processors
        if processors is None:
            processors = self.processors = [
                column.type.dialect_impl(dialect).result_processor(dialect, described[1])
                for column, described in zip(self.columns or (), description, strict=True)
            ]
        make = self.row
        if any(processors):
            return [
                make(*(p(v) if p is not None else v for p, v in zip(processors, row, strict=True)))
                for row in rows
            ]
        return [make(*row) for row in rows]


def insert_for(db: Session | Connection) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT (SQLite and PostgreSQL alike)."""
    dialect = db.dialect if isinstance(db, Connection) else db.get_bind().dialect
    return pg_insert if dialect.name == "postgresql" else sqlite_insert


_USERS = User.__table__


def user_id(conn: Connection, email: str, name: str, now: datetime) -> int:
    """The id of the user with this address, created if new; safe against a concurrent insert.

    Core statements on the connection: every inbound mail calls this, and the ORM's
    per-statement overhead was most of a mail's CPU. A name learnt later fills an empty one.
    """
    email = email.lower()
    row = _USER_BY_EMAIL.run(conn, {"address": email}).first()
    if row is None:
        values = {"email": email, "name": name, "is_agent": False, "created_at": now}
        insert_once(conn, _USERS, "email").run(conn, values)
        row = _USER_BY_EMAIL.run(conn, {"address": email}).first()
        assert row is not None
    elif name and not row.name:
        _SET_USER_NAME.run(conn, {"user": row.id, "name": name})
    found: int = row.id
    return found


_USER_BY_EMAIL = Prebuilt(
    select(_USERS.c.id, _USERS.c.name).where(_USERS.c.email == bindparam("address"))
)
_SET_USER_NAME = Prebuilt(_USERS.update().where(_USERS.c.id == bindparam("user")))
_BLOBS = Blob.__table__
_INSERTS_ONCE: dict[tuple[str, str, str, str | None], Prebuilt] = {}


def insert_once(conn: Connection, table: Any, key: str, returning: str | None = None) -> Prebuilt:
    """``INSERT … ON CONFLICT (key) DO NOTHING``, built once per dialect (it is spelt per
    dialect): building a statement costs more than running it, and a statement built per
    call made SQLAlchemy compute its cache key each time (0.7 ms for an attachment's blob).
    """
    cache_key = (conn.dialect.name, table.name, key, returning)
    stmt = _INSERTS_ONCE.get(cache_key)
    if stmt is None:
        built = insert_for(conn)(table).on_conflict_do_nothing(index_elements=[key])
        if returning is not None:
            built = built.returning(table.c[returning])
        stmt = _INSERTS_ONCE[cache_key] = Prebuilt(built)
    return stmt


def ensure_user(session: Session, email: str, name: str, now: datetime) -> User:
    """The user with this address as an ORM object, created if new (see :func:`user_id`)."""
    user = session.get(User, user_id(session.connection(), email, name, now))
    assert user is not None
    return user


def ensure_secret(session: Session) -> str:
    """The reply-token key kept in the database, generated once for all instances."""
    row = session.get(Meta, "secret")
    if row is None:
        stmt = insert_for(session)(Meta).values(key="secret", value=secrets.token_hex(32))
        session.execute(stmt.on_conflict_do_nothing(index_elements=["key"]))
        row = session.get(Meta, "secret")
        assert row is not None
    return row.value


def ensure_blob(db: Session | Connection, data: bytes, digest: str | None = None) -> str:
    """Store content once by its SHA-256 (given, or computed here) and return the hash."""
    conn = db if isinstance(db, Connection) else db.connection()
    digest = digest or hashlib.sha256(data).hexdigest()
    large = is_large(conn, data)
    values = {"sha256": digest, "size": len(data), "data": b"" if large else data}
    inserted = insert_once(conn, _BLOBS, "sha256").run(conn, values).rowcount
    if large and inserted:
        rowid = conn.execute(text("SELECT rowid FROM blobs WHERE sha256 = :d"), {"d": digest})
        write_large(conn, "blobs", "data", rowid.scalar_one(), data)
    return digest


def raw_mail(db: Session | Connection, row: InboundRow) -> bytes:
    """A ledger entry's raw mail.

    A large one (SQLite, see :func:`is_large`) lives in ``blobs`` under its SHA-256, with
    an empty ``raw``. There the content is the last column of its row: SQLite fills such a
    zeroblob piece by piece. In ``inbound_messages`` it is not last, and SQLite would hold
    the whole zeroblob, twice over, to write it (2x a 25 MB mail, measured). Entries
    written before keep their mail in ``raw``.
    """
    if row.raw or not row.size:
        return row.raw
    conn = db if isinstance(db, Connection) else db.connection()
    data = conn.execute(select(Blob.data).where(Blob.sha256 == row.sha256)).scalar()
    if data is None:
        raise StoreUnavailable(f"the raw mail of ledger entry {row.id} is missing")
    return bytes(data)


# Values larger than this go into SQLite piece by piece (incremental BLOB I/O): binding a
# value makes SQLite copy it, and building the row copies it again, so a 25 MB mail cost
# twice its size in memory just to be inserted (measured with bench/memory.py).
_LARGE_VALUE = 1 << 20


def is_large(conn: Connection, data: bytes) -> bool:
    """Whether ``data`` is written with :func:`write_large` (SQLite only) after its row."""
    return conn.dialect.name == "sqlite" and len(data) > _LARGE_VALUE


def write_large(conn: Connection, table: str, column: str, rowid: int, data: bytes) -> None:
    """Fill a row's column with ``data`` through a zeroblob, a megabyte at a time."""
    conn.execute(
        text(f"UPDATE {table} SET {column} = zeroblob(:size) WHERE rowid = :rowid"),
        {"size": len(data), "rowid": rowid},
    )
    view = memoryview(data)
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    with dbapi.blobopen(table, column, rowid) as blob:  # type: ignore[attr-defined]
        for start in range(0, len(data), _LARGE_VALUE):
            blob.write(view[start : start + _LARGE_VALUE])


def _sync(session: Session, config: Config, now: datetime) -> None:
    orgs_by_name = {o.name: o for o in session.scalars(select(Organization))}
    wanted_names = set()
    org_ids: dict[str, int] = {}
    for position, org_cfg in enumerate(config.organizations):
        org = orgs_by_name.get(org_cfg.name)
        if org is None:
            org = Organization(name=org_cfg.name, active=True, position=position)
            session.add(org)
            session.flush()
        org.active = True
        org.position = position
        wanted_names.add(org.name)
        org_ids[org_cfg.name] = org.id
    for org in orgs_by_name.values():
        if org.name not in wanted_names:
            org.active = False  # keeps its tickets; no new routing into it

    agents = set(config.agents.addresses)
    emails = set(agents)
    for org_cfg in config.organizations:
        emails.update(org_cfg.members)
        emails.update(org_cfg.followers)
    users = {email: ensure_user(session, email, "", now) for email in sorted(emails)}
    for user in session.scalars(select(User).where(User.is_agent.is_(True))):
        if user.email not in agents:
            user.is_agent = False
    for email in agents:
        users[email].is_agent = True

    for model, attr in ((Membership, "members"), (Follower, "followers")):
        wanted = {
            (users[email].id, org_ids[org_cfg.name])
            for org_cfg in config.organizations
            for email in getattr(org_cfg, attr)
        }
        existing = {
            (row.user_id, row.organization_id): row
            for row in session.scalars(select(model).where(model.source == "config"))
        }
        for key, row in existing.items():
            if key not in wanted:
                session.delete(row)
        for user_id, org_id in wanted - set(existing):
            if session.get(model, (user_id, org_id)) is None:
                session.add(model(user_id=user_id, organization_id=org_id, source="config"))


# --- read side ----------------------------------------------------------------------------


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with offset, in UTC, as the JSON contract promises."""
    return value.isoformat() if value is not None else None


def ticket_summary(ticket: Ticket) -> dict[str, Any]:
    return {
        "id": ticket.id,
        "subject": ticket.subject,
        "status": ticket.status,
        "organization": ticket.organization.name if ticket.organization else None,
        "requester": ticket.requester.email,
        "created_at": iso(ticket.created_at),
        "updated_at": iso(ticket.updated_at),
    }


def ticket_detail(session: Session, ticket: Ticket) -> dict[str, Any]:
    detail = ticket_summary(ticket)
    detail.update(
        {
            "solved_at": iso(ticket.solved_at),
            "closed_at": iso(ticket.closed_at),
            "follow_up_of": ticket.follow_up_of,
            "routing": {"reason": ticket.routing_reason, "score": ticket.routing_score},
            "priority": ticket.priority,
            "tags": list(ticket.tags),
            "participants": [p.user.email for p in ticket.participants],
            "comments": [
                {
                    "author": c.author.email,
                    "public": c.public,
                    "body": c.body,
                    "created_at": iso(c.created_at),
                    "message_id": c.message_id,
                    "attachments": [
                        {
                            "filename": a.filename,
                            "content_type": a.content_type,
                            "size": a.size,
                            "sha256": a.sha256,
                        }
                        for a in c.attachments
                    ],
                }
                for c in ticket.comments
            ],
        }
    )
    return detail


def list_tickets(
    session: Session, organization: str | None = None, status: str | None = None
) -> list[Ticket]:
    query = (
        select(Ticket)
        .options(selectinload(Ticket.organization), selectinload(Ticket.requester))
        .order_by(Ticket.id)
    )
    if organization is not None:
        org = find_organization(session, organization)
        query = query.where(Ticket.organization_id == org.id)
    if status is not None:
        query = query.where(Ticket.status == status)
    return list(session.scalars(query))


def get_ticket(session: Session, ticket_id: int) -> Ticket:
    ticket = session.scalar(
        select(Ticket)
        .where(Ticket.id == ticket_id)
        .options(
            selectinload(Ticket.comments).selectinload(Comment.attachments),
            selectinload(Ticket.comments).selectinload(Comment.author),
            selectinload(Ticket.participants).selectinload(Participant.user),
        )
    )
    if ticket is None:
        raise NotFound(f"ticket {ticket_id} not found")
    return ticket


def find_organization(session: Session, name: str) -> Organization:
    """An organization by exact name, case-insensitively (admins type them by hand)."""
    for org in session.scalars(select(Organization).order_by(Organization.position)):
        if org.name.casefold() == name.casefold():
            return org
    raise NotFound(f"organization {name!r} not found")


def update_ticket(
    session: Session,
    ticket: Ticket,
    now: datetime,
    status: str | None = None,
    organization: str | None = None,
    requester: str | None = None,
) -> None:
    """Apply an admin's change, enforcing that a closed ticket's requester and org are fixed."""
    if ticket.status == Status.CLOSED:
        if organization is not None or requester is not None:
            raise TicketLocked(
                f"ticket {ticket.id} is closed: its requester and organization can no longer change"
            )
        if status is not None and status != Status.CLOSED:
            raise Refused(
                f"ticket {ticket.id} is closed and cannot be reopened; a reply creates a "
                "follow-up ticket"
            )
    if organization is not None:
        org = find_organization(session, organization)
        ticket.organization = org
        ticket.routing_reason = f"set by admin to {org.name}"
        ticket.routing_score = None
    if requester is not None:
        ticket.requester = ensure_user(session, requester, "", now)
    if status is not None and status != ticket.status:
        ticket.status = status
        if status == Status.SOLVED:
            ticket.solved_at = now
        elif status == Status.CLOSED:
            ticket.closed_at = now
            ticket.solved_at = ticket.solved_at or now
        else:
            ticket.solved_at = None
    ticket.updated_at = now

"""SQLite's side of the store: one writer at a time, and commits made durable on demand.

A lock file hands the single write lock over between threads and processes faster than
SQLite's busy handler does; transactions take SQLite's write lock at BEGIN; an ingest worker
commits without syncing and syncs the write-ahead log itself before it answers 250.
PostgreSQL needs none of this (:class:`mailgate.store.Store` uses it for SQLite only).
"""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy import exc as sa_exc

from mailgate.errors import StoreUnavailable


class WriterLock:
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


class WalFile:
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


# The execution option that marks a connection as reading only (see Store.reading).
READ_ONLY = "mailgate_read_only"
# SQLite function: Python's str.lower, for case-insensitive search beyond ASCII.
UNICODE_LOWER = "unicode_lower"


def immediate_transactions(engine: Engine, sync_each_commit: bool = True) -> None:
    """Take SQLite's write lock at BEGIN, so concurrent writers wait instead of deadlocking."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        # A new database frees the pages a purge empties ([retention]) with
        # ``PRAGMA incremental_vacuum``; it must be set before the first table exists, and
        # on an existing database it changes nothing until a VACUUM (``purge --vacuum``).
        cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
        # WAL: readers (the CLI, the jobs) never block the listener's writes. synchronous=FULL
        # fsyncs the WAL at every commit; NORMAL would not, and a power cut could then lose
        # mail we already answered 250 for (RFC 5321 4.1.1.4) -- unless the caller syncs
        # the log itself before answering (Store.flush, the ingest workers).
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={'FULL' if sync_each_commit else 'NORMAL'}")
        cursor.close()
        # SQLite's lower() folds ASCII only; ``--search`` must find "Über" by "über", as
        # lower() does on PostgreSQL.
        dbapi_connection.create_function(
            UNICODE_LOWER, 1, lambda s: s.lower() if isinstance(s, str) else s, deterministic=True
        )

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # On the driver's connection: through SQLAlchemy's execution it cost more than the
        # BEGIN itself. Its errors ("database is locked") are SQLAlchemy's, as elsewhere.
        driver = conn.connection.driver_connection
        assert driver is not None  # a pooled connection that is checked out has one
        # A reading connection (Store.reading) takes no write lock: in WAL mode its snapshot
        # never blocks the listener's writes, however long a list streams.
        begin = "BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE"
        try:
            driver.execute(begin)
        except sqlite3.Error as exc:
            raise sa_exc.DBAPIError.instance(
                begin, (), exc, sqlite3.Error, dialect=conn.dialect
            ) from exc

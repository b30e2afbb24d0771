"""Who stores the mail the SMTP listener receives: worker processes, or a thread inline.

Parsing and storing a mail costs far more CPU than speaking SMTP, and one Python process
runs on one core at a time. ``serve`` therefore hands every mail to ingest worker
processes (``[server].workers``, one per CPU by default) and keeps its own process for the
SMTP sessions, which stay responsive however busy the workers are.

Both kinds of ingestor do group commit: the mails waiting when a worker becomes free are
stored in one transaction (:func:`mailgate.ingest.ingest_batch`), and each sender's future
resolves only after that commit. A worker that dies fails its mails with
:class:`StoreUnavailable` (451, the sender retries) and is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import os
import pickle
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from mailgate.config import Config
from mailgate.errors import StoreUnavailable
from mailgate.ingest import (
    InboundEnvelope,
    IngestResult,
    Prepared,
    count_result,
    ingest_batch,
    prepare,
)
from mailgate.logsetup import setup_logging
from mailgate.pipes import Channel, Frame, recv_frame
from mailgate.routing import Router
from mailgate.store import Store

log = logging.getLogger(__name__)

SWITCH_INTERVAL = 0.0005  # seconds a thread may hold the interpreter lock when another waits
# In a pool process: a writer's flusher thread, its fsync done, waits this long at most for
# the storing thread to let it answer. 0.1 ms against 0.5 ms: 3.6% more mail per second and a
# lower p99 in 9 alternating pairs of bench/smtp_load.py at K=4.
POOL_SWITCH_INTERVAL = 0.0001
_RESPAWN_PAUSE = 1.0  # seconds before a dead worker is replaced (no tight crash loop)


# --------------------------------------------------------------------------- messages
# What the SMTP process and a pool process (or the store thread) say to each other. On a
# pipe each message is one pickled frame; a mail's raw bytes never travel inside one but
# as a frame of their own after it: a pickle would be a second copy of a big mail on each
# side. ``key`` is the SMTP process's number for the mail, which the answer carries back.
# The messages sent for every mail pickle as their class and field values (``__reduce__``):
# a frozen dataclass with slots otherwise looks its fields up on every pickling and
# unpickling, which took two to three times as long.


@dataclass(frozen=True, slots=True)
class MailHead:
    """A mail to parse or store; on a pipe its raw bytes follow as the next frame."""

    key: int
    envelope: InboundEnvelope
    now: datetime

    def __reduce__(self) -> tuple[type[MailHead], tuple[int, InboundEnvelope, datetime]]:
        return MailHead, (self.key, self.envelope, self.now)


@dataclass(frozen=True, slots=True)
class Mail:
    """A mail with its raw bytes, as a pool process or the store thread takes it.

    Never sent whole over a pipe: there it is a :class:`MailHead` and a frame.
    """

    key: int
    raw: bytes
    envelope: InboundEnvelope
    now: datetime


@dataclass(frozen=True, slots=True)
class ParsedHead:
    """From a parser to the SMTP process, before the :class:`Parsed` or :class:`NotParsed`
    frame that the SMTP process forwards to a writer without unpickling it: which mail that
    frame is, and whether the SMTP process sends the raw mail on after it."""

    key: int
    raw_follows: bool

    def __reduce__(self) -> tuple[type[ParsedHead], tuple[int, bool]]:
        return ParsedHead, (self.key, self.raw_follows)


@dataclass(frozen=True, slots=True)
class Parsed:
    """A mail a parser prepared, for a writer to store.

    With ``raw_follows`` the raw bytes were left out of ``prepared`` and come as the next
    frame: the SMTP process still has them, so a big mail does not travel back and forth.
    """

    key: int
    prepared: Prepared
    raw_follows: bool

    def __reduce__(self) -> tuple[type[Parsed], tuple[int, Prepared, bool]]:
        return Parsed, (self.key, self.prepared, self.raw_follows)


@dataclass(frozen=True, slots=True)
class NotParsed:
    """A mail a parser could not prepare (a parser bug): the writer answers it 451."""

    key: int
    reason: str


@dataclass(frozen=True, slots=True)
class NewConfig:
    """The config after a reload (SIGHUP), for the mails after this message."""

    config: Config


@dataclass(frozen=True, slots=True)
class Stop:
    """Answer the mails that came before, then exit."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What became of one mail, from a writer to the SMTP process (a list per frame)."""

    key: int
    outcome: IngestResult | str  # str: why it could not be stored, answered 451
    seconds: float

    def __reduce__(self) -> tuple[type[Answer], tuple[int, IngestResult | str, float]]:
        return Answer, (self.key, self.outcome, self.seconds)


# What a writer or parser reads from its pipe, and what it takes once raw bytes are joined.
Incoming = MailHead | Parsed | NotParsed | NewConfig | Stop
Item = Mail | Parsed | NotParsed | NewConfig | Stop


class Ingestor(Protocol):
    async def submit(
        self, raw: bytes, envelope: InboundEnvelope, now: datetime
    ) -> IngestResult: ...

    def reload(self, config: Config) -> None: ...

    def close(self, timeout: float = 30.0) -> None: ...


def parser_count(config: Config) -> int:
    """``[server].parsers``; "auto" is one beside a single SQLite writer on several CPUs.

    Parsing and the pure work after it (routing, quote stripping, masking) are about half
    of a mail's CPU and need no database. With one writer (SQLite) a parser process takes
    them off the writer's core; PostgreSQL's workers parse themselves.
    """
    if config.server.parsers is not None:
        return config.server.parsers
    if worker_count(config) == 1 and usable_cpus() > 1:
        return 1
    return 0


def worker_count(config: Config) -> int:
    """``[server].workers``; "auto" is one per usable CPU on PostgreSQL and one on SQLite.

    SQLite takes one writer at a time. Measured with ``bench/smtp_load.py`` on two cores,
    one worker storing in groups beat two that parse in parallel and hand the write lock
    over (121 against 99 mails/s, 10 against 14 ms of CPU per mail): the handover, the
    smaller groups and the processes competing for the cores cost more than they saved.
    """
    if config.server.workers is not None:
        return config.server.workers
    if config.database.url.startswith("sqlite"):
        return 1
    return usable_cpus()


def usable_cpus() -> int:
    """The CPUs this process may run on (``taskset``, cpusets), not all the machine has."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _settle(future: asyncio.Future[IngestResult], outcome: IngestResult | str) -> None:
    if future.done():  # the session went away meanwhile (client timeout, shutdown)
        return
    if isinstance(outcome, IngestResult):
        future.set_result(outcome)
    else:
        future.set_exception(StoreUnavailable(outcome))


def _take_batch(first: Any, more: Any, limit: int) -> list[Any]:
    """The first item and whatever else is already waiting, up to ``limit`` mails."""
    items = [first]
    while len(items) < limit:
        try:
            items.append(more())
        except (queue.Empty, EOFError, OSError):
            break
    return items


def _store_items(
    store: Store, router: Router, items: Sequence[Item]
) -> tuple[Router, list[Answer], bool]:
    """Store runs of mails as groups; a config item switches the router for what follows.

    Items after a stop item are not stored; the last value says whether one came (the
    caller stops after sending the answers). Never raises: a failure no group commit
    foresaw still answers every sender (451).
    """
    reply: list[Answer] = []
    run: list[tuple[int, Prepared | tuple[bytes, InboundEnvelope, datetime]]] = []

    def flush() -> None:
        try:
            stored = ingest_batch(store, router, [mail for _, mail in run])
        except Exception as exc:
            log.exception("storing a group of %d mails failed", len(run))
            stored = [(StoreUnavailable(f"internal error: {exc}"), 0.0)] * len(run)
        for (key, _), (outcome, seconds) in zip(run, stored, strict=True):
            answer = outcome if isinstance(outcome, IngestResult) else str(outcome)
            reply.append(Answer(key, answer, seconds))
        run.clear()

    stopped = False
    for item in items:
        match item:
            case Mail(key, raw, envelope, now):
                run.append((key, (raw, envelope, now)))
            case Parsed(key, prepared):
                run.append((key, prepared))
            case NotParsed(key, reason):
                reply.append(Answer(key, reason, 0.0))
            case NewConfig(config):
                if run:
                    flush()
                router = Router(config)
            case Stop():
                stopped = True
                break
    if run:
        flush()
    return router, reply, stopped


# --------------------------------------------------------------------------- inline


class InlineIngestor:
    """``workers = 0``: one store thread in this process, taking mail in arrival order.

    SQLite has one writer; several threads would only queue for its lock. The thread takes
    whatever has arrived as one group.
    """

    def __init__(self, store: Store, router: Router) -> None:
        self.store = store
        self._first_router = router
        self._queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._futures: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name="mailgate-store", daemon=True)
        self._thread.start()

    async def submit(self, raw: bytes, envelope: InboundEnvelope, now: datetime) -> IngestResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[IngestResult] = loop.create_future()
        key = next(self._ids)
        self._futures[key] = (loop, future)
        self._queue.put(Mail(key, raw, envelope, now))
        result = await future
        return result

    def reload(self, config: Config) -> None:
        self._queue.put(NewConfig(config))

    def _run(self) -> None:
        router = self._first_router
        while True:
            first = self._queue.get()
            items = _take_batch(first, self._queue.get_nowait, router.config.server.batch_size)
            router, reply, stopped = _store_items(self.store, router, items)
            for answer in reply:
                loop, future = self._futures.pop(answer.key)
                if isinstance(answer.outcome, IngestResult):
                    count_result(answer.outcome, answer.seconds)
                loop.call_soon_threadsafe(_settle, future, answer.outcome)
            if stopped:
                return

    def close(self, timeout: float = 30.0) -> None:
        """Store what was submitted, then stop the store thread (up to ``timeout`` seconds)."""
        self._queue.put(Stop())
        self._thread.join(timeout)


# --------------------------------------------------------------------------- processes


# The signals that stop ``serve``. A terminal's Ctrl-C goes to the whole process group, and
# a service manager may send SIGTERM to every process of the service: a pool process must
# not die of either while it holds mail. The parent stops it with a Stop message once the
# mails in flight are answered.
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _start_shielded(process: BaseProcess) -> None:
    """Start a pool process with the stop signals blocked, in this thread only.

    The blocked set survives fork and exec, so the new interpreter holds such a signal
    pending, instead of dying of it, until :func:`_child_setup` ignores both (which
    discards it). A signal for the SMTP process meanwhile goes to its main thread.
    """
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        process.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _child_setup(log_level: int) -> None:
    """Signals and logging of a pool process.

    The parent stops its children with a stop message after the mails in flight are
    answered, so the SIGINT and SIGTERM sent to the whole process group or service are not
    theirs: ignored, and only then unblocked (see :func:`_start_shielded`).
    """
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    # A writer's flusher thread, its fsync done, must not wait the default 5 ms for the
    # interpreter lock while the writer stores the next group: that would be every reply.
    sys.setswitchinterval(POOL_SWITCH_INTERVAL)
    setup_logging(log_level)


def _worker_main(conn: Connection, config: Config, log_level: int) -> None:
    """A worker process: take mail from the pipe, store it in groups, send the outcomes.

    On SQLite the outcomes go out through a flusher thread, after the fsync that makes them
    durable (:meth:`Store.flush`), while this thread stores the next group.
    """
    _child_setup(log_level)
    store = Store(config.database.url, config.database.lock_timeout, flush_later=True)
    router = Router(config)
    answer: Callable[[list[Answer]], None] = conn.send
    flusher = _Flusher(store, conn) if store.flushes_later else None
    if flusher is not None:
        answer = flusher.put
    try:
        while True:
            try:
                first = _receive(conn)
            except (EOFError, OSError):
                return
            items = _take_batch(
                first,
                lambda: _receive(conn) if conn.poll() else _empty(),
                router.config.server.batch_size,
            )
            router, reply, stopped = _store_items(store, router, items)
            answer(reply)
            if stopped:
                return
    finally:
        if flusher is not None:
            flusher.close()
        store.close()


class _Flusher:
    """Answers committed groups once an fsync has made them durable; one fsync for all the
    groups committed while the previous one ran (group commit across groups)."""

    def __init__(self, store: Store, conn: Connection) -> None:
        self._store = store
        self._conn = conn
        self._queue: queue.SimpleQueue[list[Answer] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="mailgate-flush", daemon=True)
        self._thread.start()

    def put(self, reply: list[Answer]) -> None:
        self._queue.put(reply)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            replies = _take_batch(self._queue.get(), self._queue.get_nowait, 1 << 30)
            done = None in replies
            answers = [answer for reply in replies if reply is not None for answer in reply]
            if answers:
                try:
                    self._store.flush()
                except StoreUnavailable as exc:  # committed but maybe not durable: retry
                    log.error("could not sync the database, %d mail(s) answered 451", len(answers))
                    answers = [
                        Answer(a.key, f"not synced to disk: {exc}", a.seconds) for a in answers
                    ]
                try:
                    self._conn.send(answers)
                except (OSError, ValueError):
                    return  # the SMTP process is gone
            if done:
                return


def _parser_main(conn: Connection, config: Config, log_level: int) -> None:
    """A parser process: the pure part of ingest (parse, DKIM, routing), handed on to the writer.

    The result goes back to the SMTP process as a :class:`ParsedHead` and then the pickled
    :class:`Parsed`, which that process forwards to the writer without unpickling it. The
    raw mail is left out of it: the SMTP process still has it and sends it on as a frame of
    its own, so a big mail does not travel back and forth.
    """
    _child_setup(log_level)
    router = Router(config)
    while True:
        try:
            item = _receive(conn)
        except (EOFError, OSError):
            return
        match item:
            case Mail():
                _parse(conn, router, item)
            case NewConfig(new):
                router = Router(new)
            case Stop():
                return


def _parse(conn: Connection, router: Router, mail: Mail) -> None:
    """Prepare one mail in a parser process and send the result, raw bytes left out."""
    message: Parsed | NotParsed
    try:
        prepared = prepare(router.config, mail.raw, mail.envelope, mail.now, router=router)
    except Exception as exc:  # a parser bug: 451, the sender retries later
        log.exception("preparing a mail failed")
        message = NotParsed(mail.key, f"internal error: {exc}")
    else:
        message = Parsed(mail.key, dataclasses.replace(prepared, raw=b""), raw_follows=True)
    # The head apart from the payload: no copy to join them.
    conn.send(ParsedHead(mail.key, isinstance(message, Parsed)))
    conn.send_bytes(pickle.dumps(message, protocol=5))


def _receive(conn: Connection) -> Item:
    """The next item from the SMTP process: a mail (raw, or prepared by a parser), a
    config, or the stop message.

    A mail's raw bytes come as a frame of their own after its message, never inside a
    pickle; here they are joined to it.
    """
    message: Incoming = conn.recv()
    match message:
        case MailHead(key, envelope, now):
            return Mail(key, recv_frame(conn), envelope, now)
        case Parsed(key, prepared, True):
            return Parsed(key, dataclasses.replace(prepared, raw=recv_frame(conn)), False)
    return message


def _empty() -> Any:
    raise queue.Empty


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    role: str = "worker"  # or "parser"
    channel: Channel | None = None
    pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    alive: bool = True
    head: ParsedHead | None = None  # a parser's next payload: which mail, raw follows

    def send(self, item: Incoming) -> None:
        assert self.channel is not None
        self.channel.send(pickle.dumps(item, protocol=5))


class WorkerPool:
    """``workers = N`` store processes, each with its own database connection and router,
    and ``parsers = P`` processes that parse for them (P = 0: the workers parse).

    Everything here but :meth:`close` runs on the event loop of the SMTP listener.
    """

    def __init__(self, config: Config, count: int, parsers: int = 0) -> None:
        self.config = config
        self.count = max(1, count)
        self.parser_count = max(0, parsers)
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self._ids = itertools.count(1)
        self._workers: list[_Worker] = []
        self._parsers: list[_Worker] = []
        self._closing = False
        self._log_level = logging.getLogger().getEffectiveLevel()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._respawns: set[asyncio.Task[None]] = set()
        self._raws: dict[int, bytes] = {}  # mails at a parser: their raw bytes, to send on

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._workers = [await self._spawn(i, "worker") for i in range(self.count)]
        self._parsers = [await self._spawn(i, "parser") for i in range(self.parser_count)]
        log.info(
            "%d ingest worker process(es) and %d parser process(es) started",
            self.count,
            self.parser_count,
        )

    async def _spawn(self, index: int, role: str) -> _Worker:
        loop = asyncio.get_running_loop()
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main if role == "worker" else _parser_main,
            args=(child, self.config, self._log_level),
            name=f"mailgate-{role}-{index}",
            daemon=True,
        )
        # Writes the config to the child, from a thread where the stop signals are blocked.
        await loop.run_in_executor(None, _start_shielded, process)
        child.close()
        log.info("ingest %s %d is pid %s", role, index, process.pid)
        worker = _Worker(index, process, role=role)
        sock = socket.socket(fileno=os.dup(parent.fileno()))
        parent.close()
        on_frame = self._replied if role == "worker" else self._forward
        channel = Channel(lambda frame: on_frame(worker, frame), lambda: self._lost(worker))
        await loop.connect_accepted_socket(lambda: channel, sock)
        worker.channel = channel
        return worker

    async def submit(self, raw: bytes, envelope: InboundEnvelope, now: datetime) -> IngestResult:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[IngestResult] = loop.create_future()
        key = next(self._ids)
        worker = min(self._workers, key=lambda w: len(w.pending))  # the least busy
        if self._parsers:
            parser = min(self._parsers, key=lambda w: len(w.pending))
            if not parser.pending or worker.pending:
                # Parsed in a parser process, while the writer stores other mail; but a
                # writer with nothing to do takes it raw rather than wait for a busy parser.
                worker = parser
        if not worker.alive:
            raise StoreUnavailable(f"ingest {worker.role} {worker.index} is restarting")
        worker.send(MailHead(key, envelope, now))
        assert worker.channel is not None
        worker.channel.send(raw)
        worker.pending[key] = future
        if worker.role == "parser":
            self._raws[key] = raw  # sent on to the writer after the parsed mail
        return await future

    def reload(self, config: Config) -> None:
        self.config = config
        for worker in (*self._parsers, *self._workers):
            if worker.alive:  # a replacement starts with self.config
                with contextlib.suppress(StoreUnavailable):
                    worker.send(NewConfig(config))

    def _forward(self, parser: _Worker, frame: Frame) -> None:
        """A parser's output goes on to the least busy store worker, still pickled."""
        if parser.head is None:  # the mail's key comes first, apart from its payload
            parser.head = pickle.loads(frame)
            return
        head, parser.head = parser.head, None
        key = head.key
        future = parser.pending.pop(key, None)
        raw = self._raws.pop(key, b"")
        if future is None:
            return
        worker = min(self._workers, key=lambda w: len(w.pending))
        try:
            if not worker.alive:
                raise StoreUnavailable(f"ingest worker {worker.index} is restarting")
            assert worker.channel is not None
            worker.channel.send(frame)
            if head.raw_follows:
                worker.channel.send(raw)
        except StoreUnavailable as exc:
            _settle(future, str(exc))
            return
        worker.pending[key] = future

    def _replied(self, worker: _Worker, frame: Frame) -> None:
        reply: list[Answer] = pickle.loads(frame)
        for answer in reply:
            future = worker.pending.pop(answer.key)
            if isinstance(answer.outcome, IngestResult):
                count_result(answer.outcome, answer.seconds)
            _settle(future, answer.outcome)

    def _lost(self, worker: _Worker) -> None:
        """A process ended: answer its mails 451 and, unless we are stopping, replace it."""
        worker.alive = False
        lost, worker.pending = worker.pending, {}
        for key in lost:
            self._raws.pop(key, None)
        for future in lost.values():
            _settle(future, f"ingest {worker.role} {worker.index} exited before storing it")
        if self._closing:  # close() reaps it
            return
        task = asyncio.get_running_loop().create_task(self._replace(worker, len(lost)))
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _replace(self, worker: _Worker, lost: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, worker.process.join, 5)
        log.error(
            "ingest %s %d exited (code %s), %d mail(s) answered 451; starting a new one",
            worker.role,
            worker.index,
            worker.process.exitcode,
            lost,
        )
        await asyncio.sleep(_RESPAWN_PAUSE)  # no tight crash loop
        if not self._closing:
            group = self._workers if worker.role == "worker" else self._parsers
            group[worker.index] = await self._spawn(worker.index, worker.role)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the workers after the mails they hold (the listener stopped taking mail).

        Called off the event loop (it waits for the processes), while the loop still runs:
        the loop writes the stop messages and reads the last answers.
        """
        self._closing = True
        deadline = time.monotonic() + timeout
        for group in (self._parsers, self._workers):  # parsers first: they feed the workers
            self._stop(group, deadline)

    def _stop(self, group: list[_Worker], deadline: float) -> None:
        loop = self._loop
        for worker in group:
            if loop is not None and worker.alive:
                loop.call_soon_threadsafe(self._send_stop, worker)
        for worker in group:
            worker.process.join(max(0.1, deadline - time.monotonic()))
            if worker.process.is_alive():
                log.warning("ingest %s %d did not stop; killing it", worker.role, worker.index)
                worker.process.kill()
                worker.process.join(5)
            if worker.channel is not None:  # all it sent is read: on to the next group
                worker.channel.gone.wait(max(0.1, deadline - time.monotonic()))

    @staticmethod
    def _send_stop(worker: _Worker) -> None:
        with contextlib.suppress(StoreUnavailable):
            worker.send(Stop())

"""Ingest worker processes and group commit, over real sockets and a real database."""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
import pickle
import random
import signal
import smtplib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mailgate.app import ServerThread
from mailgate.config import Config
from mailgate.errors import StoreUnavailable
from mailgate.ingest import InboundEnvelope, IngestResult, ingest_batch, prepare
from mailgate.models import Comment, LedgerEntry, Ticket
from mailgate.pipes import Channel, recv_frame
from mailgate.routing import Router
from mailgate.store import Store
from mailgate.workers import (
    Answer,
    MailHead,
    NewConfig,
    NotParsed,
    Parsed,
    ParsedHead,
    Stop,
    WorkerPool,
    worker_count,
)

from .conftest import Clock, flock_waiters, mail, send, wait_until
from .test_smtp import database_write_locked

ENVELOPE = InboundEnvelope("anna@mueller-logistik.de", ("support@support.example.com",))


def count(store: Store, model: type) -> int:
    with store.transaction() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


@pytest.fixture(params=[(2, 0), (1, 1)], ids=["2-workers", "1-worker-1-parser"])
def pool_server(
    request: pytest.FixtureRequest,
    make_config: Callable[..., tuple[Config, Path]],
    store: Store,
    clock: Clock,
) -> Iterator[ServerThread]:
    workers, parsers = request.param
    config, _ = make_config(
        {
            "server": {"workers": workers, "parsers": parsers},
            "limits": {"tickets_per_hour": 1000, "acks_per_hour": 1000},
        }
    )
    with ServerThread(config, store, clock) as thread:
        yield thread


def test_auto_is_one_writer_on_sqlite_and_one_per_cpu_on_postgresql(
    make_config: Callable[..., tuple[Config, Path]],
) -> None:
    config, _ = make_config({"server": {"workers": "auto"}})
    expected = 1 if config.database.url.startswith("sqlite") else len(os.sched_getaffinity(0))
    assert worker_count(config) == expected
    assert worker_count(make_config({"server": {"workers": 3}})[0]) == 3


def worker_pids(thread: ServerThread) -> list[int]:
    """The pool's processes: store workers and parsers."""
    pool = thread.server.ingestor
    assert isinstance(pool, WorkerPool)
    processes = [*pool._workers, *pool._parsers]
    return [w.process.pid for w in processes if w.process.pid is not None and w.process.is_alive()]


def test_workers_store_and_thread_mail(pool_server: ServerThread, store: Store) -> None:
    """Parsed and stored in another process: ticket, organization and reply as inline."""
    port = pool_server.server.port
    assert port is not None and len(worker_pids(pool_server)) == 2  # two processes either way
    first = mail(subject="Drucker kaputt", message_id="<w-1@m.de>")
    with smtplib.SMTP("127.0.0.1", port) as client:
        client.ehlo()
        client.mail("anna@mueller-logistik.de")
        client.rcpt("support@support.example.com")
        code, reply = client.data(first)
    assert code == 250 and reply.startswith(b"2.0.0 Ok: created ticket #")
    with store.transaction() as s:  # the raw mail reached the writer byte for byte
        stored = s.scalars(select(LedgerEntry.raw)).one()
        assert stored == first if first.endswith(b"\r\n") else stored == first + b"\r\n"
    reply_mail = mail(subject="AW: Drucker kaputt", extra="In-Reply-To: <w-1@m.de>\r\n")
    send(port, reply_mail)
    with store.transaction() as s:
        ticket = s.scalars(select(Ticket)).one()
        assert ticket.organization is not None
        assert ticket.organization.name == "Müller Logistik GmbH"
        assert len(ticket.comments) == 2


def test_concurrent_sessions_through_workers_are_stored_exactly_once(
    pool_server: ServerThread, store: Store
) -> None:
    """Mails arriving together are grouped; every 250 is one stored mail, none doubled."""
    port = pool_server.server.port
    assert port is not None
    answers: list[tuple[int, bytes]] = []
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                smtp.ehlo()
                for i in range(10):
                    smtp.mail("anna@mueller-logistik.de")
                    smtp.rcpt("support@support.example.com")
                    answers.append(smtp.data(mail(subject=f"Anfrage {n}-{i}")))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [code for code, _ in answers] == [250] * 60
    assert count(store, LedgerEntry) == 60
    assert count(store, Ticket) == 60


def test_killed_worker_is_replaced_and_no_mail_is_lost(
    pool_server: ServerThread, store: Store
) -> None:
    """A worker that dies answers its mail 451 (the sender retries) and is started again."""
    port = pool_server.server.port
    assert port is not None
    for pid in worker_pids(pool_server):
        os.kill(pid, signal.SIGKILL)
    raw = mail(message_id="<after-kill@m.de>")
    codes: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo()
            client.mail("anna@mueller-logistik.de")
            client.rcpt("support@support.example.com")
            code, _ = client.data(raw)
        codes.append(code)
        if code == 250:
            break
        time.sleep(0.2)  # an MTA's retry interval, shortened
    assert codes[-1] == 250 and set(codes) <= {250, 451}
    send(port, raw)  # a retry after the 250 is a duplicate
    assert count(store, LedgerEntry) == 1
    assert len(worker_pids(pool_server)) == 2


def _items(clock: Clock, *raws: bytes) -> list[tuple[bytes, InboundEnvelope, object]]:
    return [(raw, ENVELOPE, clock()) for raw in raws]


def test_group_commit_stores_each_mail_as_alone(store: Store, config: Config, clock: Clock) -> None:
    """One transaction, each mail its own outcome: new, reply to the first, duplicate, junk."""
    first = mail(subject="Drucker kaputt", message_id="<g-1@m.de>")
    reply = mail(subject="AW: Drucker kaputt", extra="In-Reply-To: <g-1@m.de>\r\n")
    outcomes = ingest_batch(
        store, Router(config), _items(clock, first, reply, first, b"\x00\x01 no mail")
    )
    results = [o for o, _ in outcomes]
    assert all(isinstance(r, IngestResult) for r in results)
    actions = [r.action for r in results if isinstance(r, IngestResult)]
    assert actions == ["created", "commented", "duplicate", "quarantined"]
    assert count(store, LedgerEntry) == 3
    assert count(store, Comment) == 2


def test_failed_group_commit_loses_nothing_and_answers_each(
    store: Store, config: Config, clock: Clock
) -> None:
    """While the database cannot be written the whole group is answered 451, none stored."""
    with database_write_locked(config.database.url):
        outcomes = ingest_batch(store, Router(config), _items(clock, mail(), mail()))
    assert [type(o) for o, _ in outcomes] == [StoreUnavailable, StoreUnavailable]
    assert count(store, LedgerEntry) == 0
    # After the outage the same group goes through.
    outcomes = ingest_batch(store, Router(config), _items(clock, mail(), mail()))
    assert [o.action for o, _ in outcomes if isinstance(o, IngestResult)] == ["created"] * 2


def test_writer_lock_hands_over_between_stores(store: Store, config: Config) -> None:
    """A second writer waits for the first (no 'database is locked'), then writes."""
    other = Store(config.database.url, lock_timeout=5)
    wrote_at: list[float] = []
    started = threading.Event()

    def second() -> None:
        started.set()
        with other.transaction() as s:
            wrote_at.append(time.monotonic())
            s.execute(Ticket.__table__.update().values(subject="second"))

    try:
        with store.transaction():
            thread = threading.Thread(target=second)
            thread.start()
            assert started.wait(10)
            if store.dialect == "sqlite":  # the second writer waits for the first
                thread.join(0.3)
                assert thread.is_alive() and wrote_at == []
            else:  # PostgreSQL lets it write beside the first
                thread.join(10)
            released_at = time.monotonic()
        thread.join(10)
        assert len(wrote_at) == 1
        if store.dialect == "sqlite":
            assert wrote_at[0] >= released_at
    finally:
        other.close()


def test_writer_lock_gives_up_after_lock_timeout(store: Store, config: Config) -> None:
    """A writer stuck elsewhere means 451 after lock_timeout, not a hang."""
    if store.dialect != "sqlite":
        pytest.skip("the write lock file is SQLite's")
    other = Store(config.database.url, lock_timeout=0.2)
    try:
        with store.batch():
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="database busy"), other.transaction():
                pass
            assert time.monotonic() - started < 10  # 0.2 s and the machine's load, not a hang
    finally:
        other.close()


def test_writer_lock_waits_in_the_kernel_and_wakes_at_release(store: Store, config: Config) -> None:
    """The main thread (a worker's) waits in flock, not in sleeps: it writes as soon as the
    holder lets go, and leaves no alarm behind."""
    if store.dialect != "sqlite":
        pytest.skip("the write lock file is SQLite's")
    other = Store(config.database.url, lock_timeout=10)
    holding = threading.Event()
    released: list[float] = []
    waiting_in_kernel: list[bool] = []

    def hold() -> None:
        with store.transaction():
            holding.set()
            waiting_in_kernel.append(wait_until(lambda: flock_waiters(os.getpid()) > 0, 5))
            released.append(time.monotonic())

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(5)
        with other.transaction():
            got = time.monotonic()
        thread.join(10)
        assert waiting_in_kernel == [True]  # woken by the release itself, not by a timer
        assert released and released[0] <= got
        assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        thread.join(10)
        other.close()


def test_a_failure_inside_a_group_commits_nothing_of_it(store: Store) -> None:
    """One mail's failure spoils its group: nothing is committed, the caller stores each alone."""
    from mailgate.models import Meta

    with pytest.raises(StoreUnavailable, match="nothing was committed"), store.batch():
        with store.transaction() as session:
            session.add(Meta(key="first-of-group", value="x"))
        try:
            with store.transaction():
                raise ValueError("a bug while storing the second mail")
        except ValueError:
            pass  # ingest quarantines such a mail; in a group that must not commit the rest
        with pytest.raises(StoreUnavailable, match="one by one"), store.transaction():
            pass
    with store.transaction() as session:
        assert session.get(Meta, "first-of-group") is None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_loop_reads_the_frames_a_pool_process_writes(seed: int) -> None:
    """The SMTP process's reader cuts exactly the frames multiprocessing wrote, however the
    bytes arrive: empty, small, at the size limits, and several megabytes long."""
    rng = random.Random(seed)
    frames = [b"", b"x", rng.randbytes(16384), rng.randbytes(16385), rng.randbytes(70_000)]
    frames += [rng.randbytes((1 << 20) - 1), rng.randbytes(3 << 20), b"after the big one"]
    ours, theirs = multiprocessing.Pipe()
    writer = threading.Thread(target=lambda: [theirs.send_bytes(f) for f in frames])
    writer.start()
    stream = bytearray()
    with socket.socket(fileno=os.dup(ours.fileno())) as sock:
        sock.settimeout(10)
        while len(stream) < sum(len(f) + 4 for f in frames):
            stream += sock.recv(1 << 20)
    writer.join(10)
    got: list[bytes] = []
    channel = Channel(lambda frame: got.append(bytes(frame)), lambda: None)
    position = 0
    while position < len(stream):
        step = rng.choice([1, 3, 4, 5, 100, 65536, 1 << 20])
        channel.data_received(bytes(stream[position : position + step]))
        position += step
    assert got == frames


@pytest.mark.parametrize("seed", [1, 2])
def test_the_loop_writes_frames_a_pool_process_reads_without_copying_big_ones(seed: int) -> None:
    """Frames the SMTP process sends reach a pool process whole and in order, small ones
    queued behind big ones included, and a big frame is never handed to the transport
    whole: the transport would copy what the pipe does not take at once."""
    rng = random.Random(seed)
    frames = [b"x", rng.randbytes(65536), rng.randbytes(65537), rng.randbytes(6 << 20), b"a"]
    frames += [rng.randbytes(100), rng.randbytes(3 << 20), b"", b"last"]
    ours, theirs = multiprocessing.Pipe()
    got: list[bytes] = []

    def read() -> None:  # slowly, so that the pipe fills and the loop must wait for it
        for _ in frames:
            got.append(theirs.recv_bytes())
            time.sleep(0.01)

    reader = threading.Thread(target=read)
    reader.start()
    most_held = 0

    async def send() -> None:
        nonlocal most_held
        loop = asyncio.get_running_loop()
        channel = Channel(lambda frame: None, lambda: None)
        sock = socket.socket(fileno=os.dup(ours.fileno()))
        await loop.connect_accepted_socket(lambda: channel, sock)
        assert channel.transport is not None
        for frame in frames:
            channel.send(frame)
            most_held = max(most_held, channel.transport.get_write_buffer_size())
        while channel._outgoing or channel.transport.get_write_buffer_size():
            most_held = max(most_held, channel.transport.get_write_buffer_size())
            await asyncio.sleep(0.001)
        channel.close()

    asyncio.run(send())
    reader.join(30)
    assert got == frames
    assert most_held < 1 << 20  # of 9 MB sent


def test_a_frame_cut_by_a_signal_is_still_read_whole() -> None:
    """A pool process reads a mail's bytes in one wait; a signal arriving halfway (the
    write lock's timer is one) must not cut the mail short."""
    data = random.Random(7).randbytes(3 << 20)
    ours, theirs = multiprocessing.Pipe()

    reading = threading.get_ident()
    signalled = threading.Event()

    def write() -> None:
        with socket.socket(fileno=os.dup(theirs.fileno())) as sock:
            # Sent once the reader has taken most of the first megabyte: it is mid-frame.
            sock.sendall(struct.pack("!i", len(data)) + data[: 1 << 20])
            signal.pthread_kill(reading, signal.SIGALRM)
            signalled.wait(10)  # the handler ran: the rest arrives after the cut
            sock.sendall(data[1 << 20 :])

    writer = threading.Thread(target=write)
    previous = signal.signal(signal.SIGALRM, lambda *_: signalled.set())
    try:
        writer.start()
        assert recv_frame(ours) == data
        assert signalled.is_set()
    finally:
        signal.signal(signal.SIGALRM, previous)
        writer.join(10)


def test_pipe_messages_arrive_with_every_field(config: Config, clock: Clock) -> None:
    """What the SMTP process and a pool process send each other unpickles to an equal
    message; the messages sent for every mail spell out how they pickle, and a field left
    out of that would be lost on the pipe."""
    prepared = prepare(config, mail(), ENVELOPE, clock(), router=Router(config))
    result = IngestResult("created", 7, None, "x@m.de", "member")
    messages = [
        MailHead(1, ENVELOPE, clock()),
        ParsedHead(2, True),
        Parsed(3, dataclasses.replace(prepared, raw=b""), True),
        NotParsed(4, "internal error: boom"),
        NewConfig(config),
        Stop(),
        Answer(5, result, 0.25),
        Answer(6, "not synced to disk: full", 0.5),
    ]
    for message in messages:
        assert pickle.loads(pickle.dumps(message, protocol=5)) == message

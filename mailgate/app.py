"""``mailgate serve`` put together: the listener, the ingestor, the jobs, metrics, signals.

This is the one place that knows how the parts of a running daemon fit: which ingestor
takes the mail (:mod:`mailgate.workers`), the SMTP/LMTP listener that hands it over
(:mod:`mailgate.smtp`), the outbox and auto-close jobs on a scheduler
(:mod:`mailgate.jobs`), the HTTP listener (:mod:`mailgate.web`: metrics, health, the
vault's links), and the signals that reload the config (SIGHUP) or stop the daemon
(SIGTERM, SIGINT).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from mailgate.config import Config
from mailgate.errors import ConfigError, StoreUnavailable
from mailgate.jobs import PURGE_INTERVAL, Jobs
from mailgate.routing import Router
from mailgate.smtp import Clock, Handler, listen, utc_now
from mailgate.store import Store
from mailgate.vault.pages import SecretPages
from mailgate.web import start_http
from mailgate.workers import (
    SWITCH_INTERVAL,
    Ingestor,
    InlineIngestor,
    WorkerPool,
    parser_count,
    worker_count,
)

# The daemon's lines keep the logger name they have always had ("mailgate.smtp"), so that
# log filters and alerts on it keep matching.
log = logging.getLogger("mailgate.smtp")

T = TypeVar("T")


class JobThread(Executor):
    """One daemon thread that runs the jobs (and the health check's query) in turn.

    Not a :class:`~concurrent.futures.ThreadPoolExecutor`: Python waits for the threads of
    those at exit, and a job relaying mail to a dead relay would hold the process past
    ``drain_timeout``. A run abandoned that way leaves its outbox rows claimed; they are
    sent again once the claim is stale (:data:`mailgate.jobs.STALE_CLAIM`).
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None]
        self._queue = queue.SimpleQueue()
        self._shut = False
        self._thread = threading.Thread(target=self._work, name="mailgate-jobs", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if self._shut:  # as ThreadPoolExecutor: nothing would ever run it
            raise RuntimeError("cannot schedule new work after shutdown")
        future: Future[T] = Future()
        self._queue.put((future, functools.partial(fn, *args, **kwargs)))
        return future

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, call = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as exc:  # handed to whoever waits for the future
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shut = True
        self._queue.put(None)
        if wait:
            self._thread.join()


class MailServer:
    """The listener's lifecycle on an event loop: start, report the bound port, stop."""

    def __init__(self, config: Config, store: Store, clock: Clock = utc_now) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        # Jobs relay mail over the network: they must never hold up storing inbound mail.
        self.jobs_executor = JobThread()
        self.ingestor: Ingestor | None = None
        self.handler: Handler | None = None
        self.server: asyncio.base_events.Server | None = None
        self.port: int | None = None

    async def start(self) -> int:
        lmtp = self.config.server.protocol == "lmtp"
        count = worker_count(self.config)
        if count == 0:
            self.ingestor = InlineIngestor(self.store, Router(self.config))
        else:
            pool = WorkerPool(self.config, count, parser_count(self.config))
            await pool.start()
            self.ingestor = pool
        self.handler = Handler(self.config, self.ingestor, self.clock, lmtp=lmtp)
        cfg = self.config.server
        self.server = await listen(self.handler, cfg)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info(
            "mailgate listening on %s:%s (%s), storing in %s",
            cfg.host,
            self.port,
            cfg.protocol,
            self.store.engine.url.render_as_string(hide_password=True),
        )
        for warning in self.config.security.warnings(bool(self.config.agents.addresses)):
            log.warning("%s", warning)
        return self.port

    async def reload(self, load: Callable[[], Config]) -> bool:
        """Re-read the config and sync it off the loop, then hand it to the ingestor.

        The ingestor's store thread or workers build their router from it, each for the
        mails after the reload. An invalid config (or a database that cannot take the
        sync) is refused with a log line, and the config in force stays.
        """
        assert self.handler is not None and self.ingestor is not None
        loop = asyncio.get_running_loop()

        def prepare() -> Config:
            config = load()
            self.store.sync(config, self.clock())
            return config

        try:
            config = await loop.run_in_executor(None, prepare)
        except (ConfigError, StoreUnavailable) as exc:
            log.error("config reload refused, the previous config stays in force: %s", exc)
            return False
        if config.server != self.config.server:
            log.warning("[server] changes take effect only after a restart")
        self.ingestor.reload(config)
        self.handler.config = config
        self.config = config
        log.info(
            "config reloaded from %s: %d organizations", config.source, len(config.organizations)
        )
        return True

    async def stop(self, timeout: float | None = None) -> bool:
        """The drain: stop accepting, answer the mails in flight, close the sessions, then
        stop the ingestor's processes; within ``timeout`` seconds (``[server]
        drain_timeout``). False if sessions had to be cut short.

        The pool processes are told to stop only after every session is closed, so no mail
        reaches one that is on its way out (that was a 451 for a mail that had arrived).
        """
        loop = asyncio.get_running_loop()
        if timeout is None:
            timeout = self.config.server.drain_timeout.total_seconds()
        deadline = loop.time() + timeout
        if self.server is not None:
            self.server.close()
        drained = True
        if self.handler is not None:
            drained = await self.handler.drain(timeout)
            if not drained:
                log.warning(
                    "drain timed out after %gs: sessions still busy were closed with 421",
                    timeout,
                )
        if self.server is not None:
            # From Python 3.12 on this waits for the clients, all closed by now.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 5)
        if self.ingestor is not None:
            # What a worker still holds after a timed-out drain it stores before it stops.
            left = max(_POOL_STOP_MINIMUM, deadline - loop.time())
            await loop.run_in_executor(None, self.ingestor.close, left)
        self.jobs_executor.shutdown(wait=False)  # a job run in progress: see Scheduled.stop
        return drained


# Seconds the pool processes get to store what they hold and exit, however late the drain.
_POOL_STOP_MINIMUM = 5.0


class Scheduled:
    """The outbox, auto-close, digest and retention jobs on apscheduler, off the event loop,
    one run at a time.

    On SIGTERM a run in progress is let finish, within ``drain_timeout`` (a job relaying a
    notification or closing tickets), instead of being cancelled, which apscheduler logged
    as a job failing with ``CancelledError``. One still running after that is abandoned
    with a warning (:class:`JobThread`).
    """

    def __init__(self, server: MailServer) -> None:
        self.server = server
        self._built: dict[str, Jobs] = {}  # one Jobs (renderer, hours, relay) per config
        self._running: set[asyncio.Task[Any]] = set()
        loop = asyncio.get_running_loop()
        self.scheduler = AsyncIOScheduler(event_loop=loop, timezone="UTC")
        intervals = {
            "deliver": server.config.jobs.outbox_interval,
            "close": server.config.jobs.close_interval,
            # Looks each minute whether the morning's digest is due (it is sent once a day).
            "digest": timedelta(minutes=1),
            "purge": PURGE_INTERVAL,  # [retention]
        }
        # The purge first runs a few minutes after start-up, not amid its first mail.
        later = datetime.now(UTC) + timedelta(minutes=5)
        for name, interval in intervals.items():
            self.scheduler.add_job(
                self._run,
                "interval",
                args=[name],
                seconds=interval.total_seconds(),
                max_instances=1,
                coalesce=True,
                next_run_time=later if name == "purge" else server.clock(),
                id=name,
            )
        self.scheduler.start()

    async def _run(self, name: str) -> None:
        server = self.server
        jobs = self._built.get("jobs")
        if jobs is None or jobs.config is not server.config:  # new, or reloaded by SIGHUP
            jobs = self._built["jobs"] = Jobs(server.store, server.config)
        job = {
            "deliver": jobs.deliver_outbox,
            "close": jobs.close_solved,
            "digest": jobs.send_digest,
            "purge": jobs.purge,
        }[name]
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            await asyncio.get_running_loop().run_in_executor(
                server.jobs_executor, job, server.clock()
            )
        except StoreUnavailable as exc:
            log.warning("job %s skipped, database unavailable: %s", name, exc)
        except Exception:
            log.exception("job %s failed", name)
        except asyncio.CancelledError:  # only at exit, after stop() gave up waiting
            log.warning("job %s abandoned in progress: mailgate is exiting", name)
        finally:
            self._running.discard(task)

    async def stop(self, timeout: float) -> bool:
        """No new runs; wait up to ``timeout`` seconds for the one in progress.

        Paused first and shut down only after the wait: apscheduler's shutdown cancels the
        runs in progress.
        """
        self.scheduler.pause()
        running = list(self._running)
        pending: set[asyncio.Task[Any]] = set()
        if running:
            log.info("waiting for the %d job run(s) in progress", len(running))
            _, pending = await asyncio.wait(running, timeout=max(0.0, timeout))
            if pending:
                log.warning("a job run was still in progress after %gs", timeout)
        self.scheduler.shutdown(wait=False)
        return not pending


async def serve_until_signalled(
    config: Config, store: Store, load: Callable[[], Config] | None = None
) -> None:
    """``mailgate serve``: run until SIGTERM/SIGINT; SIGHUP reloads the config via ``load``.

    The signal starts the drain (:meth:`MailServer.stop`); the process exits 0 after it,
    also after one cut short by ``drain_timeout`` (a warning says so): the senders of the
    mails cut short got 421 and keep them, nothing was lost.
    """
    # With workers = 0 a mail passes through the store thread and back; at the default
    # switch interval (5 ms) each hand-over could wait that long for the event loop to
    # yield the interpreter (the jobs' thread, too).
    sys.setswitchinterval(SWITCH_INTERVAL)
    server = MailServer(config, store)
    await server.start()
    scheduled = Scheduled(server)
    http = None
    if config.metrics.port is not None:

        async def healthy() -> str | None:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    server.jobs_executor, store.schema_is_current
                )
            except StoreUnavailable as exc:
                return str(exc)
            except RuntimeError:  # the jobs' thread is shut down: the drain is under way
                return "mailgate is stopping"
            return None

        pages = SecretPages(lambda: server.config, store, server.clock)
        # Mounted with the vault off too: a reload may turn it on (the pages ask each time).
        http, _ = await start_http(config.metrics.host, config.metrics.port, healthy, pages.routes)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[bool]] = set()
    if load is not None:

        def on_hup() -> None:
            task = loop.create_task(server.reload(load))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()
    timeout = server.config.server.drain_timeout.total_seconds()
    log.info("shutting down: finishing the mail in flight (drain_timeout %gs)", timeout)
    # A second SIGTERM changes nothing: the drain is already under way, and bounded.
    deadline = loop.time() + timeout
    if http is not None:
        await http.cleanup()  # a stopping instance is no longer healthy
    jobs = loop.create_task(scheduled.stop(timeout))
    drained = await server.stop(timeout)
    await jobs
    if reloads:
        await asyncio.wait(reloads, timeout=max(0.0, deadline - loop.time()))
    log.info("stopped" if drained else "stopped after the drain timed out")


class ServerThread:
    """Run a :class:`MailServer` on its own loop in a thread (tests, embedding)."""

    def __init__(self, config: Config, store: Store, clock: Clock = utc_now) -> None:
        self.server = MailServer(config, store, clock)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> int:
        self._thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

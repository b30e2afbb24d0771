"""``mailgate serve`` put together: the listener, the ingestor, the jobs, metrics, signals.

This is the one place that knows how the parts of a running daemon fit: which ingestor
takes the mail (:mod:`mailgate.workers`), the SMTP/LMTP listener that hands it over
(:mod:`mailgate.smtp`), the outbox and auto-close jobs on a scheduler
(:mod:`mailgate.jobs`), the metrics endpoint (:mod:`mailgate.health`), and the signals
that reload the config (SIGHUP) or stop the daemon (SIGTERM, SIGINT).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from mailgate.config import Config
from mailgate.errors import ConfigError, StoreUnavailable
from mailgate.health import start_http
from mailgate.jobs import Jobs
from mailgate.routing import Router
from mailgate.smtp import Clock, Handler, listen, utc_now
from mailgate.store import Store
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


class MailServer:
    """The listener's lifecycle on an event loop: start, report the bound port, stop."""

    def __init__(self, config: Config, store: Store, clock: Clock = utc_now) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        # Jobs relay mail over the network: they must never hold up storing inbound mail.
        self.jobs_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailgate-jobs")
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

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let messages being stored finish their transaction, then close."""
        if self.server is not None:
            self.server.close()
        if self.handler is not None and not await self.handler.wait_idle(grace):
            log.warning("shutdown: gave up waiting for messages still being stored")
        if self.server is not None:
            close_clients = getattr(self.server, "close_clients", None)  # Python 3.13+
            if close_clients is not None:
                close_clients()
            # From Python 3.12 on this waits for idle clients too; do not let one hold us.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 5)
        loop = asyncio.get_running_loop()
        if self.ingestor is not None:
            await loop.run_in_executor(None, self.ingestor.close)
        await loop.run_in_executor(None, self.jobs_executor.shutdown, True)


def start_scheduler(server: MailServer) -> AsyncIOScheduler:
    """The outbox and auto-close jobs on apscheduler, off the event loop, one run at a time."""
    loop = asyncio.get_running_loop()

    built: dict[str, Jobs] = {}  # one Jobs (renderer, hours, relay) per config in force

    async def run(name: str) -> None:
        jobs = built.get("jobs")
        if jobs is None or jobs.config is not server.config:  # new, or reloaded by SIGHUP
            jobs = built["jobs"] = Jobs(server.store, server.config)
        job = jobs.deliver_outbox if name == "deliver" else jobs.close_solved
        try:
            await loop.run_in_executor(server.jobs_executor, job, server.clock())
        except StoreUnavailable as exc:
            log.warning("job %s skipped, database unavailable: %s", name, exc)
        except Exception:
            log.exception("job %s failed", name)

    scheduler = AsyncIOScheduler(event_loop=loop, timezone="UTC")
    intervals = {
        "deliver": server.config.jobs.outbox_interval,
        "close": server.config.jobs.close_interval,
    }
    for name, interval in intervals.items():
        scheduler.add_job(
            run,
            "interval",
            args=[name],
            seconds=interval.total_seconds(),
            max_instances=1,
            coalesce=True,
            next_run_time=server.clock(),
            id=name,
        )
    scheduler.start()
    return scheduler


async def serve_until_signalled(
    config: Config, store: Store, load: Callable[[], Config] | None = None
) -> None:
    """``mailgate serve``: run until SIGTERM/SIGINT; SIGHUP reloads the config via ``load``."""
    # With workers = 0 a mail passes through the store thread and back; at the default
    # switch interval (5 ms) each hand-over could wait that long for the event loop to
    # yield the interpreter (the jobs' thread, too).
    sys.setswitchinterval(SWITCH_INTERVAL)
    server = MailServer(config, store)
    await server.start()
    scheduler = start_scheduler(server)
    http = None
    if config.metrics.port is not None:

        async def healthy() -> str | None:
            try:
                await asyncio.get_running_loop().run_in_executor(
                    server.jobs_executor, store.schema_is_current
                )
            except StoreUnavailable as exc:
                return str(exc)
            return None

        http = await start_http(config.metrics.host, config.metrics.port, healthy)
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
    log.info("shutting down: finishing messages in flight")
    scheduler.shutdown(wait=False)
    if http is not None:
        http.close()
    await server.stop()
    log.info("stopped")


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

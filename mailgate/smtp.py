"""The SMTP/LMTP listener: aiosmtpd protocol, our handler, and the server's lifecycle.

The rule this module exists for (RFC 5321 section 4.1.1.4, "the receiver-SMTP MUST NOT
accept responsibility for a message unless it has been safely stored"): answer 250 only
after :func:`mailgate.ingest.ingest` committed the mail, and 451 whenever it could not, so
the sending MTA keeps the mail and retries. Every reply text is defined in :mod:`replies`
style constants below, with its enhanced status code (RFC 3463).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailgate.config import Config
from mailgate.errors import ConfigError, StoreUnavailable
from mailgate.ingest import Envelope as MailEnvelope
from mailgate.ingest import IngestResult
from mailgate.routing import Router
from mailgate.store import Store
from mailgate.workers import (
    SWITCH_INTERVAL,
    Ingestor,
    InlineIngestor,
    WorkerPool,
    parser_count,
    worker_count,
)

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

# Replies, one place. RFC 5321 section 4.2 (basic codes), RFC 3463 (enhanced codes).
RCPT_OK = "250 2.1.5 Recipient ok"
RCPT_UNKNOWN = "550 5.1.1 Recipient address rejected: not a mailbox of ours"  # never a relay
RCPT_BAD_SYNTAX = "501 5.1.3 Bad recipient address syntax"
STORED = "250 2.0.0 Ok: {detail}"
TEMPFAIL = "451 4.3.0 Cannot store the message right now, please try again later"
TOO_BIG = "552 5.3.4 Message size exceeds the fixed maximum message size"
TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"  # RFC 5321 4.5.3.1.10: the client retries

# aiosmtpd's own size replies carry no enhanced status code; give them ours.
_REWRITE = {
    "552 Error: Too much mail data": TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG,
}


def utc_now() -> datetime:
    return datetime.now(UTC)


class _ReplyCodes:
    """Mixin that maps aiosmtpd's built-in replies onto ours before they are sent."""

    async def push(self, status: str) -> None:
        await super().push(_REWRITE.get(status, status))  # type: ignore[misc]


class MailgateSMTP(_ReplyCodes, SMTP):
    pass


class MailgateLMTP(_ReplyCodes, LMTP):
    pass


def stored_reply(result: IngestResult) -> str:
    if result.ticket is not None:
        detail = f"{result.action} ticket #{result.ticket}"
    else:
        detail = f"{result.action} ({result.reason})"
    return STORED.format(detail=detail.replace("\r", " ").replace("\n", " "))


class Handler:
    """aiosmtpd hooks: accept our domains only, store on DATA, never a 5xx for our faults."""

    def __init__(
        self,
        config: Config,
        ingestor: Ingestor,
        clock: Clock = utc_now,
        lmtp: bool = False,
    ) -> None:
        self.config = config  # swapped on reload (SIGHUP); the ingestor gets it too
        self.ingestor = ingestor
        self.clock = clock
        self.lmtp = lmtp
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        local, at, domain = address.rpartition("@")
        if not at or not local:
            return RCPT_BAD_SYNTAX
        config = self.config
        if len(envelope.rcpt_tos) >= config.limits.max_recipients:
            return TOO_MANY_RCPTS
        if domain.lower().rstrip(".") not in config.mail.domains:
            log.info("refused recipient %s from %s", address, session.peer)
            return RCPT_UNKNOWN
        envelope.rcpt_tos.append(address)
        return RCPT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        mail_envelope = MailEnvelope(
            mail_from=envelope.mail_from or "", rcpt_to=tuple(envelope.rcpt_tos)
        )
        self.in_flight += 1
        self._idle.clear()
        try:
            # Parsing and database work run off the event loop (in worker processes, or a
            # store thread), so other sessions stay responsive.
            result = await self.ingestor.submit(raw, mail_envelope, self.clock())
            reply = stored_reply(result)
        except StoreUnavailable as exc:
            log.error("could not store mail from %s, answered 451: %s", envelope.mail_from, exc)
            reply = TEMPFAIL
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()
        if self.lmtp:
            # LMTP (RFC 2033 section 4.2): one reply per accepted recipient.
            return "\r\n".join([reply] * max(1, len(envelope.rcpt_tos)))
        return reply

    async def handle_exception(self, error: Exception) -> str:
        """Our faults are temporary for the sender: 451, never aiosmtpd's default 500."""
        log.exception("SMTP session error", exc_info=error)
        return TEMPFAIL

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no DATA is being stored (graceful shutdown); False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


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
        loop = asyncio.get_running_loop()
        lmtp = self.config.server.protocol == "lmtp"
        count = worker_count(self.config)
        if count == 0:
            self.ingestor = InlineIngestor(self.store, Router(self.config))
        else:
            pool = WorkerPool(self.config, count, parser_count(self.config))
            await pool.start()
            self.ingestor = pool
        self.handler = Handler(self.config, self.ingestor, self.clock, lmtp=lmtp)
        protocol = MailgateLMTP if lmtp else MailgateSMTP
        handler = self.handler
        cfg = self.config.server

        tls = None
        if cfg.tls_cert and cfg.tls_key:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(cfg.tls_cert, cfg.tls_key)

        def factory() -> SMTP:
            return protocol(
                handler,
                tls_context=tls,
                data_size_limit=cfg.max_message_size,
                enable_SMTPUTF8=True,
                hostname=cfg.hostname,
                ident="mailgate",
                timeout=cfg.timeout,
                loop=loop,
            )

        self.server = await loop.create_server(factory, host=cfg.host, port=cfg.port)
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


def start_scheduler(server: MailServer) -> Any:
    """The outbox and auto-close jobs on apscheduler, off the event loop, one run at a time."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from mailgate.jobs import Jobs

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
        from mailgate.health import start_http

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

"""``serve``'s drain on SIGTERM: the mail in flight is answered for real, nothing gets 451.

The contract is the process's (signals, exit code, stderr), so ``mailgate serve`` runs as a
subprocess, in a session of its own: the SIGTERM goes to its whole process group, as a
terminal's Ctrl-C or a service manager's control-group stop would send it, so the pool
processes get it too. Clients are real SMTP clients in threads; what was stored is read
from the database.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import smtplib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select

from mailgate.app import ServerThread
from mailgate.config import Config
from mailgate.models import LedgerEntry
from mailgate.store import Store

from .conftest import Clock, mail, wait_until
from .sink import Sink, _Handler
from .test_cli import Daemon

SHUTTING_DOWN = b"421 4.3.2 Service shutting down\r\n"


class Serve(Daemon):
    """``mailgate serve`` in a process group of its own; its log lines as they come."""

    def __init__(self, config_path: Path) -> None:
        super().__init__(config_path, own_group=True)

    def signal_group(self, signum: int) -> None:
        """As a terminal or ``KillMode=control-group`` does: to every process of serve."""
        os.killpg(self.proc.pid, signum)

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code, "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


class _HeldHandler(_Handler):
    """The relay of the outbox job: holds the first DATA until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = threading.Event()
        self.release = threading.Event()
        self.port = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.holding.set()
        await asyncio.get_running_loop().run_in_executor(None, self.release.wait)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def relay() -> Iterator[_HeldHandler]:
    sink = Sink()
    handler = sink.handler = _HeldHandler()
    sink.start()
    handler.port = sink.port
    yield handler
    handler.release.set()
    sink.stop()


def _config(
    make_config: Callable[..., tuple[Config, Path]], relay: _HeldHandler, **server: Any
) -> tuple[Config, Path]:
    return make_config(
        {
            "server": {"workers": "auto", **server},
            # Every mail a new ticket from a new sender, each with an acknowledgement.
            "limits": {"tickets_per_hour": 100000, "acks_per_hour": 100000},
            "outbound": {
                "transport": "smtp",
                "smtp_host": "127.0.0.1",
                "smtp_port": relay.port,
            },
            "jobs": {"outbox_interval": "1s"},
        }
    )


class _Raw:
    """An SMTP session spoken byte by byte, to stop it at an exact point."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        assert self.reply().startswith(b"220")

    def reply(self) -> bytes:
        lines = [self.file.readline()]
        while lines[-1][3:4] == b"-":
            lines.append(self.file.readline())
        return b"".join(lines)

    def command(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """Whether the server closed the connection (a reset if it had closed it before our
        last command arrived)."""
        try:
            return self.file.read() == b""
        except ConnectionResetError:
            return True

    def open_data(self, sender: str) -> bytes:
        """A transaction up to its data, but for the lone dot that ends it."""
        assert self.command(b"EHLO raw.test").startswith(b"250")
        assert self.command(f"MAIL FROM:<{sender}>".encode()).startswith(b"250")
        assert self.command(b"RCPT TO:<support@support.example.com>").startswith(b"250")
        assert self.command(b"DATA").startswith(b"354")
        message_id = f"{uuid.uuid4().hex}@kunde.test"
        body = mail(sender=sender, message_id=f"<{message_id}>", subject="Halb gesendet")
        self.sock.sendall(body + b"\r\n")
        return message_id.encode()


class Load:
    """Clients in threads, each sending mails one session after another until refused.

    Every mail's Message-ID and the reply it got are kept; a refused connection (the
    listener is closed) ends a client.
    """

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.replies: dict[str, int] = {}
        self.errors: list[str] = []
        self._lock = threading.Condition()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _client(self) -> None:
        while True:
            try:
                client = smtplib.SMTP("127.0.0.1", self.port, timeout=60)
            except ConnectionRefusedError:
                return
            try:
                self._session(client)
            except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
                with self._lock:
                    self.errors.append(repr(exc))  # only after a 421: the drain closed it
            finally:
                client.close()

    def _session(self, client: smtplib.SMTP) -> None:
        for _ in range(20):
            sender = f"k{uuid.uuid4().hex[:10]}@kunde.test"
            message_id = f"{uuid.uuid4().hex}@kunde.test"
            raw = mail(sender=sender, message_id=f"<{message_id}>", subject="Last")
            try:
                client.sendmail(sender, ["support@support.example.com"], raw)
                code = 250
            except smtplib.SMTPRecipientsRefused as exc:
                code = next(iter(exc.recipients.values()))[0]
            except smtplib.SMTPResponseException as exc:
                code = exc.smtp_code
            with self._lock:
                self.replies[message_id] = code
                self._lock.notify_all()
            if code != 250:
                return
        client.quit()

    def wait_stored(self, count: int, timeout: float = 60) -> None:
        with self._lock:
            assert self._lock.wait_for(
                lambda: sum(code == 250 for code in self.replies.values()) >= count, timeout
            ), self.replies

    def join(self) -> None:
        for thread in self._threads:
            thread.join(90)


def _stored(config: Config) -> list[str]:
    store = Store(config.database.url, config.database.lock_timeout)
    try:
        with store.transaction() as session:
            return list(session.scalars(select(LedgerEntry.message_id)))
    finally:
        store.close()


def test_sigterm_under_load_answers_the_mail_in_flight_and_exits_0(
    make_config: Callable[..., tuple[Config, Path]], relay: _HeldHandler
) -> None:
    """SIGTERM to serve's process group mid-load: every 250 stored once, no 451, exit 0.

    Deterministic parts beside the load: a session inside its DATA gets its 250 after the
    signal, its next command a 421; an idle session gets an unasked 421; the outbox job,
    held mid-delivery by the relay, is waited for (no CancelledError traceback).
    """
    config, path = _config(make_config, relay)
    serve = Serve(path)
    try:
        idle = _Raw(serve.port)
        assert idle.command(b"EHLO idle.test").startswith(b"250")
        half = _Raw(serve.port)
        half_id = half.open_data("halb@kunde.test")
        load = Load(serve.port, clients=6)
        load.wait_stored(40)
        assert relay.holding.wait(30), "the outbox job never reached the relay"

        started = time.monotonic()
        serve.signal_group(signal.SIGTERM)
        serve.wait_for(r"shutting down")
        serve.wait_for(r"waiting for the \d job run\(s\) in progress")
        assert half.command(b".").startswith(b"250 2.0.0 Ok: created ticket")
        # 421 to the command, or unasked just before it, once no command was in progress.
        assert half.command(b"MAIL FROM:<halb@kunde.test>") == SHUTTING_DOWN
        assert half.closed()
        assert idle.reply() == SHUTTING_DOWN  # unasked, once nothing was in flight
        relay.release.set()
        code, stderr = serve.finish()
        drained = time.monotonic() - started
        load.join()
    finally:
        serve.kill()

    assert code == 0, stderr
    assert "Traceback" not in stderr and "CancelledError" not in stderr, stderr
    assert "abandoned" not in stderr and "drain timed out" not in stderr, stderr
    assert re.search(r"INFO mailgate\.smtp: stopped$", stderr.rstrip()), stderr
    assert drained < config.server.drain_timeout.total_seconds()
    codes = set(load.replies.values())
    assert codes <= {250, 421}, load.replies  # never 451 because of the shutdown
    accepted = sorted(m for m, c in load.replies.items() if c == 250) + [half_id.decode()]
    assert sorted(_stored(config)) == sorted(accepted)  # each once, none that got 421
    assert relay.received, "the job run in progress was finished"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_drain_timeout_closes_what_is_left_with_421_and_still_exits_0(
    make_config: Callable[..., tuple[Config, Path]], relay: _HeldHandler
) -> None:
    """A session that never ends its data and a relay that never answers hold the drain
    only for drain_timeout: the session gets an unasked 421, the job is left, exit 0."""
    config, path = _config(make_config, relay, drain_timeout="1s")
    serve = Serve(path)
    try:
        with smtplib.SMTP("127.0.0.1", serve.port, timeout=30) as client:
            client.sendmail("anna@mueller-logistik.de", ["support@support.example.com"], mail())
        assert relay.holding.wait(30), "the outbox job never reached the relay"
        stuck = _Raw(serve.port)
        stuck_id = stuck.open_data("stuck@kunde.test").decode()
        started = time.monotonic()
        serve.signal_group(signal.SIGTERM)
        assert stuck.reply() == SHUTTING_DOWN
        code, stderr = serve.finish()
        took = time.monotonic() - started
    finally:
        serve.kill()
    assert code == 0, stderr
    assert "drain timed out after 1s" in stderr
    assert "a job run was still in progress after 1s" in stderr
    assert "job deliver abandoned in progress" in stderr
    assert "Traceback" not in stderr, stderr
    assert took < 10, took
    assert len(_stored(config)) == 1 and stuck_id not in _stored(config)  # cut short: not stored


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_lmtp_session_in_its_data_gets_a_reply_per_recipient_then_421(
    make_config: Callable[..., tuple[Config, Path]], clock: Clock
) -> None:
    """The drain speaks LMTP too (in this process: the listener's part of the drain)."""
    config, _ = make_config({"server": {"protocol": "lmtp"}})
    store = Store(config.database.url, config.database.lock_timeout)
    store.migrate()
    store.sync(config, clock())
    thread = ServerThread(config, store, clock)
    port = thread.start()
    try:
        session = _Raw(port)
        assert session.command(b"LHLO raw.test").startswith(b"250")
        assert session.command(b"MAIL FROM:<anna@mueller-logistik.de>").startswith(b"250")
        for rcpt in (b"support@support.example.com", b"help@support.example.com"):
            assert session.command(b"RCPT TO:<" + rcpt + b">").startswith(b"250")
        assert session.command(b"DATA").startswith(b"354")
        session.sock.sendall(mail() + b"\r\n")
        drain = asyncio.run_coroutine_threadsafe(thread.server.stop(30), thread.loop)
        assert wait_until(lambda: thread.server.handler and thread.server.handler.draining)
        session.sock.sendall(b".\r\n")
        assert session.file.readline().startswith(b"250 2.0.0 Ok: created ticket")
        assert session.file.readline().startswith(b"250 2.0.0 Ok: created ticket")
        assert session.command(b"RSET") == SHUTTING_DOWN
        assert session.closed()
        assert drain.result(30) is True
    finally:
        thread.stop()  # after a drain, a second stop has nothing left to do
        store.close()

"""A real SMTP sink for outbound tests: records what arrives, answers what it is told to."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    mail_from: str
    rcpt_to: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class _Handler:
    received: list[Received] = field(default_factory=list)
    # Scripted answers for the next DATA commands: "250", "451", "550" or "drop".
    script: list[str] = field(default_factory=list)
    # Scripted answers for the next RCPT commands naming an address: "250", "450" or "550".
    rcpt_script: dict[str, list[str]] = field(default_factory=dict)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        answers = self.rcpt_script.get(address)
        answer = answers.pop(0) if answers else "250"
        if answer == "450":
            return "450 4.2.1 Mailbox busy, try again later"
        if answer == "550":
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        answer = self.script.pop(0) if self.script else "250"
        if answer == "drop":
            assert server.transport is not None
            server.transport.close()
            return "421 4.4.2 dropped"
        if answer == "451":
            return "451 4.3.0 Try again later"
        if answer == "550":
            return "550 5.1.1 No such user"
        self.received.append(
            Received(
                envelope.mail_from or "", list(envelope.rcpt_tos), envelope.original_content or b""
            )
        )
        return "250 2.0.0 Ok"


class Sink:
    """An aiosmtpd server on a free port in its own thread."""

    def __init__(
        self, protocol: type[SMTP] = SMTP, data_size_limit: int = 33554432, smtputf8: bool = False
    ) -> None:
        self.protocol = protocol  # mailgate's own listener class, to hold it against aiosmtpd's
        self.data_size_limit = data_size_limit
        # Offer SMTPUTF8 (RFC 6531) in the EHLO reply, or withhold it like an old relay.
        self.smtputf8 = smtputf8
        self.handler = _Handler()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: Any = None
        self.port = 0

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def answer(self, *answers: str) -> None:
        self.handler.script.extend(answers)

    def answer_rcpt(self, address: str, *answers: str) -> None:
        """Answer the next RCPTs for ``address`` like this, one each; then 250 again."""
        self.handler.rcpt_script.setdefault(address, []).extend(answers)

    def start(self) -> Sink:
        self._thread.start()

        async def start() -> int:
            self.server = await self.loop.create_server(
                lambda: self.protocol(
                    self.handler,
                    hostname="sink.test",
                    data_size_limit=self.data_size_limit,
                    loop=self.loop,
                    **({"enable_SMTPUTF8": True} if self.smtputf8 else {}),
                ),
                host="127.0.0.1",
                port=0,
            )
            return int(self.server.sockets[0].getsockname()[1])

        self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        async def stop() -> None:
            self.server.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

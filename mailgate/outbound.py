"""Outbound mail: build notifications, classify relay replies, and hand them to a transport.

Building a message is pure (:func:`build_message`); sending is the thin I/O at the edge
(:class:`MaildirTransport`, :class:`SmtpTransport`). Whether a failed attempt is retried or
given up is decided in one place, :func:`classify`, after RFC 5321 section 4.2.1 (4yz is
transient, 5yz permanent) and RFC 3463 (the enhanced code's class digit says the same).
"""

from __future__ import annotations

import contextlib
import enum
import mailbox
import os
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formataddr, make_msgid
from pathlib import Path
from typing import Protocol

from mailgate.config import Config

# Header marking our own mail, so a bounce or an auto-reply of it is recognised (loops).
LOOP_HEADER = "X-Mailgate-Loop"


class Verdict(enum.StrEnum):
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"


def classify(code: int | None) -> Verdict:
    """What a relay's reply means for this delivery (RFC 5321 section 4.2.1).

    ``None`` stands for no reply at all (connection refused, reset, timed out): transient,
    like a 4yz, because the relay may be back in a minute.
    """
    if code is None or 400 <= code < 500:
        return Verdict.RETRY
    if 200 <= code < 300:
        return Verdict.SENT
    return Verdict.FAILED


def backoff(attempts: int) -> timedelta:
    """Pause before the next try: 1, 2, 4 … minutes, at most one hour."""
    return timedelta(minutes=min(2 ** max(attempts - 1, 0), 60))


class DeliveryError(Exception):
    """A delivery attempt failed; ``code`` is the relay's reply code, None without one."""

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(message)
        self.code = code


def one_line(text: str) -> str:
    """Header-safe text: CR/LF in user input must never start a new header (injection)."""
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())


@dataclass(frozen=True, slots=True)
class OutboundEnvelope:
    """Who a built message goes to and how it threads."""

    to: tuple[str, ...]
    subject: str
    reply_to: str
    in_reply_to: str | None
    references: tuple[str, ...]
    auto_submitted: str  # "auto-replied" for acknowledgements, else "auto-generated"


def build_message(
    config: Config,
    envelope: OutboundEnvelope,
    text: str,
    html: str,
    message_id: str | None = None,
) -> EmailMessage:
    """A UTF-8 notification with our headers; pure, so it can be tested and stored."""
    domain = config.mail.address.rpartition("@")[2]
    message = EmailMessage(policy=SMTP)
    message["From"] = formataddr(("Support", config.mail.address))
    message["To"] = ", ".join(envelope.to)
    message["Subject"] = one_line(envelope.subject)
    message["Reply-To"] = envelope.reply_to
    message["Message-ID"] = message_id or make_msgid(domain=domain)
    if envelope.in_reply_to:
        message["In-Reply-To"] = f"<{envelope.in_reply_to}>"
    if envelope.references:
        message["References"] = " ".join(f"<{ref}>" for ref in envelope.references)
    # RFC 3834: mark what robots sent, so other robots do not answer it.
    message["Auto-Submitted"] = envelope.auto_submitted
    message["X-Auto-Response-Suppress"] = "All"
    message[LOOP_HEADER] = domain
    message.set_content(text, charset="utf-8")
    message.add_alternative(html, subtype="html", charset="utf-8")
    return message


class Transport(Protocol):
    def send(self, message: bytes, sender: str, recipients: Sequence[str]) -> None: ...

    def close(self) -> None: ...


class MaildirTransport:
    """Notifications as files in a Maildir's ``new/``: laptops, tests, a local MDA."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def send(self, message: bytes, sender: str, recipients: Sequence[str]) -> None:
        try:
            box = mailbox.Maildir(self.path, create=True)
            box.add(message)
        except OSError as exc:
            raise DeliveryError(None, f"cannot write to maildir {self.path}: {exc}") from exc

    def close(self) -> None:
        pass


class SmtpTransport:
    """Relay through an SMTP server (blocking smtplib; callers run it off the event loop).

    One connection serves a whole delivery run: opening one per message cost more than
    the message itself. A connection the relay dropped is opened again once.
    """

    def __init__(self, config: Config) -> None:
        self.config = config.outbound
        self._client: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        cfg = self.config
        client = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.timeout)
        try:
            if cfg.starttls:
                client.starttls(context=ssl.create_default_context())
            if cfg.username:
                client.login(cfg.username, os.environ.get(cfg.password_env or "", ""))
        except BaseException:
            client.close()
            raise
        return client

    def send(self, message: bytes, sender: str, recipients: Sequence[str]) -> None:
        for attempt in (1, 2):
            fresh = self._client is None
            try:
                if self._client is None:
                    self._client = self._connect()
                refused = self._client.sendmail(sender, list(recipients), message)
                break
            except smtplib.SMTPServerDisconnected as exc:
                self._drop()
                if fresh or attempt == 2:  # a new connection dropped too: the relay's fault
                    raise DeliveryError(None, f"{type(exc).__name__}: {exc}") from exc
            except smtplib.SMTPRecipientsRefused as exc:
                code, reply = next(iter(exc.recipients.values()))
                raise DeliveryError(code, _reply_text(code, reply)) from exc
            except smtplib.SMTPResponseException as exc:
                if exc.smtp_code == 421:  # the relay closes the session (RFC 5321 3.8)
                    self._drop()
                code = exc.smtp_code
                raise DeliveryError(code, _reply_text(code, exc.smtp_error)) from exc
            except (smtplib.SMTPException, OSError) as exc:
                self._drop()
                raise DeliveryError(None, f"{type(exc).__name__}: {exc}") from exc
        if refused:
            code, reply = next(iter(refused.values()))
            raise DeliveryError(code, "some recipients refused: " + _reply_text(code, reply))

    def _drop(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._client.quit()
            self._drop()


def _reply_text(code: int, reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return f"{code} {one_line(text)}"


def make_transport(config: Config) -> Transport:
    if config.outbound.transport == "smtp":
        return SmtpTransport(config)
    return MaildirTransport(config.outbound.maildir)

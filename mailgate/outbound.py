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
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote
from zoneinfo import ZoneInfo

from mailgate import mime
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


@dataclass(frozen=True, slots=True)
class Settled:
    """A row after an attempt: its verdict, its error, and where each recipient stands."""

    verdict: Verdict
    error: str | None
    accepted: tuple[str, ...]  # everyone who has it, over all attempts: never sent it again
    refused: dict[str, str]  # refused for good (5xx), with the relay's reply


def settle(
    attempted: Sequence[str],
    failures: Mapping[str, tuple[Verdict, str]],
    accepted_before: Sequence[str] = (),
    refused_before: Mapping[str, str] | None = None,
) -> Settled:
    """What one attempt leaves a row as, recipient by recipient.

    A relay answers each RCPT on its own (RFC 5321 section 3.3), so one row may be accepted
    for some recipients and refused for others. Those who accepted are never sent it again;
    a 4yz retries only its own recipients; a 5yz is final for its recipient. The row is
    ``sent`` when every recipient has it, ``retry`` while anyone waits on a 4yz, else
    ``failed``: a mail some recipient will never get needs an admin's eye, and the error
    names who was refused and who got it. ``failures`` are the attempted recipients who do
    not have it, each with :func:`classify`'s verdict and the reply.
    """
    accepted = (*accepted_before, *(r for r in attempted if r not in failures))
    gone = {r: error for r, (verdict, error) in failures.items() if verdict is Verdict.FAILED}
    refused = {**(refused_before or {}), **gone}
    waiting = {r: error for r, (verdict, error) in failures.items() if verdict is Verdict.RETRY}
    if not waiting and not refused:
        return Settled(Verdict.SENT, None, accepted, refused)
    verdict, named = (Verdict.RETRY, waiting) if waiting else (Verdict.FAILED, refused)
    if len(set(named.values())) == 1 and not accepted:
        error = next(iter(named.values()))  # one reply for all: the relay's, not a recipient's
    else:
        error = "; ".join(f"{r}: {e}" for r, e in named.items())
    if accepted:
        error += f" (delivered to {', '.join(accepted)})"
    return Settled(verdict, error, accepted, refused)


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


# What may stand between < and > of a message id we put into our headers: RFC 5322's
# dot-atom-text on both sides, or a domain literal on the right. Anything else (spaces,
# control characters, raw UTF-8 from a sloppy sender) is left out of the thread headers.
_MSG_ID = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+|\[[!-Z^-~]*\])$"
)


def ascii_domain(domain: str) -> str:
    """A domain as IDNA A-labels (``xn--…``), for headers and envelopes of ASCII-only relays."""
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"domain {domain!r} is not a valid internationalised name") from exc


def split_address(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return local, domain


def ascii_address(address: str) -> str:
    """The address with its domain in A-labels; the local part must already be ASCII."""
    local, domain = split_address(address)
    return f"{local}@{ascii_domain(domain)}" if domain else address


def needs_smtputf8(address: str) -> bool:
    """Whether only an SMTPUTF8 relay can carry it (RFC 6531): a non-ASCII local part."""
    return not split_address(address)[0].isascii()


def _header_address(address: str, utf8: bool, display_name: str = "") -> str:
    local, domain = split_address(address)
    if not utf8:
        domain = ascii_domain(domain)
    return mime.address(f"{local}@{domain}", utf8, display_name)


def _msg_ids(ids: Sequence[str]) -> list[str]:
    return [f"<{i}>" for i in ids if _MSG_ID.match(i)]


@dataclass(frozen=True, slots=True)
class StoredFile:
    """An attachment of the comment a notification sends, as the ticket keeps it."""

    filename: str
    content_type: str
    size: int
    sha256: str
    content_id: str | None = None


@dataclass(frozen=True, slots=True)
class FileChoice:
    """Which of a comment's files go out with its mail, and which are only listed."""

    attached: tuple[StoredFile, ...]
    left_out: tuple[StoredFile, ...]  # above [outbound] max_attachment_size: listed


# Outlook's TNEF stream: its files are attachments of their own beside it (unpacked at
# ingest), and no mail client but Outlook opens the stream itself.
_NOT_SENT_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})
_CID = re.compile(r"""cid:([^"'\s<>()]+)""", re.IGNORECASE)


def cid_references(html: str | None) -> frozenset[str]:
    """The Content-IDs an HTML body shows in place (``src="cid:…"``, RFC 2392), lowered."""
    return frozenset(unquote(m.group(1)).strip("<>").lower() for m in _CID.finditer(html or ""))


def choose_files(
    files: Sequence[StoredFile], shown_inline: frozenset[str], limit: int
) -> FileChoice:
    """The files an agent's reply carries to the customer, in their order, up to ``limit``.

    Not sent, and not listed either: a part the agent's HTML showed in place by its
    Content-ID (``shown_inline``: signature logos, pictures quoted from earlier mails), and
    Outlook's ``winmail.dat``, whose files are attachments of their own. The others are
    attached while they fit into ``limit`` bytes together (sizes decoded, before base64);
    one that does not fit is left out and listed, and a smaller one after it may still fit.
    """
    attached: list[StoredFile] = []
    left_out: list[StoredFile] = []
    used = 0
    for file in files:
        if file.content_type.lower() in _NOT_SENT_TYPES:
            continue
        if file.content_id and file.content_id.lower() in shown_inline:
            continue
        if used + file.size <= limit:
            attached.append(file)
            used += file.size
        else:
            left_out.append(file)
    return FileChoice(tuple(attached), tuple(left_out))


_MIME_TOKEN = re.compile(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+$")


def _attachment_type(content_type: str) -> str:
    """A file's type for a base64 leaf part: containers and ``message/*`` (composite types,
    which RFC 2045 6.4 forbids to encode in base64) and junk go as application/octet-stream."""
    value = content_type.strip().lower()
    if not _MIME_TOKEN.match(value) or value.startswith(("multipart/", "message/")):
        return "application/octet-stream"
    return value


@dataclass(frozen=True, slots=True)
class BuiltMessage:
    """A notification as it goes on the wire, and its Message-ID (without ``<>``)."""

    data: bytes
    message_id: str


def build_message(
    config: Config,
    envelope: OutboundEnvelope,
    text: str,
    html: str,
    message_id: str | None = None,
    now: datetime | None = None,
    files: Sequence[tuple[StoredFile, bytes]] = (),
) -> BuiltMessage:
    """One RFC 5322 notification with our headers; pure, so it can be tested and stored.

    ``now`` (aware) is the time of building and becomes ``Date`` in the offset of
    ``[hours] timezone``, the zone the support team and its customers read. Addresses go
    out in A-labels unless a local part is non-ASCII or the mail goes to a maildir: then
    the message is UTF-8 throughout (RFC 6532) and a relay must offer SMTPUTF8. How each
    field and part is written (folding, encoded-words, quoted-printable) is
    :mod:`mailgate.mime`'s.
    """
    addresses = [config.mail.address, envelope.reply_to, *envelope.to]
    utf8 = any(needs_smtputf8(a) for a in addresses) or (
        config.outbound.transport == "maildir" and not all(a.isascii() for a in addresses)
    )
    domain = ascii_domain(split_address(config.mail.address)[1])
    when = (now or datetime.now(UTC)).astimezone(ZoneInfo(config.hours.timezone))
    message_id = message_id or make_msgid(domain=domain)
    fields = [
        mime.fold("Date", [format_datetime(when)]),
        mime.fold("From", [_header_address(config.mail.address, utf8, "Support")]),
        mime.fold("To", [_header_address(a, utf8) for a in envelope.to], ", "),
        mime.fold("Subject", mime.text_tokens(one_line(envelope.subject), utf8)),
        mime.fold("Reply-To", [_header_address(envelope.reply_to, utf8)]),
        mime.fold("Message-ID", [message_id]),
    ]
    # msg-ids folded between ids, never as encoded-words: RFC 5322 3.6.4 allows only
    # <id-left@id-right> there, and no mail client would match anything else to the thread.
    in_reply_to = _msg_ids([envelope.in_reply_to] if envelope.in_reply_to else [])
    if in_reply_to:
        fields.append(mime.fold("In-Reply-To", in_reply_to[:1]))
    references = _msg_ids(envelope.references)
    if references:
        fields.append(mime.fold("References", references))
    # RFC 3834: mark what robots sent, so other robots do not answer it.
    fields.append(mime.fold("Auto-Submitted", [envelope.auto_submitted]))
    fields.append(mime.fold("X-Auto-Response-Suppress", ["All"]))
    fields.append(mime.fold(LOOP_HEADER, [domain]))
    parts = [mime.Part("text/plain", text=text), mime.Part("text/html", text=html)]
    for file, data in files:
        parts.append(
            mime.Part(_attachment_type(file.content_type), data=data, filename=file.filename)
        )
    return BuiltMessage(mime.message(fields, parts), message_id.strip().strip("<>"))


# Recipients the relay refused while it accepted others: address → (code, reply).
Refusals = dict[str, tuple[int, str]]


class Transport(Protocol):
    def send(self, message: bytes, sender: str, recipients: Sequence[str]) -> Refusals:
        """Deliver to every recipient the relay accepts; those it refused, with its reply.

        Raises :class:`DeliveryError` when the mail reached nobody for a reason that is not
        one recipient's (no connection, MAIL or DATA refused).
        """
        ...

    def flush(self) -> None:
        """Make every mail ``send`` took since the last flush durable; called before the
        results are recorded. Raises :class:`DeliveryError` when it cannot."""
        ...

    def close(self) -> None: ...


class MaildirTransport:
    """Notifications as files in a Maildir's ``new/``: laptops, tests, a local MDA.

    ``send`` writes a mail into ``tmp/``; :meth:`flush` syncs the batch's files together and
    only then moves them into ``new/`` (the Maildir way: a reader never sees half a mail).
    One fsync after each file cost 2.8 ms a mail, most of a notification's time; the
    batch's fsyncs in parallel share the file system's journal commits (0.4-0.8 ms a mail,
    measured on ext4).
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._pending: list[tuple[int, Path]] = []  # descriptor and tmp/ path of each mail
        self._pool: ThreadPoolExecutor | None = None
        self._count = 0

    def send(self, message: bytes, sender: str, recipients: Sequence[str]) -> Refusals:
        try:
            mailbox.Maildir(self.path, create=True)  # tmp/, new/ and cur/, made once
            self._count += 1
            now = time.time()
            name = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{self._count}.{_HOST}"
            tmp = self.path / "tmp" / name
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(message)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            self._pending.append((fd, tmp))
        except OSError as exc:
            raise DeliveryError(None, f"cannot write to maildir {self.path}: {exc}") from exc
        return {}

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            self._pool = self._pool or ThreadPoolExecutor(8, thread_name_prefix="maildir")
            list(self._pool.map(os.fsync, (fd for fd, _ in pending)))
            for _, tmp in pending:
                os.rename(tmp, self.path / "new" / tmp.name)
            directory = os.open(self.path / "new", os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise DeliveryError(None, f"cannot write to maildir {self.path}: {exc}") from exc
        finally:
            for fd, _ in pending:
                os.close(fd)

    def close(self) -> None:
        """Stop the sync threads. Mails taken and not yet flushed stay pending: a send that
        failed mid-batch closes the transport, and the batch's earlier mails still count."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")


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

    def send(self, message: bytes, sender: str, recipients: Sequence[str]) -> Refusals:
        """Send with SMTPUTF8 only when an address or the message needs it (RFC 6531).

        Otherwise domains go out as A-labels, which every relay accepts. A mail that needs
        SMTPUTF8 on a relay without it fails at once (553): no retry would change that.
        Recipients refused at RCPT come back by the address they were given as.
        """
        utf8 = not message.isascii() or any(map(needs_smtputf8, [sender, *recipients]))
        given = {r: r for r in recipients}
        for attempt in (1, 2):
            fresh = self._client is None
            try:
                if self._client is None:
                    self._client = self._connect()
                self._client.ehlo_or_helo_if_needed()
                if utf8 and not self._client.has_extn("smtputf8"):
                    raise DeliveryError(
                        553,
                        "relay does not offer SMTPUTF8, which a non-ASCII address needs: "
                        + ", ".join(a for a in [sender, *recipients] if not a.isascii()),
                    )
                if utf8:
                    refused = self._client.sendmail(
                        sender, list(recipients), message, mail_options=["SMTPUTF8"]
                    )
                else:
                    given = {ascii_address(r): r for r in recipients}
                    refused = self._client.sendmail(ascii_address(sender), list(given), message)
                break
            except smtplib.SMTPServerDisconnected as exc:
                self._drop()
                if fresh or attempt == 2:  # a new connection dropped too: the relay's fault
                    raise DeliveryError(None, f"{type(exc).__name__}: {exc}") from exc
            except smtplib.SMTPRecipientsRefused as exc:  # every one of them, each its reply
                refused = exc.recipients
                break
            except smtplib.SMTPResponseException as exc:
                if exc.smtp_code == 421:  # the relay closes the session (RFC 5321 3.8)
                    self._drop()
                code = exc.smtp_code
                raise DeliveryError(code, _reply_text(code, exc.smtp_error)) from exc
            except ValueError as exc:  # an address IDNA cannot encode: permanent
                raise DeliveryError(553, f"cannot encode address: {exc}") from exc
            except (smtplib.SMTPException, OSError) as exc:
                self._drop()
                raise DeliveryError(None, f"{type(exc).__name__}: {exc}") from exc
        return {given.get(r, r): (c, _reply_text(c, reply)) for r, (c, reply) in refused.items()}

    def _drop(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None

    def flush(self) -> None:
        """Nothing: the relay's 250 to DATA made each mail its own."""

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

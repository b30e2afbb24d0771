"""The SMTP/LMTP protocol: aiosmtpd's classes with our DATA reader, our handler, our replies.

The rule this module exists for (RFC 5321 section 4.1.1.4, "the receiver-SMTP MUST NOT
accept responsibility for a message unless it has been safely stored"): answer 250 only
after the ingestor committed the mail, and 451 whenever it could not, so the sending MTA
keeps the mail and retries. Every reply text is a named constant below; ours carry an
enhanced status code (RFC 3463). What runs the listener (the ingestor it hands mail to,
the jobs, metrics and signals beside it) is assembled in :mod:`mailgate.app`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session

from mailgate.config import Config, ServerConfig
from mailgate.errors import StoreUnavailable
from mailgate.ingest import IngestResult
from mailgate.pipeline.reading import InboundEnvelope
from mailgate.workers import Ingestor

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
# RFC 5321 section 3.8: to a command during a shutdown, or unasked to an idle session.
SHUTTING_DOWN = "421 4.3.2 Service shutting down"

# aiosmtpd's texts, which the DATA reader below gives as aiosmtpd's own reader does.
DATA_NEEDS_RCPT = "503 Error: need RCPT command"
DATA_SYNTAX = "501 Syntax: DATA"
DATA_GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"
DATA_TOO_MUCH = "552 Error: Too much mail data"  # sent as TOO_BIG, see _REWRITE
DATA_NOT_ASCII = "500 Error: strict ASCII mode"
DATA_OK = "250 OK"  # a handler without a DATA hook
# RFC 5321 4.5.3.1.6 names the reply; X.6.0 (RFC 3463: the content of the message) is the
# nearest enhanced code (X.5.6 is registered for AUTH lines only, RFC 4954).
LINE_TOO_LONG = (
    "500 5.6.0 Line too long: a line of the message exceeds {limit} bytes "
    "(RFC 5321 section 4.5.3.1.6)"
)
# aiosmtpd's own, to MAIL FROM with a SIZE over the limit.
SIZE_TOO_BIG = "552 Error: message size exceeds fixed maximum message size"
TLS_READY = "220 Ready to start TLS"  # aiosmtpd's, to STARTTLS

# The extensions that aiosmtpd's EHLO (and so LHLO) reply leaves out, though they work:
# commands are read from a buffer and answered in order, the DATA reader takes nothing
# beyond its lone dot (RFC 2920), and every reply carries an enhanced status code (RFC 3463;
# RFC 2033 section 5 asks an LMTP server for both).
EXTENSIONS = ("PIPELINING", "ENHANCEDSTATUSCODES")

# aiosmtpd's replies that need more than an enhanced code put in front of their text.
_REWRITE = {
    DATA_TOO_MUCH: TOO_BIG,
    SIZE_TOO_BIG: TOO_BIG,
    TLS_READY: "220 2.0.0 Ready to start TLS",
}
# The enhanced code for the rest of aiosmtpd's replies, by reply code (RFC 3463; the
# choices Postfix makes for the same replies).
_DETAIL = {
    "221": "2.0.0",  # QUIT
    "250": "2.0.0",  # MAIL, RSET, NOOP, HELP
    "252": "2.0.0",  # VRFY
    "421": "4.3.2",  # the session is ending (timeout)
    "454": "4.7.0",  # TLS not available
    "500": "5.5.2",  # syntax error, unknown command
    "501": "5.5.4",  # bad arguments
    "502": "5.5.1",  # not implemented
    "503": "5.5.1",  # bad sequence of commands
    "504": "5.5.4",  # parameter not implemented
    "530": "5.7.0",  # STARTTLS or AUTH first
    "552": "5.3.4",  # too big
    "553": "5.1.3",  # bad address
    "554": "5.7.0",  # refused (no TLS)
    "555": "5.5.4",  # MAIL/RCPT parameters not recognized
}
_HAS_DETAIL = re.compile(r"[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")


def utc_now() -> datetime:
    return datetime.now(UTC)


def with_enhanced_code(status: str, hostname: str) -> str:
    """``status`` with an enhanced status code (RFC 3463) in front of its text, as
    ENHANCEDSTATUSCODES promises (RFC 2034 section 4) for every 2xx, 4xx and 5xx reply but
    the greeting and the replies to HELO and EHLO, which are left as they are."""
    rewritten = _REWRITE.get(status)
    if rewritten is not None:
        return rewritten
    code, sep, text = status[:3], status[3:4], status[4:]
    if (
        sep != " "  # the lines of a multi-line reply: only EHLO's (LHLO's) come from aiosmtpd
        or code.startswith("220")  # the greeting (STARTTLS's 220 is in _REWRITE)
        or status in ("250 HELP", f"250 {hostname}")  # the ends of EHLO's and HELO's reply
        or _HAS_DETAIL.match(status)
    ):
        return status
    detail = _DETAIL.get(code)
    if detail is None:
        if code[:1] not in ("2", "4", "5"):
            return status  # 354, 334: intermediate replies carry none
        detail = f"{code[0]}.0.0"
    return f"{code} {detail} {text}"


class _ReplyCodes:
    """Mixin that gives aiosmtpd's built-in replies ours, or at least an enhanced status
    code, before they are sent."""

    hostname: str

    async def push(self, status: str | bytes) -> None:
        # aiosmtpd pushes str; bytes, which it also accepts, are passed on untouched.
        if isinstance(status, str):
            status = with_enhanced_code(status, self.hostname)
        await super().push(status)  # type: ignore[misc]


# A line holding only a dot ends DATA. Searched for without its CR, which may have arrived
# (and been taken from the reader) before: the byte before the match must be a CR.
_DATA_END = b"\n.\r\n"


def unstuff(data: bytes) -> bytes:
    """The message of a DATA stream that ended before its lone dot: one leading dot off each
    line that has one (RFC 5321 section 4.5.2)."""
    if data.startswith(b"."):
        data = data[1:]
    if b"\r\n." in data:
        data = data.replace(b"\r\n.", b"\r\n")
    return data


def normalise_bare_lf(data: bytes) -> bytes:
    """``data`` with every bare LF made a CRLF, as Postfix's ``smtpd_forbid_bare_newline =
    normalize`` does; a bare CR stays as it is. ``data`` itself when it has no bare LF.

    RFC 5321 section 2.3.8 allows CR and LF only together, but scripts that write mail with
    LF line ends (Python's smtplib with a bytes message, for one) send them anyway, and
    the mail is theirs. The end of DATA is not touched by this: only CRLF.CRLF ends it
    (see :class:`_ChunkedData`), so a bare-LF dot line cannot end a mail early (SMTP
    smuggling); it becomes an empty line of the mail it is in.
    """
    if data.count(b"\n") == data.count(b"\r\n"):  # two scans in C; the usual case ends here
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def has_overlong_line(data: bytes, limit: int) -> bool:
    """Whether a line of ``data`` is longer than ``limit`` bytes with its CRLF.

    Lines end only at CRLF; a bare CR or LF is part of the line. The lines are split a
    window at a time, so a big mail is not held a second time as a list of lines.
    """
    longest = limit - 2  # without the CRLF
    window = max(_WINDOW, 2 * limit)  # a window always holds a line end unless a line is too long
    size, start = len(data), 0
    while start < size:
        end = min(size, start + window)
        if end < size:
            cut = data.rfind(b"\r\n", start, end)
            if cut < 0:
                return True  # no line end in a whole window
            end = cut + 2
        if max(map(len, data[start:end].split(b"\r\n"))) > longest:
            return True
        start = end
    return False


_WINDOW = 1 << 20  # bytes of DATA split into lines at a time


class _ChunkedData:
    """DATA read a chunk at a time instead of a line at a time.

    aiosmtpd's reader awaits every line of a mail and keeps each as an object of its own;
    under ``bench/smtp_load.py`` that was about a seventh of the listener's CPU per mail.
    Here the stream is cut only where the lone dot ends it: CRLF.CRLF and nothing else.
    Dot-unstuffing and the size limit give the replies aiosmtpd gives; the limits are
    checked once the data is in, which is never more than the size limit. Where it differs
    from aiosmtpd, on purpose:

    - a line may be ``max_line_length`` bytes long (without its CRLF), not aiosmtpd's 999:
      real mail has longer lines (HTML with long links, bounces quoting them), and RFC 5321
      section 4.5.3.1.6 wants the limit no lower than 998. Above it: 500 5.6.0, and the
      session goes on;
    - a bare LF is made a CRLF (:func:`normalise_bare_lf`) before the lines are measured and
      unstuffed, where aiosmtpd saw one long line;
    - a mail over both limits is answered 552, where aiosmtpd answers for the one it met first.
    """

    _reader: asyncio.StreamReader
    _writer: asyncio.StreamWriter
    envelope: Envelope | None
    data_size_limit: int | None
    line_length_limit: int
    _decode_data: bool
    enable_SMTPUTF8: bool
    max_line_length = 65536  # [server] max_line_length; set per listener by listen()

    async def smtp_DATA(self, arg: str) -> None:
        server: Any = self
        if await server.check_helo_needed():
            return
        if await server.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await server.push(DATA_NEEDS_RCPT)
            return
        if arg:
            await server.push(DATA_SYNTAX)
            return
        await server.push(DATA_GO_AHEAD)
        try:
            data = await self._read_data()
        except asyncio.CancelledError:
            log.info("Connection lost during DATA")
            self._writer.close()
            raise
        except asyncio.IncompleteReadError:  # the client hung up before the lone dot
            log.info("Connection lost during DATA")
            self._writer.close()
            return
        if data is None:
            server._set_post_data_state()
            await server.push(DATA_TOO_MUCH)
            return
        data = normalise_bare_lf(data)
        if has_overlong_line(data, self.max_line_length + 2):
            server._set_post_data_state()
            await server.push(LINE_TOO_LONG.format(limit=self.max_line_length))
            return
        message = unstuff(data)
        del data
        content: str | bytes = message
        if self._decode_data:
            if not self.enable_SMTPUTF8:
                try:
                    content = message.decode("ascii")
                except UnicodeDecodeError:
                    await server.push(DATA_NOT_ASCII)
                    return
            else:
                content = message.decode("utf-8", errors="surrogateescape")
        self.envelope.content = content
        self.envelope.original_content = message
        status = await server._call_handler_hook("DATA")
        server._set_post_data_state()
        await server.push(DATA_OK if status is MISSING else status)

    async def _read_data(self) -> bytes | None:
        """The DATA stream up to its lone dot, still dot-stuffed; None if over the size limit.

        Nothing beyond the lone dot is taken from the reader: a pipelining client's next
        command stays for the command loop.
        """
        reader = self._reader
        limit = self.data_size_limit or 0
        pieces: list[bytes] = []
        size = 0
        tail = b"\r\n"  # the last bytes taken; DATA's own line ended with a CRLF
        ended = False
        while not ended:
            if tail == b"\r\n":  # at the start of a line: is it the lone dot?
                piece = await reader.readexactly(1)
                if piece == b".":
                    piece += await reader.readexactly(2)
                    if piece == b".\r\n":
                        break
            else:
                try:
                    piece = await reader.readuntil(_DATA_END)
                except asyncio.LimitOverrunError as exc:  # no end in the buffer: take it all
                    piece = await reader.read(exc.consumed)
                else:
                    # The end, if a CR comes before the match. If not (a bare LF before
                    # the dot), the line goes on and the next one starts after the match.
                    ended = (piece[-5:-4] or tail[-1:]) == b"\r"
                    if ended:
                        piece = piece[:-3]
            size += len(piece)
            if limit and size > limit:
                pieces.clear()  # drained to the end, kept no longer
            else:
                pieces.append(piece)
            tail = (tail + piece[-2:])[-2:]  # not a copy of the whole piece
        if limit and size > limit:
            return None
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


# <dot-atom@dot-atom>, the form nearly every MTA sends; anything else takes the full parser.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*)>")


class _Addresses:
    """aiosmtpd's address parsing of MAIL and RCPT, without the class it defines anew on
    every call, and with a fast path for a plain ``<local@domain>``. aiosmtpd's took about
    45 us per address (a third of it that class, the rest the email package's parser),
    twice per mail; the fast path takes under 1 us. An address the parser trips over (a
    lone "<") is a syntax error for the client, not our fault (451)."""

    local_part_limit: int

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        if not arg:
            return "", ""
        plain = _PLAIN_ADDRESS.match(arg)
        rest = arg[plain.end() :].lstrip(" \t") if plain is not None else ""
        if plain is not None and not rest.startswith("("):  # a comment: the full parser
            addr = plain.group(1)
        else:
            try:
                if arg.lstrip().startswith("<"):
                    angle, rest = get_angle_addr(arg)
                    addr = angle.addr_spec
                else:
                    spec, rest = get_addr_spec(arg)
                    addr = spec.addr_spec
            except (HeaderParseError, IndexError):  # IndexError: aiosmtpd's parser on "<"
                return None, None
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, rest


class _Drained:
    """A session the handler can drain: its commands are counted while they run, and once
    the handler drains, a new command is answered 421 and the session closed.

    A command that began before the drain (a DATA being received or stored) runs to its
    real answer. QUIT still gets its 221. Every command passes through one wrapper, put
    in aiosmtpd's table of command methods, so no command is missed. With a handler other
    than :class:`Handler` (a test's sink) the session is aiosmtpd's, unchanged.
    """

    transport: asyncio.BaseTransport | None
    _smtp_methods: dict[str, Any]

    def __init__(self, handler: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(handler, *args, **kwargs)  # type: ignore[call-arg]
        self._drain = handler if isinstance(handler, Handler) else None
        if self._drain is not None:
            self._smtp_methods = {
                name: self._counted(self._drain, name, method)
                for name, method in self._smtp_methods.items()
            }

    def _counted(
        self, handler: Handler, name: str, method: Callable[[str | None], Any]
    ) -> Callable[[str | None], Any]:
        async def command(arg: str | None) -> None:
            if handler.draining and name != "QUIT":
                await self.push(SHUTTING_DOWN)  # type: ignore[attr-defined]
                self.close_session()
                return
            handler.command_started()
            try:
                await method(arg)
            finally:
                handler.command_ended()

        # HELP reads a command's syntax from attributes of its method.
        command.__dict__.update(getattr(method, "__func__", method).__dict__)
        return command

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        if self._drain is not None:
            self._drain.sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        if self._drain is not None:
            self._drain.session_ended(self)
        super().connection_lost(error)  # type: ignore[misc]

    def close_session(self, goodbye: bool = False, force: bool = False) -> None:
        """Close the connection; with ``goodbye``, send the 421 unasked first (an idle
        session, or one still busy when the drain timed out). ``force`` drops a connection
        already closing whose peer does not read what is left to send."""
        transport = self.transport
        if transport is None:
            return
        if transport.is_closing():
            if force:
                transport.abort()  # type: ignore[attr-defined]
            return
        if goodbye:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(SHUTTING_DOWN.encode() + b"\r\n")
        transport.close()  # what is buffered is still sent; then the session task ends


class MailgateSMTP(_ReplyCodes, _Drained, _ChunkedData, _Addresses, SMTP):
    def __init__(self, *args: Any, max_line_length: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if max_line_length is not None:
            self.max_line_length = max_line_length


class MailgateLMTP(MailgateSMTP, LMTP):
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
        # The drain (SIGTERM): the open sessions, how many are inside a command, and an
        # event set whenever one of those changes, for the drain to look again.
        self.draining = False
        self.sessions: set[_Drained] = set()
        self.busy = 0
        self._changed = asyncio.Event()

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, lines: list[str]
    ) -> list[str]:
        """aiosmtpd's EHLO (and LHLO) reply with the extensions it leaves out (EXTENSIONS)
        put before its last line. With this hook, noting the client's name is left to us."""
        session.host_name = hostname
        return [*lines[:-1], *(f"250-{name}" for name in EXTENSIONS), lines[-1]]

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
        if not config.mail.receives(address):  # not our domain, or an agent's mailbox in it
            log.info("refused recipient %s from %s", address, session.peer)
            return RCPT_UNKNOWN
        envelope.rcpt_tos.append(address)
        return RCPT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        mail_envelope = InboundEnvelope(
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

    def command_started(self) -> None:
        self.busy += 1

    def command_ended(self) -> None:
        self.busy -= 1
        self._changed.set()

    def session_ended(self, session: _Drained) -> None:
        self.sessions.discard(session)
        self._changed.set()

    async def drain(self, timeout: float) -> bool:
        """Finish the commands in progress, then close every session; False on timeout.

        The listener no longer accepts connections. From now on a new command is answered
        421 (RFC 5321 section 3.8), so each session ends after the command it is in, which
        for a mail whose data was received is its real answer (250 once stored). Once no
        command runs, the sessions left are idle and get an unasked 421 before they are
        closed. After ``timeout`` seconds the busy ones are closed the same way: their
        senders keep the mail and retry.
        """
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.sessions:
            if self.busy == 0:
                for session in list(self.sessions):
                    session.close_session(goodbye=True)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                for session in list(self.sessions):
                    session.close_session(goodbye=True, force=True)
                return False
        return True

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no DATA is being stored (graceful shutdown); False on timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


async def listen(handler: Handler, cfg: ServerConfig) -> asyncio.Server:
    """The SMTP or LMTP listener on ``cfg``'s address, its sessions answered by ``handler``.

    STARTTLS is offered when a certificate and key are configured.
    """
    loop = asyncio.get_running_loop()
    protocol = MailgateLMTP if cfg.protocol == "lmtp" else MailgateSMTP
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
            max_line_length=cfg.max_line_length,
            loop=loop,
        )

    return await loop.create_server(factory, host=cfg.host, port=cfg.port)

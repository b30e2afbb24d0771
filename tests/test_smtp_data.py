"""DATA as mailgate's listener reads it (a chunk at a time) against aiosmtpd's line reader.

The listener cuts the DATA stream itself instead of awaiting each line. Whatever a client
sends, it must end the mail where aiosmtpd ends it (at CRLF.CRLF only: a bare-LF dot line
must never end a mail early, the trick of SMTP smuggling) and leave a pipelined next
command alone. Where it differs from aiosmtpd on purpose (a bare LF is made a CRLF, lines
may be longer) it gives what ``reference`` below, RFC 5321 a line at a time, gives.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate.smtp import (
    MailgateSMTP,
    _ChunkedData,
    has_overlong_line,
    normalise_bare_lf,
    unstuff,
)

from .sink import Sink

SIZE_LIMIT = 6000
LINE_LIMIT = 999  # aiosmtpd's (1001 bytes with the CRLF), so that both can be compared

# Lines made of what trips a DATA reader: dots, bare CR and LF, lines at the length limit.
_FRAGMENTS = [b".", b"..", b"", b"x", b"\r", b"\n", b"a\nb", b"a\rb", b".\n", b".\r", b" ."]
_LINE = st.one_of(
    st.lists(st.sampled_from(_FRAGMENTS), max_size=4).map(b"".join),
    st.integers(997, 1001).map(lambda n: b"y" * n),
    st.binary(max_size=40).filter(lambda b: b"\r\n" not in b),
)
_BODY = st.lists(_LINE, max_size=12).map(lambda lines: b"".join(line + b"\r\n" for line in lines))


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


def reference(stream: bytes, size_limit: int, line_limit: int) -> tuple[int, bytes | None, int]:
    """RFC 5321 DATA, a line at a time: the reply code, the message (None if refused) and
    how much of the stream DATA took. ``line_limit`` counts a line without its CRLF.

    The lone dot is a line of its own between two CRLFs. Bare LFs are made CRLFs (as
    Postfix's ``smtpd_forbid_bare_newline = normalize``) only then, before the lines are
    measured and unstuffed."""
    lines, pos = [], 0
    while True:
        end = stream.index(b"\r\n", pos) + 2
        line, pos = stream[pos:end], end
        if line == b".\r\n":
            break
        lines.append(line)
    if sum(map(len, lines)) > size_limit:
        return 552, None, pos
    data = re.sub(b"(?<!\r)\n", b"\r\n", b"".join(lines))
    lines = re.findall(b"(?s).*?\r\n", data)
    if any(len(line) > line_limit + 2 for line in lines):
        return 500, None, pos
    return 250, b"".join(line[1:] if line.startswith(b".") else line for line in lines), pos


# ----------------------------------------------------------------- the reader, any split


class _Probe(_ChunkedData):
    def __init__(self, reader: asyncio.StreamReader, limit: int) -> None:
        self._reader = reader
        self.data_size_limit = limit


async def _read(pieces: list[bytes], limit: int) -> tuple[bytes | None, bytes]:
    reader = asyncio.StreamReader(limit=SMTP.line_length_limit)
    probe = _Probe(reader, limit)
    task = asyncio.ensure_future(probe._read_data())
    for piece in pieces:
        await asyncio.sleep(0)
        reader.feed_data(piece)
    reader.feed_eof()
    data = await task
    rest = await reader.read()
    return data, rest


@settings(max_examples=400, deadline=None)
@given(body=_BODY, cuts=st.lists(st.integers(0, 20000), max_size=6), after=st.booleans())
def test_reader_ends_where_the_lone_dot_is_in_any_split(
    body: bytes, cuts: list[int], after: bool
) -> None:
    follow = b"NOOP\r\n" if after else b""
    stream = body + b".\r\n" + follow
    data, rest = asyncio.run(_read(_splits(stream, cuts), SIZE_LIMIT))
    code, message, taken = reference(stream, SIZE_LIMIT, LINE_LIMIT)
    assert rest == stream[taken:]  # nothing beyond the lone dot was taken
    if code == 552:
        assert data is None
        return
    assert data is not None
    data = normalise_bare_lf(data)
    assert has_overlong_line(data, LINE_LIMIT + 2) == (code == 500)
    if code == 250:
        assert unstuff(data) == message


def test_reader_takes_a_big_mail_in_few_reads() -> None:
    """The point of it: a 2 MB mail of short lines is not awaited line by line."""
    body = b"".join(b"line %d\r\n" % i for i in range(200_000))
    data, rest = asyncio.run(_read([body + b".\r\n"], 10 << 20))
    assert data == body and rest == b""


def test_overlong_line_with_bare_line_breaks() -> None:
    """A bare CR or LF does not end a line; CRLF alone does."""
    limit = SMTP.line_length_limit
    assert has_overlong_line(b"a" * 600 + b"\n" + b"b" * 600 + b"\r\n", limit)
    assert not has_overlong_line(b"a" * 600 + b"\r\n" + b"b" * 600 + b"\r\n", limit)
    assert not has_overlong_line(b"a" * (limit - 2) + b"\r\n", limit)
    assert has_overlong_line(b"a" * (limit - 1) + b"\r\n", limit)
    assert has_overlong_line(b"a\r" * limit + b"\r\n", limit)


# ----------------------------------------------------------------- over a socket, both servers


class _AiosmtpdLineLimit(MailgateSMTP):
    max_line_length = LINE_LIMIT


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Sink, Sink]]:
    stock = Sink(SMTP, data_size_limit=SIZE_LIMIT).start()
    ours = Sink(_AiosmtpdLineLimit, data_size_limit=SIZE_LIMIT).start()
    yield stock, ours
    stock.stop()
    ours.stop()


def _reply(sock: socket.socket, buffer: bytearray) -> int:
    """The code of the next (possibly multi-line) reply."""
    while True:
        while b"\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buffer += chunk
        end = buffer.index(b"\r\n")
        line = bytes(buffer[:end])
        del buffer[: end + 2]
        if line[3:4] != b"-":
            return int(line[:3])


def _session(port: int, pieces: list[bytes]) -> tuple[int, int]:
    """DATA's reply and the reply to the NOOP pipelined right behind the lone dot."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = bytearray()
        assert _reply(sock, buffer) == 220
        for command, code in [
            (b"EHLO client.test\r\n", 250),
            (b"MAIL FROM:<a@client.test>\r\n", 250),
            (b"RCPT TO:<b@sink.test>\r\n", 250),
            (b"DATA\r\n", 354),
        ]:
            sock.sendall(command)
            assert _reply(sock, buffer) == code
        for piece in pieces:
            sock.sendall(piece)
        return _reply(sock, buffer), _reply(sock, buffer)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=_BODY, cuts=st.lists(st.integers(0, 20000), max_size=4))
def test_same_mail_and_replies_as_aiosmtpd(
    servers: tuple[Sink, Sink], body: bytes, cuts: list[int]
) -> None:
    """Over a socket: the reply and the mail ``reference`` gives, and where no bare LF
    makes us differ on purpose, aiosmtpd's reply and mail too."""
    stock, ours = servers
    code, message, taken = reference(body + b".\r\n", SIZE_LIMIT, LINE_LIMIT)
    if taken < len(body) + 3:
        return  # a line of the body is the lone dot: the rest would be commands
    pieces = _splits(body + b".\r\nNOOP\r\n", cuts)
    before = len(ours.received)
    assert _session(ours.port, pieces) == (code, 250)
    assert len(ours.received) - before == (code == 250)
    if code == 250:
        assert ours.received[-1].data == message
    if body.replace(b"\r\n", b"").count(b"\n"):
        return  # a bare LF: aiosmtpd sees one long line
    if code == 552 and has_overlong_line(body, LINE_LIMIT + 2):
        return  # both limits broken: aiosmtpd answers for whichever came first, we say 552
    assert _session(stock.port, pieces) == (code, 250)
    if code == 250:
        assert stock.received[-1].data == message


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\r\n.\r"])
def test_a_dot_line_with_a_bare_line_break_never_ends_the_mail(
    servers: tuple[Sink, Sink], fake_end: bytes
) -> None:
    """SMTP smuggling: a second mail hidden behind a dot line that ends in a bare LF or CR
    stays inside the first mail; no second transaction is started by it."""
    _, ours = servers
    smuggled = (
        b"MAIL FROM:<evil@client.test>\r\nRCPT TO:<victim@sink.test>\r\nDATA\r\n"
        b"Subject: smuggled\r\n\r\nnot a mail of its own\r\n"
    )
    body = b"Subject: first\r\n\r\nhello" + fake_end + smuggled
    before = len(ours.received)
    assert _session(ours.port, [body + b".\r\nNOOP\r\n"]) == (250, 250)
    assert len(ours.received) == before + 1
    mail = ours.received[-1]
    assert mail.mail_from == "a@client.test" and mail.rcpt_to == ["b@sink.test"]
    assert b"not a mail of its own" in mail.data


# ----------------------------------------------------------------- MAIL and RCPT addresses

_ADDRESS_PIECES = ["a", "Anna.Schmidt", "x+tag", "@", ".", "..", "<", ">", " ", '"q s"', "é"]
_ADDRESS_PIECES += ["mueller-logistik.de", "[127.0.0.1]", " SIZE=100", "\t", "(c)", ":", ","]


class _Limits:
    def __init__(self, local_part_limit: int) -> None:
        self.local_part_limit = local_part_limit


@settings(max_examples=2000, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(_ADDRESS_PIECES), max_size=8),
    limit=st.sampled_from([0, 3, 64]),
)
def test_mail_and_rcpt_addresses_parse_as_aiosmtpd_parses_them(
    pieces: list[str], limit: int
) -> None:
    arg = "".join(pieces)
    ours = MailgateSMTP._getaddr(_Limits(limit), arg)  # type: ignore[arg-type]
    try:
        stock = SMTP._getaddr(_Limits(limit), arg)  # type: ignore[arg-type]
    except IndexError:  # aiosmtpd's parser trips over some input ("<"): a syntax error
        stock = (None, None)
    assert ours == stock


@pytest.mark.parametrize(
    "arg",
    ["<anna@mueller-logistik.de>", "<anna@mueller-logistik.de> SIZE=1234 BODY=8BITMIME", "<>"],
)
def test_plain_addresses_parse_as_aiosmtpd_parses_them(arg: str) -> None:
    for limit in (0, 3, 64):
        assert MailgateSMTP._getaddr(_Limits(limit), arg) == SMTP._getaddr(_Limits(limit), arg)  # type: ignore[arg-type]

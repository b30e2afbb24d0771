"""The listener over a real socket: 250 only after commit, 550/552/451 where they belong."""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from mailgate.app import ServerThread
from mailgate.config import Config, parse_config
from mailgate.errors import ConfigError
from mailgate.models import LedgerEntry, Ticket
from mailgate.store import Store

from .conftest import Clock, mail, send


def count(store: Store, model: type) -> int:
    with store.transaction() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def test_mail_is_stored_and_answered_250(server: int, store: Store) -> None:
    """A mail from a member becomes a ticket in the member's organization."""
    with smtplib.SMTP("127.0.0.1", server) as client:
        code, banner = client.ehlo()
        assert code == 250 and b"SIZE" in banner
        client.mail("anna@mueller-logistik.de")
        client.rcpt("support@support.example.com")
        code, reply = client.data(mail(subject="Drucker kaputt"))
    assert code == 250
    assert reply.startswith(b"2.0.0 Ok: created ticket #")
    with store.transaction() as s:
        ticket = s.scalars(select(Ticket)).one()
        assert ticket.subject == "Drucker kaputt"
        assert ticket.organization is not None
        assert ticket.organization.name == "Müller Logistik GmbH"
        assert ticket.requester.email == "anna@mueller-logistik.de"
        assert ticket.comments[0].body.startswith("Hallo,\nder Drucker")


def test_foreign_recipient_is_refused_550(server: int, store: Store) -> None:
    """We are no open relay: recipients outside mail.domains get 550 5.1.1."""
    with smtplib.SMTP("127.0.0.1", server) as client:
        client.ehlo()
        client.mail("anna@mueller-logistik.de")
        code, reply = client.rcpt("someone@elsewhere.example.org")
        assert code == 550 and reply.startswith(b"5.1.1")
        client.rset()
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            client.sendmail("anna@mueller-logistik.de", ["x@elsewhere.example.org"], mail())
    assert count(store, LedgerEntry) == 0


def test_mixed_recipients_store_once_for_the_accepted_one(server: int, store: Store) -> None:
    refused = send(
        server, mail(), rcpt=("support@support.example.com", "other@elsewhere.example.org")
    )
    assert list(refused) == ["other@elsewhere.example.org"]
    assert refused["other@elsewhere.example.org"][0] == 550
    assert count(store, Ticket) == 1


@pytest.fixture
def small_server(
    make_config: Callable[..., tuple[Config, Path]], store: Store, clock: Clock
) -> Iterator[int]:
    config, _ = make_config({"server": {"max_message_size": 4096}})
    with ServerThread(config, store, clock) as thread:
        assert thread.server.port is not None
        yield thread.server.port


def test_oversize_mail_is_refused_552(small_server: int, store: Store) -> None:
    """Too large is permanent: 552 5.3.4, whether announced with SIZE or not."""
    big = mail(body="x" * 80 + "\n" * 1 + ("y" * 70 + "\n") * 100)
    with smtplib.SMTP("127.0.0.1", small_server) as client:
        client.ehlo()
        code, reply = client.mail("anna@mueller-logistik.de", [f"SIZE={len(big)}"])
        assert code == 552 and reply.startswith(b"5.3.4")
        client.rset()
        client.mail("anna@mueller-logistik.de")  # no SIZE: caught while reading DATA
        client.rcpt("support@support.example.com")
        code, reply = client.data(big)
        assert code == 552 and reply.startswith(b"5.3.4")
        assert client.noop()[0] == 250  # the session goes on
    assert count(store, LedgerEntry) == 0


def test_redelivery_is_a_duplicate_and_changes_nothing(server: int, store: Store) -> None:
    raw = mail(message_id="<same-1@mueller-logistik.de>")
    send(server, raw)
    with smtplib.SMTP("127.0.0.1", server) as client:
        client.ehlo()
        client.mail("anna@mueller-logistik.de")
        client.rcpt("support@support.example.com")
        code, reply = client.data(raw)
    assert (code, reply) == (250, b"2.0.0 Ok: duplicate ticket #1")  # the first copy's ticket
    assert count(store, Ticket) == 1
    assert count(store, LedgerEntry) == 1


@contextmanager
def database_write_locked(url: str) -> Iterator[None]:
    """Hold the write lock from another connection, as a stuck writer or a dump would."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"isolation_level": None})
        with engine.connect() as conn:
            conn.exec_driver_sql("BEGIN EXCLUSIVE")
            try:
                yield
            finally:
                conn.exec_driver_sql("ROLLBACK")
    else:
        options = parsed.query["options"]
        engine = create_engine(
            parsed.difference_update_query(["options"]), connect_args={"options": options}
        )
        with engine.connect() as conn:
            conn.execute(text("LOCK TABLE inbound_messages IN ACCESS EXCLUSIVE MODE"))
            try:
                yield
            finally:
                conn.rollback()
    engine.dispose()


def test_unwritable_database_gives_451_then_stores_exactly_once(
    server: int, store: Store, config: Config
) -> None:
    """While the database cannot be written the sender gets 451; its retry is stored once."""
    raw = mail(message_id="<retry-1@mueller-logistik.de>")
    with database_write_locked(config.database.url):
        with smtplib.SMTP("127.0.0.1", server) as client:
            client.ehlo()
            client.mail("anna@mueller-logistik.de")
            client.rcpt("support@support.example.com")
            code, reply = client.data(raw)
        assert code == 451 and reply.startswith(b"4.3.0")
    assert count(store, LedgerEntry) == 0
    send(server, raw)  # the sending MTA retries after the outage
    send(server, raw)  # …and perhaps once more: still one ticket
    assert count(store, LedgerEntry) == 1
    assert count(store, Ticket) == 1


def test_concurrent_sessions_all_stored(server: int, store: Store) -> None:
    """Several clients at once: every 250 is a stored mail, nothing lost or doubled."""
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            for i in range(5):
                send(server, mail(subject=f"Kunde {n}: Anfrage {i}"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert count(store, LedgerEntry) == 20
    assert count(store, Ticket) == 20


@pytest.fixture
def lmtp_server(
    make_config: Callable[..., tuple[Config, Path]], store: Store, clock: Clock
) -> Iterator[int]:
    config, _ = make_config({"server": {"protocol": "lmtp"}})
    with ServerThread(config, store, clock) as thread:
        assert thread.server.port is not None
        yield thread.server.port


def test_lmtp_answers_once_per_recipient(lmtp_server: int, store: Store) -> None:
    """LMTP (RFC 2033): LHLO, and one DATA reply for each accepted recipient."""
    client = smtplib.LMTP("127.0.0.1", lmtp_server)
    try:
        refused = client.sendmail(
            "anna@mueller-logistik.de",
            ["support@support.example.com", "help@support.example.com"],
            mail(),
        )
        assert refused == {}
        # smtplib reads only the first DATA reply; the second must be waiting, also 250.
        code, reply = client.getreply()
        assert code == 250 and reply.startswith(b"2.0.0")
    finally:
        client.close()
    assert count(store, Ticket) == 1


@pytest.fixture
def tls_server(
    make_config: Callable[..., tuple[Config, Path]], store: Store, clock: Clock, tmp_path: Path
) -> Iterator[int]:
    """A listener with a fresh self-signed certificate."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    config, _ = make_config({"server": {"tls_cert": str(cert), "tls_key": str(key)}})
    with ServerThread(config, store, clock) as thread:
        assert thread.server.port is not None
        yield thread.server.port


def test_starttls_is_offered_and_works(tls_server: int, store: Store) -> None:
    with smtplib.SMTP("127.0.0.1", tls_server) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        code, _ = client.starttls(context=context)
        assert code == 220
        client.ehlo()
        client.sendmail("anna@mueller-logistik.de", ["support@support.example.com"], mail())
    assert count(store, Ticket) == 1


def test_a_malformed_sender_address_is_a_syntax_error_not_our_fault(server: int) -> None:
    """aiosmtpd's own parser raised on a lone "<", which the sender heard as 451 and so
    retried forever; it is the client's syntax (553 5.1.3), and the session goes on."""
    with smtplib.SMTP("127.0.0.1", server) as client:
        client.ehlo()
        code, reply = client.docmd("MAIL FROM:<")
        assert code == 553 and reply.startswith(b"5.1.3")
        code, _ = client.docmd("MAIL FROM:<anna@mueller-logistik.de>")
        assert code == 250


# ----------------------------------------------------------------- protocol: EHLO, LHLO, replies


def test_ehlo_advertises_pipelining_and_enhanced_status_codes(server: int) -> None:
    with smtplib.SMTP("127.0.0.1", server) as client:
        code, _ = client.ehlo()
        assert code == 250
        features = client.esmtp_features
    assert {"pipelining", "enhancedstatuscodes", "8bitmime", "smtputf8", "size"} <= set(features)


def test_lhlo_advertises_pipelining_and_enhanced_status_codes(lmtp_server: int) -> None:
    """RFC 2033 section 5: an LMTP server supports and announces both."""
    client = smtplib.LMTP("127.0.0.1", lmtp_server)
    try:
        code, _ = client.ehlo()  # smtplib's LMTP sends LHLO
        assert code == 250
        assert {"pipelining", "enhancedstatuscodes"} <= set(client.esmtp_features)
    finally:
        client.close()


_ENHANCED = re.compile(rb"[245]\d\d [245]\.\d{1,3}\.\d{1,3} ")


def _replies(sock: socket.socket, buffer: bytearray, count: int) -> list[bytes]:
    """The next ``count`` replies, each as its last line."""
    replies = []
    while len(replies) < count:
        while b"\r\n" not in buffer:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {replies}"
            buffer += chunk
        end = buffer.index(b"\r\n")
        line = bytes(buffer[:end])
        del buffer[: end + 2]
        if line[3:4] != b"-":
            replies.append(line)
    return replies


def test_pipelined_commands_are_answered_in_order_each_with_an_enhanced_code(
    server: int, store: Store
) -> None:
    """A pipelining client (RFC 2920) sends whole groups; every reply but the greeting,
    EHLO's and DATA's 354 carries an enhanced status code (RFC 2034)."""
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        buffer = bytearray()
        assert _replies(sock, buffer, 1)[0].startswith(b"220 ")
        sock.sendall(b"EHLO client.test\r\n")
        _replies(sock, buffer, 1)
        sock.sendall(
            b"MAIL FROM:<anna@mueller-logistik.de>\r\nRCPT TO:<support@support.example.com>\r\n"
            b"RCPT TO:<x@elsewhere.example.org>\r\nDATA\r\n"
        )
        group = _replies(sock, buffer, 4)
        assert [r[:3] for r in group] == [b"250", b"250", b"550", b"354"]
        sock.sendall(
            mail().replace(b"\r\n.", b"\r\n..")
            + b".\r\nNOOP\r\nRSET\r\nVRFY anna\r\nBOGUS\r\nMAIL FROM:<\r\nDATA\r\nQUIT\r\n"
        )
        rest = _replies(sock, buffer, 8)
    assert [r[:3] for r in rest] == [
        b"250",
        b"250",
        b"250",
        b"252",
        b"500",
        b"553",
        b"503",
        b"221",
    ]
    for reply in group[:3] + rest:
        assert _ENHANCED.match(reply), reply
    assert count(store, Ticket) == 1


# ----------------------------------------------------------------- DATA: bare LF, long lines


def test_a_mail_with_bare_lf_line_ends_is_stored_with_crlf(server: int, store: Store) -> None:
    """smtplib sends a bytes message as it is: LF line ends, dots doubled after each LF.
    The mail is taken as if the lines had ended in CRLF (README: "Bare LF")."""
    crlf = mail(body="Hallo,\n.profile fehlt\n\nGruss\n")
    lf = crlf.replace(b"\r\n", b"\n")
    with smtplib.SMTP("127.0.0.1", server) as client:
        client.ehlo()
        client.mail("anna@mueller-logistik.de")
        client.rcpt("support@support.example.com")
        code, reply = client.data(lf)  # sent as "...Gruss\n\r\n.\r\n"
    assert code == 250, reply
    with store.transaction() as s:
        entry = s.scalars(select(LedgerEntry)).one()
        assert entry.raw == crlf + b"\r\n"  # smtplib's own CRLF before the dot
        assert b".profile fehlt" in entry.raw


def test_a_bare_lf_dot_line_does_not_end_the_mail(server: int, store: Store) -> None:
    """LF.LF is no end of DATA (SMTP smuggling): what follows stays in the same mail."""
    raw = mail(body="erste Zeile\n")
    stream = raw + b"\n.\nMAIL FROM:<evil@elsewhere.example.org>\r\nnoch Text\r\n.\r\nNOOP\r\n"
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        buffer = bytearray()
        _replies(sock, buffer, 1)
        sock.sendall(
            b"EHLO client.test\r\nMAIL FROM:<anna@mueller-logistik.de>\r\n"
            b"RCPT TO:<support@support.example.com>\r\nDATA\r\n"
        )
        assert _replies(sock, buffer, 4)[3].startswith(b"354")
        sock.sendall(stream)
        data, noop = _replies(sock, buffer, 2)
    assert data.startswith(b"250 2.0.0") and noop.startswith(b"250 2.0.0")
    with store.transaction() as s:
        entry = s.scalars(select(LedgerEntry)).one()
    assert entry.raw == raw + b"\r\n\r\nMAIL FROM:<evil@elsewhere.example.org>\r\nnoch Text\r\n"


@pytest.fixture
def short_lines_server(
    make_config: Callable[..., tuple[Config, Path]], store: Store, clock: Clock
) -> Iterator[int]:
    config, _ = make_config({"server": {"max_line_length": 2000}})
    with ServerThread(config, store, clock) as thread:
        assert thread.server.port is not None
        yield thread.server.port


def test_lines_up_to_max_line_length_are_stored_and_longer_ones_refused(
    short_lines_server: int, store: Store
) -> None:
    """A line above RFC 5321's 998 is taken byte-exact up to [server] max_line_length; one
    above that gets 500 5.6.0 naming the limit, and the session goes on."""
    long_ok = mail(body="x" * 2000 + "\n", message_id="<long-ok@mueller-logistik.de>")
    too_long = mail(body="y" * 2001 + "\n")
    with smtplib.SMTP("127.0.0.1", short_lines_server) as client:
        client.ehlo()
        client.mail("anna@mueller-logistik.de")
        client.rcpt("support@support.example.com")
        code, reply = client.data(too_long)
        assert code == 500 and reply.startswith(b"5.6.0 Line too long")
        assert b"2000 bytes" in reply
        assert client.noop()[0] == 250
        client.mail("anna@mueller-logistik.de")
        client.rcpt("support@support.example.com")
        code, reply = client.data(long_ok)
        assert code == 250, reply
    with store.transaction() as s:
        entry = s.scalars(select(LedgerEntry)).one()
    assert entry.raw == long_ok


@pytest.mark.parametrize("value", [997, 0, "64k", True])
def test_max_line_length_below_rfc_5321_or_not_a_number_is_refused(value: object) -> None:
    assert parse_config({"server": {"max_line_length": 998}}).server.max_line_length == 998
    with pytest.raises(ConfigError) as info:
        parse_config({"server": {"max_line_length": value}})
    assert "[server].max_line_length" in str(info.value)

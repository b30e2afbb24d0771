"""The corpus's mails with lines over RFC 5321's 998 bytes, sent over SMTP to a real listener.

Amazon SES and GMX bounces, HTML mail with long links, long quoted replies: aiosmtpd's
limit refused them (500, a permanent loss for the sender). Each must now get 250 and be
stored byte-exact as it went over the wire: the file with its line ends made CRLF, as an
MTA sends it (for a CRLF file, the file itself); but for a line above the bound.
"""

from __future__ import annotations

import hashlib
import re
import smtplib

import pytest
from sqlalchemy import select

from mailgate.config import ServerConfig
from mailgate.db.records import raw_mail
from mailgate.models import LedgerEntry
from mailgate.store import Store

from .conftest import CORPUS, corpus_files, corpus_missing

if not (CORPUS / "index.tsv").is_file():
    pytest.skip(corpus_missing(CORPUS / "index.tsv"), allow_module_level=True)

RFC_5321_LINE = 998  # bytes without the CRLF (RFC 5321 section 4.5.3.1.6)


def on_the_wire(raw: bytes) -> bytes:
    """The file as an MTA sends it: every line end CRLF, the last line ended too."""
    wire = re.sub(rb"(?<!\r)\n", b"\r\n", raw)
    return wire if wire.endswith(b"\r\n") else wire + b"\r\n"


def longest_line(wire: bytes) -> int:
    """Bytes of the longest line of ``wire``, without its CRLF."""
    return max(map(len, wire.split(b"\r\n")))


def long_line_mails() -> list[tuple[str, bytes]]:
    """(path, wire form) of every indexed file with LF line ends and a line over 998 bytes
    (the CR-only files are one line each: no mail an MTA would send as it is)."""
    found = []
    for path, _category in corpus_files():
        raw = (CORPUS / path).read_bytes()
        if b"\n" not in raw:
            continue
        wire = on_the_wire(raw)
        if longest_line(wire) > RFC_5321_LINE:
            found.append((path, wire))
    return found


def test_every_long_line_corpus_mail_gets_250_and_is_stored_byte_exact(
    server: int, store: Store
) -> None:
    """Up to [server] max_line_length (64 KiB by default) each gets 250 and is stored
    byte-exact; a line above it (a test fixture's 707,606-byte quote) gets 500 5.6.0 and
    the session goes on."""
    mails = long_line_mails()
    assert len(mails) >= 30, "the corpus has three dozen such mails"
    crlf_files = sum((CORPUS / path).read_bytes() == wire for path, wire in mails)
    assert crlf_files >= 1  # these are compared with the file itself
    limit = ServerConfig().max_line_length
    fits = [(path, wire) for path, wire in mails if longest_line(wire) <= limit]
    assert len(mails) - len(fits) == 1
    with smtplib.SMTP("127.0.0.1", server, timeout=60) as client:
        client.ehlo()
        for path, wire in mails:  # the one that does not fit among them, in file order
            client.mail("postmaster@mueller-logistik.de")
            client.rcpt("support@support.example.com")
            code, reply = client.data(wire)
            if longest_line(wire) <= limit:
                assert code == 250, (path, reply)
            else:
                assert (code, reply[:19]) == (500, b"5.6.0 Line too long"), path
                assert f"exceeds {limit} bytes".encode() in reply
    with store.transaction() as s:
        entries = s.scalars(select(LedgerEntry)).all()
        stored = {entry.sha256: raw_mail(s, entry) for entry in entries}
    for path, wire in fits:
        assert stored.get(hashlib.sha256(wire).hexdigest()) == wire, path

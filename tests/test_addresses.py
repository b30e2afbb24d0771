"""Addresses are parsed once, from the structure of the header: a display name, however it
is written or whatever it decodes to, never changes the address, and never spans lines."""

from __future__ import annotations

import base64
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from mailgate.models import Outbox, Ticket
from mailgate.parser import parse
from mailgate.store import Store

from .conftest import mail, send

_LINE_BREAK = re.compile("[\t\n\v\f\r\x1c-\x1e\x85\u2028\u2029]")

# What an attacker puts into a name: line breaks, the specials of RFC 5322, addresses,
# header names and encoded-word syntax; plus letters a real name has.
_NAME_TEXT = st.lists(
    st.sampled_from(
        [
            "\r",
            "\n",
            "\r\n",
            "\t",
            '"',
            "\\",
            ",",
            "<",
            ">",
            "@",
            ":",
            ";",
            "(",
            ")",
            " ",
            "x@y.com",
            "<x@y.com>",
            "Bcc: x@y.com",
            "=?utf-8?q?x=40y.com?=",
            "?=",
            "=?",
            "Anna",
            "Müller",
            "ß",
        ]
    )
    | st.text(max_size=3),
    min_size=1,
    max_size=12,
).map("".join)


def _quoted(text: str) -> str:
    """A quoted-string; a line break inside it is written as folding whitespace."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + re.sub("[\r\n]+", "\r\n ", escaped) + '"'


def _q_word(chunk: str, sloppy: bool) -> str:
    """One Q encoded word; ``sloppy`` leaves RFC 5322 specials unencoded, as attackers
    (and some mailers) do."""
    keep = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!*+-/")
    if sloppy:
        keep |= set(',<>@:;()"\\.[]')
    out = []
    for byte in chunk.encode("utf-8", "surrogatepass"):
        char = chr(byte)
        out.append(char if char in keep else f"={byte:02X}")
    return "=?utf-8?q?" + "".join(out) + "?="


def _b_word(chunk: str) -> str:
    return "=?utf-8?b?" + base64.b64encode(chunk.encode("utf-8", "surrogatepass")).decode() + "?="


def _encoded(text: str, style: str) -> str:
    """Encoded words of a few characters each, separated by folding whitespace."""
    chunks = [text[i : i + 8] for i in range(0, len(text), 8)]
    if style == "b":
        words = [_b_word(chunk) for chunk in chunks]
    else:
        words = [_q_word(chunk, sloppy=style == "q-sloppy") for chunk in chunks]
    return "\r\n ".join(words)


def _written(text: str, style: str) -> str:
    """The display name as it stands in the header."""
    if style == "quoted":
        return _quoted(text)
    if style == "plain":  # an unquoted name keeps only what needs no quoting, and "@"
        plain = re.sub(r"[^A-Za-z0-9 .@=?_ßüÜ-]", "", text).strip()
        return plain or "Anna"
    return _encoded(text, style)


@settings(max_examples=500, deadline=None)
@given(
    text=_NAME_TEXT,
    style=st.sampled_from(["quoted", "q", "q-sloppy", "b", "plain"]),
)
def test_no_display_name_changes_the_address(text: str, style: str) -> None:
    """``Name <addr>`` gives ``addr`` in From, To and Cc, with the list's other address
    intact, whatever the name holds; the parsed name has no line break."""
    if any("\ud800" <= char <= "\udfff" for char in text):
        text = text.encode("utf-8", "replace").decode("utf-8")
    name = _written(text, style)
    raw = (
        f"From: {name} <mallory@evil.example>\r\n"
        f"To: {name} <anna@mueller-logistik.de>, support@support.example.com\r\n"
        f"Cc: chef@mueller-logistik.de, {name} <berater@agentur.de>\r\n"
        "Subject: Name\r\nMessage-ID: <name@evil.example>\r\n\r\nText\r\n"
    ).encode()
    message = parse(raw)
    assert message.from_ is not None and message.from_.email == "mallory@evil.example"
    assert [a.email for a in message.to] == [
        "anna@mueller-logistik.de",
        "support@support.example.com",
    ]
    assert [a.email for a in message.cc] == ["chef@mueller-logistik.de", "berater@agentur.de"]
    for address in (message.from_, *message.to, *message.cc):
        assert not _LINE_BREAK.search(address.name), address


def test_encoded_line_break_in_the_name_over_smtp_keeps_the_requester(
    server: int, store: Store
) -> None:
    """The mail of issue 16: an encoded CR/LF and a fake Bcc in the name. The ticket's
    requester is the address in the angle brackets; the name is one line."""
    raw = mail(
        sender="=?utf-8?q?Evil=0D=0ABcc:_x@y.com?= <mallory@evil.example>",
        message_id="<evil-name@evil.example>",
    )
    send(server, raw, mail_from="mallory@evil.example")
    with store.transaction() as s:
        ticket = s.scalars(select(Ticket)).one()
        assert ticket.requester.email == "mallory@evil.example"
        assert ticket.requester.name == "Evil Bcc: x@y.com"
        assert not _LINE_BREAK.search(ticket.requester.name)
        recipients = {r for row in s.scalars(select(Outbox)) for r in row.recipients}
    # The acknowledgement and the agents' notice, to nobody else.
    assert recipients == {"mallory@evil.example", "tech@support.example.com"}

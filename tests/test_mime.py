"""What :mod:`mailgate.mime` writes is what the stdlib's strict parser reads back.

Any subject, address, text and file name that mailgate may be handed (customers choose
subjects and file names, and the database holds whatever address a mail came from) must
come out as a correct message: the parser finds no defect and decodes exactly what went
in, header lines fold at 78 where they can and never pass 998, and in ASCII mode the
message is 7-bit throughout.
"""

from __future__ import annotations

import binascii
import string
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser, Parser
from email.policy import default, strict
from email.utils import unquote
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate import mime
from mailgate.config import Config, parse_config
from mailgate.outbound import OutboundEnvelope, StoredFile, build_message, one_line

from .conftest import BASE_CONFIG, _merge

NOW = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text as customers write it: umlauts, dashes, CJK, emoji, controls, lookalikes of
# encoded-words and of our own boundaries, and words far longer than a line.
_pieces = st.sampled_from(
    [
        "Drucker",
        "kaputt",
        "Übergabe",
        "–",
        "日本語の件名",
        "🙂",
        "=?utf-8?q?x?=",
        "=_mailgate_",
        '"quoted"',
        "a\\b",
        "\x00",
        "\t",
        "x" * 120,
        "ä" * 400,
        "y" * 1200,
        "_",
        "?=",
        "   ",
    ]
)
texts = st.lists(st.one_of(_pieces, st.text(max_size=30)), max_size=12).map(" ".join)
_local = st.one_of(
    st.text(alphabet=string.ascii_letters + string.digits + ".-+_", min_size=1, max_size=20),
    st.sampled_from(["john smith", 'a"b', "x\\y", ".dot", "a..b", "müller", "用户"]),
)
_domain = st.sampled_from(["mueller-logistik.de", "bäckerei-groß.de", "例え.jp", "x.example"])
addresses = st.builds(lambda local, domain: f"{local}@{domain}", _local, _domain)
filenames = st.one_of(texts, st.sampled_from(["Anleitung für Drucker – Übersicht.pdf"]))


def _config(transport: str) -> Config:
    data = _merge(BASE_CONFIG, {"database": {"url": "sqlite://"}})
    outbound: dict[str, Any] = {"transport": transport}
    if transport == "maildir":
        outbound["maildir"] = "/nonexistent"
    else:
        outbound["smtp_host"] = "127.0.0.1"
    return parse_config(_merge(data, {"outbound": outbound}), source="test")


CONFIGS = {t: _config(t) for t in ("maildir", "smtp")}


def _parse(data: bytes) -> EmailMessage:
    """Strictly parsed; RFC 6532 mail (raw UTF-8 headers) is read as text, as the
    stdlib's byte parser cannot decode such headers."""
    if data.isascii():
        parsed = BytesParser(policy=strict).parsebytes(data)
    else:
        parsed = Parser(policy=strict).parsestr(data.decode("utf-8"))
    assert isinstance(parsed, EmailMessage)
    return parsed


def _check_lines(data: bytes) -> None:
    assert b"\n" not in data.replace(b"\r\n", b""), "bare LF"
    assert b"\r" not in data.replace(b"\r\n", b""), "bare CR"
    for line in data.split(b"\r\n"):
        assert len(line) <= 998
        if len(line) > 78:  # only where a single token leaves no place to fold
            assert b" " not in line.strip().split(b": ", 1)[-1], line


def _defects(message: EmailMessage) -> list[Any]:
    found = list(message.defects)
    for part in message.walk():
        found.extend(part.defects)
    return found


@SETTINGS
@given(
    subject=texts,
    to=st.lists(addresses, min_size=1, max_size=4),
    text=texts,
    html=texts,
    files=st.lists(st.tuples(filenames, st.binary(max_size=300)), max_size=3),
    relay=st.booleans(),
)
def test_what_goes_out_is_what_comes_back(
    subject: str,
    to: list[str],
    text: str,
    html: str,
    files: list[tuple[str, bytes]],
    relay: bool,
) -> None:
    config = CONFIGS["smtp" if relay else "maildir"]
    envelope = OutboundEnvelope(
        to=tuple(to),
        subject=subject,
        reply_to="support+1-abc@support.example.com",
        in_reply_to="CAH" + "x" * 90 + "@mail.example",
        references=tuple(f"{i}.{'r' * 30}@mail.example" for i in range(5)),
        auto_submitted="auto-generated",
    )
    stored = [
        (StoredFile(name, "application/pdf", len(data), "0" * 64), data) for name, data in files
    ]
    built = build_message(config, envelope, text, html, now=NOW, files=stored)
    data = built.data
    _check_lines(data)
    utf8 = not data.isascii()
    if relay:  # a relay may lack SMTPUTF8: UTF-8 only where an address needs it
        assert utf8 == any(not a.rpartition("@")[0].isascii() for a in to)
    message = _parse(data)
    assert _defects(message) == []
    assert message["Subject"] == one_line(subject)
    assert message["Message-ID"] == f"<{built.message_id}>"
    assert message["In-Reply-To"] == f"<{envelope.in_reply_to}>"
    assert str(message["References"]).split() == [f"<{r}>" for r in envelope.references]
    got = [(a.username, a.domain) for a in message["To"].addresses]
    for (local, domain), sent in zip(got, to, strict=True):
        assert local == sent.rpartition("@")[0]
        want = sent.rpartition("@")[2]
        assert domain == (want if utf8 else want.encode("idna").decode())
    for kind, sent in (("plain", text), ("html", html)):
        body = message.get_body((kind,))
        assert body is not None
        assert body.get_content().replace("\r\n", "\n") == _as_text(sent)
    attached = list(message.iter_attachments())
    # The stdlib's get_filename strips a name and drops quotes around it, as it reads
    # the parameter: every other character comes back as it was written.
    assert [(p.get_filename() or "", p.get_content()) for p in attached] == [
        (unquote(name).strip(), content) for name, content in files
    ]


def _as_text(text: str) -> str:
    """A text part as a reader gets it: lines end in LF, and the last one too."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


@SETTINGS
@given(text=texts)
def test_encoded_words_hold_whole_characters(text: str) -> None:
    """Every encoded-word decodes on its own (RFC 2047 5: no character split across two)
    and is at most 75 characters; together they give the text back."""
    if not text:
        return
    words = mime.encoded_words(text)
    decoded = []
    for word in words:
        assert len(word) <= 75
        header = default.header_factory("Subject", word)
        decoded.append(str(header))
    assert "".join(decoded) == text


def test_a_plain_subject_stays_readable() -> None:
    """Only what needs it is encoded: ASCII words stay as they are, a run of words with
    umlauts is one encoded-word with its spaces."""
    tokens = mime.text_tokens("[#7] Lieferung – Übergabe morgen", utf8=False)
    assert tokens[:2] == ["[#7]", "Lieferung"] and tokens[-1] == "morgen"
    assert len(tokens) == 4 and str(default.header_factory("Subject", tokens[2])) == "– Übergabe"
    assert mime.encoded_words("Lieferschein für Drucker")[0].startswith("=?utf-8?q?")  # shorter
    assert mime.text_tokens("[#7] Lieferung – Übergabe", utf8=True) == [
        "[#7]",
        "Lieferung",
        "–",
        "Übergabe",
    ]


@pytest.mark.parametrize(
    ("local", "written"),
    [
        ("anna", "anna@x.example"),
        ("anna.m+tag", "anna.m+tag@x.example"),
        ("john smith", '"john smith"@x.example'),
        ('a"b', '"a\\"b"@x.example'),
        (".anna", '".anna"@x.example'),
    ],
)
def test_a_local_part_is_quoted_when_it_is_no_dot_atom(local: str, written: str) -> None:
    assert mime.address(f"{local}@x.example", utf8=False) == written


@pytest.mark.parametrize("bad", ["a\r\nBcc: x@evil.example", "a\x00b@x.example", "@x", "a@"])
def test_an_address_that_cannot_be_written_is_refused(bad: str) -> None:
    """A refused address fails its notification (``render: …``), never the header block."""
    with pytest.raises(ValueError):
        mime.address(bad if "@" in bad else f"{bad}@x.example", utf8=False)


def test_a_long_file_name_continues_by_rfc2231() -> None:
    tokens = mime._parameter("filename", "Anleitung für Drucker – Übersicht " * 4 + ".pdf")
    assert tokens[0].startswith("filename*0*=utf-8''Anleitung%20f%C3%BCr%20Drucker")
    assert len(tokens) > 1 and all(len(t) + 2 <= 78 for t in tokens)
    assert mime._parameter("filename", "a b.pdf") == ['filename="a b.pdf"']
    assert mime._parameter("filename", 'a "b".pdf') == ["filename*=utf-8''a%20%22b%22.pdf"]


def test_quoted_printable_in_pieces_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long text is encoded a piece of lines at a time: the bytes are those of one call."""
    text = "Zeile mit ä, = und Leerzeichen am Ende   \n" * 50 + "x" * 300 + "\nletzte Zeile"
    whole = binascii.b2a_qp((text + "\n").encode(), quotetabs=False, istext=True)
    monkeypatch.setattr(mime, "QP_PIECE", 100)
    assert mime._part_body(mime.Part("text/plain", text=text)) == whole.replace(b"\n", b"\r\n")

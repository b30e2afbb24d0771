"""Files in and out: an agent's attachments reach the customer, Outlook's winmail.dat is opened.

Mail goes in over the real listener and out to a real SMTP sink; what the customer's mail
client would receive is parsed from the sink's bytes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import strict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailgate.config import Config
from mailgate.jobs import Jobs
from mailgate.mail.mime import Attachment
from mailgate.mail.tnef import unpack
from mailgate.models import Outbox
from mailgate.outbound import StoredFile, choose_files, cid_references
from mailgate.parser import parse
from mailgate.store import Store

from .conftest import CORPUS, Clock, _merge, corpus_missing, run_cli, send
from .sink import Received, Sink

AGENT = "tech@support.example.com"
ANNA = "anna@mueller-logistik.de"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40  # binary, as a PDF is
BIG = 20 * 1024 * 1024
TNEF_DIR = CORPUS / "tnefparse" / "tests" / "examples"


@pytest.fixture
def setup(
    make_config: Callable[..., tuple[Config, Path]], sink: Sink, request: pytest.FixtureRequest
) -> tuple[Config, Path]:
    """Outbound to the sink; the listener takes a 20 MB file (base64: 27 MB). A test adds
    its own overlay (``indirect``)."""
    overlay: dict[str, Any] = {
        "server": {"max_message_size": 40 * 1024 * 1024},
        "outbound": {"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": sink.port},
    }
    return make_config(_merge(overlay, getattr(request, "param", {})))


@pytest.fixture
def config(setup: tuple[Config, Path]) -> Config:
    return setup[0]


def _new_ticket(config: Config, store: Store, server: int, clock: Clock, sink: Sink) -> str:
    """Anna opens a ticket with a file of her own; the agent's notice's Reply-To address."""
    first = EmailMessage()
    first["From"], first["To"] = f"Anna Schmidt <{ANNA}>", "support@support.example.com"
    first["Subject"], first["Message-ID"] = "Drucker kaputt", "<neu-1@mueller-logistik.de>"
    first.set_content("Hallo,\nder Drucker zeigt Fehler 49.\n")
    first.add_attachment(b"anna's photo", maintype="image", subtype="jpeg", filename="foto.jpg")
    assert send(server, first.as_bytes()) == {}
    Jobs(store, config).deliver_outbox(clock())
    (notice,) = [r for r in sink.received if r.rcpt_to == [AGENT]]
    sink.received.clear()
    clock.advance(minutes=5)
    return str(notice.message["Reply-To"])


def _agent_reply(reply_to: str, body: str, files: list[tuple[str, str, bytes]]) -> EmailMessage:
    """The agent's answer from a mail client, authenticated by our MTA, with files."""
    answer = EmailMessage()
    answer["From"], answer["To"] = f"Tech <{AGENT}>", reply_to
    answer["Subject"] = "Re: [#1] Drucker kaputt"
    answer["Authentication-Results"] = "mx.test; dmarc=pass header.from=support.example.com"
    answer.set_content(body)
    for name, ctype, data in files:
        maintype, subtype = ctype.split("/")
        answer.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return answer


def _to_anna(sink: Sink) -> Received:
    (received,) = [r for r in sink.received if r.rcpt_to == [ANNA]]
    return received


def _files(data: bytes) -> dict[str, bytes]:
    """The attachments of a received mail, parsed strictly: name → content."""
    message = BytesParser(policy=strict).parsebytes(data)
    assert isinstance(message, EmailMessage) and not message.defects
    found = {}
    for part in message.iter_attachments():
        assert part["Content-Transfer-Encoding"] == "base64"
        content = part.get_payload(decode=True)
        assert isinstance(content, bytes)
        found[str(part.get_filename())] = content
    return found


def _texts(data: bytes) -> tuple[str, str]:
    message = BytesParser(policy=strict).parsebytes(data)
    assert isinstance(message, EmailMessage)
    plain, html = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None and html is not None
    return str(plain.get_content()), str(html.get_content())


def test_an_agents_pdf_reaches_the_customer_byte_for_byte(
    config: Config, store: Store, server: int, clock: Clock, sink: Sink
) -> None:
    """Same SHA-256 at the customer; multipart/mixed around the text and HTML alternative."""
    reply_to = _new_ticket(config, store, server, clock, sink)
    answer = _agent_reply(
        reply_to, "Anbei die Anleitung.\n", [("Anleitung für Drucker.pdf", "application/pdf", PDF)]
    )
    assert send(server, answer.as_bytes(), mail_from=AGENT, rcpt=(reply_to,)) == {}
    Jobs(store, config).deliver_outbox(clock())
    received = _to_anna(sink)
    files = _files(received.data)
    assert list(files) == ["Anleitung für Drucker.pdf"]  # not Anna's own foto.jpg
    assert hashlib.sha256(files["Anleitung für Drucker.pdf"]).hexdigest() == (
        hashlib.sha256(PDF).hexdigest()
    )
    assert b"filename*=utf-8''Anleitung%20f%C3%BCr%20Drucker.pdf" in received.data
    message = received.message
    assert message.get_content_type() == "multipart/mixed"
    first = next(message.iter_parts())
    assert first.get_content_type() == "multipart/alternative"
    plain, _ = _texts(received.data)
    assert "Anbei die Anleitung." in plain and "zu groß" not in plain


def test_a_file_above_the_limit_is_listed_as_left_out(
    setup: tuple[Config, Path], config: Config, store: Store, server: int, clock: Clock, sink: Sink
) -> None:
    """A 20 MB file stays with the ticket and the mail says so; the PDF beside it goes."""
    reply_to = _new_ticket(config, store, server, clock, sink)
    big = b"\x89PNG" + bytes(BIG - 4)
    files = [("aufnahme.mp4", "video/mp4", big), ("anleitung.pdf", "application/pdf", PDF)]
    answer = _agent_reply(reply_to, "Das Video und die Anleitung.\n", files)
    assert send(server, answer.as_bytes(), mail_from=AGENT, rcpt=(reply_to,)) == {}
    Jobs(store, config).deliver_outbox(clock())
    received = _to_anna(sink)
    assert list(_files(received.data)) == ["anleitung.pdf"]
    assert len(received.data) < 1024 * 1024
    plain, html = _texts(received.data)
    for text in (plain, html):  # German: the organization's language is the default, de
        assert "aufnahme.mp4 (20.0 MB)" in text
        assert "bleiben in Ihrem Ticket gespeichert" in text
        assert "anleitung.pdf" not in text
    shown = json.loads(run_cli(setup[1], "tickets", "show", "1", "--json").stdout)
    names = [a["filename"] for c in shown["comments"] for a in c["attachments"]]
    assert names == ["foto.jpg", "aufnahme.mp4", "anleitung.pdf"]  # the ticket keeps all


@pytest.mark.parametrize(
    "setup",
    [{"outbound": {"max_attachment_size": "5KB"}, "mail": {"language": "en"}}],
    indirect=True,
)
def test_the_limit_counts_all_files_together_in_english(
    config: Config, store: Store, server: int, clock: Clock, sink: Sink
) -> None:
    """Two files of 3 KB under a 5 KB limit: the first goes, the second is listed."""
    assert config.outbound.max_attachment_size == 5 * 1024
    reply_to = _new_ticket(config, store, server, clock, sink)
    files = [("a.txt", "text/plain", b"a" * 3000), ("b.txt", "text/plain", b"b" * 3000)]
    answer = _agent_reply(reply_to, "Two files.\n", files)
    assert send(server, answer.as_bytes(), mail_from=AGENT, rcpt=(reply_to,)) == {}
    Jobs(store, config).deliver_outbox(clock())
    received = _to_anna(sink)
    assert _files(received.data) == {"a.txt": b"a" * 3000}
    plain, html = _texts(received.data)
    for text in (plain, html):
        assert "b.txt (3 KB)" in text and "too large for email" in text
        assert "kept with" in text and "ticket" in text


def test_inline_pictures_of_the_agents_html_are_not_sent(
    config: Config, store: Store, server: int, clock: Clock, sink: Sink
) -> None:
    """The signature logo shown by cid: stays behind, silently; an attached picture goes."""
    reply_to = _new_ticket(config, store, server, clock, sink)
    answer = _agent_reply(reply_to, "Gern geschehen.\n", [])
    answer.add_alternative(
        '<p>Gern geschehen.</p><p><img src="cid:logo.123@support.example.com"></p>',
        subtype="html",
    )
    html = answer.get_body(("html",))
    assert html is not None
    html.add_related(b"logo", maintype="image", subtype="png", cid="<logo.123@support.example.com>")
    answer.add_attachment(
        b"screenshot", maintype="image", subtype="png", filename="screen.png", cid="<s1@mail>"
    )
    assert send(server, answer.as_bytes(), mail_from=AGENT, rcpt=(reply_to,)) == {}
    Jobs(store, config).deliver_outbox(clock())
    received = _to_anna(sink)
    assert list(_files(received.data)) == ["screen.png"]
    plain, _ = _texts(received.data)
    assert "logo" not in plain and "attachment-" not in plain


def test_an_internal_note_with_a_file_sends_the_customer_nothing(
    config: Config, store: Store, server: int, clock: Clock, sink: Sink
) -> None:
    reply_to = _new_ticket(config, store, server, clock, sink)
    note = _agent_reply(reply_to, "#note\nNur intern.\n", [("intern.pdf", "application/pdf", PDF)])
    assert send(server, note.as_bytes(), mail_from=AGENT, rcpt=(reply_to,)) == {}
    Jobs(store, config).deliver_outbox(clock())
    assert [r for r in sink.received if ANNA in r.rcpt_to] == []
    with store.transaction() as session:
        kinds = session.scalars(select(Outbox.kind)).all()
    assert "agent_reply" not in kinds


# --- winmail.dat ------------------------------------------------------------------------


def _with_winmail(data: bytes, content_type: str = "application/ms-tnef") -> bytes:
    message = EmailMessage()
    message["From"], message["To"] = f"Anna Schmidt <{ANNA}>", "support@support.example.com"
    message["Subject"], message["Message-ID"] = (
        "Dateien aus Outlook",
        "<tnef-1@mueller-logistik.de>",
    )
    message.set_content("Hallo,\nanbei zwei Dateien.\n")
    maintype, subtype = content_type.split("/")
    message.add_attachment(data, maintype=maintype, subtype=subtype, filename="winmail.dat")
    return message.as_bytes()


@pytest.mark.skipif(not TNEF_DIR.is_dir(), reason=corpus_missing(TNEF_DIR))
def test_a_winmail_dat_over_smtp_becomes_the_files_it_carries(
    setup: tuple[Config, Path], store: Store, server: int
) -> None:
    """The files sit beside the original, each retrievable byte for byte."""
    raw = _with_winmail((TNEF_DIR / "two-files.tnef").read_bytes())
    assert send(server, raw) == {}
    shown = json.loads(run_cli(setup[1], "tickets", "show", "1", "--json").stdout)
    (comment,) = shown["comments"]
    listed = [(a["filename"], a["content_type"]) for a in comment["attachments"]]
    assert listed == [
        ("winmail.dat", "application/ms-tnef"),
        ("AUTHORS", "application/octet-stream"),
        ("README", "application/octet-stream"),
    ]
    saved = run_cli(setup[1], "tickets", "attachment", "1", "README", "-o", "-").stdout
    tnef = Attachment(
        "winmail.dat", "application/ms-tnef", None, (TNEF_DIR / "two-files.tnef").read_bytes()
    )
    assert saved == unpack(tnef)[0][1].data and len(saved) == 893


@pytest.mark.skipif(not TNEF_DIR.is_dir(), reason=corpus_missing(TNEF_DIR))
def test_an_agent_on_outlook_sends_the_files_not_the_winmail_dat(
    config: Config, store: Store, server: int, clock: Clock, sink: Sink
) -> None:
    reply_to = _new_ticket(config, store, server, clock, sink)
    tnef = (TNEF_DIR / "two-files.tnef").read_bytes()
    answer = _agent_reply(reply_to, "Anbei.\n", [("winmail.dat", "application/ms-tnef", tnef)])
    assert send(server, answer.as_bytes(), mail_from=AGENT, rcpt=(reply_to,)) == {}
    Jobs(store, config).deliver_outbox(clock())
    assert sorted(_files(_to_anna(sink).data)) == ["AUTHORS", "README"]


@pytest.mark.skipif(not TNEF_DIR.is_dir(), reason=corpus_missing(TNEF_DIR))
@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ("one-file", [("AUTHORS", 244)]),
        (
            "umlaut",
            [("TBZ PARIV GmbH.jpg", 44764), ("image003.jpg", 1001), ("UmlautAnhang-äüö.txt", 14)],
        ),
        (
            "MAPI_ATTACH_DATA_OBJ",
            [
                ("VIA_Nytt_1402.doc", 61534),
                ("VIA_Nytt_1402.pdf", 213685),
                ("VIA_Nytt_14021.htm", 68919),
            ],
        ),
        ("data-before-name", [("boot.ini", 289)]),  # two empty files are skipped
        ("minimal_attachment", [("winmail-1.bin", 16)]),  # no name: one is made up
        ("bad_checksum", [("image001.png", 1533127)]),  # checksums are not held against it
        ("rtf", []),  # only the formatted body: nothing to unpack, the original stays
        ("body", []),
        ("IPM-DistList", []),  # an embedded distribution list carries no file
        ("garbage-at-end", []),
    ],
)
def test_corpus_tnef_samples_unpack(sample: str, expected: list[tuple[str, int]]) -> None:
    data = (TNEF_DIR / f"{sample}.tnef").read_bytes()
    files, problem = unpack(Attachment("winmail.dat", "application/ms-tnef", None, data))
    assert problem is None
    assert [(f.filename, f.size) for f in files] == expected


def test_a_broken_winmail_dat_keeps_the_mail_and_says_why() -> None:
    """Signature right, the rest garbage: the original stays, a defect explains, no raise."""
    broken = b"\x78\x9f\x3e\x22\x01\x00" + b"\x02\x10\x80\xff\xff\xff\x7f" + b"junk" * 10
    message = parse(_with_winmail(broken))
    assert [a.filename for a in message.attachments] == ["winmail.dat"]
    assert any("winmail.dat: unreadable TNEF" in d for d in message.defects), message.defects


def test_a_winmail_dat_of_a_million_objects_is_not_unpacked_but_kept() -> None:
    """tnefparse copies the rest of the stream per object: such a stream is refused at once."""
    tiny = b"\x01" + bytes(10)  # message level, no name, no type, empty, checksum 0
    flood = b"\x78\x9f\x3e\x22\x01\x00" + tiny * 1_000_000
    started = time.monotonic()
    files, problem = unpack(Attachment("winmail.dat", "application/ms-tnef", None, flood))
    assert time.monotonic() - started < 5
    assert files == () and problem is not None and "too complex" in problem


# --- the pure choice --------------------------------------------------------------------


def _file(
    name: str, size: int, ctype: str = "application/pdf", cid: str | None = None
) -> StoredFile:
    return StoredFile(name, ctype, size, "0" * 64, cid)


@pytest.mark.parametrize(
    ("files", "limit", "attached", "left_out"),
    [
        ([_file("a", 10), _file("b", 10)], 20, ["a", "b"], []),
        ([_file("a", 10), _file("b", 11)], 20, ["a"], ["b"]),
        ([_file("big", 30), _file("small", 5)], 20, ["small"], ["big"]),  # a later one fits
        ([_file("a", 1)], 0, [], ["a"]),  # 0: none goes, all are listed
        ([_file("winmail.dat", 5, "application/ms-tnef"), _file("x", 5)], 20, ["x"], []),
        ([_file("logo.png", 5, "image/png", "Logo@X"), _file("y", 5)], 20, ["y"], []),
        ([_file("screen.png", 5, "image/png", "s1@mail")], 20, ["screen.png"], []),
    ],
)
def test_choose_files(
    files: list[StoredFile], limit: int, attached: list[str], left_out: list[str]
) -> None:
    choice = choose_files(files, frozenset({"logo@x"}), limit)
    assert [f.filename for f in choice.attached] == attached
    assert [f.filename for f in choice.left_out] == left_out


def test_cid_references_are_read_as_rfc_2392_urls() -> None:
    html = "<img src=\"cid:Logo@X\"><img src='cid:a%40b'><img src=cid:plain.1>"
    assert cid_references(html) == {"logo@x", "a@b", "plain.1"}
    assert cid_references(None) == frozenset()

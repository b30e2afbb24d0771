"""Every notification kind, in every language, is a correct RFC 5322 message on the wire.

The bytes are the ones the outbox stores and sends (``Jobs._render`` through
``build_message``), parsed with the stdlib's strict policy, which raises on any defect.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import strict
from email.utils import parsedate_to_datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from mailgate.config import Config
from mailgate.ingest import InboundEnvelope, ingest
from mailgate.jobs import Jobs
from mailgate.models import Comment, NotificationKind, Outbox, OutboxStatus
from mailgate.render import LANGUAGES
from mailgate.store import Store

from .conftest import AUTHENTICATED, Clock, mail, open_store
from .test_render import digest

# A message id longer than a header line: the stdlib would fold it as an encoded-word.
LONG_ID = "CAH" + "x" * 70 + ".4711@mail.mueller-logistik.de"
MSG_ID_LIST = re.compile(r"^(?:\s*<[!-;=?-~]+@[!-;=?-~]+>)+\s*$")
MESSAGE_ID = re.compile(r"^<[!-;=?-~]+@support\.example\.com>$")


def _queue_every_kind(store: Store, ticket: int, now: datetime) -> None:
    """One pending row of each kind for the ticket, as the pipeline would write it."""
    with store.transaction() as session:
        comment = session.scalars(select(Comment).where(Comment.ticket_id == ticket)).first()
        assert comment is not None
        for kind in NotificationKind:
            session.add(
                Outbox(
                    kind=kind.value,
                    ticket_id=ticket,
                    recipients=["anna@mueller-logistik.de"],
                    subject=f"[#{ticket}] Re: Lieferung – Übergabe {kind.value} " + "lang " * 20,
                    payload={
                        "comment": comment.id,
                        "errors": ["#status bogus: unknown"],
                        "moved": {"from": "Bäckerei Groß", "to": "Müller Logistik GmbH"},
                        "unused_prefix": {
                            "why": "not_authorised",
                            "prefix": "Müller Logistik",
                            "names": ["Müller Logistik GmbH"],
                        },
                        "by": "tech@support.example.com",
                        "digest": digest("Lieferung – Übergabe"),
                    },
                    status=OutboxStatus.PENDING.value,
                    created_at=now,
                    next_attempt_at=now,
                )
            )


def _delivered(store: Store, config: Config, clock: Clock) -> dict[str, bytes]:
    """Five minutes later, the outbox delivered once: each kind's bytes as sent."""
    clock.advance(minutes=5)
    Jobs(store, config).deliver_outbox(clock())
    return _wire(store)


def _wire(store: Store) -> dict[str, bytes]:
    with store.transaction() as session:
        rows = session.scalars(select(Outbox).order_by(Outbox.id)).all()
        assert all(r.status == OutboxStatus.SENT.value for r in rows), [r.last_error for r in rows]
        return {r.kind: r.message for r in rows if r.message is not None}


def _check(data: bytes, now: datetime, zone: ZoneInfo) -> EmailMessage:
    """Checks that hold for every message we send; returns the strictly parsed message."""
    assert b"\n" not in data.replace(b"\r\n", b""), "bare LF or CR"
    assert b"\r" not in data.replace(b"\r\n", b""), "bare CR"
    lines = data.split(b"\r\n")
    assert all(len(line) <= 998 for line in lines)
    # Wrapped at 78 wherever a line has a place to fold: only one unbreakable token is longer.
    long = [line for line in lines if len(line) > 78]
    assert all(b" " not in line.strip().split(b": ", 1)[-1] for line in long), long
    assert data.isascii()  # ASCII addresses: no SMTPUTF8 needed, headers encoded
    message = BytesParser(policy=strict).parsebytes(data)
    assert isinstance(message, EmailMessage)
    assert not message.defects
    head = data.split(b"\r\n\r\n", 1)[0]
    assert data.count(b"MIME-Version:") == 1 and head.count(b"\r\nMIME-Version: 1.0") == 1
    for name in ("Date", "From", "To", "Subject", "Message-ID", "Auto-Submitted", "Reply-To"):
        assert len(message.get_all(name, [])) == 1, name
    date = parsedate_to_datetime(str(message["Date"]))
    assert date == now and date.utcoffset() == now.astimezone(zone).utcoffset()
    assert MESSAGE_ID.match(str(message["Message-ID"]).strip())
    for name in ("From", "To", "Reply-To"):
        addresses = message[name].addresses
        assert addresses and all(a.username and a.domain for a in addresses), name
    assert b"=?" not in b"".join(
        line for line in head.split(b"\r\n") if not line.startswith(b"Subject:")
    ).replace(b"\r\n ", b" ")
    for name in ("In-Reply-To", "References"):
        assert len(message.get_all(name, [])) == 1, name
        assert MSG_ID_LIST.match(str(message[name])), name
    assert message["Auto-Submitted"] in ("auto-replied", "auto-generated")
    texts = message
    if message.get_content_type() == "multipart/mixed":  # an agent reply with files
        texts = next(message.iter_parts())  # type: ignore[assignment]
        assert "MIME-Version" not in texts
    assert [p.get_content_type() for p in texts.iter_parts()] == ["text/plain", "text/html"]
    for part in texts.iter_parts():
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        assert "MIME-Version" not in part
        assert part.get_content().strip()
    return message


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_kind_is_rfc5322(
    make_config: Callable[..., tuple[Config, Path]], clock: Clock, language: str
) -> None:
    config, _ = make_config({"mail": {"language": language}})
    with open_store(config, clock) as store:
        raw = mail(subject="Lieferung – Übergabe", message_id=f"<{LONG_ID}>")
        created = ingest(store, config, raw, InboundEnvelope(), clock())
        assert created.ticket is not None
        _queue_every_kind(store, created.ticket, clock())
        wire = _delivered(store, config, clock)
    assert set(wire) == set(NotificationKind)
    zone = ZoneInfo(config.hours.timezone)
    for kind, data in wire.items():
        message = _check(data, clock(), zone)
        assert message["In-Reply-To"] == f"<{LONG_ID}>", kind
        assert message["Subject"].startswith(f"[#{created.ticket}] "), kind
        assert "Übergabe" in message["Subject"]


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_notification_without_ticket_is_rfc5322(
    make_config: Callable[..., tuple[Config, Path]], clock: Clock, language: str
) -> None:
    """An agent's unauthenticated mail that names no ticket waits in quarantine; the agent
    is told, in an answer to that mail (In-Reply-To its Message-ID)."""
    config, _ = make_config({"mail": {"language": language}})
    with open_store(config, clock) as store:
        raw = mail(
            sender="Tech <tech@support.example.com>",
            subject="Rundschreiben – Wartung",
            message_id=f"<{LONG_ID}>",
        )
        kept = ingest(store, config, raw, InboundEnvelope(), clock())
        assert (kept.action, kept.reason) == ("quarantined", "unauthenticated agent mail")
        wire = _delivered(store, config, clock)
    assert set(wire) == {NotificationKind.AGENT_UNVERIFIED}
    message = _check(
        wire[NotificationKind.AGENT_UNVERIFIED], clock(), ZoneInfo(config.hours.timezone)
    )
    assert message["To"] == "tech@support.example.com"
    assert message["In-Reply-To"] == f"<{LONG_ID}>"
    assert message["Subject"] == "Rundschreiben – Wartung"
    text = message.get_body(("plain",)).get_content()
    assert "Rundschreiben" in text and "authserv_id" in text


@pytest.mark.parametrize("language", LANGUAGES)
def test_an_agent_reply_with_files_is_rfc5322(
    make_config: Callable[..., tuple[Config, Path]], clock: Clock, language: str
) -> None:
    """multipart/mixed: first the text/HTML alternative, then each file in base64 under
    its name (RFC 2231 for a non-ASCII one); the file left out is listed in both texts."""
    config, _ = make_config(
        {"mail": {"language": language}, "outbound": {"max_attachment_size": "1MB"}}
    )
    with open_store(config, clock) as store:
        created = ingest(store, config, mail(message_id=f"<{LONG_ID}>"), InboundEnvelope(), clock())
        answer = EmailMessage()
        answer["From"] = "Tech <tech@support.example.com>"
        answer["To"] = "support@support.example.com"
        answer["Subject"] = f"Re: [#{created.ticket}] Drucker kaputt"
        answer["Authentication-Results"] = AUTHENTICATED.split(":", 1)[1].strip()
        answer.set_content("Anbei die Anleitung.\n")
        files = [
            ("Anleitung für Drucker – Übersicht.pdf", "application", "pdf", b"%PDF" + bytes(4000)),
            ("notes.txt", "text", "plain", b"Zeile 1\n" * 200),
            ("video.mp4", "video", "mp4", bytes(2 * 1024 * 1024)),
        ]
        for name, maintype, subtype, data in files:
            answer.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
        replied = ingest(store, config, answer.as_bytes(), InboundEnvelope(), clock())
        assert replied.ticket == created.ticket
        with store.transaction() as session:
            session.query(Outbox).filter(Outbox.kind != "agent_reply").delete()
        wire = _delivered(store, config, clock)
    assert set(wire) == {NotificationKind.AGENT_REPLY}
    data = wire[NotificationKind.AGENT_REPLY]
    message = _check(data, clock(), ZoneInfo(config.hours.timezone))
    assert message.get_content_type() == "multipart/mixed"
    attached = list(message.iter_attachments())
    assert [(p.get_content_type(), p.get_filename()) for p in attached] == [
        ("application/pdf", "Anleitung für Drucker – Übersicht.pdf"),
        ("text/plain", "notes.txt"),
    ]
    for part, (_, _, _, content) in zip(attached, files, strict=False):
        assert part["Content-Transfer-Encoding"] == "base64"
        assert part.get_content_disposition() == "attachment"
        assert part.get_payload(decode=True) == content
    # RFC 2231: percent-encoded UTF-8, in numbered continuations for a long name
    assert b"filename*0*=utf-8''Anleitung%20f%C3%BCr%20Drucker%20%E2%80%93" in data
    for kind in ("plain", "html"):
        body = message.get_body((kind,))
        assert body is not None and "video.mp4 (2.0 MB)" in body.get_content()

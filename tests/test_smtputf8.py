"""Internationalised recipients: A-labels, SMTPUTF8 when offered, a clear failure when not.

Over a real socket to tests/sink.py, which offers or withholds SMTPUTF8 (RFC 6531).
"""

from __future__ import annotations

import mailbox
from collections.abc import Callable, Iterator
from email import message_from_string
from email.policy import default
from pathlib import Path

import pytest
from sqlalchemy import select

from mailgate.config import Config
from mailgate.ingest import InboundEnvelope, ingest
from mailgate.jobs import Jobs
from mailgate.models import Outbox
from mailgate.store import Store

from .conftest import Clock, mail
from .sink import Sink

JOERG = "jörg@müller-logistik.de"
IDN_ONLY = "anna@müller-logistik.de"


@pytest.fixture(params=[True, False], ids=["smtputf8", "ascii-relay"])
def sink(request: pytest.FixtureRequest) -> Iterator[Sink]:
    s = Sink(smtputf8=request.param).start()
    yield s
    s.stop()


def _ticket_for(store: Store, config: Config, clock: Clock, recipient: str) -> list[Outbox]:
    """A ticket from ``recipient``; its acknowledgement is the row under test."""
    raw = mail(sender=f"Jörg Müller <{recipient}>", subject="Lieferung verspätet")
    created = ingest(store, config, raw, InboundEnvelope(mail_from=recipient), clock())
    assert created.ticket is not None
    with store.transaction() as session:
        rows = list(session.scalars(select(Outbox).where(Outbox.kind == "ticket_created")))
    assert [r.recipients for r in rows] == [[recipient]]
    return rows


def _outbox(store: Store) -> list[Outbox]:
    with store.transaction() as s:
        return list(s.scalars(select(Outbox).where(Outbox.kind == "ticket_created")))


def _relayed(make_config: Callable[..., tuple[Config, Path]], sink: Sink) -> Config:
    return make_config(
        {
            "outbound": {"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": sink.port},
            "agents": {"notify": []},  # the acknowledgement is the one mail of each test
        }
    )[0]


def test_non_ascii_local_part(
    make_config: Callable[..., tuple[Config, Path]], store: Store, sink: Sink, clock: Clock
) -> None:
    """SMTPUTF8 when the relay offers it; else failed at once with a clear reason."""
    config = _relayed(make_config, sink)
    _ticket_for(store, config, clock, JOERG)
    stats = Jobs(store, config).deliver_outbox(clock())
    (row,) = _outbox(store)
    if sink.smtputf8:
        assert (stats.sent, stats.failed) == (1, 0)
        (got,) = sink.received
        assert got.rcpt_to == [JOERG]
        assert f"To: {JOERG}\r\n".encode() in got.data  # RFC 6532: UTF-8, no encoded-word
        parsed = message_from_string(got.data.decode("utf-8"), policy=default)
        assert parsed["To"].addresses[0].username == "jörg"
        assert row.status == "sent"
    else:
        assert (stats.sent, stats.retry, stats.failed) == (0, 0, 1)
        assert sink.received == []
        assert row.status == "failed" and row.attempts == 1
        assert row.last_error is not None
        assert "relay does not offer SMTPUTF8" in row.last_error and JOERG in row.last_error


def test_idn_domain_goes_out_as_a_labels(
    make_config: Callable[..., tuple[Config, Path]], store: Store, sink: Sink, clock: Clock
) -> None:
    """An ASCII local part at a Unicode domain needs no SMTPUTF8: A-labels everywhere."""
    config = _relayed(make_config, sink)
    _ticket_for(store, config, clock, IDN_ONLY)
    stats = Jobs(store, config).deliver_outbox(clock())
    assert (stats.sent, stats.failed) == (1, 0)
    (got,) = sink.received
    assert got.rcpt_to == ["anna@xn--mller-logistik-gsb.de"]
    assert got.data.isascii()
    assert b"To: anna@xn--mller-logistik-gsb.de\r\n" in got.data


def test_maildir_carries_the_utf8_address(
    make_config: Callable[..., tuple[Config, Path]], store: Store, clock: Clock, tmp_path: Path
) -> None:
    """A maildir file has the address in UTF-8 (RFC 6532), never as encoded-words."""
    config = make_config()[0]
    _ticket_for(store, config, clock, JOERG)
    stats = Jobs(store, config).deliver_outbox(clock())
    assert stats.sent >= 1
    files = [m.as_bytes() for m in mailbox.Maildir(config.outbound.maildir, create=False)]
    (ack,) = [f for f in files if JOERG.encode() in f]
    assert f"To: {JOERG}\n".encode() in ack.replace(b"\r\n", b"\n")
    assert b"=?utf-8?q?j" not in ack

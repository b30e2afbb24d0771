"""Agents in the loop: the support team hears of every new ticket over the real listener.

A mail goes in over SMTP, the outbox row is written by ingest, the job renders it into the
Maildir, and what an agent would read there is checked; no component is played by a mock.
"""

from __future__ import annotations

import mailbox
import smtplib
from collections.abc import Callable
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailgate.config import Config
from mailgate.jobs import Jobs
from mailgate.models import Comment, Outbox, Status, Ticket
from mailgate.store import Store

from .conftest import AUTHENTICATED, Clock, mail, run_cli, send

AGENT = "tech@support.example.com"
TEAM_LIST = "team@support.example.com"
TWO = {"agents": {"addresses": [AGENT], "notify": [AGENT, TEAM_LIST]}}
NOBODY = {"agents": {"addresses": [AGENT], "notify": []}}
PDF = b"%PDF-1.4\n" + b"x" * 3000


@pytest.fixture
def config(
    make_config: Callable[..., tuple[Config, Path]], request: pytest.FixtureRequest
) -> Config:
    """The test config with the overlay a test names (``indirect``), else the base."""
    overlay: dict[str, Any] = getattr(request, "param", {})
    return make_config(overlay)[0]


def with_attachment(subject: str = "Drucker kaputt") -> bytes:
    """Anna's mail with a PDF, as a mail client builds it."""
    message = EmailMessage()
    message["From"] = "Anna Schmidt <anna@mueller-logistik.de>"
    message["To"] = "support@support.example.com"
    message["Subject"] = subject
    message["Message-ID"] = "<neu-1@mueller-logistik.de>"
    message["Date"] = "Thu, 26 Nov 2026 10:00:00 +0100"
    message.set_content("Hallo,\nder Drucker im 2. OG zeigt Fehler 49.\n")
    message.add_attachment(PDF, maintype="application", subtype="pdf", filename="fehler49.pdf")
    return message.as_bytes()


def rows(store: Store, kind: str) -> list[tuple[int | None, list[str]]]:
    with store.transaction() as session:
        found = session.scalars(select(Outbox).where(Outbox.kind == kind).order_by(Outbox.id))
        return [(o.ticket_id, o.recipients) for o in found]


def delivered(config: Config, store: Store, clock: Clock, to: str) -> list[EmailMessage]:
    """Run the outbox job; the mails the Maildir holds for ``to``, parsed."""
    Jobs(store, config).deliver_outbox(clock())
    found = []
    for stored in mailbox.Maildir(config.outbound.maildir, create=False):
        parsed = message_from_bytes(stored.as_bytes(), policy=default)
        assert isinstance(parsed, EmailMessage)
        if parsed["To"] == to:
            found.append(parsed)
    return found


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


@pytest.mark.parametrize("config", [TWO], indirect=True)
def test_new_ticket_tells_each_notify_address_what_it_needs(
    config: Config, store: Store, server: int, clock: Clock
) -> None:
    assert send(server, with_attachment("Müller Logistik: Drucker kaputt")) == {}
    (ticket, _), *_ = rows(store, "ticket_created")
    assert rows(store, "agent_new_ticket") == [(ticket, [AGENT]), (ticket, [TEAM_LIST])]
    (sent,) = delivered(config, store, clock, TEAM_LIST)
    body = text_of(sent)
    assert "Müller Logistik GmbH" in body
    assert "subject names Müller Logistik GmbH" in body  # the routing reason
    assert "normal" in body  # the priority
    assert "der Drucker im 2. OG zeigt Fehler 49." in body
    assert "fehler49.pdf (3 KB)" in body
    html = sent.get_body(("html",))
    assert html is not None and "fehler49.pdf" in str(html.get_content())
    assert str(sent["Reply-To"]).startswith("support+")


@pytest.mark.parametrize("config", [NOBODY], indirect=True)
def test_notify_empty_tells_nobody_of_tickets_or_replies(
    config: Config, store: Store, server: int, clock: Clock
) -> None:
    assert send(server, mail(message_id="<a@ml>")) == {}
    clock.advance(minutes=1)
    reply = mail(subject="Re: Drucker kaputt", extra="In-Reply-To: <a@ml>\r\n")
    assert send(server, reply) == {}
    assert rows(store, "agent_new_ticket") == []
    assert rows(store, "customer_reply") == []
    assert len(rows(store, "ticket_created")) == 1


def test_default_tells_every_agent_and_a_reply_to_it_is_an_agent_reply(
    config: Config, store: Store, server: int, clock: Clock
) -> None:
    """Answering the agent_new_ticket mail through its Reply-To answers the customer."""
    assert send(server, mail()) == {}
    ((ticket, to),) = rows(store, "agent_new_ticket")
    assert to == [AGENT]
    (sent,) = delivered(config, store, clock, AGENT)
    clock.advance(minutes=5)
    answer = mail(
        sender=f"Tech <{AGENT}>",
        to=str(sent["Reply-To"]),
        subject=f"Re: {sent['Subject']}",
        body="Bitte den Drucker neu starten.\n",
        extra=AUTHENTICATED,
    )
    assert send(server, answer, mail_from=AGENT, rcpt=(str(sent["Reply-To"]),)) == {}
    assert rows(store, "agent_reply") == [(ticket, ["anna@mueller-logistik.de"])]
    with store.transaction() as session:
        last = session.scalars(
            select(Comment).where(Comment.public.is_(True)).order_by(Comment.id.desc())
        ).first()
        assert last is not None and last.author_kind == "agent" and last.ticket_id == ticket


def test_a_follow_up_of_a_closed_ticket_tells_the_agents(
    config: Config, store: Store, server: int, clock: Clock
) -> None:
    assert send(server, mail()) == {}
    ((closed, _),) = rows(store, "agent_new_ticket")
    with store.transaction() as session:
        ticket = session.get(Ticket, closed)
        assert ticket is not None
        ticket.status = Status.CLOSED.value
    clock.advance(days=1)
    assert send(server, mail(subject=f"Re: [#{closed}] Drucker kaputt")) == {}
    (_, (follow_up, to)) = rows(store, "agent_new_ticket")
    assert follow_up != closed and to == [AGENT]


# --- agents sharing our domain: [mail] recipients ------------------------------------------


@pytest.mark.parametrize(
    ("mail_section", "problem"),
    [
        ("", "[agents].addresses: 'tech@support.example.com' is inside [mail] domains"),
        (
            'recipients = ["support", "tech"]\n',
            "[agents].addresses: 'tech@support.example.com' is inside [mail] domains",
        ),
        (
            'recipients = ["support", "team"]\n[agents]\nnotify = ["team@support.example.com"]\n',
            "[agents].notify: 'team@support.example.com' is inside [mail] domains",
        ),
    ],
)
def test_check_config_refuses_an_agent_address_mailgate_would_receive(
    tmp_path: Path, mail_section: str, problem: str
) -> None:
    """Its notifications would come back to mailgate and be dropped as a loop."""
    path = tmp_path / "shared.toml"
    path.write_text(
        f'[mail]\ndomains = ["support.example.com"]\n{mail_section}'
        + ("" if "[agents]" in mail_section else "[agents]\n")
        + 'addresses = ["tech@support.example.com"]\n'
    )
    result = run_cli(path, "check-config")
    assert result.returncode == 2
    assert problem in result.stderr.decode()
    assert "set [mail] recipients" in result.stderr.decode()
    assert b"Traceback" not in result.stderr


def test_check_config_takes_recipients_that_leave_the_agent_out(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(
        '[mail]\ndomains = ["support.example.com"]\n'
        'recipients = ["support", "rechnung@support.example.com"]\n'
        '[agents]\naddresses = ["tech@support.example.com"]\n'
    )
    result = run_cli(path, "check-config")
    assert result.returncode == 0, result.stderr


def test_rcpt_of_an_agent_in_our_domain_is_refused(server: int) -> None:
    """With [mail] recipients, only those (and the reply tokens) are ours; 550 5.1.1 else."""
    with smtplib.SMTP("127.0.0.1", server, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("anna@mueller-logistik.de")
        code, reply = client.rcpt(AGENT)
        assert (code, reply[:5]) == (550, b"5.1.1")
        assert client.rcpt("other@support.example.com")[0] == 550
        assert client.rcpt("support@support.example.com")[0] == 250
        assert client.rcpt("support+1-x@support.example.com")[0] == 250
        assert client.rcpt("Support@SUPPORT.example.com")[0] == 250
        client.rset()


# --- the acknowledgement says where the ticket went -----------------------------------------


def test_acknowledgement_says_an_unauthorised_prefix_was_not_used(
    config: Config, store: Store, server: int, clock: Clock
) -> None:
    """An agency that Müller Logistik did not authorise names it: filed by its own domain
    (Agentur Blau), and the sender reads why and what to do, in German."""
    raw = mail(sender="Neu <neu@agentur.de>", subject="Müller Logistik: Betreff")
    assert send(server, raw, mail_from="neu@agentur.de") == {}
    (sent,) = delivered(config, store, clock, "neu@agentur.de")
    body = " ".join(text_of(sent).split())
    assert "Organisation: Agentur Blau" in body
    assert "Ihr Betreff nennt Müller Logistik GmbH, doch wir haben Ihr Ticket nicht dort" in body
    assert "weil Ihre Adresse dafür keine Tickets eröffnen darf" in body
    assert "wenden Sie sich an Müller Logistik GmbH, damit Ihre Agentur" in body
    with store.transaction() as session:
        (ticket,) = session.scalars(select(Ticket)).all()
        assert ticket.routing_reason.endswith("named Müller Logistik GmbH but not authorised")


def test_acknowledgement_names_the_organization_a_prefix_chose(
    config: Config, store: Store, server: int, clock: Clock
) -> None:
    raw = mail(sender="Berater <berater@agentur.de>", subject="Müller Logistik: Betreff")
    assert send(server, raw, mail_from="berater@agentur.de") == {}
    (sent,) = delivered(config, store, clock, "berater@agentur.de")
    body = " ".join(text_of(sent).split())
    assert "Organisation: Müller Logistik GmbH" in body
    assert "Ihr Betreff nennt" not in body


def test_agents_read_the_new_text_first_and_the_quoted_history_below_it(
    config: Config, store: Store, server: int, clock: Clock
) -> None:
    """A new ticket that quotes an old conversation or forwards a mail: the agent reads the
    customer's words first, and what they quoted or forwarded below them, marked as such."""
    body = (
        "Hallo,\nder Drucker zeigt wieder Fehler 49.\n\n"
        "---------- Forwarded message ---------\n"
        "From: Service <service@drucker.example>\nDate: Mon, 30 Nov 2026\n"
        "Subject: Wartung\n\nIhre Wartung ist am 3.12. fällig.\n"
    )
    assert send(server, mail(subject="Fwd: Wartung", body=body)) == {}
    (sent,) = delivered(config, store, clock, AGENT)
    text = text_of(sent)
    new = text.index("der Drucker zeigt wieder Fehler 49.")
    label = text.index("Darunter zitiert oder weitergeleitet:")
    forwarded = text.index("Ihre Wartung ist am 3.12. fällig.")
    assert new < label < forwarded
    html = sent.get_body(("html",))
    assert html is not None and "Darunter zitiert oder weitergeleitet:" in str(html.get_content())


def test_a_plain_request_has_no_history_line(
    config: Config, store: Store, server: int, clock: Clock
) -> None:
    assert send(server, mail(body="Hallo,\nder Drucker druckt nicht.\n")) == {}
    (sent,) = delivered(config, store, clock, AGENT)
    assert "Darunter zitiert" not in text_of(sent)
    assert "der Drucker druckt nicht." in text_of(sent)

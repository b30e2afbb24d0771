"""Owners: one agent handles a ticket, and the customer's replies go to that agent.

Mail goes in over a real SMTP socket to the real listener, the outbox job relays what it
queued to a real SMTP sink, and the admin's commands run as subprocesses; SQLite and
PostgreSQL alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailgate.config import Config
from mailgate.jobs import Jobs
from mailgate.models import Comment, Outbox, Ticket
from mailgate.store import Store

from .conftest import AUTHENTICATED, Clock, mail, open_store, run_cli, send
from .sink import Sink

ANNA = "anna@mueller-logistik.de"
TECH = "tech@support.example.com"
LISA = "lisa@support.example.com"


def _overlay(sink: Sink, **agents: Any) -> dict[str, Any]:
    return {
        "agents": {"addresses": [TECH, LISA], **agents},
        "outbound": {"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": sink.port},
    }


@pytest.fixture
def overlay(sink: Sink) -> dict[str, Any]:
    return _overlay(sink)


def outbox(store: Store, kind: str) -> list[list[str]]:
    with store.transaction() as session:
        rows = session.scalars(select(Outbox).where(Outbox.kind == kind).order_by(Outbox.id))
        return [row.recipients for row in rows]


def relay(config: Config, store: Store, sink: Sink, clock: Clock) -> list[EmailMessage]:
    """Deliver what is queued; the mails the sink received in this run, parsed."""
    before = len(sink.received)
    Jobs(store, config).deliver_outbox(clock())
    return [received.message for received in sink.received[before:]]


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def agent_writes(server: int, sender: str, body: str, ticket: int = 1) -> None:
    raw = mail(
        sender=f"Agent <{sender}>",
        subject=f"Re: [#{ticket}] Drucker kaputt",
        body=body,
        extra=AUTHENTICATED,
    )
    assert send(server, raw, mail_from=sender) == {}


def anna_replies(
    server: int, clock: Clock, body: str = "Geht immer noch nicht.\n", ticket: int = 1
) -> None:
    clock.advance(minutes=5)
    raw = mail(subject=f"Re: [#{ticket}] Drucker kaputt", body=body)
    assert send(server, raw) == {}


def shown(config_path: Path, ticket: int = 1) -> dict[str, Any]:
    result = run_cli(config_path, "tickets", "show", str(ticket), "--json")
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def listed(config_path: Path, *args: str) -> list[int]:
    result = run_cli(config_path, "tickets", "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return [row["id"] for row in json.loads(result.stdout)]


def test_assign_by_mail_tells_the_new_owner_who_then_alone_hears_the_customer(
    config: Config, config_path: Path, store: Store, server: int, sink: Sink, clock: Clock
) -> None:
    assert send(server, mail(body="Hallo,\nder Drucker zeigt Fehler 49.\n")) == {}
    assert shown(config_path)["assignee"] is None
    relay(config, store, sink, clock)  # the acknowledgement and both agents' notices

    agent_writes(server, TECH, f"#assign {LISA}\n")
    assert shown(config_path)["assignee"] == LISA
    assert outbox(store, "ticket_assigned") == [[LISA]]
    (assigned,) = relay(config, store, sink, clock)
    assert assigned["To"] == LISA
    body = text_of(assigned)
    assert f"{TECH} hat Ihnen Ticket [#1] zugewiesen" in body
    assert "der Drucker zeigt Fehler 49." in body  # what the customer wrote last
    assert str(assigned["Reply-To"]).startswith("support+1-")  # answering it is an agent reply

    anna_replies(server, clock)
    assert outbox(store, "customer_reply") == [[LISA]]
    (told,) = relay(config, store, sink, clock)
    assert told["To"] == LISA and LISA in text_of(told)  # "Zuständig: lisa@…"

    assert listed(config_path, "--assignee", LISA) == [1]
    assert listed(config_path, "--assignee", "LISA@support.example.com") == [1]
    assert listed(config_path, "--assignee", "none") == []
    assert listed(config_path, "--assignee", TECH) == []

    # Given back to the team: the next reply goes to every agent again.
    agent_writes(server, LISA, "#assign none\n")
    assert shown(config_path)["assignee"] is None
    assert listed(config_path, "--assignee", "none") == [1]
    anna_replies(server, clock, "Und jetzt?\n")
    assert outbox(store, "customer_reply") == [[LISA], [TECH, LISA]]
    with store.transaction() as session:
        notes = session.scalars(
            select(Comment.body).where(Comment.author_kind == "system").order_by(Comment.id)
        ).all()
    assert notes == [
        f"Assigned to {LISA} by {TECH} (#assign {LISA}); before: nobody",
        f"Unassigned by {LISA} (#assign none); before: {LISA}",
    ]


def test_the_first_public_answer_takes_the_ticket_and_tells_nobody_of_it(
    config: Config, config_path: Path, store: Store, server: int, clock: Clock
) -> None:
    assert send(server, mail()) == {}
    agent_writes(server, TECH, "#note\nSchaue ich mir an.\n")
    assert shown(config_path)["assignee"] is None  # a note takes nothing
    agent_writes(server, TECH, "Bitte den Drucker neu starten.\n")
    assert shown(config_path)["assignee"] == TECH
    agent_writes(server, LISA, "Ergänzung: auch das Netzteil prüfen.\n")
    assert shown(config_path)["assignee"] == TECH  # a colleague's answer leaves it with Tech
    assert outbox(store, "ticket_assigned") == []  # taken, not given
    anna_replies(server, clock)
    assert outbox(store, "customer_reply")[-1] == [TECH]


def test_assign_on_reply_false_leaves_tickets_unassigned(
    make_config: Callable[..., tuple[Config, Path]], sink: Sink, clock: Clock
) -> None:
    config, _ = make_config(_overlay(sink, assign_on_reply=False), name="manual.toml")
    from mailgate.ingest import ingest
    from mailgate.pipeline.reading import InboundEnvelope

    with open_store(config, clock) as store:
        ingest(store, config, mail(), InboundEnvelope(), clock())
        answer = mail(
            sender=f"Tech <{TECH}>",
            subject="Re: [#1] Drucker kaputt",
            body="Bitte neu starten.\n",
            extra=AUTHENTICATED,
        )
        ingest(store, config, answer, InboundEnvelope(TECH), clock())
        with store.transaction() as session:
            ticket = session.get(Ticket, 1)
            assert ticket is not None and ticket.assignee_id is None
        assert outbox(store, "agent_reply") == [[ANNA]]


def test_tickets_set_assignee_tells_the_agent_and_refuses_anyone_else(
    config: Config, config_path: Path, store: Store, server: int, sink: Sink, clock: Clock
) -> None:
    assert send(server, mail()) == {}
    relay(config, store, sink, clock)
    result = run_cli(config_path, "tickets", "set", "1", "--assignee", TECH, "--json")
    assert result.returncode == 0, result.stderr
    clock.now = datetime.now(UTC)  # the command queued its mail at the real time
    assert json.loads(result.stdout)["assignee"] == TECH
    assert outbox(store, "ticket_assigned") == [[TECH]]
    (assigned,) = relay(config, store, sink, clock)
    assert "admin (mailgate tickets set)" in text_of(assigned)

    refused = run_cli(config_path, "tickets", "set", "1", "--assignee", ANNA)
    assert refused.returncode != 0
    assert b"is not an agent address" in refused.stderr
    assert b"Traceback" not in refused.stderr
    assert shown(config_path)["assignee"] == TECH

    text = run_cli(config_path, "tickets", "show", "1").stdout.decode()
    assert f"assignee:     {TECH}" in text
    table = run_cli(config_path, "tickets", "list").stdout.decode()
    assert "ASSIGNEE" in table and TECH in table

    cleared = run_cli(config_path, "tickets", "set", "1", "--assignee", "none")
    assert cleared.returncode == 0, cleared.stderr
    assert shown(config_path)["assignee"] is None
    assert outbox(store, "ticket_assigned") == [[TECH]]  # nobody is told of "nobody"


def test_a_follow_up_keeps_the_owner_of_the_closed_ticket(
    config: Config, config_path: Path, store: Store, server: int, clock: Clock
) -> None:
    assert send(server, mail()) == {}
    agent_writes(server, LISA, "#assign me\n#status solved\n")
    closed = run_cli(config_path, "tickets", "set", "1", "--status", "closed")
    assert closed.returncode == 0, closed.stderr
    late = run_cli(config_path, "tickets", "set", "1", "--assignee", TECH)
    assert late.returncode != 0 and b"is closed" in late.stderr
    clock.advance(days=1)
    assert send(server, mail(subject="Re: [#1] Drucker kaputt", body="Wieder kaputt.\n")) == {}
    follow_up = shown(config_path, 2)
    assert (follow_up["follow_up_of"], follow_up["assignee"]) == (1, LISA)
    anna_replies(server, clock, ticket=2)
    with store.transaction() as session:
        last = session.scalars(select(Outbox).order_by(Outbox.id.desc())).first()
        assert last is not None and (last.kind, last.recipients) == ("customer_reply", [LISA])

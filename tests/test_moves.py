"""A ticket that moves to another organization keeps visibility with membership.

Through the real listener and the real command line: after ``#org`` or ``tickets set
--org``, the people copied on the ticket who are not in its new organization hear nothing
more (they stay in its history), the new organization's followers are told, the move is
noted on the ticket by mailgate itself, and only an agent's ``#cc add`` copies someone on
it again.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailgate.config import Config
from mailgate.jobs import Jobs
from mailgate.models import Comment, Outbox
from mailgate.store import Store

from .conftest import AUTHENTICATED, BASE_CONFIG, Clock, mail, run_cli, send
from .test_replies import detail

ANNA = "anna@mueller-logistik.de"
CHEF = "chef@mueller-logistik.de"  # Müller's member and follower, copied on the ticket
PETER = "peter@kunde.example"  # an outsider the customer copied
BERATER = "berater@agentur.de"  # Agentur Blau's follower (and a member of both)
AGENT = "tech@support.example.com"
MUELLER, BLAU = "Müller Logistik GmbH", "Agentur Blau"


def _overlay() -> dict[str, Any]:
    organizations = copy.deepcopy(BASE_CONFIG["organizations"])
    for org in organizations:
        if org["name"] == BLAU:
            org["followers"] = [BERATER]
    return {"organizations": organizations}


@pytest.fixture
def config(make_config: Callable[..., tuple[Config, Path]]) -> Config:
    return make_config(_overlay())[0]


@pytest.fixture
def config_path(make_config: Callable[..., tuple[Config, Path]], config: Config) -> Path:
    return make_config(_overlay())[1]


@pytest.fixture
def ticket(server: int, store: Store) -> int:
    """Anna's ticket for Müller, with her boss and an outsider on Cc."""
    send(
        server,
        mail(
            subject="Drucker kaputt",
            body="Hallo,\nder Drucker druckt nicht.\n",
            extra=f"Cc: Chef <{CHEF}>, Peter <{PETER}>\r\n",
        ),
    )
    found = detail(store, 1)
    assert (found["organization"], found["participants"]) == (MUELLER, [CHEF, PETER])
    return 1


def agent_mail(port: int, ticket: int, body: str, extra: str = "") -> None:
    """An agent writes about the ticket from the mail client, authenticated by the MTA in
    front of mailgate (the one place agent mail is made here)."""
    raw = mail(
        sender=f"Tech Support <{AGENT}>",
        subject=f"Re: [#{ticket}] Drucker kaputt",
        body=body,
        extra=AUTHENTICATED + extra,
    )
    send(port, raw, mail_from=AGENT)


def customer_mail(port: int, ticket: int, body: str, extra: str = "") -> None:
    send(port, mail(subject=f"Re: [#{ticket}] Drucker kaputt", body=body, extra=extra))


def rows(store: Store, after: int = 0) -> list[tuple[int, str, list[str], dict[str, Any]]]:
    """Outbox rows (id, kind, recipients, payload) newer than ``after``."""
    with store.transaction() as s:
        return [
            (o.id, o.kind, o.recipients, o.payload)
            for o in s.scalars(select(Outbox).where(Outbox.id > after).order_by(Outbox.id))
        ]


def last_row(store: Store) -> int:
    return max((r[0] for r in rows(store)), default=0)


def told(store: Store, after: int) -> list[tuple[str, list[str]]]:
    return [(kind, to) for _, kind, to, _ in rows(store, after)]


def system_comments(store: Store, ticket: int) -> list[tuple[str, bool, str]]:
    """The ticket's comments written by mailgate itself: (body, public, author)."""
    with store.transaction() as s:
        return [
            (c.body, c.public, c.author.email)
            for c in s.scalars(
                select(Comment).where(Comment.ticket_id == ticket, Comment.author_kind == "system")
            )
        ]


def delivered(store: Store, config: Config, clock: Clock, kind: str) -> list[EmailMessage]:
    """Render and deliver the outbox (to the test maildir); the messages of ``kind``."""
    clock.advance(minutes=1)
    Jobs(store, config).deliver_outbox(clock())
    with store.transaction() as s:
        sent = s.scalars(select(Outbox.message).where(Outbox.kind == kind)).all()
    messages = []
    for data in sent:
        assert data is not None
        message = message_from_bytes(data, policy=policy.default)
        assert isinstance(message, EmailMessage)
        messages.append(message)
    return messages


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def test_org_command_leaves_outsiders_behind_and_tells_the_new_followers(
    server: int, store: Store, config: Config, clock: Clock, ticket: int
) -> None:
    """``#org``: only the requester hears the answer; Agentur Blau's follower is told."""
    before = last_row(store)
    agent_mail(server, ticket, "#org Agentur Blau\n\nWir kümmern uns darum.\n")
    after = detail(store, ticket)
    assert after["organization"] == BLAU
    assert after["participants"] == [CHEF, PETER]  # still in the history …
    assert after["inactive_participants"] == [CHEF, PETER]  # … sent nothing more
    assert after["requester"] == ANNA
    assert system_comments(store, ticket) == [
        (f"Moved from {MUELLER} to {BLAU} by {AGENT}", False, config.mail.address)
    ]
    assert sorted(told(store, before)) == [
        ("agent_reply", [ANNA]),
        ("ticket_moved", [BERATER]),
    ]
    [moved] = [r for r in rows(store, before) if r[1] == "ticket_moved"]
    assert moved[3]["moved"] == {"from": MUELLER, "to": BLAU}

    before = last_row(store)
    agent_mail(server, ticket, "Der Techniker kommt morgen.\n")
    customer_mail(server, ticket, "Danke!\n")
    assert told(store, before) == [("agent_reply", [ANNA]), ("customer_reply", [AGENT])]

    [note] = delivered(store, config, clock, "ticket_moved")
    text = text_of(note)
    assert f"von {MUELLER} zu {BLAU} verschoben" in text
    assert "der Drucker druckt nicht." in text  # the request, as a follower sees a new one
    assert "Wir kümmern uns" not in text
    assert str(note["To"]) == BERATER


def test_cc_add_copies_an_outsider_again_and_cc_remove_stops_it(
    server: int, store: Store, config: Config, ticket: int
) -> None:
    """Only an agent's explicit ``#cc add`` brings someone back; a customer's Cc does not."""
    agent_mail(server, ticket, "#org Agentur Blau\n")
    before = last_row(store)
    customer_mail(server, ticket, "Peter bitte auch informieren.\n", extra=f"Cc: {PETER}\r\n")
    assert detail(store, ticket)["inactive_participants"] == [CHEF, PETER]  # stored, not re-added
    agent_mail(server, ticket, "Noch etwas Geduld.\n")
    assert ("agent_reply", [ANNA]) in told(store, before)

    before = last_row(store)
    agent_mail(server, ticket, f"#cc add Peter <{PETER}>\n\nPeter, zur Info.\n")
    assert detail(store, ticket)["inactive_participants"] == [CHEF]
    agent_mail(server, ticket, "Erledigt?\n")
    assert told(store, before) == [("agent_reply", [ANNA, PETER]), ("agent_reply", [ANNA, PETER])]

    before = last_row(store)
    agent_mail(server, ticket, f"#cc remove {PETER}\n#cc add {config.mail.address}\n")
    agent_mail(server, ticket, "Letzte Frage.\n")
    assert detail(store, ticket)["inactive_participants"] == [CHEF, PETER]
    [error] = [r for r in rows(store, before) if r[1] == "command_error"]
    assert error[2:] == (
        [AGENT],
        {
            "errors": [
                f"#cc add {config.mail.address}: {config.mail.address} is one of our own "
                "addresses, never a participant"
            ]
        },
    )
    assert ("agent_reply", [ANNA, PETER]) not in told(store, before)


def test_the_store_explains_cc_it_cannot_do(server: int, store: Store, ticket: int) -> None:
    """Removing someone not copied, or adding the requester, is refused and explained."""
    before = last_row(store)
    agent_mail(server, ticket, f"#cc remove nobody@kunde.example\n#cc add {ANNA}\n")
    [error] = [r for r in rows(store, before) if r[1] == "command_error"]
    assert error[2] == [AGENT]
    assert error[3]["errors"] == [
        "#cc remove nobody@kunde.example: nobody@kunde.example is not copied on ticket #1",
        f"#cc add {ANNA}: {ANNA} is the ticket's requester (#requester changes who that is)",
    ]
    assert detail(store, ticket)["inactive_participants"] == []


def test_an_internal_move_never_mails_the_note(
    server: int, store: Store, config: Config, clock: Clock, ticket: int
) -> None:
    """``#note`` with ``#org``: the new followers see the request, never the agent's note."""
    agent_mail(server, ticket, "#note\n#org Agentur Blau\n\nKunde zahlt nicht, intern!\n")
    assert not [r for r in rows(store) if r[1] == "agent_reply"]
    [note] = delivered(store, config, clock, "ticket_moved")
    assert "Kunde zahlt nicht" not in note.as_string()
    assert "der Drucker druckt nicht." in text_of(note)


def test_tickets_set_org_moves_the_same_way(
    server: int, store: Store, config_path: Path, ticket: int
) -> None:
    """``tickets set --org`` is a move like ``#org``: outsiders left, followers told, noted."""
    before = last_row(store)
    result = run_cli(config_path, "tickets", "set", str(ticket), "--org", "agentur blau")
    assert result.returncode == 0, result.stderr.decode()
    assert told(store, before) == [("ticket_moved", [BERATER])]
    shown = run_cli(config_path, "tickets", "show", str(ticket), "--json")
    assert shown.returncode == 0, shown.stderr.decode()
    data = json.loads(shown.stdout)
    assert (data["organization"], data["participants"], data["inactive_participants"]) == (
        BLAU,
        [CHEF, PETER],
        [CHEF, PETER],
    )
    last = data["comments"][-1]
    assert (last["author"], last["public"], last["body"]) == (
        "support@support.example.com",
        False,
        f"Moved from {MUELLER} to {BLAU} by admin (mailgate tickets set)",
    )
    text = run_cli(config_path, "tickets", "show", str(ticket)).stdout.decode()
    assert f"participants: {CHEF} (inactive), {PETER} (inactive)" in text

    before = last_row(store)
    agent_mail(server, ticket, "Wir melden uns.\n")
    assert told(store, before) == [("agent_reply", [ANNA])]
    # Setting the organization it already has is no move: nothing told, nothing noted.
    again = run_cli(config_path, "tickets", "set", str(ticket), "--org", BLAU)
    assert again.returncode == 0 and len(system_comments(store, ticket)) == 1
    assert len(rows(store, before)) == 1


def test_a_follow_up_copies_only_whom_the_move_kept(
    server: int, store: Store, config_path: Path, ticket: int
) -> None:
    """A reply to the closed ticket opens a follow-up without the participants left behind."""
    agent_mail(server, ticket, f"#org Agentur Blau\n#cc add {PETER}\n")
    closed = run_cli(config_path, "tickets", "set", str(ticket), "--status", "closed")
    assert closed.returncode == 0, closed.stderr.decode()
    customer_mail(server, ticket, "Wieder kaputt.\n")
    follow_up = detail(store, 2)
    assert (follow_up["follow_up_of"], follow_up["organization"]) == (ticket, BLAU)
    assert (follow_up["participants"], follow_up["inactive_participants"]) == ([PETER], [])


def test_a_ticket_without_organization_moves_into_one(
    server: int, store: Store, config: Config, config_path: Path, clock: Clock
) -> None:
    """From no organization: the note and the followers' mail say so in words."""
    send(server, mail(sender="Fremd <fremd@example.net>", subject="Frage"), "fremd@example.net")
    assert detail(store, 1)["organization"] is None
    result = run_cli(config_path, "tickets", "set", "1", "--org", BLAU)
    assert result.returncode == 0, result.stderr.decode()
    assert system_comments(store, 1) == [
        (
            f"Moved from no organization to {BLAU} by admin (mailgate tickets set)",
            False,
            config.mail.address,
        )
    ]
    clock.now = datetime.now(UTC)  # the command line's clock wrote the row
    [note] = delivered(store, config, clock, "ticket_moved")
    assert f"von keiner Organisation zu {BLAU} verschoben" in text_of(note)

"""A planted secret never leaves: every kind of notification, `tickets show`, the logs.

One support week is played over the real listener, each mail carrying credentials in the
words customers and agents use, until every kind of notification mailgate sends has been
written and delivered. Then nothing that left — the rendered mails (every text part and
header, decoded), `tickets show` as text and JSON for every ticket, everything logged at
DEBUG — may contain one of the planted values. A new kind of notification fails the walk
until it is part of it.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from mailgate.config import Config
from mailgate.jobs import Jobs
from mailgate.models import NotificationKind, Outbox
from mailgate.store import Store

from .conftest import AUTHENTICATED, Clock, mail, run_cli, send
from .test_secrets_eval import _readable
from .test_vault import KEY

TECH = "tech@support.example.com"
LISA = "lisa@support.example.com"
ANNA = "Anna Schmidt <anna@mueller-logistik.de>"
PLANTED = (
    "Xk9#mmQ2pL",  # "Login anna / …" in a subject
    "geheim123",  # "Das Passwort ist …"
    "Sommer2026!",  # "Mein Passwort ist …"
    "Hunter2hunter",  # "PW ist …" in an agent's answer
    "Tr0ub4dor&3",  # "The password is …" in a customer's reply
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # an AWS secret key
    "Geheim!2026",  # the value on the line after "Passwort:"
    "Notfall#Root99",  # in an emergency
)


VAULT = {
    "metrics": {"port": 0},
    "secrets": {"key": KEY, "base_url": "https://support.example.com:8443"},
}


@pytest.fixture(params=["masked", "vault"])
def overlay(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Masked only, and with the vault on: agents get one-time links, still no value."""
    agents = {"agents": {"addresses": [TECH, LISA], "digest": "08:30"}}
    return {**agents, **(VAULT if request.param == "vault" else {})}


def agent(sender: str, ticket: int, body: str, subject: str = "Drucker") -> bytes:
    return mail(sender=sender, subject=f"Re: [#{ticket}] {subject}", body=body, extra=AUTHENTICATED)


def test_a_planted_secret_is_in_no_notification_listing_or_log(
    config: Config,
    config_path: Path,
    store: Store,
    server: int,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    jobs = Jobs(store, config)
    # Thursday: Anna's ticket #1 with her login in subject and body (ticket_created,
    # new_ticket_follower, agent_new_ticket, secret_warning).
    body = (
        "Hallo,\nich komme nicht rein. Das Passwort ist geheim123\n"
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
        "Für den Server:\nPasswort:\nGeheim!2026\n"
    )
    assert send(server, mail(sender=ANNA, subject="Login anna / Xk9#mmQ2pL", body=body)) == {}
    # Tech gives it to Lisa (ticket_assigned), then answers with a password (agent_reply).
    assert send(server, agent(TECH, 1, f"#assign {LISA}\n"), mail_from=TECH) == {}
    answer = agent(LISA, 1, "Hallo Anna,\nPW ist Hunter2hunter, bitte gleich ändern.\n")
    assert send(server, answer, mail_from=LISA) == {}
    # Anna answers with one more (customer_reply); a command is refused (command_error).
    reply = mail(sender=ANNA, subject="Re: [#1] Drucker", body="The password is Tr0ub4dor&3\n")
    assert send(server, reply) == {}
    refused = agent(
        TECH, 1, "#frobnicate Das Passwort ist geheim123\nMein Passwort ist Sommer2026!\n"
    )
    assert send(server, refused, mail_from=TECH) == {}
    # A forged agent mail (agent_unverified) and a move to another organization
    # (ticket_moved: Agentur Blau's follower).
    forged = mail(sender=TECH, subject="Re: [#1] Drucker", body="Passwort: Sommer2026!\n")
    assert send(server, forged, mail_from=TECH) == {}
    assert send(server, agent(TECH, 1, "#org Agentur Blau\n"), mail_from=TECH) == {}
    follow = run_cli(config_path, "follow", "add", "berater@agentur.de", "Agentur Blau")
    assert follow.returncode == 0, follow.stderr
    assert send(server, agent(TECH, 1, "#org Müller Logistik\n"), mail_from=TECH) == {}
    assert send(server, agent(TECH, 1, "#org Agentur Blau\n"), mail_from=TECH) == {}
    jobs.deliver_outbox(clock())
    # Saturday night: an emergency with a root password (emergency).
    clock.now = datetime(2026, 11, 28, 22, 0, tzinfo=UTC)
    urgent = mail(
        sender=ANNA, subject="NOTFALL: Server down", body="Root-Passwort: Notfall#Root99\n"
    )
    assert send(server, urgent) == {}
    # Monday morning: the digest (agent_digest); Lisa solves #1, it closes (ticket_closed).
    monday = datetime(2026, 11, 30, 7, 45, tzinfo=UTC)
    assert jobs.send_digest(monday) == 2
    assert send(server, agent(LISA, 1, "#status solved\n"), mail_from=LISA) == {}
    clock.now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    jobs.close_solved(clock())
    jobs.deliver_outbox(clock())

    with store.transaction() as session:
        rows = session.scalars(select(Outbox).order_by(Outbox.id)).all()
        sent = [(row.kind, row.status, row.message) for row in rows]
    assert {kind for kind, _, _ in sent} == {kind.value for kind in NotificationKind}
    for kind, status, message in sent:
        assert status == "sent" and message is not None, kind
        text = _readable(message)
        for value in PLANTED:
            assert value not in text, (kind, value)
    links = [m for kind, _, m in sent if kind == "agent_new_ticket" and b"/secret/" in m]
    assert bool(links) is config.secrets.vault  # the vault's links, the only way to a value
    files = [p.read_bytes() for p in Path(config.outbound.maildir).rglob("*") if p.is_file()]
    assert len(files) == len(sent)
    for raw in files:
        assert not any(value in _readable(raw) for value in PLANTED)

    for ticket in ("1", "2"):
        shown = run_cli(config_path, "tickets", "show", ticket)
        as_json = run_cli(config_path, "tickets", "show", ticket, "--json")
        assert shown.returncode == as_json.returncode == 0
        json.loads(as_json.stdout)
        for value in PLANTED:
            out = shown.stdout + shown.stderr + as_json.stdout + as_json.stderr
            assert value.encode() not in out, (ticket, value)
            # JSON escapes non-ASCII and "/"-free values alike; the decoded text must not
            # hold it either.
            assert value not in json.dumps(json.loads(as_json.stdout), ensure_ascii=False)
    listed = run_cli(config_path, "tickets", "list", "--json")
    outbox = run_cli(config_path, "outbox", "list", "--json")
    for value in PLANTED:
        assert value.encode() not in listed.stdout + outbox.stdout
        assert value not in caplog.text, value

"""A forged From never speaks for the support team: agents' mail over the real listener.

The attacks are the ones an outsider can send to any support address: an agent's address
in From, with and without commands, to open and to closed tickets. What mailgate believes
is decided in mailgate/pipeline/trust.py (the table in tests/test_decide.py covers each
verdict); here the whole path runs: SMTP socket, database, outbox, delivered bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import select

from mailgate.config import Config, SecurityConfig
from mailgate.jobs import Jobs
from mailgate.models import Comment, Outbox
from mailgate.store import Store

from .conftest import AUTHENTICATED, Clock, ServerThread, mail, run_cli, send
from .test_replies import detail, outbox

AGENT = "tech@support.example.com"
ANNA = "anna@mueller-logistik.de"
MALLORY = "mallory@evil.example"
OUR_HOP = "Received: from mta.example.net by mx.test (Postfix) with ESMTPS id 4711\r\n"
FOREIGN_HOP = "Received: from pc.evil.example by mta.evil.example with ESMTP id 1\r\n"


def open_ticket(server: int, store: Store) -> int:
    send(server, mail(subject="Drucker kaputt", message_id="<first@ml>"))
    with store.transaction() as s:
        ticket = s.scalars(select(Comment.ticket_id)).one()
    return int(ticket)


def agent_mail(ticket: int, body: str, extra: str = "", subject: str = "") -> bytes:
    return mail(
        sender=f"Tech <{AGENT}>",
        subject=subject or f"Re: [#{ticket}] Drucker kaputt",
        body=body,
        extra=extra,
    )


def test_forged_agent_from_changes_nothing_and_reaches_no_customer(
    server: int, store: Store
) -> None:
    """The attack of the issue: MAIL FROM an outsider, From an agent, a #requester command."""
    tid = open_ticket(server, store)
    before, queued = detail(store, tid), len(outbox(store))
    forged = agent_mail(tid, f"#requester {MALLORY}\nErledigt, Passwort folgt.\n")
    send(server, forged, mail_from=MALLORY)
    after = detail(store, tid)
    assert (after["requester"], after["organization"], after["status"]) == (
        before["requester"],
        before["organization"],
        before["status"],
    )
    note = after["comments"][-1]
    assert (note["author"], note["author_kind"], note["public"], note["authentication"]) == (
        AGENT,
        "unverified_agent",
        False,
        None,
    )
    rows = outbox(store)[queued:]
    assert [(kind, to) for kind, _, to, _ in rows] == [("agent_unverified", [AGENT])]


def test_agent_mail_with_our_mtas_verdict_acts_as_the_agent(server: int, store: Store) -> None:
    """The same mail, vouched for by our MTA (its header above its own Received line, as
    Postfix's milters place it, or just below it): an agent reply, command done."""
    tid = open_ticket(server, store)
    send(server, agent_mail(tid, "#status pending\nBitte testen.\n", AUTHENTICATED + OUR_HOP))
    send(server, agent_mail(tid, "Noch etwas.\n", OUR_HOP + AUTHENTICATED + FOREIGN_HOP))
    after = detail(store, tid)
    assert after["status"] == "pending"
    kinds = [(c["author_kind"], c["public"], c["authentication"]) for c in after["comments"]]
    verdict = "dmarc=pass header.from=support.example.com"
    assert kinds[1:] == [("agent", True, verdict), ("agent", True, verdict)]
    replies = [to for kind, _, to, _ in outbox(store) if kind == "agent_reply"]
    assert replies == [[ANNA], [ANNA]]


def test_a_verdict_that_proves_nothing_is_not_believed(
    make_config: Callable[..., tuple[Config, Path]], store: Store, clock: Clock
) -> None:
    """Below a foreign relay's Received line, with another authserv-id, or with no
    authserv_id configured, the same header leaves the mail unauthenticated."""

    cases = [FOREIGN_HOP + AUTHENTICATED, AUTHENTICATED.replace("mx.test", "mx.other.example")]
    cases.append(AUTHENTICATED)  # right header, but no authserv_id configured
    for number, extra in enumerate(cases):
        config, _ = make_config(name=f"case{number}.toml")
        if number == 2:
            config = replace(config, security=SecurityConfig())
        with ServerThread(config, store, clock) as thread:
            port = thread.server.port
            assert port is not None
            send(port, mail(subject=f"Fall {number}", message_id=f"<case{number}@ml>"))
            with store.transaction() as s:
                tid = max(s.scalars(select(Comment.ticket_id)).all())
            send(port, agent_mail(tid, "#status solved\nErledigt.\n", extra))
        after = detail(store, tid)
        assert after["status"] == "new", number
        assert after["comments"][-1]["author_kind"] == "unverified_agent", number


def test_agent_note_to_a_closed_ticket_stays_internal(
    server: int, store: Store, config: Config, clock: Clock
) -> None:
    """A #note to a closed ticket opens a follow-up (closed tickets are locked) that only
    agents see: no acknowledgement, nothing to the customer or the followers."""
    tid = open_ticket(server, store)
    send(server, agent_mail(tid, "#status solved\nErledigt.\n", AUTHENTICATED))
    clock.advance(days=4)
    assert Jobs(store, config).close_solved(clock()) == [tid]
    before = len(outbox(store))
    note = "#note\nKunde zahlt nicht, intern klären.\n"
    send(server, agent_mail(tid, note, AUTHENTICATED))
    rows = outbox(store)[before:]
    assert rows == [], rows
    with store.transaction() as s:
        follow = max(s.scalars(select(Comment.ticket_id)).all())
    follow_up = detail(store, follow)
    assert follow_up["follow_up_of"] == tid
    assert (follow_up["requester"], follow_up["organization"]) == (ANNA, "Müller Logistik GmbH")
    last = follow_up["comments"][-1]
    assert (last["author_kind"], last["public"]) == ("agent", False)
    assert "intern klären" in last["body"]


def test_agent_answer_to_a_closed_ticket_reaches_the_customer_on_the_follow_up(
    server: int, store: Store, config: Config, clock: Clock
) -> None:
    tid = open_ticket(server, store)
    send(server, agent_mail(tid, "#status solved\nErledigt.\n", AUTHENTICATED))
    clock.advance(days=4)
    Jobs(store, config).close_solved(clock())
    before = len(outbox(store))
    send(server, agent_mail(tid, "#status pending\nBitte noch einmal testen.\n", AUTHENTICATED))
    rows = outbox(store)[before:]
    with store.transaction() as s:
        follow = max(s.scalars(select(Comment.ticket_id)).all())
    assert [(kind, ticket, to) for kind, ticket, to, _ in rows] == [("agent_reply", follow, [ANNA])]
    assert detail(store, follow)["status"] == "pending"


def test_check_config_names_the_risks(
    make_config: Callable[..., tuple[Config, Path]],
) -> None:
    """from-header is named as a risk; an authserv_id reminds of the MTA's duty."""
    _, trusting = make_config({"security": {"agent_auth": ["from-header"]}}, name="a.toml")
    result = run_cli(trusting, "check-config")
    assert result.returncode == 0
    out = result.stdout.decode()
    assert 'warning: [security] agent_auth includes "from-header": anyone who writes' in out
    assert "must remove incoming Authentication-Results headers that carry 'mx.test'" not in out
    _, careful = make_config(name="b.toml")
    out = run_cli(careful, "check-config").stdout.decode()
    assert "must remove incoming Authentication-Results headers that carry 'mx.test'" in out
    assert "from-header" not in out


def test_an_internal_comment_never_leaves_for_a_customer(
    server: int, store: Store, config: Config, clock: Clock
) -> None:
    """The two guards behind decide: queueing drops a customer from a mail that carries an
    internal comment, and a row that carries one anyway is never rendered."""
    from mailgate.db.gather import ticket_facts
    from mailgate.db.outbox import queue_notification
    from mailgate.models import NotificationKind, OutboxStatus
    from mailgate.pipeline.decision import Notify

    tid = open_ticket(server, store)
    send(server, agent_mail(tid, "#note\nNur intern: Kunde zahlt nicht.\n", AUTHENTICATED))
    with store.transaction() as s:
        note = s.scalars(select(Comment).where(Comment.public.is_(False))).one()
        facts = ticket_facts(s.connection(), tid)
        assert facts is not None
        ask = Notify(NotificationKind.AGENT_REPLY, (ANNA, AGENT), with_comment=True)
        queued = queue_notification(
            s.connection(), config, facts, facts.organization_id, ask, clock(), note.id, False
        )
        row = s.scalars(select(Outbox).order_by(Outbox.id.desc())).first()
        assert queued == 1 and row is not None and row.recipients == [AGENT]
        s.add(
            Outbox(
                kind="agent_reply",
                ticket_id=tid,
                recipients=[ANNA],
                subject="x",
                payload={"comment": note.id},
                status=OutboxStatus.PENDING.value,
                created_at=clock(),
                next_attempt_at=clock(),
            )
        )
    Jobs(store, config).deliver_outbox(clock())
    with store.transaction() as s:
        smuggled = s.scalars(select(Outbox).order_by(Outbox.id.desc())).first()
        assert smuggled is not None and smuggled.recipients == [ANNA]
        assert smuggled.status == "failed" and smuggled.message is None
        assert "internal comment is for agents only" in (smuggled.last_error or "")


def test_serve_warns_at_start_when_from_headers_are_trusted(
    make_config: Callable[..., tuple[Config, Path]],
    store: Store,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config, _ = make_config({"security": {"agent_auth": ["from-header"]}})
    with caplog.at_level(logging.WARNING, logger="mailgate"), ServerThread(config, store, clock):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any('agent_auth includes "from-header"' in w for w in warnings), warnings


def _headers(text: str) -> tuple[tuple[str, str], ...]:
    return tuple(
        (name, value.strip())
        for name, _, value in (line.partition(":") for line in text.split("\r\n") if line)
    )


@pytest.mark.parametrize(
    ("trusted", "believed"),
    [
        (None, True),  # the default: the authserv-id's own host may stand above it
        (["mx.test"], True),
        ([], False),  # none: only what stands above every Received line counts
    ],
)
def test_trusted_hosts_as_set_and_its_default(trusted: list[str] | None, believed: bool) -> None:
    """``trusted_hosts = []`` is stricter than the default, never the default again."""
    from mailgate.config import parse_config
    from mailgate.pipeline.trust import authenticate

    security: dict[str, object] = {"authserv_id": "mx.test"}
    if trusted is not None:
        security["trusted_hosts"] = trusted
    config = parse_config(
        {
            "security": security,
            "agents": {"addresses": [AGENT]},
            "mail": {"recipients": ["support"]},
        }
    )
    below_our_hop = _headers(OUR_HOP + AUTHENTICATED)
    verdict = authenticate(below_our_hop, AGENT, None, config, True).verdict
    assert (verdict is not None) is believed
    above_every_hop = _headers(AUTHENTICATED + OUR_HOP)
    assert authenticate(above_every_hop, AGENT, None, config, True).verdict is not None

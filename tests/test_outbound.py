"""Notifications end to end: outbox rows, a real SMTP relay, retries, auto-close, followers."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from mailgate.config import Config, parse_config
from mailgate.db.queries import get_ticket, ticket_detail
from mailgate.db.records import update_ticket
from mailgate.ingest import InboundEnvelope, ingest
from mailgate.jobs import Jobs
from mailgate.models import Comment, Outbox
from mailgate.outbound import OutboundEnvelope, Verdict, build_message, classify
from mailgate.store import Store

from .conftest import MAILGATE, CliResult, Clock, mail, run_cli, without_agent_notices
from .sink import Sink


def rows(store: Store) -> list[Outbox]:
    with store.transaction() as s:
        return list(s.scalars(select(Outbox).order_by(Outbox.id)))


def test_new_ticket_acknowledged_and_followers_told(
    relayed: tuple[Config, Path], store: Store, sink: Sink, clock: Clock
) -> None:
    """The requester gets the acknowledgement; the organization's follower hears of it."""
    config, _ = relayed
    created = ingest(store, config, mail(subject="Drucker kaputt"), InboundEnvelope(), clock())
    kinds = [(o.kind, o.recipients) for o in rows(store)]
    assert kinds == [
        ("ticket_created", ["anna@mueller-logistik.de"]),
        ("new_ticket_follower", ["chef@mueller-logistik.de"]),
        ("agent_new_ticket", ["tech@support.example.com"]),
    ]
    stats = Jobs(store, config).deliver_outbox(clock())
    assert (stats.sent, stats.retry, stats.failed) == (3, 0, 0)
    ack, follower, agent = (r.message for r in sink.received)
    assert ack["Subject"] == f"[#{created.ticket}] Drucker kaputt"
    assert ack["To"] == "anna@mueller-logistik.de"
    assert ack["Auto-Submitted"] == "auto-replied"
    assert follower["Auto-Submitted"] == agent["Auto-Submitted"] == "auto-generated"
    assert ack["X-Auto-Response-Suppress"] == "All"
    assert ack["Reply-To"].startswith(f"support+{created.ticket}-")
    assert ack["In-Reply-To"] == f"<{created.message_id}>"
    assert ack.get_body(("plain",)).get_content().count(f"#{created.ticket}") >= 1
    assert ack.get_body(("html",)) is not None
    stored = {o.message_id for o in rows(store)}
    assert {m["Message-ID"].strip("<>") for m in (ack, follower, agent)} == stored
    assert all(o.status == "sent" and o.attempts == 1 for o in rows(store))


def test_reply_to_a_notification_threads_by_its_message_id(
    relayed: tuple[Config, Path], store: Store, sink: Sink, clock: Clock
) -> None:
    """A reply to our acknowledgement (only In-Reply-To, new address) lands on the ticket."""
    config, _ = relayed
    created = ingest(store, config, mail(subject="Drucker"), InboundEnvelope(), clock())
    Jobs(store, config).deliver_outbox(clock())
    ack = sink.received[0].message
    reply = mail(
        subject="Re: Danke", body="Modell HP 4050", extra=f"In-Reply-To: {ack['Message-ID']}\r\n"
    )
    result = ingest(store, config, reply, InboundEnvelope(), clock())
    assert (result.action, result.ticket) == ("commented", created.ticket)


def test_retry_backoff_and_give_up(
    relayed: tuple[Config, Path], store: Store, sink: Sink, clock: Clock
) -> None:
    """451 and dropped connections retry later; 550 fails at once; after max_age, failed."""
    config = without_agent_notices(relayed[0])
    ingest(store, config, mail(sender="neu@gmail.com"), InboundEnvelope(), clock())  # ack only
    jobs = Jobs(store, config)
    sink.answer("451", "drop")
    assert jobs.deliver_outbox(clock()).retry == 1
    [row] = rows(store)
    assert (row.status, row.attempts) == ("retry", 1)
    assert row.last_error is not None and row.last_error.startswith("451 4.3.0")
    assert jobs.deliver_outbox(clock()).sent == 0  # not due yet: backoff of one minute
    clock.advance(minutes=1)
    assert jobs.deliver_outbox(clock()).retry == 1  # the dropped connection
    clock.advance(minutes=2)
    assert jobs.deliver_outbox(clock()).sent == 1
    [row] = rows(store)
    assert (row.status, row.attempts, len(sink.received)) == ("sent", 3, 1)
    log = row.payload["attempts"]
    assert [a["result"] for a in log] == ["retry", "retry", "sent"]
    assert log[0]["error"].startswith("451") and log[2]["error"] is None

    ingest(store, config, mail(sender="zwei@gmail.com"), InboundEnvelope(), clock())
    sink.answer("550")
    assert jobs.deliver_outbox(clock()).failed == 1
    assert rows(store)[-1].status == "failed"

    ingest(store, config, mail(sender="drei@gmail.com"), InboundEnvelope(), clock())
    sink.answer(*["451"] * 30)
    for _ in range(30):
        jobs.deliver_outbox(clock())
        clock.advance(hours=2)
    last = rows(store)[-1]
    assert last.status == "failed" and last.last_error is not None
    assert last.last_error.startswith("gave up after")


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        (250, "sent"),
        (421, "retry"),
        (451, "retry"),
        (None, "retry"),
        (550, "failed"),
        (554, "failed"),
    ],
)
def test_classify(code: int | None, verdict: str) -> None:
    assert classify(code) is Verdict(verdict)


def test_no_header_injection(config: Config) -> None:
    envelope = OutboundEnvelope(
        to=("a@x.example",),
        subject="[#1] Hallo\r\nBcc: victim@evil.example",
        reply_to="support@support.example.com",
        in_reply_to=None,
        references=(),
        auto_submitted="auto-generated",
    )
    raw = build_message(config, envelope, "t", "<p>t</p>").data
    assert b"\nBcc:" not in raw
    assert b"Subject: [#1] Hallo Bcc: victim@evil.example" in raw


def test_auto_close_after_three_days(
    relayed: tuple[Config, Path], store: Store, sink: Sink, clock: Clock
) -> None:
    """Open at 2 days 23 hours, closed at 3 days + 1 minute, a second run changes nothing."""
    config, path = relayed
    created = ingest(store, config, mail(), InboundEnvelope(), clock())
    assert created.ticket is not None
    with store.transaction() as s:
        update_ticket(s, get_ticket(s, created.ticket), clock(), status="solved")
    solved_at = clock()
    jobs = Jobs(store, config)
    assert jobs.close_solved(solved_at + timedelta(days=2, hours=23)) == []
    assert jobs.close_solved(solved_at + timedelta(days=3, minutes=1)) == [created.ticket]
    assert jobs.close_solved(solved_at + timedelta(days=3, minutes=2)) == []
    with store.transaction() as s:
        ticket = ticket_detail(s, get_ticket(s, created.ticket))
    assert ticket["status"] == "closed" and ticket["closed_at"] is not None
    assert [o.kind for o in rows(store)].count("ticket_closed") == 1
    # …and from then on its organization and requester are locked, also for the CLI
    proc = run_cli(path, "tickets", "set", str(created.ticket), "--org", "Agentur Blau")
    assert proc.returncode == 1
    assert b"can no longer change" in proc.stderr and b"Traceback" not in proc.stderr


def test_jobs_run_with_simulated_time(relayed: tuple[Config, Path], sink: Sink) -> None:
    _, path = relayed

    def cli(*args: str, stdin: bytes = b"") -> Any:
        proc = run_cli(path, *args, stdin=stdin)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    ticket = cli("ingest", stdin=mail())["ticket"]
    assert run_cli(path, "tickets", "set", str(ticket), "--status", "solved").returncode == 0
    assert cli("jobs", "run", "--json") == {
        "closed": 0,
        "sent": 3,
        "retry": 0,
        "failed": 0,
        "digests": 0,
    }
    assert cli("jobs", "run", "--json", "--now", "2099-01-01T00:00:00+00:00") == {
        "closed": 1,
        "sent": 1,
        "retry": 0,
        "failed": 0,
        "digests": 0,
    }
    listed = cli("outbox", "list", "--json")
    assert [o["kind"] for o in listed] == [
        "ticket_created",
        "new_ticket_follower",
        "agent_new_ticket",
        "ticket_closed",
    ]
    assert set(listed[0]) >= {
        "id",
        "kind",
        "ticket",
        "to",
        "subject",
        "status",
        "attempts",
        "last_error",
    }
    assert cli("outbox", "list", "--status", "failed", "--json") == []


def test_follow_commands(config_path: Path) -> None:
    def cli(*args: str) -> CliResult:
        return run_cli(config_path, *args)

    assert cli("init-db").returncode == 0  # only serve, ingest and init-db create the database
    assert cli("follow", "add", "anna@mueller-logistik.de", "Müller Logistik GmbH").returncode == 0
    refused = cli("follow", "add", "fremd@gmail.com", "Müller Logistik GmbH")
    assert refused.returncode == 1 and b"not a member" in refused.stderr
    listed = json.loads(cli("follow", "list", "--json").stdout)
    assert {(f["email"], f["source"]) for f in listed} == {
        ("anna@mueller-logistik.de", "cli"),
        ("chef@mueller-logistik.de", "config"),
    }
    assert (
        cli("follow", "remove", "anna@mueller-logistik.de", "Müller Logistik GmbH").returncode == 0
    )
    config_row = cli("follow", "remove", "chef@mueller-logistik.de", "Müller Logistik GmbH")
    assert config_row.returncode == 1 and b"config file" in config_row.stderr


def test_two_job_runners_deliver_each_row_exactly_once(
    relayed: tuple[Config, Path], store: Store, sink: Sink, clock: Clock
) -> None:
    """Two `mailgate jobs run` processes at once: every notification arrives once."""
    config, path = relayed
    for i in range(60):
        ingest(store, config, mail(subject=f"Anfrage {i}"), InboundEnvelope(), clock())
    expected = len(rows(store))
    procs = [
        subprocess.Popen(
            [*MAILGATE, "--config", str(path), "jobs", "run", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert sum(o["sent"] for o in outputs) == expected
    ids = Counter(r.message["Message-ID"] for r in sink.received)
    assert len(ids) == expected and set(ids.values()) == {1}
    assert all(o.status == "sent" for o in rows(store))


POOL = [f"u{i}@kunde{i % 3}.example" for i in range(6)]
OUTSIDERS = ["x@fremd.example", "y@gmail.com"]
AGENT_POOL = ["tech@support.example.com", "lead@support.example.com"]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_notifications_never_leave_the_ticket(
    data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Over random configs: every recipient is requester, participant, member or agent."""
    orgs = []
    for n in range(3):
        members = data.draw(st.lists(st.sampled_from(POOL), unique=True, max_size=4))
        followers = data.draw(st.lists(st.sampled_from(members), unique=True)) if members else []
        orgs.append(
            {
                "name": f"Kunde {n}",
                "members": members,
                "followers": followers,
                "domains": [f"kunde{n}.example"],
            }
        )
    agents = data.draw(st.lists(st.sampled_from(AGENT_POOL), unique=True, min_size=1))
    config = parse_config(
        {
            "database": {"url": f"sqlite:///{tmp_path_factory.mktemp('prop') / 'p.db'}"},
            "mail": {
                "domains": ["support.example.com"],
                "address": "support@support.example.com",
                "recipients": ["support"],  # the agents share the domain
            },
            "agents": {"addresses": agents},
            "security": {"authserv_id": "mx.test"},
            "organizations": orgs,
        }
    )
    store = Store(config.database.url)
    store.migrate()
    clock = Clock(datetime(2026, 11, 26, 10, 0, tzinfo=UTC))
    store.sync(config, clock())
    everyone = POOL + OUTSIDERS + agents
    try:
        for step in range(4):
            sender = data.draw(st.sampled_from(everyone))
            ccs = data.draw(st.lists(st.sampled_from(everyone), max_size=3))
            subject = data.draw(
                st.sampled_from(["Kunde 1: Hilfe", "Frage", "[#1] Re: Frage", "Re: [#2] x"])
            )
            body = data.draw(
                st.sampled_from(
                    ["Text\n", "#note\nIntern\n", "#private\nX\n", "#status solved\nFertig.\n"]
                )
            )
            extra = f"Cc: {', '.join(ccs)}\r\n" if ccs else ""
            if data.draw(st.booleans()):  # the MTA vouches for the From domain, or does not
                domain = sender.rpartition("@")[2]
                extra += f"Authentication-Results: mx.test; dmarc=pass header.from={domain}\r\n"
            raw = mail(
                sender=sender, subject=subject, body=body, extra=extra, message_id=f"<p{step}@x>"
            )
            ingest(store, config, raw, InboundEnvelope(), clock())
            if data.draw(st.booleans()):
                clock.advance(days=4)  # solved tickets close: replies open follow-ups
                Jobs(store, config).close_solved(clock())
        with store.transaction() as s:
            for row in s.scalars(select(Outbox)):
                comment = s.get(Comment, row.payload.get("comment") or 0)
                if comment is not None and not comment.public:
                    # Internal text (a #note, an unauthenticated agent) reaches agents only.
                    assert set(row.recipients) <= set(agents), (row.kind, row.recipients)
                if row.ticket_id is None:  # an agent's mail kept in quarantine
                    assert set(row.recipients) <= set(agents), (row.kind, row.recipients)
                    continue
                ticket = get_ticket(s, row.ticket_id)
                members = set()
                if ticket.organization is not None:
                    members = {
                        m
                        for o in orgs
                        if o["name"] == ticket.organization.name
                        for m in o["members"]
                    }
                allowed = (
                    {ticket.requester.email}
                    | {p.user.email for p in ticket.participants}
                    | members
                    | set(agents)
                )
                assert set(row.recipients) <= allowed, (row.kind, row.recipients, allowed)
    finally:
        store.close()

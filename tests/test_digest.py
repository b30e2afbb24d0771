"""The agents' daily digest: due on working mornings, once a day, with what waits on us.

The calendar rules are pure (:func:`due_day`, :func:`overdue_before`); the digest itself is
built from tickets that came in over a real SMTP socket, queued by the job, relayed to a
real SMTP sink and read there, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from mailgate.config import Config, HoursConfig
from mailgate.digest import due_day, overdue_before, send_digest
from mailgate.hours import SupportHours
from mailgate.jobs import Jobs
from mailgate.models import Outbox
from mailgate.store import Store

from .conftest import AUTHENTICATED, Clock, mail, open_store, run_cli, send
from .sink import Sink

BERLIN = ZoneInfo("Europe/Berlin")
HOURS = SupportHours(HoursConfig())
TECH = "tech@support.example.com"
LISA = "lisa@support.example.com"


def berlin(day: str, clock_time: str) -> datetime:
    return datetime.fromisoformat(f"{day}T{clock_time}").replace(tzinfo=BERLIN)


@pytest.mark.parametrize(
    ("now", "last", "due"),
    [
        (berlin("2026-12-07", "08:29"), None, None),  # Monday, before the digest's time
        (berlin("2026-12-07", "08:30"), None, date(2026, 12, 7)),
        (berlin("2026-12-07", "16:00"), "2026-12-04", date(2026, 12, 7)),  # started late
        (berlin("2026-12-07", "09:00"), "2026-12-07", None),  # sent already
        (berlin("2026-12-05", "09:00"), "2026-12-04", None),  # Saturday
        (berlin("2026-12-25", "09:00"), "2026-12-24", None),  # Christmas, a Friday
        (berlin("2026-03-09", "09:00"), None, date(2026, 3, 9)),  # the day after 8 March
        (berlin("2026-03-09", "23:59"), None, date(2026, 3, 9)),
        (datetime(2026, 12, 7, 7, 30, tzinfo=UTC), None, date(2026, 12, 7)),  # 08:30 Berlin
        (datetime(2026, 7, 6, 6, 29, tzinfo=UTC), None, None),  # 08:29 summer time
        (datetime(2026, 7, 6, 6, 30, tzinfo=UTC), None, date(2026, 7, 6)),
    ],
)
def test_the_digest_is_due_on_working_mornings_once(
    now: datetime, last: str | None, due: date | None
) -> None:
    assert due_day(now, HOURS, "08:30", last) == due


@pytest.mark.parametrize(
    ("today", "since"),
    [
        (date(2026, 12, 8), berlin("2026-12-07", "09:00")),  # Tuesday: Monday's opening
        (date(2026, 12, 7), berlin("2026-12-04", "09:00")),  # Monday: Friday's
        (date(2026, 12, 28), berlin("2026-12-24", "09:00")),  # Christmas and weekend between
    ],
)
def test_overdue_means_untouched_for_a_full_working_day(today: date, since: datetime) -> None:
    assert overdue_before(today, HOURS) == since


@pytest.fixture
def overlay(sink: Sink) -> dict[str, Any]:
    return {
        "agents": {"addresses": [TECH, LISA], "digest": "08:30"},
        "outbound": {"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": sink.port},
    }


def digests(store: Store) -> list[tuple[list[str], dict[str, Any]]]:
    with store.transaction() as session:
        query = select(Outbox).where(Outbox.kind == "agent_digest").order_by(Outbox.id)
        rows = session.scalars(query)
        return [(row.recipients, row.payload["digest"]) for row in rows]


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


def ids(section: dict[str, Any]) -> list[int]:
    return [t["id"] for t in section["tickets"]]


def test_each_agent_gets_their_own_the_unassigned_and_the_overdue_oldest_first(
    config: Config, store: Store, server: int, sink: Sink, clock: Clock
) -> None:
    # Thursday 26 Nov: ticket 1, which Lisa takes; Friday: ticket 2, left alone.
    assert send(server, mail(subject="Drucker kaputt", message_id="<d1@ml>")) == {}
    answer = mail(
        sender=f"Lisa <{LISA}>",
        subject="Re: [#1] Drucker kaputt",
        body="#assign me\n",
        extra=AUTHENTICATED,
    )
    assert send(server, answer) == {}
    clock.advance(days=1)
    assert send(server, mail(subject="Scanner kaputt", message_id="<d2@ml>")) == {}
    clock.advance(hours=1)
    assert send(server, mail(subject="Fax kaputt", message_id="<d3@ml>")) == {}
    agent_answer = mail(
        sender=f"Tech <{TECH}>",
        subject="Re: [#3] Fax kaputt",
        body="#status solved\nErledigt.\n",
        extra=AUTHENTICATED,
    )
    assert send(server, agent_answer) == {}  # solved: waits on nobody, in no list
    jobs = Jobs(store, config)
    jobs.deliver_outbox(clock())
    before = len(sink.received)

    # Monday 30 Nov, 08:31 in Berlin: due. Ticket 1 waited since Thursday: overdue.
    monday = berlin("2026-11-30", "08:31")
    assert jobs.send_digest(berlin("2026-11-30", "08:29")) == 0
    assert jobs.send_digest(monday) == 2
    found = dict((tuple(to), digest) for to, digest in digests(store))
    lisa, tech = found[(LISA,)], found[(TECH,)]
    assert (ids(lisa["mine"]), ids(tech["mine"])) == ([1], [])
    assert ids(lisa["unassigned"]) == ids(tech["unassigned"]) == [2]
    assert ids(lisa["overdue"]) == [1]  # untouched since Thursday; ticket 2 came on Friday
    assert lisa["overdue"]["tickets"][0]["assignee"] == LISA

    assert jobs.send_digest(berlin("2026-11-30", "15:00")) == 0  # once a day
    stats = jobs.deliver_outbox(monday)
    assert stats.sent == 2
    mails = {m["To"]: m for m in (r.message for r in sink.received[before:])}
    text = text_of(mails[LISA])
    assert "[#1] Drucker kaputt" in text and "[#2] Scanner kaputt" in text
    assert "Fax kaputt" not in text
    assert "seit 26.11. 11:00" in text  # Berlin time of the last change
    assert str(mails[LISA]["Subject"]).startswith(
        "Tickets 30.11.2026: 1 bei Ihnen, 1 ohne Zuständige, 1 überfällig"
    )
    assert str(mails[LISA]["Auto-Submitted"]) == "auto-generated"

    # The address below a ticket is its reply token: "#assign me" there takes it.
    after = text.split("[#2] Scanner kaputt", 1)[1]
    address = after.split("#assign me an ", 1)[1].split()[0]
    assert address.startswith("support+2-")
    take = mail(
        sender=f"Tech <{TECH}>",
        to=address,
        subject="Scanner",
        body="#assign me\n",
        extra=AUTHENTICATED,
    )
    assert send(server, take, mail_from=TECH, rcpt=(address,)) == {}
    assert jobs.send_digest(berlin("2026-12-01", "08:30")) == 2  # Tuesday
    tuesday = {tuple(to): d for to, d in digests(store)[2:]}
    assert ids(tuesday[(TECH,)]["mine"]) == [2]
    assert tuesday[(TECH,)]["unassigned"]["total"] == 0


def test_no_digest_without_the_setting_on_weekends_or_for_an_empty_queue(
    make_config: Callable[..., tuple[Config, Path]], clock: Clock
) -> None:
    off, _ = make_config({"agents": {"addresses": [TECH]}}, name="off.toml")
    on, _ = make_config({"agents": {"addresses": [TECH], "digest": "08:30"}}, name="on.toml")
    with open_store(on, clock) as store:
        monday = berlin("2026-11-30", "09:00")
        assert send_digest(store, off, HOURS, monday) == 0
        assert send_digest(store, on, HOURS, berlin("2026-11-28", "09:00")) == 0  # Saturday
        assert send_digest(store, on, HOURS, monday) == 0  # nothing waits: no mail
        assert digests(store) == []


def test_two_instances_send_a_day_once(
    config: Config, store: Store, server: int, clock: Clock
) -> None:
    """Instances sharing the database: the claim in ``meta`` lets one of them send."""
    assert send(server, mail()) == {}
    other = Store(config.database.url)
    try:
        monday = berlin("2026-11-30", "08:31")
        first = send_digest(store, config, HOURS, monday)
        second = send_digest(other, config, HOURS, monday)
        assert (first, second) == (2, 0)
    finally:
        other.close()


def test_jobs_run_reports_digests_and_check_config_refuses_a_bad_time(
    config_path: Path, server: int, tmp_path: Path
) -> None:
    assert send(server, mail()) == {}
    result = run_cli(config_path, "jobs", "run", "--now", "2026-11-30T07:45:00+00:00", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["digests"] == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('[agents]\naddresses = ["tech@support.example.com"]\ndigest = "8:30am"\n')
    refused = run_cli(bad, "check-config")
    assert refused.returncode == 2
    assert b"[agents].digest" in refused.stderr and b"Traceback" not in refused.stderr

"""The list commands page, filter and stream: ``tickets``, ``outbox``, ``quarantine``, ``follow``.

A database filled through the real ingest (a few dozen tickets over two days, some of
them tagged by a routing rule, solved, assigned; mail that is not mail in quarantine), then
the commands as their console script runs them; SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from mailgate.config import Config
from mailgate.confload import load_config
from mailgate.db.moves import set_ticket
from mailgate.db.queries import get_ticket
from mailgate.ingest import InboundEnvelope, ingest
from mailgate.store import Store

from .conftest import MAILGATE, Clock, mail, run_cli

START = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
TICKETS = 36
TECH = "tech@support.example.com"
ANNA = "anna@mueller-logistik.de"


RULE = """
[[routing.rules]]
subject = "drucker"
organization = "Agentur Blau"
tags = ["drucker"]
"""


def _sender(n: int) -> str:
    return ANNA if n % 4 == 0 else f"kunde{n}@example.org"


def _subject(n: int) -> str:
    if n % 5 == 0:
        return f"DRUCKER Nummer {n} streikt"
    if n % 6 == 0:
        return f"Über die Rechnung {n}"
    return f"Frage {n} (100% dringend_)"


@pytest.fixture
def filled(make_config: Callable[..., tuple[Config, Path]], clock: Clock) -> Path:
    """TICKETS tickets, one every 80 minutes from START; tickets 1, 2 and 3 quarantined
    mails between them; a rule tags "drucker" subjects; some solved, some assigned."""
    _, path = make_config()
    with path.open("a", encoding="utf-8") as toml:  # an array of tables in a table
        toml.write(RULE)
    config = load_config(str(path))
    store = Store(config.database.url, config.database.lock_timeout)
    store.migrate()
    store.sync(config, START)
    try:
        for n in range(1, TICKETS + 1):
            when = START + timedelta(minutes=80 * n)
            raw = mail(subject=_subject(n), sender=_sender(n))
            result = ingest(store, config, raw, InboundEnvelope(_sender(n), ()), when)
            assert result.action == "created", result
            if n <= 3:
                junk = b"\x00\xff kein Mail %d" % n
                ingest(store, config, junk, InboundEnvelope(None, ()), when)
        # What `tickets set` does, in process: the lists are what these tests run as commands.
        with store.transaction() as session:
            for n in (3, 9, 27):
                set_ticket(session, config, get_ticket(session, n), when, status="solved")
            for n in (2, 10, 30):
                set_ticket(session, config, get_ticket(session, n), when, assignee=TECH)
    finally:
        store.close()
    return path


def cli(path: Path, *args: str) -> str:
    result = run_cli(path, *args)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def as_json(path: Path, *args: str) -> Any:
    return json.loads(cli(path, *args))


def ids(path: Path, *args: str) -> list[int]:
    return [row["id"] for row in as_json(path, *args, "--json")]


def table_ids(output: str) -> list[int]:
    """The ID column of a table, without its header and the closing hint."""
    return [int(line.split()[0]) for line in output.splitlines()[1:] if line.split()[0].isdigit()]


def test_json_keeps_its_contract(filled: Path) -> None:
    """``--json`` without paging: every ticket, oldest first, the same fields, the same text
    ``json.dumps(…, indent=2)`` gives; ``--jsonl`` the same objects, one a line."""
    output = cli(filled, "tickets", "list", "--json")
    rows = json.loads(output)
    assert output == json.dumps(rows, ensure_ascii=False, indent=2) + "\n"
    assert [r["id"] for r in rows] == list(range(1, TICKETS + 1))
    assert set(rows[0]) == {
        "id",
        "subject",
        "status",
        "organization",
        "requester",
        "assignee",
        "created_at",
        "updated_at",
    }
    assert rows[1]["assignee"] == TECH and rows[0]["assignee"] is None
    lines = cli(filled, "tickets", "list", "--jsonl").splitlines()
    assert [json.loads(line) for line in lines] == rows
    assert cli(filled, "tickets", "list", "--json", "--status", "pending") == "[]\n"
    assert cli(filled, "tickets", "list", "--jsonl", "--status", "pending") == ""


def test_text_view_shows_the_newest_page_and_says_what_is_left(filled: Path) -> None:
    """50 newest by default; the last line counts the rest and names the option."""
    output = cli(filled, "outbox", "list")
    every = ids(filled, "outbox", "list")
    assert len(every) > 60
    shown = table_ids(output)
    assert shown == sorted(every, reverse=True)[:50]
    hint = output.splitlines()[-1]
    assert (
        hint
        == f"({len(every) - 50} more: add --before-id {shown[-1]} for the next 50; --json for all)"
    )
    rest = table_ids(cli(filled, "outbox", "list", "--before-id", str(shown[-1])))
    assert rest == sorted(every, reverse=True)[50:]
    assert "more:" not in cli(filled, "outbox", "list", "--before-id", str(shown[-1]))
    assert table_ids(cli(filled, "outbox", "list", "--limit", "0")) == sorted(every, reverse=True)


@pytest.mark.parametrize("form", ["text", "jsonl"])
def test_pages_walk_every_ticket_once_newest_first(filled: Path, form: str) -> None:
    """Following the hint page by page (or ``--before-id`` by hand) shows each ticket once."""
    seen: list[int] = []
    before: list[str] = []
    while True:
        args = ("tickets", "list", "--limit", "7", *before)
        if form == "text":
            output = cli(filled, *args)
            page = table_ids(output)
            hint = re.search(r"add --before-id (\d+)", output)
            assert (hint is None) == (len(seen) + len(page) == TICKETS)
        else:
            page = [json.loads(line)["id"] for line in cli(filled, *args, "--jsonl").splitlines()]
        assert 0 < len(page) <= 7
        seen += page
        if len(seen) == TICKETS:
            break
        before = ["--before-id", str(page[-1])]
    assert seen == list(range(TICKETS, 0, -1))


def test_after_id_pages_upwards(filled: Path) -> None:
    """``--after-id``: the page just above the id, newest first; its hint points higher."""
    output = cli(filled, "tickets", "list", "--after-id", "10", "--limit", "5")
    assert table_ids(output) == [15, 14, 13, 12, 11]
    assert output.splitlines()[-1].startswith(f"({TICKETS - 15} newer: add --after-id 15 ")
    assert ids(filled, "tickets", "list", "--after-id", "30") == list(range(TICKETS, 30, -1))
    between = ("--after-id", "10", "--before-id", "14")
    assert ids(filled, "tickets", "list", *between) == [13, 12, 11]
    assert ids(filled, "tickets", "list", "--limit", "3", "--after-id", "10") == [13, 12, 11]


def test_filters(filled: Path) -> None:
    """Each filter, alone and with paging, against what the full list says."""
    every = as_json(filled, "tickets", "list", "--json")

    def expect(keep: Callable[[dict[str, Any]], bool]) -> list[int]:
        return [r["id"] for r in reversed(every) if keep(r)]

    def listed(*args: str) -> list[int]:
        return ids(filled, "tickets", "list", "--limit", "0", *args)

    assert listed("--requester", ANNA.upper()) == expect(lambda r: r["requester"] == ANNA)
    assert listed("--requester", ANNA) == [n for n in range(TICKETS, 0, -1) if n % 4 == 0]
    assert listed("--assignee", TECH) == [30, 10, 2]
    assert listed("--assignee", "none") == expect(lambda r: r["assignee"] is None)
    assert listed("--status", "solved") == [27, 9, 3]
    drucker = [n for n in range(TICKETS, 0, -1) if n % 5 == 0]
    assert listed("--tag", "drucker") == drucker
    assert listed("--org", "agentur blau") == drucker
    assert listed("--tag", "gibtsnicht") == []
    # Any case, beyond ASCII; % and _ are letters, not patterns.
    assert listed("--search", "drucker") == drucker
    assert listed("--search", "üBER DIE") == [
        n for n in range(TICKETS, 0, -1) if n % 6 == 0 and n % 5
    ]
    assert listed("--search", "100% dringend_") == expect(lambda r: "100%" in r["subject"])
    assert listed("--search", "0%") == expect(lambda r: "0%" in r["subject"])
    assert listed("--search", "n_") == []
    # Times: ticket n was created at START + 80 n minutes; a bare date is the whole day (UTC).
    day = START.date() + timedelta(days=1)
    on_day = expect(lambda r: r["created_at"].startswith(day.isoformat()))
    assert on_day and listed("--since", day.isoformat(), "--until", day.isoformat()) == on_day
    at = (START + timedelta(minutes=80 * 20)).replace(tzinfo=None).isoformat()
    assert listed("--since", at) == list(range(TICKETS, 19, -1))
    assert listed("--until", at) == list(range(20, 0, -1))  # inclusive up to that instant
    berlin = (START + timedelta(minutes=80 * 20)).astimezone().isoformat()
    assert listed("--since", berlin) == list(range(TICKETS, 19, -1))
    # Filters and paging together.
    assert ids(filled, "tickets", "list", "--requester", ANNA, "--limit", "2") == [36, 32]
    assert ids(filled, "tickets", "list", "--requester", ANNA, "--before-id", "32") == [
        28,
        24,
        20,
        16,
        12,
        8,
        4,
    ]
    hinted = cli(filled, "tickets", "list", "--search", "drucker", "--limit", "3")
    assert hinted.splitlines()[-1].startswith("(4 more: add --before-id 25 ")


@pytest.mark.parametrize(
    "args",
    [
        ("--since", "gestern"),
        ("--until", "2026-13-01"),
        ("--limit", "-1"),
        ("--before-id", "x"),
        ("--json", "--jsonl"),
    ],
)
def test_bad_values_are_usage_errors(args: tuple[str, ...]) -> None:
    """Refused by the command line itself, before any config or database is read."""
    result = run_cli(None, "tickets", "list", *args)
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr and b"error:" in result.stderr


def test_outbox_quarantine_and_follow_lists(filled: Path) -> None:
    """The other lists page and filter too, and keep their JSON."""
    outbox = as_json(filled, "outbox", "list", "--json")
    assert [r["id"] for r in outbox] == sorted(r["id"] for r in outbox)
    assert {"accepted", "refused", "history", "to", "ticket"} <= set(outbox[0])
    newest = outbox[-1]["id"]
    assert ids(filled, "outbox", "list", "--limit", "2") == [newest, newest - 1]
    late = START + timedelta(minutes=80 * 30)
    since = ids(filled, "outbox", "list", "--since", late.isoformat())  # all: oldest first
    assert since == [r["id"] for r in outbox if r["created_at"] >= late.isoformat()]
    assert ids(filled, "outbox", "list", "--status", "sent") == []
    drucker = ids(filled, "outbox", "list", "--search", "drucker", "--limit", "0")
    assert drucker == [r["id"] for r in reversed(outbox) if "drucker" in r["subject"].lower()]
    assert drucker

    quarantine = as_json(filled, "quarantine", "list", "--json")
    assert len(quarantine) == 3 and set(quarantine[0]) == {
        "id",
        "message_id",
        "received_at",
        "mail_from",
        "size",
        "reason",
    }
    newest_two = [q["id"] for q in reversed(quarantine)][:2]
    output = cli(filled, "quarantine", "list", "--limit", "2")
    assert table_ids(output) == newest_two
    assert (
        output.splitlines()[-1]
        == f"(1 more: add --before-id {newest_two[-1]} for the next 2; --json for all)"
    )
    first = quarantine[0]["received_at"]
    assert ids(filled, "quarantine", "list", "--until", first) == [quarantine[0]["id"]]
    assert len(ids(filled, "quarantine", "list", "--since", first)) == 3

    follow = as_json(filled, "follow", "list", "--json")
    assert follow == [
        {
            "email": "chef@mueller-logistik.de",
            "organization": "Müller Logistik GmbH",
            "source": "config",
        }
    ]
    lines = cli(filled, "follow", "list", "--jsonl").splitlines()
    assert [json.loads(line) for line in lines] == follow


def test_jsonl_from_a_real_process(filled: Path) -> None:
    """The console script in its own interpreter, as a script runs it."""
    proc = subprocess.run(
        [*MAILGATE, "--config", str(filled), "tickets", "list", "--jsonl", "--tag", "drucker"],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["id"] for r in rows] == [n for n in range(1, TICKETS + 1) if n % 5 == 0]


def test_a_list_holds_up_no_writer(config: Config, store: Store, clock: Clock) -> None:
    """While a list reads (here: holds its transaction open), mail is stored as usual."""
    writer = Store(config.database.url, lock_timeout=1.0)
    try:
        with store.reading() as conn:
            conn.execute(text("SELECT count(*) FROM tickets")).scalar()
            result = ingest(writer, config, mail(), InboundEnvelope(ANNA, ()), clock())
            assert result.action == "created"
    finally:
        writer.close()

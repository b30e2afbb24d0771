"""Every query a list or a job runs is served by an index, on SQLite and PostgreSQL.

The statements are the ones mailgate runs: the list commands' builders
(:mod:`mailgate.db.lists`), the jobs themselves (auto-close, the outbox claim, the digest),
run with a listener that asks the database for the plan of each statement before it runs,
and every per-mail look-up of ingest (the prebuilt statements with the parameters of
``tests/test_fastexec.py``). A full scan of tickets, comments, outbox or the ledger
(``inbound_messages``) fails: SQLite's ``SCAN <table>``, PostgreSQL's ``Seq Scan`` (asked
with ``enable_seqscan = off``, so that a small table's cheap scan does not hide a missing
index).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, event
from sqlalchemy.sql.dml import Insert

from mailgate import retention
from mailgate.config import Config
from mailgate.db import lists
from mailgate.db.lists import Filters, Page
from mailgate.ingest import InboundEnvelope, ingest
from mailgate.jobs import Jobs
from mailgate.store import Store

from .conftest import Clock, mail, open_store
from .test_fastexec import CASES

CHECKED = ("tickets", "comments", "outbox", "inbound_messages")
SINCE = datetime(2026, 11, 1, tzinfo=UTC)
UNTIL = datetime(2026, 12, 1, tzinfo=UTC)


@dataclass
class Plan:
    sql: str
    scans: list[str]  # the full scans of CHECKED tables, as the database names them
    detail: str


def _full_scans(dialect: str, plan: Any) -> list[str]:
    if dialect == "sqlite":
        found = []
        for line in plan:
            words = line.split()
            # "SCAN tickets" (also "SCAN tickets USING INDEX …": every entry of the index)
            if len(words) >= 2 and words[0] == "SCAN" and words[1] in CHECKED:
                found.append(line)
        return found
    found = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") in CHECKED:
            found.append(f"Seq Scan on {node['Relation Name']}")
        for child in node.get("Plans", ()):
            walk(child)

    walk(plan[0]["Plan"])
    return found


@contextmanager
def explaining(engine: Engine) -> Iterator[list[Plan]]:
    """Every SELECT, UPDATE and DELETE run on ``engine`` meanwhile, with its plan, asked on
    the same connection and transaction with the very parameters it runs with."""
    plans: list[Plan] = []
    dialect = engine.dialect.name

    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool):
        words = statement.lstrip().split(None, 1)
        if not words or words[0].upper() not in ("SELECT", "UPDATE", "DELETE", "WITH"):
            return
        raw = conn.connection.driver_connection.cursor()
        params = params[0] if many else params
        try:
            if dialect == "postgresql":
                raw.execute("SET enable_seqscan = off")
                raw.execute("EXPLAIN (FORMAT JSON) " + statement, params)
                plan = raw.fetchone()[0]
                plan = json.loads(plan) if isinstance(plan, str) else plan
                detail = json.dumps(plan, indent=1)
            else:
                raw.execute("EXPLAIN QUERY PLAN " + statement, params)
                plan = [row[3] for row in raw.fetchall()]
                detail = "\n".join(plan)
        finally:
            raw.close()
        plans.append(Plan(statement, _full_scans(dialect, plan), detail))

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield plans
    finally:
        event.remove(engine, "before_cursor_execute", before)


def _assert_indexed(plans: list[Plan], exempt: Callable[[str], bool] = lambda sql: False):
    assert plans, "no statement ran"
    bad = [p for p in plans if p.scans and not exempt(p.sql)]
    assert not bad, "\n\n".join(f"{p.scans}\n{p.sql}\n{p.detail}" for p in bad)


# --- the lists ---------------------------------------------------------------------------

TICKET_FILTERS = {
    "none": Filters(),
    "org": Filters(organization="Müller Logistik GmbH"),
    "status": Filters(status="solved"),
    "status closed": Filters(status="closed"),
    "assignee": Filters(assignee="tech@support.example.com"),
    "unassigned": Filters(assignee="none"),
    "requester": Filters(requester="anna@mueller-logistik.de"),
    "since": Filters(since=SINCE),
    "until": Filters(until=UNTIL),
    "since and until": Filters(since=SINCE, until=UNTIL),
    "tag": Filters(tag="drucker"),
    "search": Filters(search="drucker"),
    "status and search": Filters(status="open", search="drucker"),
}
OUTBOX_FILTERS = {
    "none": Filters(),
    "status": Filters(status="failed"),
    "since": Filters(since=SINCE),
    "until": Filters(until=UNTIL),
    "search": Filters(search="drucker"),
}
QUARANTINE_FILTERS = {
    "none": Filters(),
    "since": Filters(since=SINCE),
    "until": Filters(until=UNTIL),
}
PAGES = (
    Page(limit=50),
    Page(limit=50, before_id=1000),
    Page(limit=50, after_id=10),
    Page(limit=50, before_id=1000, after_id=10),
)


def _unindexed_filter(sql: str) -> bool:
    """``--search`` (a substring: no B-tree serves ``LIKE '%…%'``) and ``--tag`` (a JSON
    array per ticket) read the rows the other filters leave, newest first, until the page
    is full: bounded by ``--limit``, not by an index. The README says so."""
    return re.search(r"\bLIKE\b", sql) is not None or "json_each" in sql or "@>" in sql


def _first_page(sql: str) -> bool:
    """The newest page with no filter: SQLite walks the table's primary key from its end and
    stops at LIMIT (it calls that "SCAN tickets" too). PostgreSQL says "Index Scan
    Backward" and needs no exemption."""
    return re.search(r"\bWHERE\b", sql) is None and re.search(r"\bLIMIT\b", sql) is not None


@pytest.mark.parametrize("name", list(TICKET_FILTERS))
def test_ticket_list_queries_use_indexes(store: Store, name: str) -> None:
    """Each ``tickets list`` filter, on each kind of page, and the count of what is left."""
    filters = TICKET_FILTERS[name]
    with store.reading() as conn, explaining(store.engine) as plans:
        org = lists.organization_id(conn, filters.organization)
        listing = lists.ticket_listing(store.dialect, filters, org)
        _run(conn, listing)
    _assert_indexed(plans, lambda sql: _unindexed_filter(sql) or _first_page(sql))


@pytest.mark.parametrize("name", list(OUTBOX_FILTERS))
def test_outbox_list_queries_use_indexes(store: Store, name: str) -> None:
    with store.reading() as conn, explaining(store.engine) as plans:
        _run(conn, lists.outbox_listing(store.dialect, OUTBOX_FILTERS[name]))
    _assert_indexed(plans, lambda sql: _unindexed_filter(sql) or _first_page(sql))


@pytest.mark.parametrize("name", list(QUARANTINE_FILTERS))
def test_quarantine_list_queries_use_indexes(store: Store, name: str) -> None:
    with store.reading() as conn, explaining(store.engine) as plans:
        _run(conn, lists.quarantine_listing(store.dialect, QUARANTINE_FILTERS[name]))
    _assert_indexed(plans)


def _run(conn: Connection, listing: lists.Listing) -> None:
    for page in PAGES:
        conn.execute(listing.page(page)).all()
    conn.execute(listing.remaining(below=1000)).all()
    conn.execute(listing.remaining(below=1000, above=10)).all()
    conn.execute(listing.remaining(above=10)).all()


# --- the jobs and ingest ----------------------------------------------------------------


def test_jobs_use_indexes(
    make_config: Callable[..., tuple[Config, Path]], clock: Clock, tmp_path: Path
) -> None:
    """Auto-close, the outbox claim and the digest's three lists, as ``jobs run`` runs them
    (on a working Monday after the digest's hour, so the digest runs too)."""
    config, _ = make_config({"agents": {"digest": "08:30"}})
    with open_store(config, clock) as store, explaining(store.engine) as plans:
        Jobs(store, config).run_once(datetime(2026, 11, 30, 9, 0, tzinfo=UTC))
    sql = " ".join(p.sql for p in plans)
    assert "solved_at" in sql and "next_attempt_at" in sql and "updated_at" in sql
    _assert_indexed(plans)


def test_purge_uses_indexes(
    config: Config, store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``[retention]``'s purge, batch after batch (two rows a batch here, so that each rule
    runs the query that starts where the last batch ended)."""
    for n in range(3):
        ingest(store, config, mail(subject=f"Drucker {n}"), InboundEnvelope(), clock())
    Jobs(store, config).deliver_outbox(clock())
    monkeypatch.setattr(retention, "PURGE_BATCH", 2)
    with explaining(store.engine) as plans:
        freed = retention.purge(store, config, clock() + timedelta(days=400))
    assert freed["raw_mail"].rows == 3 and freed["sent_notifications"].rows > 2, freed
    assert sum(">=" in p.sql for p in plans) >= 2  # a later batch, from where the last ended
    _assert_indexed(plans)
    # Each batch reads its rows in the index's order: no sort of every due row to find them.
    batches = [p for p in plans if p.sql.lstrip().startswith("SELECT") and "LIMIT" in p.sql]
    assert batches
    sorted_ = [p for p in batches if "TEMP B-TREE" in p.detail or '"Sort"' in p.detail]
    assert not sorted_, "\n\n".join(f"{p.sql}\n{p.detail}" for p in sorted_)


def test_ingest_lookups_use_indexes(store: Store) -> None:
    """Every prebuilt statement ingest runs per mail (reads and updates; an insert has no
    plan to speak of), with the parameters it runs with."""
    with store.engine.connect() as conn, explaining(store.engine) as plans:
        for case in CASES:
            if isinstance(case.statement.statement, Insert):
                continue
            for params in case.runs[:1]:
                conn.execute(case.statement.statement, params)
        conn.rollback()
    assert len(plans) >= 10
    _assert_indexed(plans)

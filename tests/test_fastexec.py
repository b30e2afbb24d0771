"""Every prebuilt statement, run through SQLAlchemy and through the fast path, on both backends.

:class:`mailgate.db.fastexec.Prebuilt` repeats part of SQLAlchemy's execution (binding,
Python-side defaults, result processing) to skip its per-call cost. Each statement mailgate
makes is run here once with ``Connection.execute`` and once with ``Prebuilt.run``, each in
a transaction that is rolled back, on the same seeded database: the rows returned (values,
their types, the names they are read by), the row count of a statement that returns no
rows, and every row of every table afterwards must be the same, and the fast path must not
have handed the statement to SQLAlchemy.

A new statement is made once, at module level: ``_NAME = Prebuilt(stmt, "module.what")``
(the name is how failures and test ids call it; without one it is ``module._NAME``). Import
it here and add a :class:`Case` to ``CASES``; a new ``insert_once(conn, TABLE, "key")`` use
needs an :class:`InsertOnceCase`. The first tests below fail for a statement without one.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Table, event, insert, select, text

import mailgate
from mailgate.db import apply, fastexec, gather, ledger, outbox, records
from mailgate.db.fastexec import REGISTRY, Prebuilt, insert_once
from mailgate.models import (
    Attachment,
    Base,
    Blob,
    Comment,
    Follower,
    LedgerEntry,
    Membership,
    Organization,
    Outbox,
    Participant,
    Suppression,
    Ticket,
    User,
)
from mailgate.store import Store

from .conftest import empty_database

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
BLOB = "b" * 64  # the seeded blob's SHA-256
NEW_BLOB = "c" * 64


def _seed(conn: Connection) -> None:
    """A small world in which every statement finds rows, and some rows it must skip."""

    def add(model: Any, *rows: dict[str, Any]) -> None:
        for row in rows:  # one by one: the rows leave out different columns
            conn.execute(insert(model.__table__), row)

    add(
        Organization,
        {"id": 1, "name": "Müller Logistik GmbH", "active": True, "position": 0},
        {"id": 2, "name": "Agentur Blau", "active": True, "position": 1},
    )
    add(
        User,
        *(
            {"id": i, "email": email, "name": name, "is_agent": i == 4, "created_at": NOW}
            for i, (email, name) in enumerate(
                [
                    ("anna@mueller-logistik.de", "Anna Schmidt"),
                    ("chef@mueller-logistik.de", ""),
                    ("berater@agentur.de", "Berater"),
                    ("tech@support.example.com", "Tech"),
                    ("ehemals@mueller-logistik.de", ""),  # follows org 1, no longer a member
                ],
                start=1,
            )
        ),
    )
    add(
        Membership,
        {"user_id": 1, "organization_id": 1},
        {"user_id": 2, "organization_id": 1},
        {"user_id": 3, "organization_id": 1},
        {"user_id": 3, "organization_id": 2, "source": "cli"},
    )
    add(
        Follower,
        {"user_id": 2, "organization_id": 1},
        {"user_id": 5, "organization_id": 1},
        {"user_id": 3, "organization_id": 2},
    )
    ticket = {
        "subject": "Drucker kaputt",
        "follow_up_of": None,
        "solved_at": None,
        "closed_at": None,
        "routing_score": None,
    }
    add(
        Ticket,
        {
            **ticket,
            "id": 1,
            "status": "open",
            "organization_id": 1,
            "requester_id": 1,
            "created_at": NOW - timedelta(minutes=30),
            "updated_at": NOW - timedelta(minutes=20),
            "routing_reason": "sender is a member",
            "routing_score": 97.5,
            "priority": "high",
            "tags": ["drucker", "büro"],
        },
        {
            **ticket,
            "id": 2,
            "subject": "Rechnung",
            "status": "closed",
            "organization_id": None,
            "requester_id": 1,
            "created_at": NOW - timedelta(hours=3),
            "updated_at": NOW - timedelta(hours=2),
            "closed_at": NOW - timedelta(hours=2),
            "routing_reason": "no organization",
            "priority": "normal",
            "tags": [],
        },
    )
    add(
        Participant,
        {"ticket_id": 1, "user_id": 2},
        {"ticket_id": 1, "user_id": 3},
        {"ticket_id": 2, "user_id": 2},
        {"ticket_id": 2, "user_id": 3, "active": False},  # left behind by a move
    )
    add(
        LedgerEntry,
        {
            "id": 1,
            "message_id": "m1@mueller-logistik.de",
            "dedup_key": "k" * 64,
            "mail_from": "anna@mueller-logistik.de",
            "rcpt_to": ["support@support.example.com"],
            "raw": b"Subject: Drucker kaputt\r\n\r\nHallo\r\n",
            "size": 34,
            "sha256": "a" * 64,
            "received_at": NOW - timedelta(minutes=30),
            "outcome": "created",
            "reason": "new ticket",
            "error": None,
            "ticket_id": 1,
            "dkim": None,
        },
    )
    add(
        Comment,
        *(
            {
                "id": i,
                "ticket_id": ticket_id,
                "author_id": 1,
                "body": "Hallo",
                "public": True,
                "message_id": message_id,
                "inbound_message_id": 1 if i == 1 else None,
                "created_at": NOW - timedelta(minutes=30),
            }
            for i, (ticket_id, message_id) in enumerate(
                [(1, "m1@mueller-logistik.de"), (2, "m2@mueller-logistik.de"), (1, None)],
                start=1,
            )
        ),
    )
    add(Blob, {"sha256": BLOB, "size": 5, "data": b"hallo"})
    add(
        Attachment,
        {
            "id": 1,
            "comment_id": 1,
            "filename": "scan.pdf",
            "content_type": "application/pdf",
            "content_id": None,
            "size": 5,
            "sha256": BLOB,
        },
    )
    add(
        Outbox,
        {
            "id": 1,
            "kind": "ack",
            "ticket_id": 1,
            "recipients": ["anna@mueller-logistik.de"],
            "subject": "[#1] Drucker kaputt",
            "message_id": "n1@support.example.com",
            "payload": {"comment": 1},
            "created_at": NOW - timedelta(minutes=29),
            "next_attempt_at": None,
            "status": "sent",
        },
        {
            "id": 2,
            "kind": "bounce",
            "ticket_id": None,
            "recipients": ["x@example.org"],
            "message_id": "n2@support.example.com",
            "created_at": NOW - timedelta(minutes=29),
        },
    )
    add(
        Suppression,
        {"email": "bounced@example.org", "until": NOW + timedelta(days=1), "reason": "5.1.1"},
        {"email": "erholt@example.org", "until": NOW - timedelta(days=1)},
    )
    if conn.dialect.name == "postgresql":  # rows given their ids leave the sequences behind
        for table in Base.metadata.sorted_tables:
            if "id" in table.c and table.c.id.primary_key:
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"coalesce((SELECT max(id) FROM {table.name}), 0) + 1, false)"
                    )
                )


# --- the cases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A statement and the parameter sets mailgate runs it with.

    ``fallback``: parameter sets the fast path hands to ``Connection.execute`` itself (an
    empty IN list): they must give the same result, through SQLAlchemy.
    """

    statement: Prebuilt
    runs: tuple[dict[str, Any], ...]
    fallback: tuple[dict[str, Any], ...] = ()


_NEW_TICKET = {
    "subject": "Neue Frage",
    "status": "new",
    "organization_id": 1,
    "requester_id": 1,
    "created_at": NOW,
    "updated_at": NOW,
    "routing_reason": "sender is a member",
    "routing_score": 91.0,
    "priority": "normal",
    "tags": ["neu"],
}
_QUEUED = {
    "kind": "ack",
    "ticket_id": 1,
    "recipients": ["anna@mueller-logistik.de", "chef@mueller-logistik.de"],
    "subject": "[#1] Drucker kaputt",
    "payload": {"comment": 3},
    "status": "pending",
    "created_at": NOW,
    "next_attempt_at": NOW,
}
_REFERENCES = ["m2@mueller-logistik.de", "unbekannt@example.org", "m1@mueller-logistik.de"]

# One Case per statement object (test_every_prebuilt_statement_has_a_case matches them by
# identity): a statement that moves to another module keeps its case when the import
# follows it. Give each the parameter sets mailgate runs it with (each set of keys is
# compiled on its own), rows it finds and rows it must skip.
CASES: list[Case] = [
    Case(records._USER_BY_EMAIL, ({"address": "anna@mueller-logistik.de"}, {"address": "x@y"})),
    Case(records._SET_USER_NAME, ({"user": 2, "name": "Chef Müller"},)),
    Case(
        ledger._SET_LEDGER,
        (
            {"entry": 1, "outcome": "created", "reason": "new ticket", "ticket_id": 1},
            {"entry": 1, "outcome": "commented", "reason": "reply", "ticket_id": 1, "raw": b"x"},
            {"entry": 1, "reason": "bounce for 1 notification(s)", "ticket_id": None},
            {"entry": 1, "outcome": "ignored", "reason": "loop", "error": None, "dkim": "fail"},
            {"entry": 99, "reason": "no such entry"},
        ),
    ),
    Case(gather._TICKET_QUERY, ({"ticket": 1}, {"ticket": 2}, {"ticket": 99})),
    Case(gather._PARTICIPANT_EMAILS, ({"ticket": 1}, {"ticket": 2})),
    Case(gather._MEMBER_EMAILS, ({"org": 1}, {"org": 2}, {"org": 99})),
    Case(
        gather._RECENT_TICKETS,
        (
            {"email": "anna@mueller-logistik.de", "since": NOW - timedelta(hours=1)},
            {"email": "anna@mueller-logistik.de", "since": NOW - timedelta(hours=4)},
            {"email": "niemand@example.org", "since": NOW - timedelta(hours=1)},
        ),
    ),
    Case(gather._COMMENTS_BY_MESSAGE, ({"ids": _REFERENCES}, {"ids": ["x@y"]}), ({"ids": []},)),
    Case(
        gather._OUTBOX_BY_MESSAGE,
        ({"ids": ["n1@support.example.com", "n2@support.example.com"]}, {"ids": ["x@y"]}),
        ({"ids": []},),
    ),
    Case(
        apply._INSERT_COMMENT,
        (
            {
                "ticket_id": 1,
                "author_id": 3,
                "body": "Antwort mit Umlauten: äöü",
                "public": False,
                "message_id": "m3@agentur.de",
                "inbound_message_id": 1,
                "created_at": NOW,
            },
            {"ticket_id": 2, "author_id": 4, "body": "", "message_id": None, "created_at": NOW},
        ),
    ),
    Case(
        apply._INSERT_ATTACHMENT,
        (
            {
                "comment_id": 1,
                "filename": "foto.jpg",
                "content_type": "image/jpeg",
                "content_id": "<foto@x>",
                "size": 5,
                "sha256": BLOB,
            },
        ),
    ),
    Case(apply._INSERT_PARTICIPANT, ({"ticket_id": 1, "user_id": 4},)),
    Case(
        apply._INSERT_TICKET,
        (
            _NEW_TICKET,
            {**_NEW_TICKET, "organization_id": None, "routing_score": None, "tags": []},
            {**_NEW_TICKET, "follow_up_of": 2, "routing_score": None, "priority": "high"},
            {  # the columns with defaults left out
                "subject": "Minimal",
                "requester_id": 2,
                "organization_id": None,
                "created_at": NOW,
                "updated_at": NOW,
            },
        ),
    ),
    Case(
        apply._UPDATE_TICKET,
        (
            {"ticket": 1, "updated_at": NOW},
            {"ticket": 1, "updated_at": NOW, "status": "pending", "solved_at": None},
            {"ticket": 2, "updated_at": NOW, "tags": ["a", "b"], "priority": "low"},
        ),
    ),
    Case(
        outbox._INSERT_OUTBOX,
        (
            _QUEUED,
            {**_QUEUED, "kind": "closed", "payload": {}, "next_attempt_at": None},
            {"kind": "followers", "ticket_id": 1, "created_at": NOW},  # defaults
        ),
    ),
    Case(
        apply._ORG_BY_NAME,
        ({"name": "Müller Logistik GmbH"}, {"name": "müller logistik gmbh"}, {"name": ""}),
    ),
    Case(apply._PARTICIPANT_IDS, ({"ticket": 1}, {"ticket": 2})),
    Case(outbox._FOLLOWER_EMAILS, ({"org": 1}, {"org": 2}, {"org": 99})),
    Case(
        gather._OUTBOX_ROWS_BY_MESSAGE,
        ({"ids": ["n1@support.example.com", "n2@support.example.com"]}, {"ids": ["x@y"]}),
        ({"ids": []},),
    ),
    Case(
        apply._MARK_BOUNCED,
        (
            {"row": 1, "new_status": "bounced", "error": "bounced: a@x.de 5.1.1"},
            {"row": 99, "new_status": "bounced", "error": "bounced: no details"},
        ),
    ),
    Case(
        outbox._SUPPRESSED,
        (
            {
                "emails": ["bounced@example.org", "erholt@example.org", "anna@x.de"],
                "now": NOW,
            },
            {"emails": ["erholt@example.org"], "now": NOW - timedelta(days=2)},
        ),
        ({"emails": [], "now": NOW},),
    ),
]


@dataclass(frozen=True)
class InsertOnceCase:
    """An ``insert_once(conn, table, key, returning)`` use: a new row, and one already there."""

    table: Table
    key: str
    returning: str | None
    runs: tuple[dict[str, Any], ...]


_LEDGER_ROW = {
    "message_id": "m9@example.org",
    "mail_from": "anna@mueller-logistik.de",
    "rcpt_to": ["support@support.example.com", "b@support.example.com"],
    "raw": b"",
    "size": 120,
    "sha256": "d" * 64,
    "received_at": NOW,
    "outcome": "quarantined",
    "reason": "unparseable",
    "error": "no header",
    "dkim": "none",
}
INSERT_ONCE_CASES: list[InsertOnceCase] = [
    InsertOnceCase(
        User.__table__,
        "email",
        None,
        (
            {"email": "neu@example.org", "name": "Neu", "is_agent": False, "created_at": NOW},
            {"email": "anna@mueller-logistik.de", "name": "", "is_agent": False, "created_at": NOW},
        ),
    ),
    InsertOnceCase(
        Blob.__table__,
        "sha256",
        None,
        (
            {"sha256": NEW_BLOB, "size": 3, "data": b"\x00\xff\x00"},
            {"sha256": BLOB, "size": 5, "data": b"hallo"},
        ),
    ),
    InsertOnceCase(
        LedgerEntry.__table__,
        "dedup_key",
        "id",
        ({**_LEDGER_ROW, "dedup_key": "e" * 64}, {**_LEDGER_ROW, "dedup_key": "k" * 64}),
    ),
]


def _insert_once_label(case: InsertOnceCase) -> str:
    returns = f", returning {case.returning}" if case.returning else ""
    return f"insert_once({case.table.name}, {case.key}{returns})"


# --- coverage ---------------------------------------------------------------------------------


def _mailgate_modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages(mailgate.__path__, "mailgate.")
        if ".migrations" not in info.name and info.name != "mailgate.__main__"  # runs the CLI
    ]


def _source_of(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    return Path(spec.origin)


def _calls(tree: ast.AST, name: str) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if called == name:
                yield node


def test_every_prebuilt_statement_has_a_case() -> None:
    """A statement mailgate makes without a case here fails: the fast path may not be
    trusted with SQL it was never compared on."""
    for module in _mailgate_modules():
        importlib.import_module(module)
    ours = [
        p for p in REGISTRY if p.module.startswith("mailgate.") and p.module != fastexec.__name__
    ]
    covered = {id(case.statement) for case in CASES}
    missing = [p.name for p in ours if id(p) not in covered]
    assert missing == [], f"add a Case to tests/test_fastexec.py CASES for: {missing}"
    names = [p.name for p in ours]
    assert len(set(names)) == len(names), f"two statements share a name: {sorted(names)}"


def test_every_insert_once_use_has_a_case() -> None:
    """``insert_once`` builds its statements when first called, so its uses are found in
    the source: each ``insert_once(conn, TABLE, "key"[, "returning"])`` needs a case."""
    cases = {(c.table.name, c.key, c.returning) for c in INSERT_ONCE_CASES}
    unresolved: list[str] = []
    missing: list[str] = []
    for module in _mailgate_modules():
        path = _source_of(module)
        namespace = vars(importlib.import_module(module))
        for call in _calls(ast.parse(path.read_text(encoding="utf-8")), "insert_once"):
            where = f"{path.name}:{call.lineno}"
            args = [*call.args, *(k.value for k in call.keywords)]
            table = namespace.get(args[1].id) if isinstance(args[1], ast.Name) else None
            literals = [a.value for a in args[2:] if isinstance(a, ast.Constant)]
            if not isinstance(table, Table) or len(literals) != len(args) - 2:
                unresolved.append(where)
                continue
            key, returning = literals[0], literals[1] if len(literals) > 1 else None
            if (table.name, key, returning) not in cases:
                missing.append(f"{where} insert_once({table.name}, {key}, {returning})")
    assert unresolved == [], (
        f"name the table by a module-level name, the columns literally: {unresolved}"
    )
    assert missing == [], f"add an InsertOnceCase to tests/test_fastexec.py for: {missing}"


def test_prebuilt_statements_are_made_once() -> None:
    """A Prebuilt made in a function would compile at each call and grow the registry, and
    the registry would not know it before it ran: mailgate makes them at import (and
    ``insert_once`` once per dialect)."""
    misplaced = []
    for module in _mailgate_modules():
        path = _source_of(module)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                if getattr(node, "name", None) == "insert_once":
                    continue
                misplaced.extend(f"{path.name}:{c.lineno}" for c in _calls(node, "Prebuilt"))
    assert misplaced == []


# --- the differential run ---------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def seeded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    """One seeded database per backend for the whole module; every run is rolled back."""
    with empty_database(request.param, tmp_path_factory.mktemp("fastexec")) as url:
        store = Store(url, lock_timeout=5.0)
        try:
            store.migrate()
            with store.engine.begin() as conn:
                _seed(conn)
            yield store
        finally:
            store.close()


def _snapshot(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in primary-key order."""
    return {
        table.name: [tuple(row) for row in conn.execute(select(table).order_by(*table.primary_key))]
        for table in Base.metadata.sorted_tables
    }


def _sequences(conn: Connection) -> list[tuple[str, int, bool]]:
    """PostgreSQL's sequences, which a rollback does not rewind (SQLite's rowids it does)."""
    if conn.dialect.name != "postgresql":
        return []
    names = conn.execute(
        text("SELECT sequencename FROM pg_sequences WHERE schemaname = current_schema()")
    ).scalars()
    found = []
    for name in list(names):
        value, called = conn.execute(text(f'SELECT last_value, is_called FROM "{name}"')).one()
        found.append((name, value, called))
    conn.rollback()
    return found


def _rewind(conn: Connection, sequences: list[tuple[str, int, bool]]) -> None:
    with conn.begin():
        for name, value, called in sequences:
            conn.execute(
                text("SELECT setval(CAST(:name AS regclass), :value, :called)"),
                {"name": name, "value": value, "called": called},
            )


def _returned(rows: Any, rowcount: int, counted: bool) -> tuple[Any, ...]:
    """What a caller can read: each row's names, values and value types; for a statement
    that returns no rows, the row count (how many rows an UPDATE or an ``insert_once`` hit).
    A count beside rows is the driver's business, read at different times by the two paths.
    """
    listed = list(rows)
    return (
        [tuple(row._fields) for row in listed],
        [tuple(row) for row in listed],
        [tuple(type(value).__name__ for value in row) for row in listed],
        rowcount if counted else None,
    )


def _differential(
    store: Store, make: Callable[[Connection], Prebuilt], params: dict[str, Any], fast: bool
) -> None:
    with store.engine.connect() as conn:
        statement = make(conn)
        sequences = _sequences(conn)
        with conn.begin() as tx:
            result = conn.execute(
                statement.statement, dict(params), execution_options={"preserve_rowcount": True}
            )
            counted = not result.returns_rows  # an UPDATE or INSERT: its count is read
            expected = _returned(
                result.all() if result.returns_rows else [], result.rowcount, counted
            )
            expected_tables = _snapshot(conn)
            tx.rollback()
        _rewind(conn, sequences)

        executed: list[str] = []

        def seen(*args: Any) -> None:
            executed.append(args[2])

        with conn.begin() as tx:
            event.listen(store.engine, "before_cursor_execute", seen)
            try:
                rows = statement.run(conn, dict(params))
            finally:
                event.remove(store.engine, "before_cursor_execute", seen)
            got = _returned(rows, rows.rowcount, counted)
            got_tables = _snapshot(conn)
            tx.rollback()
        _rewind(conn, sequences)
    assert got == expected
    assert got_tables == expected_tables
    if fast:
        assert executed == [], "the fast path handed the statement to SQLAlchemy"
    else:
        assert executed != [], "the fast path ran a statement it should hand to SQLAlchemy"


_RUNS = [
    pytest.param(case, params, fast, id=f"{case.statement.name}-{i}")
    for case in CASES
    for i, (params, fast) in enumerate(
        [*((p, True) for p in case.runs), *((p, False) for p in case.fallback)]
    )
]


@pytest.mark.parametrize(("case", "params", "fast"), _RUNS)
def test_prebuilt_statement_matches_sqlalchemy(
    seeded: Store, case: Case, params: dict[str, Any], fast: bool
) -> None:
    _differential(seeded, lambda conn: case.statement, params, fast)


_INSERT_ONCE_RUNS = [
    pytest.param(case, params, id=f"{_insert_once_label(case)}-{i}")
    for case in INSERT_ONCE_CASES
    for i, params in enumerate(case.runs)
]


@pytest.mark.parametrize(("case", "params"), _INSERT_ONCE_RUNS)
def test_insert_once_matches_sqlalchemy(
    seeded: Store, case: InsertOnceCase, params: dict[str, Any]
) -> None:
    _differential(
        seeded, lambda conn: insert_once(conn, case.table, case.key, case.returning), params, True
    )

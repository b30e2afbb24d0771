"""One outbox row's trouble stays in that row: the others are delivered, the run goes on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from mailgate.config import Config
from mailgate.ingest import InboundEnvelope, ingest
from mailgate.jobs import Jobs, judge_unexpected
from mailgate.models import Comment, Outbox
from mailgate.outbound import Verdict
from mailgate.store import Store

from .conftest import Clock, mail, run_cli
from .sink import Sink

# A template an admin got wrong: it names a field the context does not have.
BROKEN = "Neues Ticket {{ ticket.no_such_field }}\n"


@pytest.fixture
def broken(make_config: Any, sink: Sink, tmp_path: Path) -> tuple[Config, Path]:
    """Relaying to the sink, with a follower template that raises when rendered."""
    templates = tmp_path / "templates"
    for language in ("de", "en"):
        (templates / language).mkdir(parents=True)
        for suffix in ("txt", "html"):
            (templates / language / f"new_ticket_follower.{suffix}").write_text(BROKEN)
    outbound = {
        "transport": "smtp",
        "smtp_host": "127.0.0.1",
        "smtp_port": sink.port,
        "templates_dir": str(templates),
    }
    # Without the agents' notice: the rows each test counts are the acknowledgement and those
    # it breaks.
    result: tuple[Config, Path] = make_config(
        {"outbound": outbound, "agents": {"notify": []}}, name="broken.toml"
    )
    return result


def _rows(store: Store) -> list[Outbox]:
    with store.transaction() as s:
        return list(s.scalars(select(Outbox).order_by(Outbox.id)))


def _two_tickets(store: Store, config: Config, clock: Clock) -> Outbox:
    """Two new tickets, "Drucker kaputt" and "Scanner kaputt"; the first one's
    acknowledgement (detached: its id and payload)."""
    for subject in ("Drucker kaputt", "Scanner kaputt"):
        ingest(store, config, mail(subject=subject), InboundEnvelope(), clock())
    with store.transaction() as s:
        first = s.scalars(
            select(Outbox).where(Outbox.kind == "ticket_created").order_by(Outbox.id)
        ).first()
        assert first is not None
        return first


def _queue_bad_and_good(store: Store, config: Config, clock: Clock) -> None:
    """Two new tickets: the first acknowledgement goes to an address smtplib cannot encode."""
    first = _two_tickets(store, config, clock)
    with store.transaction() as s:
        s.execute(
            update(Outbox)
            .where(Outbox.id == first.id)
            .values(recipients=["jörg@müller-logistik.de"])
        )


def _assert_outcome(store: Store, sink: Sink) -> None:
    by_kind = [(o.kind, o.status) for o in _rows(store)]
    assert by_kind == [
        ("ticket_created", "failed"),  # the non-ASCII local part
        ("new_ticket_follower", "failed"),  # the template error
        ("ticket_created", "sent"),
        ("new_ticket_follower", "failed"),
    ]
    for row in _rows(store):
        assert row.claimed_at is None
        if row.status == "failed":
            assert row.last_error and "\n" not in row.last_error
    follower = _rows(store)[1].last_error or ""
    assert follower.startswith("render: UndefinedError:") and "no_such_field" in follower
    assert [r.rcpt_to for r in sink.received] == [["anna@mueller-logistik.de"]]
    assert sink.received[0].message["Subject"].endswith("Scanner kaputt")


def test_one_bad_row_does_not_stop_the_others(
    broken: tuple[Config, Path], store: Store, sink: Sink, clock: Clock
) -> None:
    """A row smtplib cannot send and a row that cannot be rendered fail; the good one goes."""
    config, _ = broken
    _queue_bad_and_good(store, config, clock)
    stats = Jobs(store, config).deliver_outbox(clock())
    assert (stats.sent, stats.retry, stats.failed) == (1, 0, 3)
    assert len(stats.errors) == 3
    _assert_outcome(store, sink)
    # Nothing is left claimed: a later run finds nothing due and sends nothing again.
    clock.advance(hours=1)
    again = Jobs(store, config).deliver_outbox(clock())
    assert (again.sent, again.retry, again.failed) == (0, 0, 0)
    assert len(sink.received) == 1


def test_jobs_run_exits_0_with_a_summary(
    broken: tuple[Config, Path], store: Store, sink: Sink, clock: Clock
) -> None:
    """`jobs run` ran, so it exits 0 and says what happened in one line, failures included."""
    config, path = broken
    _queue_bad_and_good(store, config, clock)
    proc = run_cli(path, "jobs", "run", "--now", clock().isoformat())
    assert proc.returncode == 0, proc.stderr
    # stdout keeps the JSON that scripts read; the summary line is for the person, on stderr
    assert json.loads(proc.stdout) == {
        "closed": 0,
        "sent": 1,
        "retry": 0,
        "failed": 3,
        "digests": 0,
    }
    assert proc.stderr.decode().splitlines()[-1] == "sent 1, retrying 0, failed 3"
    assert b"Traceback" not in proc.stderr
    _assert_outcome(store, sink)


def test_a_dropped_connection_is_retried_then_sent(
    broken: tuple[Config, Path], store: Store, sink: Sink, clock: Clock
) -> None:
    """The relay closing the connection is temporary: retry with backoff, then sent."""
    config, path = broken
    ingest(store, config, mail(), InboundEnvelope(), clock())
    sink.answer("drop")
    proc = run_cli(path, "jobs", "run", "--json", "--now", clock().isoformat())
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.decode().strip()
        == '{"closed": 0, "sent": 0, "retry": 1, "failed": 1, "digests": 0}'
    )
    ack = _rows(store)[0]
    assert (ack.status, ack.last_error is not None) == ("retry", True)
    clock.advance(minutes=2)
    proc = run_cli(path, "jobs", "run", "--now", clock().isoformat())
    assert json.loads(proc.stdout)["sent"] == 1
    assert proc.stderr.decode().splitlines()[-1] == "sent 1, retrying 0, failed 0"


def test_unexpected_errors_are_judged_by_kind() -> None:
    """Network trouble passes; an encoding or programming error comes back on every try."""
    assert judge_unexpected(ConnectionResetError("reset")) is Verdict.RETRY
    assert judge_unexpected(TimeoutError("timed out")) is Verdict.RETRY
    assert judge_unexpected(UnicodeEncodeError("ascii", "ö", 0, 1, "no")) is Verdict.FAILED
    assert judge_unexpected(KeyError("ticket")) is Verdict.FAILED


def test_a_row_that_cannot_be_drafted_fails_alone(
    broken: tuple[Config, Path], store: Store, sink: Sink, clock: Clock
) -> None:
    """A row whose draft refuses (it would show a customer an internal comment) fails with
    its reason, and the other rows of its batch, drafted in the same transaction without a
    savepoint each, are sent; on PostgreSQL too, where a failed statement would abort it."""
    config, _ = broken
    first = _two_tickets(store, config, clock)
    with store.transaction() as s:
        comment = first.payload["comment"]
        s.execute(update(Comment).where(Comment.id == comment).values(public=False))
    stats = Jobs(store, config).deliver_outbox(clock())
    assert (stats.sent, stats.failed) == (1, 3)  # the good acknowledgement; two followers'
    rows = _rows(store)
    assert (rows[0].status, rows[0].last_error) == (
        "failed",
        "render: ValueError: an internal comment is for agents only",
    )
    assert rows[0].claimed_at is None and rows[0].message is None
    assert [r.rcpt_to for r in sink.received] == [["anna@mueller-logistik.de"]]
    assert sink.received[0].message["Subject"].endswith("Scanner kaputt")

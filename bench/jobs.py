"""Benchmark of the scheduled jobs: auto-close and outbox delivery, at volume.

Why: after an outage or a migration the close job may find 100,000 solved tickets due at
once, and the outbox may hold 10,000 notifications. Both must finish in one pass without
holding the database for minutes. This prints two rates:

* tickets closed per second by ``Jobs.close_solved`` (one set-based UPDATE) over
  ``--tickets`` solved tickets (default 100,000), with ``ticket_closed`` notifications off
  (their delivery is the second measurement);
* notifications delivered per second by ``Jobs.deliver_outbox`` over ``--outbox`` rows
  (default 10,000), rendered from the templates and relayed over SMTP to a local aiosmtpd
  server that discards them (``bench/baselines.py discard``), started in the same run.

Run: ``python bench/jobs.py [--tickets 100000] [--outbox 10000] [--db URL]``
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select

from mailgate.config import parse_config
from mailgate.jobs import Jobs
from mailgate.models import Outbox, OutboxStatus, Ticket, User
from mailgate.store import Store

BENCH = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=100_000)
    parser.add_argument("--outbox", type=int, default=10_000)
    parser.add_argument("--db", help="database URL (default: SQLite in a temp dir)")
    args = parser.parse_args()

    sink = subprocess.Popen(
        [sys.executable, str(BENCH / "baselines.py"), "discard"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sink.stdout is not None
    match = re.search(r":(\d+)", sink.stdout.readline())
    assert match, "the discard sink did not start"
    port = int(match.group(1))
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{tmp}/bench.db"
        config = parse_config(
            {
                "database": {"url": url},
                "outbound": {"transport": "smtp", "smtp_host": "127.0.0.1", "smtp_port": port},
                "tickets": {"notify_closed": False},
            }
        )
        store = Store(url)
        store.migrate()
        now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
        store.sync(config, now)
        try:
            run(store, config, now, args.tickets, args.outbox)
        finally:
            store.close()
            sink.terminate()
            sink.wait(10)


def run(store: Store, config: object, now: datetime, tickets: int, outbox: int) -> None:
    solved = now - timedelta(days=4)
    with store.transaction() as session:
        session.execute(
            insert(User).values(email="kunde@kunde.example", name="Kunde", created_at=solved)
        )
        user = session.scalar(select(User.id).where(User.email == "kunde@kunde.example"))
        rows = [
            {
                "subject": f"Anfrage {i}",
                "status": "solved",
                "requester_id": user,
                "created_at": solved,
                "updated_at": solved,
                "solved_at": solved,
                "routing_reason": "bench",
                "priority": "normal",
                "tags": [],
            }
            for i in range(tickets)
        ]
        for start in range(0, len(rows), 10_000):
            session.execute(insert(Ticket), rows[start : start + 10_000])
    jobs = Jobs(store, config)  # type: ignore[arg-type]
    started = time.perf_counter()
    closed = jobs.close_solved(now)
    seconds = time.perf_counter() - started
    print(
        f"auto-close: {len(closed):,} tickets in {seconds:.2f} s = "
        f"{len(closed) / seconds:,.0f} tickets/s (one UPDATE … RETURNING)"
    )
    assert jobs.close_solved(now) == [], "a second run must change nothing"

    with store.transaction() as session:
        ids = list(session.scalars(select(Ticket.id).order_by(Ticket.id).limit(outbox)))
        session.execute(
            insert(Outbox),
            [
                {
                    "kind": "ticket_closed",
                    "ticket_id": tid,
                    "recipients": ["kunde@kunde.example"],
                    "subject": f"[#{tid}] Anfrage",
                    "payload": {},
                    "status": OutboxStatus.PENDING.value,
                    "attempts": 0,
                    "created_at": now,
                    "next_attempt_at": now,
                }
                for tid in ids
            ],
        )
    started = time.perf_counter()
    stats = jobs.deliver_outbox(now)
    seconds = time.perf_counter() - started
    with store.transaction() as session:
        sent = session.scalar(
            select(func.count()).select_from(Outbox).where(Outbox.status == OutboxStatus.SENT)
        )
    print(
        f"outbox: {stats.sent:,} notifications rendered and relayed in {seconds:.2f} s = "
        f"{stats.sent / seconds:,.0f} msgs/s (retry {stats.retry}, failed {stats.failed}; "
        f"{sent:,} rows sent)"
    )


if __name__ == "__main__":
    main()

"""mailgate at scale: every command and job as the database grows to a million tickets.

Why: ingest stays flat as the database grows (every per-mail look-up is index-backed); the
commands and jobs an admin runs must too. For each database size N this seeds a fresh
database quickly (bulk inserts through mailgate's own schema, not SMTP) and measures, each
command run as an admin runs it (a subprocess), wall time and peak RSS:

* ``tickets list`` (text; default view), ``tickets list --json`` (all rows, to /dev/null),
  ``tickets list --status solved``, ``outbox list``, ``quarantine list``, ``follow list``,
  ``tickets show ID``, ``stats`` and ``stats --json``;
* ``jobs run`` with ``--due-closes`` solved tickets due to close and ``--due-notifications``
  pending notifications (relayed into a local Maildir), after the commands, as it changes
  the data, and before ingest, as ``serve`` runs the jobs once when it starts;
* SMTP ingest into ``mailgate serve`` on that database: ``--mails`` mails over 4
  connections (msgs/s, p99 latency of DATA→250, server CPU per mail);
* the database's size.

The seed, per ticket: 2 comments, 2 ledger entries (raw mail of ``--raw-bytes``), 2 outbox
rows (rendered message of ``--message-bytes``; sent), a requester among the members of
``--orgs`` organizations with ``--members`` members each (every 20th organization has a
follower), statuses as a support desk accumulates them (mostly closed), subjects from a
word list, 1 in 20 tickets assigned, 1 in 10 with tags; 1 in 1,000 ledger entries
quarantined.

Then it prints one table per database with a column per N and the growth factor from the
smallest to the largest N.

Run: ``python bench/scale.py [--sizes 1000,100000,1000000] [--db sqlite,postgresql]
[--orgs 1000] [--members 20] [--mails 1000] [--keep DIR]``. PostgreSQL: a database
``mailgate_scale_<N>`` is created (and dropped before) on ``--pg`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, select, text

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from smtp_load import percentile, proc_cpu, process_tree, stop, wait_for_port  # noqa: E402

from mailgate.confload import load_config  # noqa: E402
from mailgate.models import (  # noqa: E402
    Comment,
    LedgerEntry,
    Outbox,
    OutboxStatus,
    Status,
    Ticket,
    User,
)
from mailgate.store import Store  # noqa: E402

PYTHON = sys.executable
NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)  # a Monday in support hours
CHUNK = 5_000
_WORD_LIST = (
    "Drucker Server Rechnung Zugang Passwort Mailbox Domain Zertifikat Backup Webseite "
    "Datenbank Update Fehler Ausfall Frage Angebot Vertrag Umzug Speicher Firewall VPN "
    "Telefon Lizenz Migration Kalender Newsletter Shop Zahlung Login Konto"
)
WORDS = tuple(_WORD_LIST.split())


@dataclass
class Figures:
    """One database size: what each measurement found."""

    n: int
    seconds: dict[str, float] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    size_mb: float = 0.0
    purged_mb: float = 0.0  # after purge (and vacuum), when measured
    seed_s: float = 0.0


# --------------------------------------------------------------------------- the config


def write_config(path: Path, url: str, workdir: Path, orgs: int, members: int) -> None:
    lines = [
        f'[database]\nurl = "{url}"\n',
        '[server]\nhost = "127.0.0.1"\nport = 0\n',
        '[mail]\ndomains = ["support.example.com"]\naddress = "support@support.example.com"\n'
        'recipients = ["support"]\n',
        f'[outbound]\ntransport = "maildir"\nmaildir = "{workdir / "outbox"}"\n',
        '[agents]\naddresses = ["tech@agents.example", "lisa@agents.example"]\n',
        # serve's jobs stay out of the ingest measurement; jobs run is measured on its own
        '[jobs]\noutbox_interval = "24h"\nclose_interval = "24h"\n',
        "[limits]\nacks_per_hour = 100000\ntickets_per_hour = 100000\n",
    ]
    for i in range(orgs):
        people = ", ".join(f'"u{j}@firma{i:05d}.example"' for j in range(members))
        follower = f'followers = ["u0@firma{i:05d}.example"]\n' if i % 20 == 0 else ""
        lines.append(
            f'[[organizations]]\nname = "Firma {i:05d} GmbH"\naliases = ["Firma {i:05d}"]\n'
            f'domains = ["firma{i:05d}.example"]\nmembers = [{people}]\n{follower}'
        )
    path.write_text("".join(lines), encoding="utf-8")


# --------------------------------------------------------------------------- the seed


def seed(
    config_path: Path, n: int, args: argparse.Namespace, rng: random.Random
) -> tuple[int, float]:
    """Fill the database; the id of a ticket to show, and the seconds it took."""
    started = time.perf_counter()
    config = load_config(str(config_path))
    store = Store(config.database.url)
    store.migrate()
    store.sync(config, NOW)
    store.close()
    engine = create_engine(config.database.url)
    with engine.begin() as conn:
        people = dict(conn.execute(select(User.email, User.id)).all())
        orgs = dict(conn.execute(text("SELECT name, id FROM organizations")).all())
    members = [
        (people[f"u{j}@firma{i:05d}.example"], orgs[f"Firma {i:05d} GmbH"])
        for i in range(args.orgs)
        for j in range(args.members)
    ]
    agent = people["tech@agents.example"]
    raw = b"Received: from mx.example\r\n" + b"x" * max(0, args.raw_bytes - 30)
    message = b"Subject: x\r\n\r\n" + b"y" * max(0, args.message_bytes - 20)
    due_closes = min(args.due_closes, n // 4)
    due_notes = min(args.due_notifications, n)
    ticket_id = 0
    comment_id = 0
    ledger_id = 0
    for start in range(0, n, CHUNK):
        count = min(CHUNK, n - start)
        tickets, comments, ledger, outbox = [], [], [], []
        for _ in range(count):
            ticket_id += 1
            requester, org = members[rng.randrange(len(members))]
            created = NOW - timedelta(minutes=rng.randrange(2 * 365 * 24 * 60))
            status = _status(ticket_id, n, due_closes, rng)
            solved_at = closed_at = None
            if status == Status.SOLVED.value:
                # The due ones solved more than close_after (3 days) ago, the others lately.
                due = ticket_id <= due_closes
                solved_at = NOW - (timedelta(days=5) if due else timedelta(hours=5))
            elif status == Status.CLOSED.value:
                solved_at = created + timedelta(days=1)
                closed_at = created + timedelta(days=4)
            tickets.append(
                {
                    "id": ticket_id,
                    "subject": " ".join(rng.sample(WORDS, 3)),
                    "status": status,
                    "organization_id": org,
                    "requester_id": requester,
                    "created_at": created,
                    "updated_at": closed_at or solved_at or created,
                    "solved_at": solved_at,
                    "closed_at": closed_at,
                    "routing_reason": "sender is a member",
                    "priority": "normal" if ticket_id % 50 else "high",
                    "tags": ["monitoring"] if ticket_id % 10 == 0 else [],
                    **({"assignee_id": agent} if ticket_id % 20 == 0 else {}),
                }
            )
            for k in range(2):
                ledger_id += 1
                comment_id += 1
                message_id = f"<s{ticket_id}.{k}@firma.example>"
                quarantined = ledger_id % 1000 == 0
                ledger.append(
                    {
                        "id": ledger_id,
                        "message_id": message_id,
                        "dedup_key": hashlib.sha256(message_id.encode()).hexdigest(),
                        "mail_from": "kunde@firma.example",
                        "rcpt_to": ["support@support.example.com"],
                        "raw": raw,
                        "size": len(raw),
                        "sha256": "0" * 64,
                        "received_at": created + timedelta(hours=k),
                        "outcome": "quarantined" if quarantined else ("created", "commented")[k],
                        "reason": "seeded" if not quarantined else "no sender address (From)",
                        "ticket_id": None if quarantined else ticket_id,
                    }
                )
                comments.append(
                    {
                        "id": comment_id,
                        "ticket_id": ticket_id,
                        "author_id": requester if k == 0 else agent,
                        "author_kind": "customer" if k == 0 else "agent",
                        "body": "Guten Tag,\n" + " ".join(rng.choices(WORDS, k=40)),
                        "public": True,
                        "message_id": message_id,
                        "inbound_message_id": ledger_id,
                        "created_at": created + timedelta(hours=k),
                    }
                )
                pending = ticket_id <= due_notes and k == 1
                outbox.append(
                    {
                        "kind": ("ticket_created", "agent_reply")[k],
                        "ticket_id": ticket_id,
                        "recipients": ["kunde@firma.example"],
                        "subject": f"[#{ticket_id}] Anfrage",
                        "message_id": f"<o{ticket_id}.{k}@support.example.com>",
                        "message": None if pending else message,
                        "payload": {"comment": comment_id},
                        "status": (OutboxStatus.PENDING if pending else OutboxStatus.SENT).value,
                        "attempts": 0 if pending else 1,
                        "created_at": created + timedelta(hours=k),
                        "next_attempt_at": NOW - timedelta(minutes=1) if pending else None,
                        "sent_at": None if pending else created + timedelta(hours=k),
                    }
                )
        with engine.begin() as conn:
            conn.execute(insert(Ticket.__table__), tickets)
            conn.execute(insert(LedgerEntry.__table__), ledger)
            conn.execute(insert(Comment.__table__), comments)
            conn.execute(insert(Outbox.__table__), outbox)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for table in ("tickets", "comments", "inbound_messages", "outbox"):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )
            conn.execute(text("ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    engine.dispose()
    return max(1, n // 2), time.perf_counter() - started


def _status(ticket: int, n: int, due: int, rng: random.Random) -> str:
    if ticket <= due:
        return Status.SOLVED.value
    roll = rng.random()
    if roll < 0.80:
        return Status.CLOSED.value
    if roll < 0.86:
        return Status.SOLVED.value
    if roll < 0.93:
        return Status.OPEN.value
    if roll < 0.97:
        return Status.PENDING.value
    return Status.NEW.value


# --------------------------------------------------------------------------- measuring


# The CPU seconds (user, system) of the last command run_command ran.
LAST_CPU: list[float] = [0.0, 0.0]


def run_command(config: Path, *args: str, out: Path | None = None) -> tuple[float, float, int]:
    """Wall seconds, peak RSS in MB and exit status of one ``mailgate`` command (its CPU
    time in :data:`LAST_CPU`)."""
    started = time.perf_counter()
    with open(out or os.devnull, "wb") as sink:
        proc = subprocess.Popen(
            [PYTHON, "-m", "mailgate", "--config", str(config), *args],
            stdout=sink,
            stderr=subprocess.PIPE,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        assert proc.stderr is not None
        error = proc.stderr.read().decode(errors="replace")
    seconds = time.perf_counter() - started
    LAST_CPU[:] = [usage.ru_utime, usage.ru_stime]
    if proc.returncode != 0:
        print(f"    {' '.join(args)}: exit {proc.returncode}: {error.strip()[-300:]}")
    return seconds, usage.ru_maxrss / 1024, proc.returncode


COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("tickets list", ("tickets", "list")),
    ("tickets list --json", ("tickets", "list", "--json")),
    ("tickets list --status solved", ("tickets", "list", "--status", "solved")),
    ("outbox list", ("outbox", "list")),
    ("quarantine list", ("quarantine", "list")),
    ("follow list", ("follow", "list")),
    ("tickets show", ("tickets", "show", "{ticket}")),
    ("stats", ("stats",)),
    ("stats --json", ("stats", "--json")),
)


def measure_commands(config: Path, ticket: int, figures: Figures) -> None:
    for name, argv in COMMANDS:
        args = tuple(a.replace("{ticket}", str(ticket)) for a in argv)
        seconds, rss, status = run_command(config, *args)
        figures.seconds[name] = seconds
        figures.rss_mb[name] = rss
        if status:
            figures.notes[name] = f"exit {status}"
        print(f"    {name:<32} {seconds:8.2f} s {rss:8.0f} MB", flush=True)


def measure_jobs(config: Path, figures: Figures) -> None:
    out = config.parent / "jobs.json"
    seconds, rss, status = run_command(
        config, "jobs", "run", "--json", "--now", NOW.isoformat(), out=out
    )
    counts = json.loads(out.read_text() or "{}") if not status else {}
    figures.seconds["jobs run"] = seconds
    figures.rss_mb["jobs run"] = rss
    figures.notes["jobs run"] = (
        f"closed {counts.get('closed')}, sent {counts.get('sent')}; "
        f"CPU user {LAST_CPU[0]:.1f} s, system {LAST_CPU[1]:.1f} s"
    )
    print(f"    {'jobs run':<32} {seconds:8.2f} s {rss:8.0f} MB  {figures.notes['jobs run']}")


def measure_ingest(config: Path, workdir: Path, mails: int, figures: Figures) -> None:
    log = workdir / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [PYTHON, "-m", "mailgate", "--config", str(config), "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        port = wait_for_port(proc, log, r"listening on [\d.]+:(\d+)", 300)
        tree = process_tree(proc.pid)
        before = {pid: proc_cpu(pid) for pid in tree}
        latencies: list[float] = []
        lock = threading.Lock()
        started = time.perf_counter()
        threads = [
            threading.Thread(target=_send, args=(port, k, mails // 4, latencies, lock))
            for k in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        cpu = sum(proc_cpu(pid) - cpu for pid, cpu in before.items())
    finally:
        stop(proc)
    sent = len(latencies)
    figures.seconds["ingest msgs/s"] = sent / wall
    figures.seconds["ingest p99 ms"] = percentile(latencies, 0.99) * 1000
    figures.seconds["ingest CPU ms/mail"] = cpu / max(1, sent) * 1000
    print(
        f"    {'SMTP ingest':<32} {sent / wall:8.0f} msgs/s, p99 "
        f"{percentile(latencies, 0.99) * 1000:.0f} ms, CPU {cpu / max(1, sent) * 1000:.2f} ms/mail"
    )


def _send(port: int, k: int, count: int, latencies: list[float], lock: threading.Lock) -> None:
    rng = random.Random(k)
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
        client.ehlo("bench.example")
        for i in range(count):
            org = rng.randrange(1000)
            body = (
                f"From: u1@firma{org:05d}.example\r\nTo: support@support.example.com\r\n"
                f"Subject: {' '.join(rng.sample(WORDS, 3))}\r\n"
                f"Message-ID: <load{k}.{i}.{time.time_ns()}@firma.example>\r\n"
                "Date: Mon, 07 Dec 2026 10:00:00 +0100\r\n\r\n"
                + "Guten Tag,\r\n"
                + " ".join(rng.choices(WORDS, k=200))
                + "\r\n"
            )
            client.mail(f"u1@firma{org:05d}.example")
            client.rcpt("support@support.example.com")
            started = time.perf_counter()
            code, _ = client.data(body.encode())
            elapsed = time.perf_counter() - started
            if code == 250:
                with lock:
                    latencies.append(elapsed)


def measure_purge(config: Path, url: str, figures: Figures) -> None:
    """``mailgate purge`` with the default retention, then the size the database keeps:
    SQLite's file after ``--vacuum`` (a database made before incremental auto_vacuum gives
    nothing back without it), PostgreSQL's after ``VACUUM FULL`` (a plain VACUUM only
    makes the space reusable)."""
    out = config.parent / "purge.json"
    now = NOW.isoformat()
    extra = ("--vacuum",) if url.startswith("sqlite") else ()
    seconds, rss, status = run_command(config, "purge", "--json", "--now", now, *extra, out=out)
    figures.seconds["purge"] = seconds
    figures.rss_mb["purge"] = rss
    freed = json.loads(out.read_text() or "{}") if not status else {}
    figures.notes["purge"] = ", ".join(
        f"{rule} {f.get('rows')} rows / {f.get('bytes', 0) / 1e6:,.0f} MB"
        for rule, f in freed.items()
    )
    if url.startswith("postgresql"):
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("VACUUM FULL"))
        engine.dispose()
    figures.purged_mb = database_size(url)
    print(
        f"    {'purge':<32} {seconds:8.2f} s {rss:8.0f} MB  {figures.notes['purge']}; "
        f"size after {figures.purged_mb:,.0f} MB",
        flush=True,
    )


def database_size(url: str) -> float:
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6
    engine = create_engine(url)
    with engine.connect() as conn:
        size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar()
    engine.dispose()
    return float(size or 0) / 1e6


def pg_database(base: str, name: str) -> str:
    engine = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return f"{base}/{name}"


# --------------------------------------------------------------------------- the report


ROWS = (
    *(name for name, _ in COMMANDS),
    "jobs run",
    "purge",
    "ingest msgs/s",
    "ingest p99 ms",
    "ingest CPU ms/mail",
)


def report(db: str, results: Sequence[Figures]) -> None:
    first, last = results[0], results[-1]
    header = ["", *(f"N={r.n:,}" for r in results)]
    if len(results) > 1:
        header.append(f"{last.n // first.n:,}x tickets")
    print(f"\n## {db}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in ROWS:
        cells = [name]
        for r in results:
            value = r.seconds.get(name)
            if value is None:
                cells.append("–")
            elif name.startswith("ingest"):
                cells.append(f"{value:,.1f}")
            else:
                cells.append(f"{value:.2f} s / {r.rss_mb.get(name, 0):.0f} MB")
        if len(results) > 1:
            a, b = first.seconds.get(name), last.seconds.get(name)
            cells.append(f"{b / a:.2f}x" if a and b else "–")
        print("| " + " | ".join(cells) + " |")
    sizes = [f"{r.size_mb:,.0f} MB" for r in results]
    print("| database size | " + " | ".join(sizes) + (" | |" if len(results) > 1 else " |"))
    if any(r.purged_mb for r in results):
        after = [
            f"{r.purged_mb:,.0f} MB ({r.purged_mb / r.n * 100_000:,.0f} MB per 100k)"
            for r in results
        ]
        print("| size after purge | " + " | ".join(after) + (" | |" if len(results) > 1 else " |"))
    seeds = [f"{r.seed_s:,.0f} s" for r in results]
    print("| (seeding) | " + " | ".join(seeds) + (" | |" if len(results) > 1 else " |"))
    for r in results:
        for name, note in r.notes.items():
            print(f"- N={r.n:,} {name}: {note}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432")
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--members", type=int, default=20)
    parser.add_argument("--raw-bytes", type=int, default=1500)
    parser.add_argument("--message-bytes", type=int, default=2500)
    parser.add_argument("--due-closes", type=int, default=10_000)
    parser.add_argument("--due-notifications", type=int, default=12_000)
    parser.add_argument("--mails", type=int, default=1000)
    parser.add_argument("--keep", metavar="DIR", help="keep the databases here")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-jobs", action="store_true", help="leave the due work as it is")
    parser.add_argument(
        "--purge-up-to",
        type=int,
        default=100_000,
        help="purge only databases up to this size (a VACUUM of 1M tickets takes long)",
    )
    parser.add_argument(
        "--purge",
        action="store_true",
        help="last: mailgate purge (default [retention]) and the size after (SQLite: --vacuum)",
    )
    parser.add_argument(
        "--seed-only", action="store_true", help="seed the databases (into --keep) and stop"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="measure the databases a --seed-only run left"
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mailgate-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        for db in args.db.split(","):
            results = []
            for n in sizes:
                workdir = root / f"{db}-{n}"
                config = workdir / "mailgate.toml"
                figures = Figures(n)
                if args.reuse:
                    url = load_config(str(config)).database.url
                    ticket = max(1, n // 2)
                    print(f"{db}, N={n:,}: reusing {workdir}", flush=True)
                else:
                    shutil.rmtree(workdir, ignore_errors=True)
                    workdir.mkdir(parents=True)
                    url = (
                        f"sqlite:///{workdir / 'mailgate.db'}"
                        if db == "sqlite"
                        else pg_database(args.pg, f"mailgate_scale_{n}")
                    )
                    write_config(config, url, workdir, args.orgs, args.members)
                    print(f"{db}, N={n:,}: seeding", flush=True)
                    ticket, figures.seed_s = seed(config, n, args, random.Random(n))
                figures.size_mb = database_size(url)
                print(f"  {figures.seed_s:.0f} s seeding, {figures.size_mb:,.0f} MB", flush=True)
                if args.seed_only:
                    continue
                # A migration the code brought since the seed runs here, not in a measurement.
                run_command(config, "init-db")
                measure_commands(config, ticket, figures)
                # Before ingest: serve runs the jobs once at its start, and would do their work.
                if not args.skip_jobs:
                    measure_jobs(config, figures)
                if not args.skip_ingest:
                    measure_ingest(config, workdir, args.mails, figures)
                if args.purge and n <= args.purge_up_to:
                    measure_purge(config, url, figures)
                results.append(figures)
                if not args.keep:
                    shutil.rmtree(workdir, ignore_errors=True)
            if results:
                report(db, results)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


if __name__ == "__main__":
    sys.exit(main())

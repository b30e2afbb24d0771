"""Benchmark of ``mailgate jobs run`` at volume, and of SMTP ingest while it runs.

Why: after an outage or at a million tickets the close job may find 10,000 solved tickets
due at once and the outbox 12,000 notifications. ``jobs run`` must finish both in one pass
(issue #21: under 30 s at 1M tickets) without holding SQLite's one write lock for long, so
mail arriving over SMTP meanwhile keeps a p99 under 100 ms.

What it does, on a fresh database (SQLite in a temp dir, or ``--url``: an empty database):

* seeds ``--tickets`` tickets in bulk through the store's own schema (two comments each,
  one with a Message-ID), ``--closes`` of them solved four days ago (due to close, each
  queueing ``ticket_closed``) and ``--notifications`` ``agent_reply`` rows due in the
  outbox, each carrying a comment of its ticket;
* starts ``mailgate serve`` on it (``--rate`` mails a second, one SMTP connection; 0: no
  server) and runs ``mailgate``'s ``Jobs.run_once`` in a child process with the Maildir
  transport (``--relay``: over SMTP to ``bench/baselines.py discard``), as ``mailgate jobs
  run`` does;
* prints the run's wall time, its ``jobs run --json`` counts, ms per notification
  delivered, the child's peak RSS, and the SMTP latency (DATA to 250) of the mails sent
  while the jobs ran: count, p50, p99, max.

Run: ``python bench/jobs.py [--tickets 100000] [--closes 10000] [--notifications 12000]
[--rate 20] [--relay] [--status-index] [--url URL] [--profile OUT.prof]``. To compare with
another checkout, run it with ``PYTHONPATH=/path/to/other/checkout``: the server and the
child import the same code. ``--status-index`` adds the ``(status, solved_at)`` index that
auto-close reads by, where the schema has none yet.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import re
import resource
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, inspect, select, text

from mailgate.confload import load_config
from mailgate.jobs import Jobs
from mailgate.models import Comment, Outbox, OutboxStatus, Ticket, User
from mailgate.store import Store

CHUNK = 20_000
IDLE = 10.0  # seconds of SMTP latency measured before the run, for comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=100_000)
    parser.add_argument("--closes", type=int, default=10_000)
    parser.add_argument("--notifications", type=int, default=12_000)
    parser.add_argument("--rate", type=float, default=20.0, help="SMTP mails/s during the run")
    parser.add_argument("--url", help="an empty database (default: SQLite in a temp dir)")
    parser.add_argument(
        "--relay", action="store_true", help="relay over SMTP to a discarding server, not Maildir"
    )
    parser.add_argument(
        "--status-index",
        action="store_true",
        help="add an index on tickets (status, solved_at) for auto-close, if the schema has none",
    )
    parser.add_argument("--profile", metavar="OUT", help="cProfile the run into OUT")
    parser.add_argument("--child", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.profile)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        url = args.url or f"sqlite:///{work}/bench.db"
        config = work / "mailgate.toml"
        relay = start_relay() if args.relay else None
        write_config(config, url, work, relay[1] if relay else None)
        now = datetime.now(UTC)
        prepare(url, config, now)
        # Started before the rows are seeded: its own jobs run once at start-up, and must
        # find nothing to do, so that the child's run does all of the work.
        server = start_server(config, work) if args.rate > 0 else None
        time.sleep(3 if server else 0)  # its start-up jobs have run, on an empty database
        started = time.perf_counter()
        seed(url, config, now, args.tickets, args.closes, args.notifications)
        if args.status_index:
            status_index(url)
        print(
            f"seeded {args.tickets:,} tickets ({args.closes:,} due to close, "
            f"{args.notifications:,} due notifications) in {time.perf_counter() - started:.0f} s"
        )
        if server is not None and server[0].poll() is not None:
            raise RuntimeError(
                f"mailgate serve exited:\n{(work / 'serve.log').read_text()[-3000:]}"
            )
        latencies: list[float] = []
        stop = threading.Event()
        sender = None
        idle: list[float] = []
        if server is not None:
            sender = threading.Thread(
                target=send_mail, args=(server[1], args.rate, stop, latencies), daemon=True
            )
            sender.start()
            time.sleep(1.0)  # the connection is up and warm
            latencies.clear()
            time.sleep(IDLE)
            idle = latencies[:]
            latencies.clear()
        try:
            command = [sys.executable, __file__, "--child", str(config)]
            if args.profile:
                command += ["--profile", args.profile]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        finally:
            stop.set()
            if sender is not None:
                sender.join(10)
            for proc in (server, relay):
                if proc is not None:
                    proc[0].terminate()
                    proc[0].wait(30)
        report = json.loads(out.strip().splitlines()[-1])
        result = report["result"]
        sent = max(1, result["sent"])
        print(
            f"jobs run: {report['seconds']:.1f} s, {json.dumps(result)}, "
            f"{report['deliver_seconds'] * 1000 / sent:.2f} ms per notification, "
            f"close {report['close_seconds']:.2f} s, peak RSS {report['rss_mb']:.0f} MB, "
            f"CPU user {report['cpu_seconds'][0]:.1f} s, system {report['cpu_seconds'][1]:.1f} s"
        )
        if server is not None:
            print(f"SMTP before the run ({IDLE:.0f} s): {percentiles(idle)}")
            print(f"SMTP during the run: {percentiles(latencies)}")


def percentiles(seconds: list[float]) -> str:
    if not seconds:
        return "no mail"
    ms = sorted(x * 1000 for x in seconds)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{len(ms)} mails, p50 {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
        f"max {ms[-1]:.1f} ms"
    )


def start_relay() -> tuple[subprocess.Popen[str], int]:
    """``bench/baselines.py discard``: an aiosmtpd server that answers 250 and keeps nothing."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "baselines.py"), "discard"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    match = re.search(r":(\d+)", proc.stdout.readline())
    assert match, "the discard server did not start"
    return proc, int(match.group(1))


def write_config(path: Path, url: str, work: Path, relay: int | None = None) -> None:
    outbound = (
        ['transport = "smtp"', 'smtp_host = "127.0.0.1"', f"smtp_port = {relay}"]
        if relay
        else ['transport = "maildir"', f'maildir = "{work / "maildir"}"']
    )
    path.write_text(
        "\n".join(
            [
                "[server]",
                'host = "127.0.0.1"',
                "port = 0",
                "[database]",
                f'url = "{url}"',
                "[mail]",
                'domains = ["support.example.com"]',
                'address = "support@support.example.com"',
                'secret = "bench-secret-0123456789abcdef"',
                "[outbound]",
                *outbound,
                "[jobs]",
                'outbox_interval = "24h"',
                'close_interval = "24h"',
                "[limits]",
                "acks_per_hour = 100000",
                "tickets_per_hour = 100000",
                "",
            ]
        ),
        encoding="utf-8",
    )


def prepare(url: str, config_path: Path, now: datetime) -> None:
    """The schema and the synced config, as ``mailgate init-db`` leaves them."""
    store = Store(url)
    try:
        store.migrate()
        store.sync(load_config(str(config_path)), now)
    finally:
        store.close()


def seed(url: str, config_path: Path, now: datetime, tickets: int, closes: int, due: int) -> None:
    """Bulk rows through the store's schema: tickets, two comments each, due outbox rows."""
    store = Store(url)
    long_ago = now - timedelta(days=30)
    solved = now - timedelta(days=4)
    try:
        with store.transaction() as session:
            session.execute(
                insert(User),
                [
                    {"email": f"kunde{i}@kunde.example", "name": f"Kunde {i}", "created_at": now}
                    for i in range(1000)
                ],
            )
            users = list(session.scalars(select(User.id).order_by(User.id)))
        for start in range(0, tickets, CHUNK):
            with store.transaction() as session:
                first = start + 1
                rows = [
                    {
                        "id": i,
                        "subject": f"Anfrage {i}",
                        "status": "solved" if i > tickets - closes else "open",
                        "requester_id": users[i % len(users)],
                        "created_at": long_ago,
                        "updated_at": long_ago,
                        "solved_at": solved if i > tickets - closes else None,
                        "routing_reason": "bench",
                        "priority": "normal",
                        "tags": [],
                    }
                    for i in range(first, min(tickets, start + CHUNK) + 1)
                ]
                session.execute(insert(Ticket), rows)
                session.execute(
                    insert(Comment),
                    [
                        {
                            "id": 2 * r["id"] - 1 + k,
                            "ticket_id": r["id"],
                            "author_id": r["requester_id"],
                            "body": ("Guten Tag,\n\nder Drucker druckt nicht. " * 20)
                            if k == 0
                            else "Wir kümmern uns darum.\n\n-- \nSupport",
                            "public": True,
                            "author_kind": "customer" if k == 0 else "agent",
                            "message_id": f"m{r['id']}.{k}@kunde.example" if k == 0 else None,
                            "created_at": long_ago,
                        }
                        for r in rows
                        for k in (0, 1)
                    ],
                )
                outbox = [
                    {
                        "kind": "agent_reply",
                        "ticket_id": r["id"],
                        "recipients": [f"kunde{r['id'] % 1000}@kunde.example"],
                        "subject": f"[#{r['id']}] Anfrage {r['id']}",
                        "payload": {"comment": 2 * r["id"]},
                        "status": OutboxStatus.PENDING.value,
                        "attempts": 0,
                        "created_at": now,
                        "next_attempt_at": now,
                    }
                    for r in rows
                    if r["id"] <= due
                ]
                if outbox:
                    session.execute(insert(Outbox), outbox)
    finally:
        store.close()


def status_index(url: str) -> None:
    """The index auto-close's batches read the due tickets by; without it each batch scans
    the tickets table (a schema that has one gets no second)."""
    store = Store(url)
    try:
        with store.transaction() as session:
            conn = session.connection()
            found = inspect(conn).get_indexes("tickets")
            if not any(i["column_names"][:2] == ["status", "solved_at"] for i in found):
                conn.execute(
                    text("CREATE INDEX bench_tickets_status_solved ON tickets (status, solved_at)")
                )
    finally:
        store.close()


def start_server(config: Path, work: Path) -> tuple[subprocess.Popen[bytes], int]:
    log = work / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailgate", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        match = re.search(r"listening on [\d.]+:(\d+)", log.read_text(errors="replace"))
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"mailgate serve did not start:\n{log.read_text()[-3000:]}")


def send_mail(port: int, rate: float, stop: threading.Event, latencies: list[float]) -> None:
    """New tickets at a steady rate over one connection; each DATA-to-250 time is kept."""
    try:
        client = smtplib.SMTP("127.0.0.1", port, timeout=60)
    except OSError as exc:
        print(f"cannot connect to mailgate serve on port {port}: {exc}", file=sys.stderr)
        return
    client.ehlo()
    n = 0
    next_at = time.monotonic()
    while not stop.is_set():
        n += 1
        message = (
            f"From: Neu {n} <neu{n}@neu.example>\r\nTo: support@support.example.com\r\n"
            f"Subject: Frage {n}\r\nMessage-ID: <smtp{n}.{os.getpid()}@neu.example>\r\n\r\n"
            "Hallo, eine Frage.\r\n"
        ).encode()
        client.mail(f"neu{n}@neu.example")
        client.rcpt("support@support.example.com")
        started = time.perf_counter()
        code, _ = client.data(message)
        latencies.append(time.perf_counter() - started)
        assert code == 250, code
        next_at += 1 / rate
        time.sleep(max(0.0, next_at - time.monotonic()))
    client.quit()


def child(config_path: str, profile: str | None) -> None:
    config = load_config(config_path)
    store = Store(config.database.url, config.database.lock_timeout)
    jobs = Jobs(store, config)
    now = datetime.now(UTC)
    profiler = cProfile.Profile() if profile else None
    times: dict[str, float] = {}

    def timed(name: str, job: Callable[[datetime], Any]) -> Callable[[datetime], Any]:
        def run(when: datetime) -> Any:
            started = time.perf_counter()
            try:
                return job(when)
            finally:
                times[name] = time.perf_counter() - started

        return run

    jobs.close_solved = timed("close", jobs.close_solved)  # type: ignore[method-assign]
    jobs.deliver_outbox = timed("deliver", jobs.deliver_outbox)  # type: ignore[method-assign]
    started = time.perf_counter()
    cpu_started = os.times()
    if profiler is not None:
        profiler.enable()
    result = jobs.run_once(now)
    ended = os.times()
    cpu = (ended.user - cpu_started.user, ended.system - cpu_started.system)
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    seconds = time.perf_counter() - started
    store.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "seconds": seconds,
        "close_seconds": times.get("close", 0.0),
        "deliver_seconds": times.get("deliver", 0.0),
        "result": result,
        "rss_mb": rss,
        "cpu_seconds": cpu,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()

"""Benchmark: one mail with a huge folded Subject, and every other mail meanwhile.

Why: a mail with a 1 MB folded Subject used to be acknowledged by a notification built
inside the outbox job's write transaction, in time that grew faster than the subject
(112 kB 0.4 s, 225 kB 1.1 s, 450 kB 4.3 s); on SQLite every other mail waited for the
writer meanwhile and got ``451 … no write lock``. This prints two things:

* the build time: ``ingest`` of one mail with a subject of 112 kB, 225 kB, 450 kB and 1 MB,
  then ``Jobs.deliver_outbox`` building and writing its acknowledgement to a maildir;
* the latency of ``--mails`` ordinary mails (default 100, over ``--clients`` connections)
  sent to a real listener on SQLite while the 1 MB mail is sent, stored and acknowledged by
  the outbox job running in a thread beside it, as under ``serve``: p50, p99, max, and
  how many were not answered 250.

It uses only what every version of mailgate has, so the same file measures a checkout of
an older commit (run it with that checkout's interpreter).

Run: ``python bench/large_subject.py [--sizes 112000,225000,450000,1000000] [--mails 100]``
"""

from __future__ import annotations

import argparse
import logging
import smtplib
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailgate.app import ServerThread
from mailgate.config import Config, parse_config
from mailgate.ingest import InboundEnvelope, ingest
from mailgate.jobs import Jobs
from mailgate.store import Store

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
SENDER = "anna@mueller-logistik.de"
SUPPORT = "support@support.example.com"


def folded_subject(size: int) -> str:
    """About ``size`` characters of words, folded into lines under 78 (RFC 5322 2.2.3)."""
    lines, line, length, i = [], "", 0, 0
    while length < size:
        word = f"wort{i}"
        i += 1
        length += len(word) + 1
        if len(line) + len(word) + 1 > 70:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "\r\n ".join([*lines, line])


def mail(subject: str, sender: str = SENDER) -> bytes:
    head = (
        f"From: {sender}\r\nTo: {SUPPORT}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@mueller-logistik.de>\r\n"
        "Date: Thu, 26 Nov 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\n\r\n'
    )
    return head.encode() + b"Hallo,\r\nder Drucker druckt nicht.\r\n"


def send_timed(port: int, raw: bytes, sender: str = SENDER) -> tuple[float, int]:
    """One mail over SMTP: seconds until the reply to DATA, and its code."""
    start = time.perf_counter()
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
            client.sendmail(sender, [SUPPORT], raw)
        code = 250
    except smtplib.SMTPResponseException as exc:
        code = exc.smtp_code
    return time.perf_counter() - start, code


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def while_large(
    port: int, store: Store, config: Config, clock: Any, size: int, mails: int, clients: int
) -> tuple[list[tuple[float, int]], tuple[float, int]]:
    """Send the large mail and ``mails`` ordinary ones at once, the outbox job running.

    Returns each ordinary mail's (seconds, code) and the large mail's.
    """
    # The first mail after start waits for the worker processes to import and warm up.
    assert send_timed(port, mail("warm-up", "warm@mueller-logistik.de"), SENDER)[1] == 250
    jobs = Jobs(store, config)
    stop = threading.Event()

    def deliver() -> None:
        while not stop.is_set():
            jobs.deliver_outbox(clock())
            stop.wait(0.05)  # under serve the job runs every few seconds; here, at once

    worker = threading.Thread(target=deliver, daemon=True)
    worker.start()
    try:
        with ThreadPoolExecutor(clients + 1) as pool:
            # The large mail first: its transfer, storing and acknowledgement overlap the rest.
            large = pool.submit(send_timed, port, mail(folded_subject(size)))
            # Each from another customer: one sender's flood would be rate-limited.
            senders = [f"kunde{i}@mueller-logistik.de" for i in range(mails)]
            results = list(
                pool.map(lambda s: send_timed(port, mail("Drucker kaputt", s), s), senders)
            )
            return results, large.result()
    finally:
        stop.set()
        worker.join(600)


def bench_config(directory: Path, workers: str | int = 0) -> Config:
    """SQLite; ``workers`` 0 stores in the listener's process, like the tests' server."""
    return parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0, "hostname": "mx.test", "workers": workers},
            "database": {"url": f"sqlite:///{directory}/bench.db"},
            "mail": {"domains": ["support.example.com"], "address": SUPPORT},
            "outbound": {"maildir": str(directory / "outbox")},
            "organizations": [{"name": "Müller Logistik GmbH", "domains": ["mueller-logistik.de"]}],
        }
    )


def open_store(config: Config) -> Store:
    store = Store(config.database.url, config.database.lock_timeout)
    store.migrate()
    store.sync(config, NOW)
    return store


def build_time(size: int) -> tuple[float, float]:
    """Seconds to store a mail with a ``size`` subject, and to build and write its answer."""
    with tempfile.TemporaryDirectory() as tmp:
        config = bench_config(Path(tmp))
        store = open_store(config)
        try:
            start = time.perf_counter()
            ingest(store, config, mail(folded_subject(size)), InboundEnvelope(), NOW)
            stored = time.perf_counter()
            stats = Jobs(store, config).deliver_outbox(NOW)
            assert stats.sent == 1, stats.errors
            return stored - start, time.perf_counter() - stored
        finally:
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="112000,225000,450000,1000000")
    parser.add_argument("--mails", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", default="0", help='0 (as the tests), or "auto" as serve')
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # one log line per mail would drown the figures
    sizes = [int(s) for s in args.sizes.split(",")]
    for size in sizes:
        stored, built = build_time(size)
        print(
            f"subject {size / 1000:6.0f} kB: ingest {stored:6.2f} s, acknowledgement {built:6.2f} s"
        )
    with tempfile.TemporaryDirectory() as tmp:
        workers = args.workers if args.workers == "auto" else int(args.workers)
        config = bench_config(Path(tmp), workers)
        store = open_store(config)
        try:
            with ServerThread(config, store, lambda: NOW) as thread:
                assert thread.server.port is not None
                results, large = while_large(
                    thread.server.port,
                    store,
                    config,
                    lambda: NOW,
                    max(sizes),
                    args.mails,
                    args.clients,
                )
        finally:
            store.close()
    latencies = [seconds for seconds, _ in results]
    refused = sum(code != 250 for _, code in results)
    print(
        f"{args.mails} mails beside a {max(sizes) / 1000:.0f} kB subject (SQLite, workers "
        f"{args.workers}, {args.clients} clients): p50 {percentile(latencies, 0.5):.3f} s, "
        f"p99 {percentile(latencies, 0.99):.3f} s, max {max(latencies):.3f} s, "
        f"not 250: {refused}; the large mail: {large[1]} after {large[0]:.2f} s"
    )


if __name__ == "__main__":
    main()

"""CPU per mail of :func:`mailgate.ingest.ingest` alone, in-process, without SMTP.

The SMTP load test (``bench/smtp_load.py``) says how fast the daemon is; this one says where
the per-mail CPU goes, by kind of mail, so a change to the ingest path can be measured in
seconds instead of a full load run. Same generated load (same seed, same 1,000
organizations) as the SMTP test; mails are ingested one after the other into a fresh
database, each in its own transaction (``--batch N``: N at a time in one group commit, as
``serve`` stores mails that arrive together). The CPU is split into the pure part
(:func:`mailgate.ingest.prepare`, which a parser process runs under ``serve``) and the store
(what the single SQLite writer runs, the serial stage). With ``--profile`` it
prints the top functions of a cProfile run (cumulative time).

Run: ``python bench/ingest_cpu.py [--messages 2000] [--db sqlite|postgresql] [--profile]``
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import smtp_load  # noqa: E402  (the load generator and config writer are shared)

from mailgate.confload import load_config  # noqa: E402
from mailgate.ingest import InboundEnvelope, IngestResult, ingest_batch, prepare  # noqa: E402
from mailgate.routing import Router  # noqa: E402
from mailgate.store import Store  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--batch", type=int, default=1, help="mails per group commit (ingest_batch), as serve does"
    )
    args = parser.parse_args(argv)

    orgs = smtp_load.make_orgs(random.Random(args.seed))
    mails = smtp_load.make_load(args.messages, orgs, args.seed, 4)
    workdir = Path(tempfile.mkdtemp(prefix="mailgate-ingest-cpu-"))
    schema = f"bench_ingest_cpu_{args.seed}"
    if args.db == "sqlite":
        url = f"sqlite:///{workdir / 'mailgate.db'}"
    else:
        url = f"{smtp_load.PG_BASE}?options=-csearch_path%3D{schema}"
        smtp_load.pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        smtp_load.pg_execute(f'CREATE SCHEMA "{schema}"')
    config_path = workdir / "mailgate.toml"
    smtp_load.write_config(config_path, url, workdir, orgs)
    config = load_config(config_path)
    store = Store(config.database.url, config.database.lock_timeout)
    store.migrate()
    now = datetime.now(UTC)
    store.sync(config, now)
    router = Router(config)

    tickets: dict[int, int] = {}
    cpu: dict[str, list[float]] = defaultdict(list)
    prepare_cpu = store_cpu = 0.0
    profiler = cProfile.Profile() if args.profile else None
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for start in range(0, len(mails), args.batch):
        group = mails[start : start + args.batch]
        items = []
        for mail in group:
            raw = mail.raw
            if mail.kind == "reply-tag" and mail.parent is not None:
                tag = f"[#{tickets.get(mail.parent, 0)}]".encode()
                raw = raw.replace(smtp_load.TAG_PLACEHOLDER, tag)
            items.append((raw, InboundEnvelope(mail.mail_from, (smtp_load.RCPT,)), now))
        t0 = time.process_time()
        if profiler is not None:
            profiler.enable()
        prepared = [prepare(config, *item, router=router) for item in items]
        t1 = time.process_time()
        results = [r for r, _ in ingest_batch(store, router, prepared)]
        if profiler is not None:
            profiler.disable()
        t2 = time.process_time()
        prepare_cpu += t1 - t0
        store_cpu += t2 - t1
        spent = (t2 - t0) / len(group)
        for mail, result in zip(group, results, strict=True):
            cpu[mail.kind].append(spent)
            if isinstance(result, IngestResult) and result.ticket is not None:
                tickets[mail.index] = result.ticket
    wall, total_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    store.close()
    if args.db == "postgresql":
        smtp_load.pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    print(f"{len(mails)} mails, db {args.db}: {len(mails) / wall:.1f} mails/s in one thread")
    print(f"CPU per mail: {total_cpu / len(mails) * 1000:.2f} ms (all kinds)")
    print(
        f"  of which prepare (parse, DKIM; a parser process under serve) "
        f"{prepare_cpu / len(mails) * 1000:.2f} ms, store (the writer) "
        f"{store_cpu / len(mails) * 1000:.2f} ms"
    )
    for kind, values in sorted(cpu.items()):
        print(f"  {kind:<13} {len(values):>5} mails  {sum(values) / len(values) * 1000:6.2f} ms")
    if profiler is not None:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
        stats.print_stats(r"mailgate/", 40)  # mailgate's own functions first
        stats.print_stats(25)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())

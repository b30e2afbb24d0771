"""Retention and jobs at volume: purge by [retention], batched auto-close, exactly once."""

from __future__ import annotations

import base64
import json
import mailbox
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text

from mailgate import jobs as jobs_module
from mailgate import retention
from mailgate.config import Config, parse_config
from mailgate.db.records import raw_mail
from mailgate.errors import RawMailPurged
from mailgate.ingest import InboundEnvelope, ingest
from mailgate.jobs import Jobs
from mailgate.models import Attachment, Blob, Comment, LedgerEntry, Outbox, Ticket, User
from mailgate.outbound import MaildirTransport
from mailgate.store import Store

from .conftest import Clock, mail, open_store, run_cli

GARBAGE = b"\x00\xff\xfe binary \x89PNG\r\n\x1a\n" * 20


def ledger(store: Store) -> list[LedgerEntry]:
    with store.transaction() as s:
        return list(s.scalars(select(LedgerEntry).order_by(LedgerEntry.id)))


def outbox(store: Store) -> list[Outbox]:
    with store.transaction() as s:
        return list(s.scalars(select(Outbox).order_by(Outbox.id)))


def as_json(freed: dict[str, retention.Freed]) -> dict[str, dict[str, int]]:
    return {rule: f.as_json() for rule, f in freed.items()}


def stored(config: Config, store: Store, clock: Clock) -> None:
    """A ticket whose notifications were sent, and a quarantined mail, at ``clock()``."""
    ingest(store, config, mail(subject="Drucker kaputt"), InboundEnvelope(), clock())
    ingest(store, config, GARBAGE, InboundEnvelope("x@example.org"), clock())
    assert Jobs(store, config).deliver_outbox(clock()).sent == 3


def test_each_rule_at_its_boundary_and_stats_match_what_purge_frees(
    config: Config, store: Store, clock: Clock
) -> None:
    """Nothing goes a minute early; each rule frees at its period what due() said it would."""
    stored(config, store, clock)
    start = clock()
    sent = outbox(store)
    taken, quarantined = ledger(store)
    size = taken.size
    for period, rule, rows, size in (
        (timedelta(days=30), "quarantine", 1, quarantined.size),
        (timedelta(days=90), "sent_notifications", 3, sum(len(o.message or b"") for o in sent)),
        (timedelta(days=365), "raw_mail", 1, taken.size),
    ):
        clock.now = start + period - timedelta(minutes=1)
        assert retention.due(store, config, clock())[rule].rows == 0
        assert retention.purge(store, config, clock())[rule].rows == 0
        clock.now = start + period
        expected = retention.Freed(rows, size)
        assert retention.due(store, config, clock())[rule] == expected
        assert retention.purge(store, config, clock())[rule] == expected
        assert retention.due(store, config, clock())[rule] == retention.Freed()
    # Twice: nothing more.
    assert all(f.rows == 0 for f in retention.purge(store, config, clock()).values())

    for row in outbox(store):
        assert row.message is None and row.message_id and row.status == "sent"
    taken, quarantined = ledger(store)
    assert taken.raw.startswith(b"From: ") and b"der Drucker" not in taken.raw
    assert taken.raw.endswith(b"\r\n") and b"\r\n\r\n" not in taken.raw
    assert (taken.outcome, taken.size, taken.purged_at) == ("created", size, clock())
    assert quarantined.raw == b"" and quarantined.outcome == "quarantined"
    assert quarantined.reason and quarantined.size == len(GARBAGE)
    with store.transaction() as s, pytest.raises(RawMailPurged, match="purged"):
        raw_mail(s, quarantined)
    with store.transaction() as s:  # the ticket and its comment stay
        assert s.scalar(select(func.count()).select_from(Comment)) == 1


def test_off_keeps_forever(make_config: Any, clock: Clock) -> None:
    """ "off" (or "0") keeps a kind of mail for good."""
    config, _ = make_config(
        {"retention": {"raw_mail": "off", "quarantine": "0", "sent_notifications": "1d"}}
    )
    with open_store(config, clock) as store:
        stored(config, store, clock)
        clock.advance(days=3650)
        freed = retention.purge(store, config, clock())
        assert (freed["raw_mail"].rows, freed["quarantine"].rows) == (0, 0)
        assert freed["sent_notifications"].rows == 3


def test_config_rejects_a_bad_period() -> None:
    with pytest.raises(Exception, match=r"\[retention\].raw_mail: .*'off'"):
        parse_config({"retention": {"raw_mail": "a year"}})
    assert parse_config({}).retention.raw_mail == timedelta(days=365)


def test_dry_run_changes_nothing_and_cli_reports_what_purge_frees(
    config: Config, config_path: Path, store: Store, clock: Clock
) -> None:
    """`purge --dry-run`, `stats --json` and `purge` agree; the dry run writes nothing."""
    stored(config, store, clock)
    later = (clock() + timedelta(days=400)).isoformat()
    before = [(r.raw, r.purged_at) for r in ledger(store)]
    dry = run_cli(config_path, "purge", "--dry-run", "--json", "--now", later)
    assert dry.returncode == 0, dry.stderr
    would = json.loads(dry.stdout)
    assert set(would) == {"sent_notifications", "raw_mail", "quarantine"}
    assert [(r.raw, r.purged_at) for r in ledger(store)] == before
    assert all(o.message for o in outbox(store))
    real = run_cli(config_path, "purge", "--json", "--now", later)
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout) == would
    assert would["raw_mail"]["rows"] == would["quarantine"]["rows"] == 1
    assert would["sent_notifications"]["rows"] == 3
    assert json.loads(run_cli(config_path, "purge", "--json", "--now", later).stdout) == {
        rule: {"rows": 0, "bytes": 0} for rule in would
    }
    stats = json.loads(run_cli(config_path, "stats", "--json").stdout)
    assert set(stats["retention"]) == set(would)
    text_out = run_cli(config_path, "purge", "--dry-run").stdout.decode()
    assert "raw_mail: would free 0 rows, 0 bytes" in text_out


def test_stats_json_shows_what_purge_would_free_now(
    config: Config, config_path: Path, store: Store, clock: Clock
) -> None:
    """``stats --json`` asks at the real time: a mail stored a year and more ago is due."""
    clock.advance(days=-400)  # well in the past of the real clock the CLI reads
    stored(config, store, clock)
    stats = json.loads(run_cli(config_path, "stats", "--json").stdout)
    expected = as_json(retention.due(store, config, clock() + timedelta(days=400)))
    assert stats["retention"] == expected
    assert expected["raw_mail"]["rows"] == 1


def test_purged_quarantine_cannot_be_shown_raw_or_reprocessed(
    config: Config, config_path: Path, store: Store, clock: Clock
) -> None:
    """A clear error, exit 1, no traceback; `show` still shows the entry and says why."""
    stored(config, store, clock)
    retention.purge(store, config, clock() + timedelta(days=31))
    entry = ledger(store)[1].id
    for args in (("show", str(entry), "--raw"), ("reprocess", str(entry))):
        result = run_cli(config_path, "quarantine", *args)
        assert result.returncode == 1, result
        assert b"raw mail was purged" in result.stderr and b"Traceback" not in result.stderr
    shown = run_cli(config_path, "quarantine", "show", str(entry))
    assert shown.returncode == 0 and b"purged:" in shown.stdout
    everything = run_cli(config_path, "quarantine", "reprocess", "--all")
    assert everything.returncode == 0 and everything.stdout == b""


def test_a_blob_an_attachment_shares_with_a_purged_raw_mail_stays(
    config: Config, store: Store, clock: Clock
) -> None:
    """A large raw mail lives in blobs by its digest; the same bytes attached elsewhere stay."""
    big = mail(subject="Protokoll", body="Zeile mit Text.\n" * 80_000)  # > 1 MB: a blob (SQLite)
    ingest(store, config, big, InboundEnvelope(), clock())
    clock.advance(days=200)
    boundary = "b0undary"
    attached = mail(
        subject="Anhang",
        extra=f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n',
        body=(
            f"--{boundary}\nContent-Type: text/plain\n\nSiehe Anhang.\n"
            f"--{boundary}\nContent-Type: application/octet-stream\n"
            'Content-Disposition: attachment; filename="protokoll.eml"\n'
            "Content-Transfer-Encoding: base64\n\n"
            + base64.encodebytes(big).decode()
            + f"\n--{boundary}--\n"
        ),
    ).replace(b'Content-Type: text/plain; charset="utf-8"\r\n', b"", 1)
    ingest(store, config, attached, InboundEnvelope(), clock())
    with store.transaction() as s:
        digest = s.scalar(select(Attachment.sha256))
        assert s.get(Blob, digest) is not None
    first = ledger(store)[0]
    assert first.sha256 == digest  # the attachment is the first mail, byte for byte
    clock.advance(days=170)  # the first is 370 days old, the second 170
    assert retention.purge(store, config, clock())["raw_mail"].rows == 1
    with store.transaction() as s:
        data = s.execute(text("SELECT data FROM blobs WHERE sha256 = :d"), {"d": digest})
        assert bytes(data.scalar_one()) == big
    assert ledger(store)[0].purged_at is not None


def test_a_large_raw_mail_alone_in_blobs_goes(config: Config, store: Store, clock: Clock) -> None:
    big = mail(subject="Protokoll", body="Zeile mit Text.\n" * 80_000)
    ingest(store, config, big, InboundEnvelope(), clock())
    digest = ledger(store)[0].sha256
    clock.advance(days=366)
    assert retention.purge(store, config, clock())["raw_mail"] == retention.Freed(1, len(big))
    with store.transaction() as s:
        assert s.get(Blob, digest) is None
    assert ledger(store)[0].raw.startswith(b"From: ")


def test_sqlite_gives_the_space_back(config: Config, store: Store, clock: Clock) -> None:
    """A new SQLite database vacuums incrementally: after a purge no page is left free."""
    if store.dialect != "sqlite":
        pytest.skip("SQLite only")
    with store.transaction() as s:
        assert s.connection().exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2
    for n in range(20):
        ingest(store, config, mail(body="Text " * 20_000 + str(n)), InboundEnvelope(), clock())
    clock.advance(days=366)
    assert retention.purge(store, config, clock())["raw_mail"].rows == 20
    with store.transaction() as s:
        assert s.connection().exec_driver_sql("PRAGMA freelist_count").scalar() == 0
    retention.vacuum(store)  # purge --vacuum: allowed, and leaves it incremental
    with store.transaction() as s:
        assert s.connection().exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2


# --- auto-close in batches -------------------------------------------------------------------


def solved_tickets(store: Store, clock: Clock, n: int) -> list[int]:
    when = clock() - timedelta(days=3, minutes=1)
    with store.transaction() as s:
        s.execute(insert(User).values(email="kunde@kunde.example", name="", created_at=when))
        user = s.scalar(select(User.id).where(User.email == "kunde@kunde.example"))
        s.execute(
            insert(Ticket),
            [
                {
                    "subject": f"Frage {i}",
                    "status": "solved",
                    "requester_id": user,
                    "created_at": when,
                    "updated_at": when,
                    "solved_at": when + timedelta(seconds=i % 3),  # ties across batches
                    "routing_reason": "",
                    "priority": "normal",
                    "tags": [],
                }
                for i in range(n)
            ],
        )
        return sorted(s.scalars(select(Ticket.id)))


def test_batched_close_closes_each_ticket_once_across_two_instances(
    config: Config, store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two instances, batches of 4: every ticket closed by exactly one, told once."""
    monkeypatch.setattr(jobs_module, "CLOSE_BATCH", 4)
    ids = solved_tickets(store, clock, 41)
    clock.advance(seconds=5)
    other = Store(config.database.url, config.database.lock_timeout)
    results: list[list[int]] = []
    try:
        runners = [
            threading.Thread(
                target=lambda s=s: results.append(Jobs(s, config).close_solved(clock()))
            )
            for s in (store, other)
        ]
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join(60)
    finally:
        other.close()
    assert len(results) == 2
    assert sorted(results[0] + results[1]) == ids
    with store.transaction() as s:
        assert set(s.scalars(select(Ticket.status))) == {"closed"}
        told = Counter(s.scalars(select(Outbox.ticket_id).where(Outbox.kind == "ticket_closed")))
    assert told == dict.fromkeys(ids, 1)
    assert Jobs(store, config).run_once(clock()) == {
        "closed": 0,
        "sent": 41,
        "retry": 0,
        "failed": 0,
        "digests": 0,
    }


def test_batched_close_keeps_the_boundary(
    config: Config, store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs_module, "CLOSE_BATCH", 3)
    ids = solved_tickets(store, clock, 7)
    jobs = Jobs(store, config)
    assert jobs.close_solved(clock() - timedelta(minutes=2)) == []
    assert jobs.close_solved(clock() + timedelta(seconds=5)) == ids
    assert jobs.close_solved(clock() + timedelta(seconds=5)) == []


def test_a_bounce_still_finds_a_purged_notification(
    config: Config, store: Store, clock: Clock
) -> None:
    """The message goes, its Message-ID stays: a late bounce still marks the row bounced."""
    stored(config, store, clock)
    clock.advance(days=91)
    assert retention.purge(store, config, clock())["sent_notifications"].rows == 3
    ack = outbox(store)[0]
    assert ack.message is None and ack.kind == "ticket_created"
    dsn = (
        b"From: MAILER-DAEMON@mx.mueller-logistik.de\r\nTo: support@support.example.com\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn-late@mx.example>\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry.\r\n"
        b"--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.mueller-logistik.de\r\n\r\n"
        b"Final-Recipient: rfc822; anna@mueller-logistik.de\r\nAction: failed\r\n"
        b"Status: 5.1.1\r\n"
        b"--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        b"Message-ID: <" + (ack.message_id or "").encode() + b">\r\n"
        b"--B--\r\n"
    )
    ingest(store, config, dsn, InboundEnvelope(""), clock())
    assert outbox(store)[0].status == "bounced"


# --- Maildir: a batch synced together --------------------------------------------------------


def test_maildir_mails_appear_in_new_only_once_synced(tmp_path: Path) -> None:
    transport = MaildirTransport(str(tmp_path / "box"))
    first, second = mail(subject="Eins"), mail(subject="Zwei")
    assert transport.send(first, "a@b.de", ["c@d.de"]) == {}
    assert transport.send(second, "a@b.de", ["c@d.de"]) == {}
    assert len(list((tmp_path / "box" / "tmp").iterdir())) == 2
    assert list((tmp_path / "box" / "new").iterdir()) == []
    transport.flush()
    transport.close()
    written = sorted(p.read_bytes() for p in (tmp_path / "box" / "new").iterdir())
    assert written == sorted([first, second])  # byte for byte, as mailbox.Maildir.add wrote
    assert len(mailbox.Maildir(tmp_path / "box", create=False)) == 2
    assert list((tmp_path / "box" / "tmp").iterdir()) == []


def test_a_maildir_that_cannot_take_the_batch_retries_it(
    config: Config, store: Store, clock: Clock, tmp_path: Path
) -> None:
    """Nothing is recorded sent before it is durable: a failed sync leaves the rows to retry."""
    ingest(store, config, mail(subject="Drucker kaputt"), InboundEnvelope(), clock())
    broken = tmp_path / "broken"
    (broken / "tmp").mkdir(parents=True)
    (broken / "new").write_text("not a folder")  # the move into new/ fails
    stats = Jobs(store, config, MaildirTransport(str(broken))).deliver_outbox(clock())
    assert (stats.sent, stats.retry) == (0, 3)
    assert {o.status for o in outbox(store)} == {"retry"}
    assert all("cannot write to maildir" in (o.last_error or "") for o in outbox(store))
    clock.advance(hours=1)
    assert Jobs(store, config).deliver_outbox(clock()).sent == 3

"""Retention: stored mail gives its bytes back after the periods ``[retention]`` sets.

Three rules, each a period (None: keep forever):

* ``sent_notifications``: a sent outbox row keeps its metadata (recipients, subject,
  ``message_id`` for bounces, attempts) and drops the rendered ``message``;
* ``raw_mail``: a ledger entry that was taken (created, commented, ignored) keeps its
  outcome, digest and headers; the raw bytes go. Attachments are the ticket's, stored apart
  in ``blobs``, and stay; a raw mail kept in ``blobs`` (a large one on SQLite) is deleted
  only when no attachment and no other entry still holds the same content;
* ``quarantine``: the same for quarantined entries, which can then no longer be reprocessed.

The purge works in batches of :data:`PURGE_BATCH` rows, each its own short transaction, so
ingest never waits long for SQLite's write lock. :func:`due` counts what the purge would
free now with the same conditions (``stats --json``, ``purge --dry-run``), by the partial
indexes that hold only rows with bytes left. Bytes are the sizes of what goes: a sent
message's length, a raw mail's size as received (its headers, a few kB, stay).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    delete,
    exists,
    func,
    select,
    update,
)

from mailgate.config import Config
from mailgate.db.records import update_each
from mailgate.models import Attachment, Blob, LedgerEntry, Outbox, Outcome, table_of
from mailgate.store import Store

log = logging.getLogger(__name__)

RULES = ("sent_notifications", "raw_mail", "quarantine")
PURGE_BATCH = 200  # a raw mail's purge reads its headers: 200 take a few tens of ms
# A purged entry keeps its header section up to this size (a raw mail's headers are a few kB).
HEADERS_KEPT = 64 * 1024
# Pages SQLite gives back per transaction after a purge (4 kB each: 4 MB), a short hold.
VACUUM_STEP = 1024

_OUTBOX = table_of(Outbox)
_LEDGER = table_of(LedgerEntry)
_BLOBS = table_of(Blob)
_ATTACHMENTS = table_of(Attachment)
_TAKEN = (Outcome.CREATED.value, Outcome.COMMENTED.value, Outcome.IGNORED.value)


@dataclass
class Freed:
    """Rows a rule purged (or would purge) and the bytes that go with them."""

    rows: int = 0
    bytes: int = 0

    def as_json(self) -> dict[str, int]:
        return {"rows": self.rows, "bytes": self.bytes}


def describe(result: dict[str, dict[str, int]], verb: str) -> str:
    """One line per rule for people: ``raw_mail: freed 12 rows, 3400000 bytes``."""
    return "\n".join(
        f"{rule}: {verb} {f['rows']} rows, {f['bytes']} bytes" for rule, f in result.items()
    )


def _period(config: Config, rule: str) -> timedelta | None:
    period: timedelta | None = getattr(config.retention, rule)
    return period


def _outcomes(rule: str) -> tuple[str, ...]:
    """The ledger outcomes whose raw mail ``rule`` purges."""
    return (Outcome.QUARANTINED.value,) if rule == "quarantine" else _TAKEN


def _due(rule: str, cutoff: datetime, outcome: str | None = None) -> ColumnElement[bool]:
    """The rows ``rule`` purges at ``cutoff`` (of one ``outcome`` only, when given); each
    condition names its partial index's."""
    if rule == "sent_notifications":
        return and_(_OUTBOX.c.message.is_not(None), _OUTBOX.c.sent_at <= cutoff)
    return and_(
        _LEDGER.c.purged_at.is_(None),
        _LEDGER.c.outcome.in_(_outcomes(rule)) if outcome is None else _LEDGER.c.outcome == outcome,
        _LEDGER.c.received_at <= cutoff,
    )


def _size(rule: str) -> ColumnElement[Any]:
    if rule == "sent_notifications":
        return _OUTBOX.c.message_size
    return _LEDGER.c.size


def _table(rule: str) -> Any:
    return _OUTBOX if rule == "sent_notifications" else _LEDGER


def due(store: Store, config: Config, now: datetime) -> dict[str, Freed]:
    """What each rule would free now: one aggregate by index per rule, nothing written."""
    result = {rule: Freed() for rule in RULES}
    with store.reading() as conn:  # a read: never SQLite's write lock
        for rule in RULES:
            period = _period(config, rule)
            if period is None:
                continue
            rows, size = conn.execute(
                select(func.count(), func.coalesce(func.sum(_size(rule)), 0))
                .select_from(_table(rule))
                .where(_due(rule, now - period))
            ).one()
            result[rule] = Freed(int(rows), int(size))
    return result


def purge(store: Store, config: Config, now: datetime) -> dict[str, Freed]:
    """Apply every rule in batches; what was freed. Running it twice frees nothing more."""
    result = {rule: Freed() for rule in RULES}
    for rule in RULES:
        period = _period(config, rule)
        if period is None:
            continue
        freed = result[rule]
        for rows, size in _batches(store, rule, now - period, now):
            freed.rows += rows
            freed.bytes += size
    if any(freed.rows for freed in result.values()):
        log.info(
            "purged by [retention]: %s",
            ", ".join(f"{rule} {f.rows} rows, {f.bytes} bytes" for rule, f in result.items()),
        )
        give_back_space(store)
    return result


def _ranges(rule: str, cutoff: datetime) -> list[tuple[ColumnElement[Any], ColumnElement[bool]]]:
    """The index ranges ``rule`` walks, each with the column its index orders it by: one
    per outcome for the ledger. Over ``outcome IN (…)`` the index gives no single order, so
    every batch sorted every due row again to find its 200 oldest (a million at a time)."""
    if rule == "sent_notifications":
        return [(_OUTBOX.c.sent_at, _due(rule, cutoff))]
    return [(_LEDGER.c.received_at, _due(rule, cutoff, o)) for o in _outcomes(rule)]


def _batches(store: Store, rule: str, cutoff: datetime, now: datetime) -> Iterator[tuple[int, int]]:
    """Purge ``rule``'s due rows, a batch per transaction; rows and bytes of each batch.

    Each batch starts where the last one ended (``order >= start``): a purged row leaves
    the partial index, but on PostgreSQL its old entry stays there until a vacuum, and a
    batch that started from the first entry stepped over all of them again.
    """
    table = _table(rule)
    for order, due in _ranges(rule, cutoff):
        start: Any = None
        while True:
            with store.transaction() as session:
                conn = session.connection()
                query = select(table.c.id, _size(rule), order).where(due)
                if start is not None:
                    query = query.where(order >= start)
                batch = conn.execute(query.order_by(order).limit(PURGE_BATCH)).all()
                if not batch:
                    break
                ids = [row[0] for row in batch]
                if rule == "sent_notifications":
                    conn.execute(update(_OUTBOX).where(_OUTBOX.c.id.in_(ids)).values(message=None))
                else:
                    _purge_raw(conn, ids, now)
            start = batch[-1][2]
            yield len(batch), sum(int(row[1] or 0) for row in batch)
            if len(batch) < PURGE_BATCH:
                break


def _purge_raw(conn: Connection, ids: list[int], now: datetime) -> None:
    """Keep each entry's headers, drop its raw bytes, and delete the blobs nobody holds."""
    entries = conn.execute(
        select(_LEDGER.c.id, _LEDGER.c.sha256, func.substr(_LEDGER.c.raw, 1, HEADERS_KEPT)).where(
            _LEDGER.c.id.in_(ids)
        )
    ).all()
    # A large raw mail (SQLite) lives in blobs under its digest, with an empty ``raw``.
    in_blobs = {sha for _, sha, head in entries if not head}
    heads: dict[str, bytes] = {}
    if in_blobs:
        found = conn.execute(
            select(_BLOBS.c.sha256, func.substr(_BLOBS.c.data, 1, HEADERS_KEPT)).where(
                _BLOBS.c.sha256.in_(in_blobs)
            )
        )
        heads = {sha: bytes(head) for sha, head in found}
    kept = [
        (entry, {"raw": header_section(bytes(head or heads.get(sha) or b"")), "purged_at": now})
        for entry, sha, head in entries
    ]
    update_each(conn, _LEDGER, kept)
    if in_blobs:
        conn.execute(
            delete(_BLOBS).where(
                _BLOBS.c.sha256.in_(in_blobs),
                ~exists().where(_ATTACHMENTS.c.sha256 == _BLOBS.c.sha256),
                ~exists().where(_LEDGER.c.sha256 == _BLOBS.c.sha256, _LEDGER.c.purged_at.is_(None)),
            )
        )


def header_section(raw: bytes) -> bytes:
    """A mail's header lines (RFC 5322 2.2), up to the blank line before the body or the
    first line that is no header: bytes that never were a mail keep nothing."""
    kept = 0
    for line in raw.splitlines(keepends=True):
        if not (_HEADER_LINE.match(line) or (kept and line[:1] in (b" ", b"\t"))):
            break
        kept += len(line)
    return raw[:kept]


_HEADER_LINE = re.compile(rb"[!-9;-~]+:")


def give_back_space(store: Store) -> int:
    """SQLite: return the pages a purge emptied to the file system; pages returned.

    Only a database created with ``auto_vacuum=INCREMENTAL`` (every new one) can; an older
    one needs ``mailgate purge --vacuum`` once. In steps of :data:`VACUUM_STEP` pages, each
    its own transaction, so ingest waits no longer than for one of them.
    """
    if store.dialect != "sqlite":
        return 0
    returned, before = 0, None
    while True:
        with store.transaction() as session:
            conn = session.connection()
            if conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() != 2:  # 2: incremental
                return returned
            free = int(conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0)
            if not free or (before is not None and free >= before):  # none, or none given
                return returned
            before = free
            step = min(free, VACUUM_STEP)
            conn.exec_driver_sql(f"PRAGMA incremental_vacuum({step})")
            returned += step


def vacuum(store: Store) -> None:
    """SQLite: rebuild the file with incremental auto-vacuum, so later purges give space back.

    ``VACUUM`` writes a copy of the database (free disk as large as the file is needed) and
    holds the write lock throughout: ingest answers 451 meanwhile if it takes longer than
    ``lock_timeout``. PostgreSQL's autovacuum reuses the space by itself.
    """
    if store.dialect != "sqlite":
        return
    with store.driver_connection() as driver:
        driver.execute("PRAGMA auto_vacuum=INCREMENTAL")
        driver.execute("VACUUM")

"""The ingest ledger: one row per mail we answered 250 for, with what became of it.

A mail's row is written before anything else in its transaction. Its unique dedup key
makes a redelivery (an MTA retrying, two MX hosts) a no-op instead of a second ticket;
its outcome and reason are filled in when the decision is written, in the same commit.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from mailgate.db.fastexec import Prebuilt, insert_once
from mailgate.db.records import ensure_blob, is_large
from mailgate.models import LedgerEntry, Organization, Outcome, Ticket, table_of
from mailgate.pipeline.prepare import dedup_key
from mailgate.pipeline.reading import InboundEnvelope

_INBOUND = table_of(LedgerEntry)


def claim(
    session: Session,
    raw: bytes,
    envelope: InboundEnvelope,
    now: datetime,
    message_id: str,
    reprocess: int | None,
    digests: tuple[str, str] | None = None,
    dkim: str | None = None,
) -> tuple[int, dict[str, Any]] | None:
    """The ledger row this mail's outcome goes to: a new one, or the quarantined entry
    being reprocessed; with what :func:`record` must write along with the outcome (a new
    row's raw mail, see :func:`_raw_later`; a reprocessed row's fresh DKIM result).

    None means there is nothing to do: a redelivery, or an entry already reprocessed (the
    row lock and the outcome check make a second reprocess of the same entry a no-op).
    """
    if reprocess is not None:
        current = session.execute(
            select(LedgerEntry.outcome).where(LedgerEntry.id == reprocess).with_for_update()
        ).scalar()
        if current != Outcome.QUARANTINED:
            return None
        return reprocess, {"dkim": dkim, "error": None}
    later = _raw_later(session, raw)
    entry = _insert(session, raw, envelope, now, message_id, dkim, digests, bool(later))
    if entry is None:
        return None
    return entry, later


def first_copy(
    session: Session,
    raw: bytes,
    message_id: str,
    reprocess: int | None,
    digests: tuple[str, str] | None = None,
) -> tuple[int | None, str | None]:
    """The ticket, and its organization, that the stored copy of a redelivered mail went to.

    Asked only when :func:`claim` found the mail already stored, so a new mail pays no
    statement for it. The MTA (or the admin piping the mail in again) then learns where
    the first copy went instead of "no ticket". (None, None) when that copy made none:
    ignored, quarantined.
    """
    query = (
        select(LedgerEntry.ticket_id, Organization.name)
        .outerjoin(Ticket, Ticket.id == LedgerEntry.ticket_id)
        .outerjoin(Organization, Organization.id == Ticket.organization_id)
    )
    if reprocess is not None:
        query = query.where(LedgerEntry.id == reprocess)
    else:
        key = digests[0] if digests else dedup_key(message_id, raw)
        query = query.where(LedgerEntry.dedup_key == key)
    row = session.execute(query).first()
    return (row[0], row[1]) if row is not None else (None, None)


def record(session: Session, entry: int, **values: Any) -> None:
    """What became of the mail, written to its ledger row (which holds the raw mail too)."""
    _SET_LEDGER.run(session.connection(), {"entry": entry, **values})


def _insert(
    session: Session,
    raw: bytes,
    envelope: InboundEnvelope,
    now: datetime,
    message_id: str,
    dkim: str | None,
    digests: tuple[str, str] | None,
    raw_later: bool,
) -> int | None:
    """Insert the raw mail; its ledger id, or None when it is already stored (a redelivery).

    One statement: when a concurrent instance stored the same mail first, the unique dedup
    key makes the insert do nothing, and this mail a duplicate, without failing the
    transaction.
    """
    conn = session.connection()
    large = is_large(conn, raw)
    key, sha256 = digests or (dedup_key(message_id, raw), hashlib.sha256(raw).hexdigest())
    values = {
        "message_id": message_id,
        "dedup_key": key,
        "mail_from": envelope.mail_from or "",
        "rcpt_to": list(envelope.rcpt_to),
        "raw": b"" if large or raw_later else raw,
        "size": len(raw),
        "sha256": sha256,
        "received_at": now,
        "outcome": Outcome.CREATED.value,
        "reason": "",
        "error": None,
        "dkim": dkim,
    }
    entry: int | None = insert_once(conn, _INBOUND, "dedup_key", "id").run(conn, values).scalar()
    if entry is not None and large:
        ensure_blob(conn, raw, sha256)  # read back with store.raw_mail
    return entry


def _raw_later(session: Session, raw: bytes) -> dict[str, bytes]:
    """For a new ledger row: the raw mail, to be written with the outcome and not before.

    SQLite writes a row anew at every UPDATE, so a row inserted with its raw mail and then
    given its outcome had the mail written twice: for a 200 kB mail, fifty pages more in
    the log at each commit. Empty: the raw mail goes in with the row (a large one goes to
    ``blobs``).
    """
    if is_large(session.connection(), raw):
        return {}
    return {"raw": raw}


_SET_LEDGER = Prebuilt(update(_INBOUND).where(_INBOUND.c.id == bindparam("entry")))

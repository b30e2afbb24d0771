"""The one place where the decisions meet the store: prepare, gather, decide, apply.

Every entry point (SMTP, LMTP, the ``ingest`` pipe command, the reprocessing of quarantined
mail) calls :func:`ingest` or :func:`ingest_batch`. A mail is prepared without the
database (:mod:`mailgate.pipeline.prepare`); then, in one transaction, its ledger row is
claimed (:mod:`mailgate.db.ledger`), the facts are read (:mod:`mailgate.db.gather`),
:func:`~mailgate.pipeline.decide.decide` says what it becomes and
:func:`~mailgate.db.apply.apply` writes that. So a mail we answered 250 for is always in
the ledger exactly once: as a ticket, a comment, ignored with a reason, or quarantined.
Only a database that cannot be written escapes as :class:`StoreUnavailable`, so the
sender retries.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailgate.config import Config
from mailgate.db import ledger
from mailgate.db.apply import apply
from mailgate.db.gather import gather
from mailgate.db.records import ensure_secret, raw_mail
from mailgate.dkim_check import DnsLookup
from mailgate.errors import StoreUnavailable
from mailgate.health import INGEST_SECONDS, MESSAGES
from mailgate.models import LedgerEntry, Outcome
from mailgate.pipeline.decide import decide
from mailgate.pipeline.facts import Facts
from mailgate.pipeline.inputs import usable
from mailgate.pipeline.prepare import UNPARSEABLE, Prepared, dedup_key, prepare
from mailgate.pipeline.reading import InboundEnvelope, Mail
from mailgate.routing import Router
from mailgate.store import Store, is_temporary

log = logging.getLogger(__name__)

__all__ = [
    "UNPARSEABLE",
    "InboundEnvelope",
    "IngestResult",
    "Prepared",
    "dedup_key",
    "ingest",
    "ingest_batch",
    "prepare",
    "reprocess_quarantined",
]

DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What became of one mail; ``as_json`` is the contract ``mailgate ingest`` prints."""

    action: str  # created | commented | duplicate | ignored | quarantined
    ticket: int | None
    organization: str | None
    message_id: str
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "ticket": self.ticket,
            "organization": self.organization,
            "message_id": self.message_id,
            "reason": self.reason,
        }


def ingest(
    store: Store,
    config: Config,
    raw: bytes,
    envelope: InboundEnvelope,
    now: datetime,
    router: Router | None = None,
    reprocess: int | None = None,
    dkim_dns: DnsLookup | None = None,
) -> IngestResult:
    """Store one mail and turn it into a ticket; idempotent per mail.

    ``router`` is built from ``config`` when not given; long-running callers build it once
    per config load and pass it in. ``reprocess`` names a quarantined ledger entry whose
    raw mail this is: it is processed again in place, exactly once.
    """
    started = time.perf_counter()
    prepared = prepare(config, raw, envelope, now, dkim_dns)
    result = _store(store, router or Router(config), prepared, reprocess)
    seconds = time.perf_counter() - started
    log_result(result, seconds)
    count_result(result, seconds)
    return result


def ingest_batch(
    store: Store,
    router: Router,
    mails: Sequence[tuple[bytes, InboundEnvelope, datetime] | Prepared],
    dkim_dns: DnsLookup | None = None,
) -> list[tuple[IngestResult | StoreUnavailable, float]]:
    """Store mails that arrived together in one transaction (group commit).

    Each mail gets what :func:`ingest` would give it, with the seconds it took, or the
    :class:`StoreUnavailable` that means 451 for its sender. Parsing and the other pure
    work happen before the write lock is taken, or already happened in a parser process
    (the mail comes :class:`Prepared`).
    When the group cannot be committed, every mail is stored on its own, so one mail's
    trouble never makes the others' senders retry.
    """
    started = time.perf_counter()
    prepared = [
        mail if isinstance(mail, Prepared) else prepare(router.config, *mail, dkim_dns)
        for mail in mails
    ]
    outcomes: list[IngestResult | StoreUnavailable] = []
    try:
        with store.batch():
            outcomes = [_store(store, router, p, None) for p in prepared]
    except StoreUnavailable as exc:
        if len(prepared) == 1:
            outcomes = [exc]
        else:
            log.warning("group of %d mails not committed (%s); storing each alone", len(mails), exc)
            outcomes = []
            for p in prepared:
                try:
                    outcomes.append(_store(store, router, p, None))
                except StoreUnavailable as single:
                    outcomes.append(single)
    seconds = time.perf_counter() - started
    for outcome in outcomes:
        if isinstance(outcome, IngestResult):
            log_result(outcome, seconds)
    return [(outcome, seconds) for outcome in outcomes]


def log_result(result: IngestResult, seconds: float) -> None:
    """One line per mail, key=value, for the log pipeline and for people."""
    log.log(
        logging.WARNING if result.action == Outcome.QUARANTINED else logging.INFO,
        "message_id=%s action=%s ticket=%s organization=%s duration_ms=%.1f reason=%s",
        json.dumps(result.message_id),
        result.action,
        result.ticket,
        json.dumps(result.organization, ensure_ascii=False),
        seconds * 1000,
        json.dumps(result.reason, ensure_ascii=False),
    )


def count_result(result: IngestResult, seconds: float) -> None:
    """The metrics of the process that serves ``/metrics`` (workers report back to it)."""
    MESSAGES.labels(result.action).inc()
    INGEST_SECONDS.observe(seconds)


def _store(store: Store, router: Router, prepared: Prepared, reprocess: int | None) -> IngestResult:
    """The database part of ingest; a processing error quarantines the mail, with the error."""
    try:
        return _decide_and_apply(store, router, prepared, reprocess)
    except StoreUnavailable:
        raise
    except Exception as exc:
        if is_temporary(exc):
            raise StoreUnavailable(str(exc)) from exc
        # A bug or an input we did not foresee: keep the mail, with the error, for an admin.
        log.exception("processing %s failed; quarantined", prepared.message_id)
        reason = f"processing failed: {type(exc).__name__}: {exc}"
        return _quarantine(store, prepared, reprocess, reason, traceback.format_exc())


def _decide_and_apply(
    store: Store, router: Router, prepared: Prepared, reprocess: int | None
) -> IngestResult:
    """Claim the ledger row, gather the facts, decide, apply: one transaction."""
    mail, message_id, now = prepared.mail, prepared.message_id, prepared.now
    hints = usable(prepared.hints, router)  # None: decide does that work itself
    with store.transaction() as session:
        dkim = str(prepared.dkim) if prepared.dkim is not None else None
        claimed = ledger.claim(
            session,
            prepared.raw,
            prepared.envelope,
            now,
            message_id,
            reprocess,
            prepared.digests,
            dkim,
        )
        if claimed is None:
            return _duplicate(session, prepared, reprocess)
        entry, extra = claimed
        facts = Facts()  # input that is no mail needs none
        if isinstance(mail, Mail):
            secret = router.config.mail.secret or ensure_secret(session)
            tag_regex = router.config.tickets.tag_regex
            facts = gather(session.connection(), mail, tag_regex, secret, now)
            facts = replace(facts, support_open=router.hours.is_open(now))
        decision = decide(mail, facts, router, hints)
        message = mail.message if isinstance(mail, Mail) else None
        applied = apply(session, router.config, message, entry, decision, now)
        ledger.record(
            session,
            entry,
            outcome=decision.outcome.value,
            reason=decision.reason,
            ticket_id=applied.ticket,
            **extra,
        )
    return IngestResult(
        decision.outcome.value, applied.ticket, applied.organization, message_id, decision.reason
    )


def _duplicate(session: Session, prepared: Prepared, reprocess: int | None) -> IngestResult:
    """A redelivery: nothing is written; the answer names the ticket the first copy went to."""
    ticket, organization = ledger.first_copy(
        session, prepared.raw, prepared.message_id, reprocess, prepared.digests
    )
    reason = "this mail is already stored"
    return IngestResult(DUPLICATE, ticket, organization, prepared.message_id, reason)


def _quarantine(
    store: Store, prepared: Prepared, reprocess: int | None, reason: str, error: str
) -> IngestResult:
    """Keep a mail whose processing failed, in a transaction of its own, for an admin."""
    with store.transaction() as session:
        claimed = ledger.claim(
            session,
            prepared.raw,
            prepared.envelope,
            prepared.now,
            prepared.message_id,
            reprocess,
            prepared.digests,
        )
        if claimed is None:
            return _duplicate(session, prepared, reprocess)
        entry, extra = claimed
        extra.update(outcome=Outcome.QUARANTINED.value, reason=reason, error=error)
        ledger.record(session, entry, **extra)
    return IngestResult(Outcome.QUARANTINED.value, None, None, prepared.message_id, reason)


def reprocess_quarantined(
    store: Store, config: Config, now: datetime, ids: list[int] | None = None
) -> list[tuple[int, IngestResult]]:
    """Process quarantined mail again (after an admin fixed the config), each exactly once."""
    query = select(LedgerEntry.id).where(LedgerEntry.outcome == Outcome.QUARANTINED.value)
    if ids is not None:
        query = query.where(LedgerEntry.id.in_(ids))
    else:  # all: those [retention] purged have no mail left to process (one named says so)
        query = query.where(LedgerEntry.purged_at.is_(None))
    with store.transaction() as session:
        todo = list(session.scalars(query.order_by(LedgerEntry.id)))
    router = Router(config)
    results: list[tuple[int, IngestResult]] = []
    for entry in todo:
        with store.transaction() as session:
            row = session.get(LedgerEntry, entry)
            if row is None:
                continue
            raw = raw_mail(session, row)
            envelope = InboundEnvelope(row.mail_from, tuple(row.rcpt_to))
        results.append((entry, ingest(store, config, raw, envelope, now, router, reprocess=entry)))
    return results

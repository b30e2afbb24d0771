"""The one place where the decisions meet the store.

Every entry point (SMTP, LMTP, the ``ingest`` pipe command, later the reprocessing of
quarantined mail) calls :func:`ingest`. It stores the raw mail and what became of it in one
transaction, so a mail we answered 250 for is always in the ledger exactly once: as a
ticket, a comment, ignored with a reason, or quarantined with its error. Only a database
that cannot be written escapes as :class:`StoreUnavailable`, so the sender retries.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.orm import Session

from mailgate.bounces import analyse_bounce, is_bounce
from mailgate.config import Config
from mailgate.dkim_check import DkimResult, DnsLookup
from mailgate.dkim_check import verify as verify_dkim
from mailgate.errors import NotFound, Refused, StoreUnavailable
from mailgate.filters import auto_reply_reason
from mailgate.health import INGEST_SECONDS, MESSAGES
from mailgate.models import (
    Attachment,
    Comment,
    Follower,
    Membership,
    Organization,
    Outbox,
    Outcome,
    Participant,
    Status,
    Suppression,
    Ticket,
    User,
)
from mailgate.models import InboundMessage as InboundRow
from mailgate.newlines import as_lf
from mailgate.outbound import LOOP_HEADER
from mailgate.parser import InboundMessage, UnparseableMessage, parse, synthesized_message_id
from mailgate.quotes import forwarded_original, strip_quoted
from mailgate.routing import RouteDecision, Router, domain_of, normalize_subject
from mailgate.secrets_scan import mask_secrets as scan_and_mask
from mailgate.store import (
    Prebuilt,
    Store,
    ensure_blob,
    ensure_secret,
    insert_once,
    is_large,
    is_temporary,
    raw_mail,
    update_ticket,
    user_id,
)
from mailgate.threads import (
    COMMANDS,
    NO_REFERENCE,
    Command,
    Reference,
    ThreadMatch,
    TicketFacts,
    is_private,
    match_thread,
    names_a_ticket,
    split_commands,
    status_after_reply,
    ticket_from_tag,
    ticket_from_token,
)

log = logging.getLogger(__name__)

DUPLICATE = "duplicate"
UNPARSEABLE = "unparseable"  # reason prefix: the input is no mail (pipe exit 65)
RATE_LIMITED = "rate_limited"  # reason prefix: too many new tickets from one sender
NO_SUBJECT = "(no subject)"


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope: who handed the mail to us and for whom."""

    mail_from: str = ""
    rcpt_to: tuple[str, ...] = ()


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


# Header fields that identify a mail; trace fields (Received, Return-Path, DKIM, ARC, …)
# are added in transit and differ between two deliveries of the same mail.
_IDENTITY_FIELDS = (b"from", b"to", b"cc", b"subject", b"date", b"message-id")


def dedup_key(message_id: str, raw: bytes) -> str:
    """The idempotency key: the Message-ID plus what the sender wrote.

    A redelivery of the same mail (an MTA retrying after 451, the same mail via two MX
    hosts, CRLF or LF line endings) gets the same key and is a duplicate. A *different*
    mail that reuses a Message-ID (broken mailers, scanners, test tools do) gets another
    key and is stored, because mailgate never drops mail it answered 250 for.

    The text is read with line endings made LF, in pieces, so a large mail is never
    copied whole (the key of a mail must not change between versions: stored keys decide
    what a redelivery is).
    """
    pieces = _lf_pieces(raw)
    head = b""
    body_start = b""
    for piece in pieces:
        # The previous piece's last byte may be the first "\n" of the blank line.
        index = (head[-1:] + piece).find(b"\n\n")
        if index >= 0:
            split = len(head) - len(head[-1:]) + index
            head += piece
            head, body_start = head[:split], head[split + 2 :]
            break
        head += piece
    else:
        pieces = iter(())  # no blank line: all header, no body
    fields: list[bytes] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b" " + line.strip()
        else:
            fields.append(line.strip())
    digest = hashlib.sha256(message_id.encode("utf-8", "replace"))
    # Only identity fields are hashed; dropping the others before the sort keeps the order.
    identity = []
    for field in fields:
        name, _, value = field.partition(b":")
        name = name.strip().lower()
        if name in _IDENTITY_FIELDS:
            identity.append((field, name, value))
    for _, name, value in sorted(identity):
        digest.update(b"\0" + name + b":" + b" ".join(value.split()))
    digest.update(b"\0")
    # The body without trailing whitespace: whitespace is held back until more text follows.
    held = b""
    for piece in itertools.chain((body_start,), pieces):
        kept = piece.rstrip()
        if kept:
            digest.update(held + kept)
            held = piece[len(kept) :]
        else:
            held += piece
    return digest.hexdigest()


_PIECE = 1 << 20


def _lf_pieces(raw: bytes) -> Iterator[bytes]:
    """``raw`` with CRLF and lone CR as LF, about a megabyte at a time."""
    view = memoryview(raw)
    start, size = 0, len(raw)
    while start < size:
        end = min(size, start + _PIECE)
        while end < size and raw[end - 1] == 0x0D:  # a CR's partner may be the next byte
            end += 1
        piece = raw if end - start == size else bytes(view[start:end])
        yield as_lf(piece)
        start = end


def ingest(
    store: Store,
    config: Config,
    raw: bytes,
    envelope: Envelope,
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
    mails: Sequence[tuple[bytes, Envelope, datetime] | Prepared],
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


@dataclass(frozen=True, slots=True)
class Prepared:
    """A mail after the pure part of ingest: parsed (or why not) and checked.

    ``digests`` (dedup key, SHA-256) and ``ahead`` are work the store would otherwise do
    under the write lock; the single SQLite writer is the one serial stage, so whatever
    needs no database is done here, in a parser process under ``serve``.
    """

    raw: bytes
    envelope: Envelope
    now: datetime
    message: InboundMessage | None
    unparseable: str | None = None
    dkim: DkimResult | None = None
    digests: tuple[str, str] | None = None
    ahead: Ahead | None = None


def prepare(
    config: Config,
    raw: bytes,
    envelope: Envelope,
    now: datetime,
    dkim_dns: DnsLookup | None = None,
    router: Router | None = None,
) -> Prepared:
    """Parse and check one mail without the database; never raises for any input.

    With ``router`` (built from ``config``) it also routes and cleans the mail ahead, for
    whichever way the store takes it (new ticket or reply): see :class:`Ahead`.
    """
    try:
        message = parse(raw)
    except UnparseableMessage as exc:
        return Prepared(raw, envelope, now, None, f"{UNPARSEABLE}: {exc}")
    dkim = verify_dkim(raw, dkim_dns) if config.security.verify_dkim else None
    digests = (dedup_key(message.message_id, raw), hashlib.sha256(raw).hexdigest())
    ahead = _ahead(router, message, envelope) if router is not None else None
    return Prepared(raw, envelope, now, message, dkim=dkim, digests=digests, ahead=ahead)


@dataclass(frozen=True, slots=True)
class Ahead:
    """The config-dependent pure work on a mail, done before the store needs it.

    The store takes it only when its own config has the same ``fingerprint`` (a reload may
    fall between parsing and storing); otherwise it does the work again itself.
    """

    fingerprint: str
    ticket: TicketPlan | None = None  # the ticket a mail that names none would open
    stripped: str | None = None  # a reply's text without quoted history
    reply: tuple[str, bool] | None = None  # that text with credentials masked, and if any were


def _ahead(router: Router, message: InboundMessage, envelope: Envelope) -> Ahead | None:
    """Only the work the store will certainly need: CPU is the scarce resource."""
    if is_bounce(message, envelope.mail_from):
        return None
    mail = _mail_of(message, envelope)
    if mail is None:
        return None
    references = (*message.in_reply_to, *message.references)
    if names_a_ticket(mail.recipients, references, mail.subject, router.config.tickets.tag_regex):
        stripped = strip_quoted(message.text)  # most likely a reply (or a follow-up)
        return Ahead(router.fingerprint, stripped=stripped, reply=mask_secrets(stripped))
    if mail.auto_reply:
        return None  # to no ticket: ignored
    return Ahead(router.fingerprint, ticket=ticket_plan(router, mail))


def _store(store: Store, router: Router, prepared: Prepared, reprocess: int | None) -> IngestResult:
    """The database part of ingest: the ledger entry and what the mail becomes."""
    raw, envelope, now, message = prepared.raw, prepared.envelope, prepared.now, prepared.message
    if message is None:
        reason = prepared.unparseable or UNPARSEABLE
        message_id = synthesized_message_id(raw)
        return _quarantine(store, raw, envelope, now, message_id, reason, None, reprocess)
    ahead = prepared.ahead
    if ahead is not None and ahead.fingerprint != router.fingerprint:
        ahead = None  # prepared with another config: the store redoes it with its own
    try:
        return _ingest_parsed(store, router, prepared, message, reprocess, ahead)
    except StoreUnavailable:
        raise
    except Exception as exc:
        if is_temporary(exc):
            raise StoreUnavailable(str(exc)) from exc
        # A bug or an input we did not foresee: keep the mail, with the error, for an admin.
        log.exception("processing %s failed; quarantined", message.message_id)
        return _quarantine(
            store,
            raw,
            envelope,
            now,
            message.message_id,
            f"processing failed: {type(exc).__name__}: {exc}",
            traceback.format_exc(),
            reprocess,
        )


def _new_inbound(
    session: Session,
    raw: bytes,
    envelope: Envelope,
    now: datetime,
    message_id: str,
    outcome: Outcome,
    reason: str,
    error: str | None = None,
    dkim: str | None = None,
    digests: tuple[str, str] | None = None,
    raw_later: bool = False,
) -> int | None:
    """Insert the raw mail; its ledger id, or None when it is already stored (a redelivery).

    One statement: when a concurrent instance stored the same mail first, the unique dedup
    key makes the insert do nothing, and this mail a duplicate, without failing the
    transaction. With ``raw_later`` the raw mail comes with the outcome (see
    :func:`_raw_later`).
    """
    conn = session.connection()
    large = is_large(conn, raw)
    key, sha256 = digests or (dedup_key(message_id, raw), hashlib.sha256(raw).hexdigest())
    values = {
        "message_id": message_id,
        "dedup_key": key,
        "mail_from": envelope.mail_from,
        "rcpt_to": list(envelope.rcpt_to),
        "raw": b"" if large or raw_later else raw,
        "size": len(raw),
        "sha256": sha256,
        "received_at": now,
        "outcome": outcome.value,
        "reason": reason,
        "error": error,
        "dkim": dkim,
    }
    entry: int | None = insert_once(conn, _INBOUND, "dedup_key", "id").run(conn, values).scalar()
    if entry is not None and large:
        ensure_blob(conn, raw, sha256)  # read back with store.raw_mail
    return entry


_INBOUND = InboundRow.__table__


def _ledger_entry(
    session: Session,
    raw: bytes,
    envelope: Envelope,
    now: datetime,
    message_id: str,
    outcome: Outcome,
    reason: str,
    reprocess: int | None,
    error: str | None = None,
    dkim: str | None = None,
    digests: tuple[str, str] | None = None,
    raw_later: bool = False,
) -> int | None:
    """The ledger row for this mail: a new one, or the quarantined one being reprocessed.

    None means there is nothing to do: a redelivery, or an entry already reprocessed (the
    row lock and the outcome check make a second reprocess of the same entry a no-op).
    """
    if reprocess is None:
        return _new_inbound(
            session,
            raw,
            envelope,
            now,
            message_id,
            outcome,
            reason,
            error,
            dkim,
            digests,
            raw_later,
        )
    current = session.execute(
        select(InboundRow.outcome).where(InboundRow.id == reprocess).with_for_update()
    ).scalar()
    if current != Outcome.QUARANTINED:
        return None
    _set_ledger(session, reprocess, outcome=outcome.value, reason=reason, error=error, dkim=dkim)
    return reprocess


def _raw_later(session: Session, raw: bytes, reprocess: int | None) -> dict[str, bytes] | None:
    """For a new ledger row whose outcome is set later in the same transaction: the raw
    mail, to be written with the outcome (``_set_ledger(..., **later)``) and not before.

    SQLite writes a row anew at every UPDATE, so a row inserted with its raw mail and then
    given its outcome had the mail written twice: for a 200 kB mail, fifty pages more in
    the log at each commit. None: the raw mail goes in with the row (a reprocessed entry
    has it already; a large one goes to ``blobs``).
    """
    if reprocess is not None or is_large(session.connection(), raw):
        return None
    return {"raw": raw}


def _set_ledger(session: Session, entry: int, **values: Any) -> None:
    """What became of the mail, written to its ledger row (which holds the raw mail too)."""
    _SET_LEDGER.run(session.connection(), {"entry": entry, **values})


_SET_LEDGER = Prebuilt(update(_INBOUND).where(_INBOUND.c.id == bindparam("entry")))


def _duplicate(message_id: str) -> IngestResult:
    return IngestResult(DUPLICATE, None, None, message_id, "this mail is already stored")


def _quarantine(
    store: Store,
    raw: bytes,
    envelope: Envelope,
    now: datetime,
    message_id: str,
    reason: str,
    error: str | None,
    reprocess: int | None = None,
) -> IngestResult:
    with store.transaction() as session:
        entry = _ledger_entry(
            session, raw, envelope, now, message_id, Outcome.QUARANTINED, reason, reprocess, error
        )
        if entry is None:
            return _duplicate(message_id)
    return IngestResult(Outcome.QUARANTINED.value, None, None, message_id, reason)


def requester_address(message: InboundMessage, envelope: Envelope) -> tuple[str, str] | None:
    """Who asks: the From header, else the envelope sender; None when there is neither."""
    if message.from_ is not None and message.from_.email:
        return message.from_.email, message.from_.name
    if envelope.mail_from and "@" in envelope.mail_from:
        return envelope.mail_from.lower(), ""
    return None


def is_ours(email: str, config: Config) -> bool:
    """An address on one of our own domains (the support address and its aliases)."""
    return domain_of(email) in config.mail.domains


def participant_addresses(
    message: InboundMessage, requester: str, config: Config
) -> tuple[tuple[str, str], ...]:
    """To/Cc addresses of a new ticket that are neither ours, the requester nor agents."""
    seen: dict[str, str] = {}
    for address in (*message.to, *message.cc):
        email = address.email
        if (
            not email
            or email == requester
            or is_ours(email, config)
            or email in config.agents.addresses
        ):
            continue
        seen.setdefault(email, address.name)
    return tuple(seen.items())


def _mail_of(
    message: InboundMessage,
    envelope: Envelope,
    dkim: DkimResult | None = None,
    ahead: Ahead | None = None,
) -> _Mail | None:
    """The facts every branch needs; None when the mail names no sender at all."""
    sender = requester_address(message, envelope)
    if sender is None:
        return None
    recipients = (*envelope.rcpt_to, *(a.email for a in (*message.to, *message.cc)))
    reason = auto_reply_reason(message)
    return _Mail(message, sender[0], sender[1], recipients, reason, dkim, ahead)


def _ingest_parsed(
    store: Store,
    router: Router,
    prepared: Prepared,
    message: InboundMessage,
    reprocess: int | None = None,
    ahead: Ahead | None = None,
) -> IngestResult:
    config = router.config
    raw, envelope, now, dkim = prepared.raw, prepared.envelope, prepared.now, prepared.dkim
    if is_bounce(message, envelope.mail_from):
        return _bounce(store, config, raw, envelope, message, now, reprocess)
    mail = _mail_of(message, envelope, dkim, ahead)
    if mail is None:
        reason = "no sender address (From)"
        return _quarantine(store, raw, envelope, now, message.message_id, reason, None, reprocess)

    with store.transaction() as session:
        dkim_text = str(dkim) if dkim is not None else None
        later = _raw_later(session, raw, reprocess)
        inbound = _ledger_entry(
            session,
            raw,
            envelope,
            now,
            message.message_id,
            Outcome.CREATED,
            "",
            reprocess,
            dkim=dkim_text,
            digests=prepared.digests,
            raw_later=later is not None,
        )
        if inbound is None:
            return _duplicate(message.message_id)
        conn = session.connection()
        secret = config.mail.secret or ensure_secret(session)
        token, references, tag, rows = _thread_facts(conn, mail, config, secret)
        match = match_thread(mail.sender, router.agents, token, references, tag)
        ticket = rows[match.ticket.id] if match.ticket is not None else None
        loop = own_mail(message, config)
        recent = _recent_tickets(conn, mail.sender, now) if ticket is None else 0
        if loop is not None:
            outcome, reason, ticket = Outcome.IGNORED, loop, None
        elif ticket is None:
            if mail.auto_reply:
                outcome, reason = Outcome.IGNORED, f"auto-reply ({mail.auto_reply}) to no ticket"
            elif recent >= config.limits.tickets_per_hour:
                outcome = Outcome.QUARANTINED
                reason = f"{RATE_LIMITED}: {recent} new tickets from {mail.sender} in the last hour"
            else:
                quiet = recent >= config.limits.acks_per_hour
                ticket, reason = _new_ticket(conn, router, mail, inbound, match, now, quiet)
                outcome = Outcome.CREATED
        elif ticket.status == Status.CLOSED:
            if mail.auto_reply:
                outcome = Outcome.IGNORED
                reason = f"auto-reply ({mail.auto_reply}) to closed ticket #{ticket.id}"
                ticket = None
            else:
                ticket, reason = _follow_up(conn, router, ticket, mail, inbound, now)
                outcome = Outcome.CREATED
        else:
            ticket, reason = _reply(session, router, ticket, mail, inbound, match, now)
            outcome = Outcome.COMMENTED
        ticket_id = ticket.id if ticket is not None else None
        _set_ledger(
            session,
            inbound,
            outcome=outcome.value,
            reason=reason,
            ticket_id=ticket_id,
            **(later or {}),
        )
        org_name = ticket.organization if ticket is not None else None
    return IngestResult(outcome.value, ticket_id, org_name, message.message_id, reason)


@dataclass(frozen=True, slots=True)
class _Mail:
    """The parsed mail with the facts every branch of ingest needs."""

    message: InboundMessage
    sender: str
    name: str
    recipients: tuple[str, ...]
    auto_reply: str | None
    dkim: DkimResult | None = None
    ahead: Ahead | None = None  # work done before the store, when done with its config

    @property
    def subject(self) -> str:
        return self.message.subject.strip() or NO_SUBJECT


# Every mail runs this module's statements, in the one SQLite writer: Core statements run
# as Prebuilt on the session's connection (a quarter of the ORM's CPU, and a sixth of
# Connection.execute's per call; measured with bench/ingest_cpu.py). The ORM stays for
# the rare paths (agent commands, bounces).
_TICKETS = Ticket.__table__
_USERS = User.__table__
_ORGS = Organization.__table__
_MEMBERS = Membership.__table__
_FOLLOWERS = Follower.__table__
_PARTICIPANTS = Participant.__table__
_COMMENTS = Comment.__table__
_ATTACHMENTS = Attachment.__table__
_OUTBOX = Outbox.__table__
_SUPPRESSIONS = Suppression.__table__


@dataclass(slots=True)
class _TicketRow:
    """The columns of a ticket that ingest works with, read in one query."""

    id: int
    subject: str
    status: str
    organization_id: int | None
    organization: str | None
    requester_id: int
    requester: str
    priority: str
    tags: list[str]


_TICKET_QUERY = Prebuilt(
    select(
        _TICKETS.c.id,
        _TICKETS.c.subject,
        _TICKETS.c.status,
        _TICKETS.c.organization_id,
        _ORGS.c.name,
        _TICKETS.c.requester_id,
        _USERS.c.email,
        _TICKETS.c.priority,
        _TICKETS.c.tags,
    )
    .select_from(
        _TICKETS.join(_USERS, _USERS.c.id == _TICKETS.c.requester_id).outerjoin(
            _ORGS, _ORGS.c.id == _TICKETS.c.organization_id
        )
    )
    .where(_TICKETS.c.id == bindparam("ticket"))
)


def _load_ticket(conn: Connection, ticket_id: int) -> _TicketRow | None:
    row = _TICKET_QUERY.run(conn, {"ticket": ticket_id}).first()
    return _TicketRow(*row) if row is not None else None


_PARTICIPANT_EMAILS = Prebuilt(
    select(_USERS.c.email)
    .join(_PARTICIPANTS, _PARTICIPANTS.c.user_id == _USERS.c.id)
    .where(_PARTICIPANTS.c.ticket_id == bindparam("ticket"))
    .order_by(_PARTICIPANTS.c.user_id)
)
_MEMBER_EMAILS = Prebuilt(
    select(_USERS.c.email)
    .join(_MEMBERS, _MEMBERS.c.user_id == _USERS.c.id)
    .where(_MEMBERS.c.organization_id == bindparam("org"))
)


def _participant_emails(conn: Connection, ticket_id: int) -> list[str]:
    """Who is copied on the ticket, oldest user first (the order notifications list them)."""
    return list(_PARTICIPANT_EMAILS.run(conn, {"ticket": ticket_id}).scalars())


def _member_emails(conn: Connection, organization_id: int | None) -> frozenset[str]:
    if organization_id is None:
        return frozenset()
    return frozenset(_MEMBER_EMAILS.run(conn, {"org": organization_id}).scalars())


def _facts_of(
    conn: Connection,
    ticket: _TicketRow,
    participants: list[str] | None = None,
    members: frozenset[str] | None = None,
) -> TicketFacts:
    """What threading and the visibility rule need to know of a ticket.

    Callers that already know the participants, or the only members that matter, pass
    them and spare the queries.
    """
    if participants is None:
        participants = _participant_emails(conn, ticket.id)
    if members is None:
        members = _member_emails(conn, ticket.organization_id)
    return TicketFacts(
        id=ticket.id,
        status=ticket.status,
        organization=ticket.organization,
        requester=ticket.requester,
        participants=frozenset(participants),
        members=members,
    )


def _bounce(
    store: Store,
    config: Config,
    raw: bytes,
    envelope: Envelope,
    message: InboundMessage,
    now: datetime,
    reprocess: int | None,
) -> IngestResult:
    """A bounce is never a ticket: mark the notification it returns, note it, suppress."""
    report = analyse_bounce(message)
    with store.transaction() as session:
        later = _raw_later(session, raw, reprocess)
        inbound = _ledger_entry(
            session,
            raw,
            envelope,
            now,
            message.message_id,
            Outcome.IGNORED,
            "",
            reprocess,
            raw_later=later is not None,
        )
        if inbound is None:
            return _duplicate(message.message_id)
        conn = session.connection()
        ticket_id: int | None = None
        rows = (
            list(session.scalars(select(Outbox).where(Outbox.message_id.in_(report.message_ids))))
            if report.message_ids
            else []
        )
        failed = ", ".join(f"{email} {status or '?'}" for email, status, _ in report.recipients)
        for row in rows:
            row.status = "bounced"
            row.last_error = f"bounced: {failed or 'no details'}"
            if row.ticket_id is not None:
                note = f"Notification {row.kind} to {', '.join(row.recipients)} bounced: {failed}"
                system = user_id(conn, config.mail.address, "mailgate", now)
                _add_comment(conn, row.ticket_id, system, note, False, message, inbound, now)
                ticket_id = row.ticket_id
        for email, status, hard in report.recipients:
            if hard:
                until = now + config.outbound.suppress_for
                existing = session.get(Suppression, email)
                if existing is None:
                    session.add(Suppression(email=email, until=until, reason=f"bounce {status}"))
                else:
                    existing.until, existing.reason = until, f"bounce {status}"
        reason = f"bounce for {len(rows)} notification(s)" + (f": {failed}" if failed else "")
        session.flush()
        _set_ledger(session, inbound, reason=reason, ticket_id=ticket_id, **(later or {}))
    return IngestResult(Outcome.IGNORED.value, ticket_id, None, message.message_id, reason)


def own_mail(message: InboundMessage, config: Config) -> str | None:
    """Our own notification coming back (a loop): the reason to ignore it, else None."""
    domain = config.mail.address.rpartition("@")[2]
    if (message.header(LOOP_HEADER) or "").strip().lower() == domain:
        return f"own mail ({LOOP_HEADER}), a loop"
    if message.from_ is not None and message.from_.email == config.mail.address:
        return "own mail (From is our address), a loop"
    return None


def _recent_tickets(conn: Connection, email: str, now: datetime) -> int:
    """New tickets this sender opened in the last hour (the rate limits count these)."""
    since = now - timedelta(hours=1)
    return _RECENT_TICKETS.run(conn, {"email": email, "since": since}).scalar() or 0


_RECENT_TICKETS = Prebuilt(
    select(func.count(_TICKETS.c.id))
    .join(_USERS, _USERS.c.id == _TICKETS.c.requester_id)
    .where(_USERS.c.email == bindparam("email"), _TICKETS.c.created_at > bindparam("since"))
)


_MAX_REFERENCES = 50  # a References header can be long; the newest entries matter
_COMMENTS_BY_MESSAGE = Prebuilt(
    select(_COMMENTS.c.ticket_id).where(
        _COMMENTS.c.message_id.in_(bindparam("ids", expanding=True))
    )
)
_OUTBOX_BY_MESSAGE = Prebuilt(
    select(_OUTBOX.c.ticket_id, _OUTBOX.c.recipients).where(
        _OUTBOX.c.message_id.in_(bindparam("ids", expanding=True))
    )
)


def _thread_facts(
    conn: Connection, mail: _Mail, config: Config, secret: str
) -> tuple[TicketFacts | None, list[Reference], TicketFacts | None, dict[int, _TicketRow]]:
    """The tickets behind the reply token, the referenced Message-IDs and the subject tag.

    A reply to a notification names its ticket several times (token, References, tag);
    each ticket is read once, and the rows read come back for the ticket the mail joins.
    """
    rows: dict[int, _TicketRow] = {}
    known: dict[int, TicketFacts | None] = {}

    def _facts(ticket_id: int | None) -> TicketFacts | None:
        if ticket_id is None:
            return None
        if ticket_id not in known:
            row = _load_ticket(conn, ticket_id)
            if row is not None:
                rows[ticket_id] = row
            known[ticket_id] = _facts_of(conn, row) if row is not None else None
        return known[ticket_id]

    token = _facts(ticket_from_token(mail.recipients, secret))
    ids = list(dict.fromkeys((*mail.message.in_reply_to, *reversed(mail.message.references))))
    ids = ids[:_MAX_REFERENCES]
    references: list[Reference] = []
    if ids:
        found: dict[int, bool] = {}
        for ticket_id in _COMMENTS_BY_MESSAGE.run(conn, {"ids": ids}).scalars():
            found.setdefault(ticket_id, False)
        for ticket_id, recipients in _OUTBOX_BY_MESSAGE.run(conn, {"ids": ids}):
            if ticket_id is not None:
                found[ticket_id] = found.get(ticket_id, False) or mail.sender in recipients
        for ticket_id, sent_to_sender in found.items():
            facts = _facts(ticket_id)
            if facts is not None:
                references.append(Reference(facts, sent_to_sender))
    tag = _facts(ticket_from_tag(mail.subject, config.tickets.tag_regex))
    return token, references, tag, rows


def _add_comment(
    conn: Connection,
    ticket_id: int,
    author_id: int,
    body: str,
    public: bool,
    message: InboundMessage,
    inbound: int,
    now: datetime,
) -> int:
    """The comment with the mail's attachments (content stored once per hash); its id."""
    values = {
        "ticket_id": ticket_id,
        "author_id": author_id,
        "body": body,
        "public": public,
        "message_id": message.message_id,
        "inbound_message_id": inbound,
        "created_at": now,
    }
    comment_id: int = _INSERT_COMMENT.run(conn, values).scalar_one()
    for part in message.attachments:
        attachment = {
            "comment_id": comment_id,
            "filename": part.filename,
            "content_type": part.content_type,
            "content_id": part.content_id,
            "size": part.size,
            "sha256": ensure_blob(conn, part.data),
        }
        _INSERT_ATTACHMENT.run(conn, attachment)
    return comment_id


_INSERT_COMMENT = Prebuilt(insert(_COMMENTS).returning(_COMMENTS.c.id))
_INSERT_ATTACHMENT = Prebuilt(insert(_ATTACHMENTS))
_INSERT_PARTICIPANT = Prebuilt(insert(_PARTICIPANTS))
_INSERT_TICKET = Prebuilt(insert(_TICKETS).returning(_TICKETS.c.id))
_UPDATE_TICKET = Prebuilt(update(_TICKETS).where(_TICKETS.c.id == bindparam("ticket")))
_INSERT_OUTBOX = Prebuilt(insert(_OUTBOX))
_ORG_BY_NAME = Prebuilt(select(_ORGS.c.id, _ORGS.c.name).where(_ORGS.c.name == bindparam("name")))
_PARTICIPANT_IDS = Prebuilt(
    select(_PARTICIPANTS.c.user_id).where(_PARTICIPANTS.c.ticket_id == bindparam("ticket"))
)
_FOLLOWER_EMAILS = Prebuilt(
    select(_USERS.c.email)
    .join(_FOLLOWERS, _FOLLOWERS.c.user_id == _USERS.c.id)
    .where(
        _FOLLOWERS.c.organization_id == bindparam("org"),
        _USERS.c.id.in_(
            select(_MEMBERS.c.user_id).where(_MEMBERS.c.organization_id == bindparam("org"))
        ),
    )
    .order_by(_USERS.c.email)
)
_SUPPRESSED = Prebuilt(
    select(_SUPPRESSIONS.c.email).where(
        _SUPPRESSIONS.c.email.in_(bindparam("emails", expanding=True)),
        _SUPPRESSIONS.c.until > bindparam("now"),
    )
)


def _add_participants(
    conn: Connection,
    ticket: _TicketRow,
    participants: list[str],
    mail: _Mail,
    config: Config,
    now: datetime,
) -> list[str]:
    """Copy the mail's To/Cc people onto the ticket; the ticket's participants after that."""
    known = set(participants) | {ticket.requester}
    added = list(participants)
    for email, name in participant_addresses(mail.message, ticket.requester, config):
        if email not in known:
            person = user_id(conn, email, name, now)
            _INSERT_PARTICIPANT.run(conn, {"ticket_id": ticket.id, "user_id": person})
            known.add(email)
            added.append(email)
    return added


def forwarded_sender(message: InboundMessage) -> tuple[str, str] | None:
    """The original sender of a forwarded mail: an attached message/rfc822, else inline."""
    for part in message.attachments:
        if part.content_type.lower() == "message/rfc822":
            try:
                inner = parse(part.data)
            except UnparseableMessage:
                continue
            if inner.from_ is not None and inner.from_.email:
                return inner.from_.email, inner.from_.name
    found = forwarded_original(message.text)
    if found is None:
        return None
    name, email = found
    return email, name


def _new_ticket(
    conn: Connection,
    router: Router,
    mail: _Mail,
    inbound: int,
    match: ThreadMatch,
    now: datetime,
    quiet: bool = False,
) -> tuple[_TicketRow, str]:
    config = router.config
    ahead = mail.ahead
    plan = ahead.ticket if ahead is not None and ahead.ticket else ticket_plan(router, mail)
    decision, requester, subject_text = plan.decision, plan.requester, plan.subject
    reason = plan.reason
    if match.reason != NO_REFERENCE:
        reason += f"; {match.reason}"
    requester_id = user_id(conn, requester, plan.name, now)
    organization = (
        _ORG_BY_NAME.run(conn, {"name": decision.organization}).first()
        if decision.organization is not None
        else None
    )
    values = {
        "subject": subject_text,
        "status": Status.NEW.value,
        "organization_id": organization.id if organization is not None else None,
        "requester_id": requester_id,
        "created_at": now,
        "updated_at": now,
        "routing_reason": reason,
        "routing_score": decision.score,
        "priority": decision.priority or "normal",
        "tags": list(decision.tags),
    }
    ticket = _TicketRow(
        id=_insert_ticket(conn, values),
        subject=subject_text,
        status=Status.NEW.value,
        organization_id=values["organization_id"],
        organization=organization.name if organization is not None else None,
        requester_id=requester_id,
        requester=requester,
        priority=values["priority"],
        tags=values["tags"],
    )
    participants = _add_participants(conn, ticket, [], mail, config, now)
    comment = _add_comment(
        conn, ticket.id, requester_id, plan.body, True, mail.message, inbound, now
    )
    _announce(conn, config, ticket, participants, comment, now, acknowledge=not quiet)
    if plan.secret:
        _warn_secret(conn, config, ticket, mail.sender, now)
    if quiet:
        reason += f"; no acknowledgement (more than {config.limits.acks_per_hour} this hour)"
    return ticket, reason


@dataclass(frozen=True, slots=True)
class TicketPlan:
    """What a new ticket from a mail would be, decided without the database."""

    requester: str  # lower-case; the forwarded customer when an agent forwards
    name: str
    decision: RouteDecision
    reason: str
    subject: str  # untagged, credentials masked
    body: str  # credentials masked
    secret: bool  # subject or body held credentials


def ticket_plan(router: Router, mail: _Mail) -> TicketPlan:
    """Requester, organization, subject and body of the ticket this mail would open."""
    config = router.config
    requester, name, subject, note = mail.sender, mail.name, mail.subject, ""
    if mail.sender in router.agents:
        original = forwarded_sender(mail.message)
        if original is not None and original[0] not in router.agents:
            # An agent forwarding a customer's mail opens the ticket for that customer.
            requester, name = original
            subject = normalize_subject(subject, config.tickets.tag_regex) or NO_SUBJECT
            note = f"; forwarded by agent {mail.sender}"
    decision: RouteDecision = router.route(requester, subject, mail.recipients)
    # Another ticket's tag in a new ticket's subject would only confuse: it goes.
    untagged = " ".join(re.sub(config.tickets.tag_regex, " ", decision.subject or subject).split())
    subject_text, subject_secret = mask_secrets(untagged or NO_SUBJECT)
    body, body_secret = mask_secrets(mail.message.text)
    return TicketPlan(
        requester=requester.lower(),
        name=name,
        decision=decision,
        reason=decision.reason + note,
        subject=subject_text,
        body=body,
        secret=subject_secret or body_secret,
    )


def _insert_ticket(conn: Connection, values: dict[str, Any]) -> int:
    ticket_id: int = _INSERT_TICKET.run(conn, values).scalar_one()
    return ticket_id


def _announce(
    conn: Connection,
    config: Config,
    ticket: _TicketRow,
    participants: list[str],
    comment: int,
    now: datetime,
    acknowledge: bool = True,
) -> None:
    """A new ticket: acknowledge it to the requester and tell the organization's followers."""
    payload = {"comment": comment}
    followers: list[str] = []
    if ticket.organization_id is not None:
        followers = list(_FOLLOWER_EMAILS.run(conn, {"org": ticket.organization_id}).scalars())
    # Once for all rows: who the ticket knows. Every recipient here is the requester or a
    # follower, and followers are members (the query says so), so the members a row could
    # be checked against are these; asking for all of them would be a query for nothing.
    facts = _facts_of(conn, ticket, participants, members=frozenset(followers))
    if acknowledge:
        _queue(
            conn, config, "ticket_created", ticket, [ticket.requester], payload, now, facts=facts
        )
    for email in followers:  # one mail each: followers do not see each other's addresses
        if email != ticket.requester:
            _queue(conn, config, "new_ticket_follower", ticket, [email], payload, now, facts=facts)


def _follow_up(
    conn: Connection,
    router: Router,
    closed: _TicketRow,
    mail: _Mail,
    inbound: int,
    now: datetime,
) -> tuple[_TicketRow, str]:
    """A reply to a closed ticket opens a new one: closed tickets are locked (user rule)."""
    reason = f"follow-up of closed ticket #{closed.id}"
    values = {
        "subject": closed.subject,
        "status": Status.NEW.value,
        "organization_id": closed.organization_id,
        "requester_id": closed.requester_id,
        "created_at": now,
        "updated_at": now,
        "follow_up_of": closed.id,
        "routing_reason": reason,
        "routing_score": None,
        "priority": closed.priority,
        "tags": list(closed.tags),
    }
    ticket = _TicketRow(
        id=_insert_ticket(conn, values),
        subject=closed.subject,
        status=Status.NEW.value,
        organization_id=closed.organization_id,
        organization=closed.organization,
        requester_id=closed.requester_id,
        requester=closed.requester,
        priority=closed.priority,
        tags=list(closed.tags),
    )
    copied = _PARTICIPANT_IDS.run(conn, {"ticket": closed.id}).scalars()
    for person in list(copied):
        _INSERT_PARTICIPANT.run(conn, {"ticket_id": ticket.id, "user_id": person})
    author = user_id(conn, mail.sender, mail.name, now)
    body, secret = _reply_text(mail)
    comment = _add_comment(conn, ticket.id, author, body, True, mail.message, inbound, now)
    _announce(conn, router.config, ticket, _participant_emails(conn, ticket.id), comment, now)
    if secret:
        _warn_secret(conn, router.config, ticket, mail.sender, now)
    return ticket, reason


def _reply_text(mail: _Mail) -> tuple[str, bool]:
    """A reply's new text, credentials masked (done ahead when the mail looked like one)."""
    if mail.ahead is not None and mail.ahead.reply is not None:
        return mail.ahead.reply
    return mask_secrets(strip_quoted(mail.message.text))


def _reply(
    session: Session,
    router: Router,
    ticket: _TicketRow,
    mail: _Mail,
    inbound: int,
    match: ThreadMatch,
    now: datetime,
) -> tuple[_TicketRow, str]:
    """A comment on an open ticket, with the status, participant and notification rules."""
    config = router.config
    conn = session.connection()
    by_agent = mail.sender in router.agents
    commands: tuple[Command, ...] = ()
    if by_agent:  # only agents' commands count; a customer's "#status solved" is text
        ahead = mail.ahead
        stripped = ahead.stripped if ahead is not None else None
        commands, body = split_commands(stripped or strip_quoted(mail.message.text))
        body, secret = mask_secrets(body)
    else:
        body, secret = _reply_text(mail)
    public = not (mail.auto_reply or is_private(commands))
    author = user_id(conn, mail.sender, mail.name, now)
    comment = _add_comment(conn, ticket.id, author, body, public, mail.message, inbound, now)
    status = status_after_reply(ticket.status, by_agent, mail.auto_reply is not None)
    changes: dict[str, Any] = {"updated_at": now}
    if status != ticket.status:
        changes.update(status=status, solved_at=None)
        ticket.status = status
    _UPDATE_TICKET.run(conn, {"ticket": ticket.id, **changes})
    if by_agent or mail.sender == ticket.requester:
        known = _participant_emails(conn, ticket.id)
        _add_participants(conn, ticket, known, mail, config, now)
    errors: list[str] = []
    if (
        commands
        and config.security.require_dkim_for_commands
        and not (mail.dkim is not None and mail.dkim.signed_by(mail.sender))
    ):
        # A forged From of an agent must not solve or move tickets.
        domain = domain_of(mail.sender)
        errors = [
            f"{c.line}: refused: commands need a valid DKIM signature of {domain} "
            f"(this mail: {mail.dkim or 'not checked'})"
            for c in commands
            if c.name not in ("note", "private")
        ]
        commands = tuple(c for c in commands if c.name in ("note", "private"))
    if commands:
        # Commands are rare and go through the store's rules on the ORM ticket, read afresh
        # because the statements above changed the row behind the session's back.
        orm_ticket = session.get(Ticket, ticket.id, populate_existing=True)
        assert orm_ticket is not None
        errors += _apply_commands(session, router, orm_ticket, commands, now)
        session.flush()
        reloaded = _load_ticket(conn, ticket.id)
        assert reloaded is not None
        ticket = reloaded
    audience = [ticket.requester, *_participant_emails(conn, ticket.id)]
    if by_agent and public:
        _queue(conn, config, "agent_reply", ticket, audience, {"comment": comment}, now)
    elif not by_agent and not mail.auto_reply:
        _queue(
            conn,
            config,
            "customer_reply",
            ticket,
            list(router.agents),
            {"comment": comment},
            now,
            exclude=mail.sender,
        )
    if errors:
        _queue(conn, config, "command_error", ticket, [mail.sender], {"errors": errors}, now)
    if secret:
        _warn_secret(conn, config, ticket, mail.sender, now)
    reason = match.reason
    if mail.auto_reply:
        reason += f"; auto-reply ({mail.auto_reply}) kept as internal note"
    return ticket, reason


def mask_secrets(text: str) -> tuple[str, bool]:
    """The text with credentials masked (the raw mail keeps the original), and whether any."""
    masked, findings = scan_and_mask(text)
    return masked, bool(findings)


def _warn_secret(
    conn: Connection, config: Config, ticket: _TicketRow, sender: str, now: datetime
) -> None:
    """Credentials never travel in plain mail: ask the sender to use the secret link."""
    _queue(conn, config, "secret_warning", ticket, [sender], {}, now)


def _apply_commands(
    session: Session, router: Router, ticket: Ticket, commands: tuple[Command, ...], now: datetime
) -> list[str]:
    """Apply an agent's commands after the comment is recorded; explain each refusal."""
    errors: list[str] = []
    for command in commands:
        try:
            _apply_command(session, router, ticket, command, now)
        except (Refused, NotFound) as exc:
            errors.append(f"{command.line}: {exc}")
    return errors


def _apply_command(
    session: Session, router: Router, ticket: Ticket, command: Command, now: datetime
) -> None:
    if command.name in ("note", "private"):
        return
    if command.name not in COMMANDS:
        raise Refused(f"unknown command; known are {', '.join('#' + c for c in COMMANDS)}")
    if not command.argument:
        raise Refused("needs an argument")
    if command.name == "status":
        status = command.argument.lower()
        if status not in (Status.OPEN, Status.PENDING, Status.SOLVED):
            raise Refused("status must be open, pending or solved")
        update_ticket(session, ticket, now, status=status)
    elif command.name == "org":
        candidates = router.index.search(command.argument, limit=2)
        threshold = router.config.routing.threshold
        if not candidates or candidates[0][1] < threshold:
            raise Refused(f"no organization matches {command.argument!r}")
        if (
            len(candidates) > 1
            and candidates[0][1] - candidates[1][1] < (router.config.routing.ambiguity_margin)
            and candidates[0][1] < 100
        ):
            raise Refused(
                f"{command.argument!r} is ambiguous: {candidates[0][0]} or {candidates[1][0]}"
            )
        update_ticket(session, ticket, now, organization=candidates[0][0])
    elif command.name == "requester":
        email = command.argument.strip("<>").lower()
        if "@" not in email or " " in email:
            raise Refused(f"{command.argument!r} is not an email address")
        update_ticket(session, ticket, now, requester=email)


def _queue(
    conn: Connection,
    config: Config,
    kind: str,
    ticket: _TicketRow,
    recipients: list[str],
    payload: dict[str, Any],
    now: datetime,
    exclude: str | None = None,
    facts: TicketFacts | None = None,
) -> None:
    """An outbox row, in the transaction of the event that caused it.

    Only people the ticket knows receive it — requester, participants, members of its
    organization, agents (user rule: never send a ticket's content to someone outside).
    ``facts`` may be passed by a caller queueing several rows for one unchanged ticket.
    """
    agents = frozenset(config.agents.addresses)
    facts = facts or _facts_of(conn, ticket)
    # Never to ourselves (a loop); agents may share our domain.
    suppressed = (
        set(_SUPPRESSED.run(conn, {"emails": recipients, "now": now}).scalars())
        if recipients
        else set()
    )
    to = [
        r
        for r in dict.fromkeys(recipients)
        if r
        and r != exclude
        and r not in suppressed  # hard-bounced recently: mail would only bounce again
        and (r in agents or not is_ours(r, config))
        and facts.knows(r, agents)
    ]
    if not to:
        return
    tag = config.tickets.tag.replace("{id}", str(ticket.id))
    row = {
        "kind": kind,
        "ticket_id": ticket.id,
        "recipients": to,
        "subject": f"{tag} {ticket.subject}",
        "payload": payload,
        "status": "pending",
        "created_at": now,
        "next_attempt_at": now,
    }
    _INSERT_OUTBOX.run(conn, row)


def reprocess_quarantined(
    store: Store, config: Config, now: datetime, ids: list[int] | None = None
) -> list[tuple[int, IngestResult]]:
    """Process quarantined mail again (after an admin fixed the config), each exactly once."""
    query = select(InboundRow.id).where(InboundRow.outcome == Outcome.QUARANTINED.value)
    if ids is not None:
        query = query.where(InboundRow.id.in_(ids))
    with store.transaction() as session:
        todo = list(session.scalars(query.order_by(InboundRow.id)))
    router = Router(config)
    results: list[tuple[int, IngestResult]] = []
    for entry in todo:
        with store.transaction() as session:
            row = session.get(InboundRow, entry)
            if row is None:
                continue
            raw, envelope = raw_mail(session, row), Envelope(row.mail_from, tuple(row.rcpt_to))
        results.append((entry, ingest(store, config, raw, envelope, now, router, reprocess=entry)))
    return results

"""Scheduled work: deliver the outbox and close solved tickets. Every job takes ``now``.

Several instances may run these at once against one PostgreSQL. Outbox rows are claimed
with ``SELECT … FOR UPDATE SKIP LOCKED`` and marked ``sending`` before any network I/O, so
no two instances send the same row; the result is recorded only if the claim is still
ours. Closing is a conditional UPDATE per batch, so a ticket is closed exactly once.
SQLite takes the same path (its single writer makes the lock clause unnecessary).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, and_, case, func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from mailgate import retention
from mailgate.config import Config, OrganizationConfig
from mailgate.db.outbox import queue_notification
from mailgate.db.records import blob_data, ensure_secret, raw_mail, update_each
from mailgate.digest import send_digest, with_reply_addresses
from mailgate.dkim_sign import DkimSigner
from mailgate.emergency import is_emergency
from mailgate.errors import StoreUnavailable
from mailgate.health import DELIVERIES
from mailgate.hours import SupportHours
from mailgate.models import (
    Comment,
    LedgerEntry,
    NotificationKind,
    Outbox,
    OutboxStatus,
    Status,
    Ticket,
    User,
    table_of,
)
from mailgate.outbound import (
    DeliveryError,
    OutboundEnvelope,
    StoredFile,
    Transport,
    Verdict,
    backoff,
    build_message,
    choose_files,
    cid_references,
    classify,
    make_transport,
    one_line,
    settle,
)
from mailgate.parser import parse
from mailgate.pipeline import notify
from mailgate.pipeline.facts import TicketFacts
from mailgate.pipeline.reading import shown_subject
from mailgate.pipeline.threads import reply_address
from mailgate.quotes import shown_history, split_history
from mailgate.render import Renderer
from mailgate.retention import Freed
from mailgate.store import Store
from mailgate.vault.store import make_links

log = logging.getLogger(__name__)

# How often serve applies [retention]; a run with nothing due costs a few index probes.
PURGE_INTERVAL = timedelta(hours=1)
STALE_CLAIM = timedelta(minutes=10)  # a claim older than this belongs to a dead instance
# Rows per transaction, short enough that ingest never waits long for SQLite's write lock:
# claiming an outbox row (reading what its draft needs, without a savepoint) costs about
# 0.3 ms, closing a ticket and queueing its ticket_closed 0.2 ms (bench/jobs.py, 2 busy
# cores). 500 tickets held the lock for 100 ms, past the SMTP p99 that ingest keeps; with
# 100 outbox rows a claim the p99 of mail arriving during the run was 68 ms, and each
# notification cost 30 % less CPU than with 25 (fewer statements and commits per row).
BATCH = 100  # outbox rows per claim
CLOSE_BATCH = 100


# Kinds that may belong to no ticket: an agent's unauthenticated mail kept in quarantine,
# the agents' daily digest.
TICKETLESS = frozenset({NotificationKind.AGENT_UNVERIFIED.value, NotificationKind.AGENT_DIGEST})

# The agents' notifications that show a comment: theirs carry the links to its secrets.
SECRET_LINK_KINDS = frozenset(
    {
        NotificationKind.AGENT_NEW_TICKET.value,
        NotificationKind.CUSTOMER_REPLY.value,
        NotificationKind.TICKET_ASSIGNED.value,
        NotificationKind.EMERGENCY.value,
    }
)

# Due rows in the order they go out: pages first, then the oldest. The WHERE clause is the
# one ix_outbox_status_due serves; the order only sorts the due rows it finds (as ordering
# by id alone did), so an emergency never waits behind a backlog of a full batch or more.
CLAIM_ORDER = (case((Outbox.kind == NotificationKind.EMERGENCY.value, 0), else_=1), Outbox.id)


@dataclass
class DeliveryStats:
    sent: int = 0
    retry: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "retry": self.retry, "failed": self.failed}

    def count(self, verdict: Verdict, row: int, error: str | None) -> None:
        """One row's outcome: the totals, the metric and, for a failure, its error."""
        setattr(self, verdict.value, getattr(self, verdict.value) + 1)
        DELIVERIES.labels(verdict.value).inc()
        if error:
            self.errors.append(f"outbox {row}: {error}")
            log.warning("outbox %s: %s (%s)", row, verdict.value, error)


def describe(exc: BaseException) -> str:
    """An exception as one line for ``last_error``: its type, then its message."""
    return one_line(f"{type(exc).__name__}: {exc}")


def judge_unexpected(exc: Exception) -> Verdict:
    """What an exception other than a :class:`DeliveryError` means for its row.

    Network trouble (``OSError``: a reset, a timeout, an smtplib error the transport let
    through) may pass: retried with backoff until ``[outbound] max_age``, like a 4yz. Any
    other exception (an address smtplib cannot encode, a template or programming error) is
    in the row or in mailgate and comes back on every try, since a retry sends the very same
    bytes to the very same recipients: the row fails at once, so it neither blocks nor
    hammers the relay, and its ``last_error`` says why.
    """
    return Verdict.RETRY if isinstance(exc, OSError) else Verdict.FAILED


def shown_inline(raw: bytes) -> frozenset[str]:
    """The Content-IDs a mail's HTML shows in place: its parts that are no files to send.

    The comment keeps the text, not the HTML, so the agent's stored mail is read again;
    only for a reply with a file that has a Content-ID (Outlook's signature logo, Apple
    Mail's and Gmail's attachments).
    """
    try:
        return cid_references(parse(raw).html)
    except Exception as exc:  # it was parsed once at ingest; should it fail now, say so
        log.warning("cannot read the agent's mail for inline parts: %s", describe(exc))
        return frozenset()


@dataclass(frozen=True, slots=True)
class _Draft:
    """What a notification is built from, read while its row was claimed: plain data, so
    rendering and building it (templates, MIME, folding) hold no transaction."""

    kind: str
    language: str
    context: dict[str, Any]
    envelope: OutboundEnvelope
    files: tuple[StoredFile, ...] = ()  # an agent reply's files, to attach what fits
    inbound: int | None = None  # the ledger entry of the comment's mail (its HTML's cid:)


@dataclass(frozen=True, slots=True)
class _Claim:
    id: int
    message: bytes | None  # None: not built yet, from ``draft``
    recipients: tuple[str, ...]  # those who do not have it yet
    created_at: datetime
    attempts: int
    draft: _Draft | None = None


_OUTBOX = table_of(Outbox)
_COMMENTS = table_of(Comment)


def _owned(conn: Connection, claims: list[_Claim]) -> dict[int, Row[Any]]:
    """The claimed rows whose claim is still ours (a stale-claim takeover bumps
    ``attempts``), locked, with what recording a result needs; never the message."""
    attempts = {claim.id: claim.attempts for claim in claims}
    rows = conn.execute(
        select(_OUTBOX.c.id, _OUTBOX.c.kind, _OUTBOX.c.status, _OUTBOX.c.attempts)
        .add_columns(_OUTBOX.c.payload)
        .where(_OUTBOX.c.id.in_(attempts))
        .with_for_update()
    ).all()
    return {
        row.id: row
        for row in rows
        if row.status == OutboxStatus.SENDING and row.attempts == attempts[row.id]
    }


@dataclass
class _Prefetched:
    """What a batch of drafts reads, loaded with a few statements for all of its rows.

    Read one row at a time through the ORM's lazy loads, it was a dozen statements per
    notification, and ``ticket.comments`` loaded every comment of the ticket (bodies and
    all) for two Message-IDs. The loaded objects are kept here: the session holds them
    only weakly, and :meth:`Session.get` finds them there without a statement.
    """

    objects: list[Any]
    threads: dict[int, tuple[str, ...]]  # ticket → its first and last Message-ID

    @classmethod
    def load(cls, session: Session, rows: list[Outbox]) -> _Prefetched:
        tickets = {row.ticket_id for row in rows if row.ticket_id is not None}
        comments = {row.payload.get("comment") for row in rows} - {None}
        objects: list[Any] = []
        if tickets:
            objects += session.scalars(
                select(Ticket)
                .where(Ticket.id.in_(tickets))
                .options(
                    selectinload(Ticket.requester),
                    selectinload(Ticket.organization),
                    selectinload(Ticket.assignee),
                )
            ).all()
        if comments:
            objects += session.scalars(
                select(Comment)
                .where(Comment.id.in_(comments))
                .options(selectinload(Comment.author), selectinload(Comment.attachments))
            ).all()
        ends: dict[int, tuple[int, int]] = {}
        if tickets:
            c = _COMMENTS.c
            ends = {
                ticket: (first, last)
                for ticket, first, last in session.execute(
                    select(c.ticket_id, func.min(c.id), func.max(c.id))
                    .where(c.ticket_id.in_(tickets), c.message_id.is_not(None))
                    .group_by(c.ticket_id)
                )
            }
        ids = {i for pair in ends.values() for i in pair}
        found: dict[int, str] = {}
        if ids:
            found = {
                i: m for i, m in session.execute(select(c.id, c.message_id).where(c.id.in_(ids)))
            }
        threads = {
            ticket: tuple(dict.fromkeys((found[first], found[last])))
            for ticket, (first, last) in ends.items()
        }
        return cls(objects, threads)


class Jobs:
    """The jobs for one config: renderer, support hours and transport built once."""

    def __init__(self, store: Store, config: Config, transport: Transport | None = None) -> None:
        self.store = store
        self.config = config
        self.renderer = Renderer(config.outbound.templates_dir)
        self.hours = SupportHours(config.hours)
        self.transport = transport or make_transport(config)
        self.signer = DkimSigner.from_config(config)
        # By name, once: Config.organization scans every organization, per notification.
        self._organizations = {o.name.casefold(): o for o in config.organizations}

    def _organization(self, name: str) -> OrganizationConfig | None:
        return self._organizations.get(name.casefold())

    # --- outbox -------------------------------------------------------------------------

    def deliver_outbox(self, now: datetime) -> DeliveryStats:
        """Send every due row once; retry transient failures with backoff.

        One row's trouble, whatever it is, ends in that row (``last_error``, ``retry`` or
        ``failed``) and the others are delivered; only the database failing stops the run.
        Rows go in batches of :data:`BATCH`, with three short transactions each: claim
        (and read what the drafts need), keep the built messages, record the results.
        A transaction (and its fsync) per row was most of a notification's cost (7.6 ms
        at a million tickets). Between them SQLite's write lock is free for ingest.
        """
        stats = DeliveryStats()
        try:
            while True:
                claims = self._claim(now, stats)
                if not claims:
                    return stats
                ready = self._build(claims, now, stats)
                results = [(claim, self._attempt(claim)) for claim in ready]
                self._record(self._flushed(results), now, stats)
        finally:
            self.transport.close()

    def _claim(self, now: datetime, stats: DeliveryStats) -> list[_Claim]:
        due = or_(
            and_(
                Outbox.status.in_((OutboxStatus.PENDING.value, OutboxStatus.RETRY.value)),
                Outbox.next_attempt_at <= now,
            ),
            and_(
                Outbox.status == OutboxStatus.SENDING.value,
                Outbox.claimed_at <= now - STALE_CLAIM,
            ),
        )
        claims: list[_Claim] = []
        with self.store.transaction() as session:
            rows = session.scalars(
                select(Outbox)
                .where(due)
                .order_by(*CLAIM_ORDER)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            ).all()
            unbuilt = [row for row in rows if row.message is None]
            drafts = self._drafts(session, unbuilt, now) if unbuilt else {}
            for row in rows:
                draft = drafts.get(row.id)
                if isinstance(draft, Exception):  # a broken row must not block the queue
                    self._fail_render(row, draft, stats)
                    continue
                row.status = OutboxStatus.SENDING.value
                row.claimed_at = now
                row.attempts += 1
                # Who accepted or refused for good in an earlier attempt is not sent it again.
                done = {*row.payload.get("accepted", []), *row.payload.get("refused", {})}
                pending = tuple(r for r in row.recipients if r not in done)
                claims.append(
                    _Claim(row.id, row.message, pending, row.created_at, row.attempts, draft)
                )
        return claims

    def _drafts(
        self, session: Session, rows: list[Outbox], now: datetime
    ) -> dict[int, _Draft | Exception]:
        """Each unbuilt row's draft, or why it cannot be drafted; read before any row of
        the batch is changed, so the session has nothing to flush in between.

        A draft that writes (an agent's one-time links) gets a savepoint, so that a failure
        leaves nothing half-written behind and, on PostgreSQL, does not abort the batch's
        transaction. The others only read what the batch prefetched: a savepoint each
        (a statement to open and one to release it, and a flush) was a fifth of a
        notification's cost.
        """
        secret = self.config.mail.secret or ensure_secret(session)
        loaded = _Prefetched.load(session, rows)
        drafts: dict[int, _Draft | Exception] = {}
        for row in rows:
            try:
                if self.config.secrets.vault and row.kind in SECRET_LINK_KINDS:
                    with session.begin_nested():
                        drafts[row.id] = self._draft(session, row, secret, now, loaded)
                else:
                    drafts[row.id] = self._draft(session, row, secret, now, loaded)
            except Exception as exc:
                drafts[row.id] = exc
        return drafts

    @staticmethod
    def _render_failure(row_id: int, kind: str, exc: Exception, stats: DeliveryStats) -> str:
        """A row that cannot be built fails at once: the same template fails on every try."""
        # Logged as one line by stats.count; the traceback only for debugging.
        log.debug("outbox %s: cannot render %s", row_id, kind, exc_info=exc)
        error = f"render: {describe(exc)}"
        stats.count(Verdict.FAILED, row_id, error)
        return error

    def _fail_render(self, row: Outbox, exc: Exception, stats: DeliveryStats) -> None:
        error = self._render_failure(row.id, row.kind, exc, stats)
        row.status, row.last_error = OutboxStatus.FAILED.value, error
        row.claimed_at = None

    def _build(self, claims: list[_Claim], now: datetime, stats: DeliveryStats) -> list[_Claim]:
        """Render and build the claimed rows' messages outside any transaction, then keep
        them, all in one short transaction; the claims ready to send.

        Building a large notification takes longer than anything else here; inside a write
        transaction it held SQLite's only writer, and every inbound mail waited. The built
        message is stored before it is sent, so a retry sends the very same bytes. ``Date``
        is ``now``, the time of building: the time the mail was written.
        """
        built: list[tuple[_Claim, bytes | Exception, str]] = []
        for claim in claims:
            if claim.message is not None:
                continue
            assert claim.draft is not None
            draft = claim.draft
            try:
                files, left_out = self._files(draft)
                context = {**draft.context, "left_out": left_out}
                rendered = self.renderer.render(draft.kind, draft.language, context)
                message = build_message(
                    self.config, draft.envelope, rendered.text, rendered.html, now=now, files=files
                )
                built.append((claim, message.data, message.message_id))
            except Exception as exc:  # a template bug ends in this row, never in the run
                built.append((claim, exc, ""))
        if not built:
            return claims
        kept: dict[int, _Claim] = {}
        changes: list[tuple[int, dict[str, Any]]] = []
        with self.store.transaction() as session:
            conn = session.connection()
            owned = _owned(conn, [claim for claim, _, _ in built])
            for claim, data, message_id in built:
                if claim.id not in owned:
                    continue
                values: dict[str, Any]
                if isinstance(data, StoreUnavailable):  # reading the files: the database's
                    error = describe(data)  # trouble, not the row's: built again later
                    values = {"status": OutboxStatus.RETRY.value, "last_error": error}
                    values["claimed_at"] = None
                    values["next_attempt_at"] = now + backoff(claim.attempts)
                    stats.count(Verdict.RETRY, claim.id, error)
                elif isinstance(data, Exception):
                    error = self._render_failure(claim.id, owned[claim.id].kind, data, stats)
                    values = {"status": OutboxStatus.FAILED.value, "last_error": error}
                    values["claimed_at"] = None
                else:
                    values = {"message": data, "message_id": message_id}
                    values["message_size"] = len(data)
                    kept[claim.id] = _Claim(
                        claim.id, data, claim.recipients, claim.created_at, claim.attempts
                    )
                changes.append((claim.id, values))
            update_each(conn, _OUTBOX, changes)
        return [
            claim if claim.message is not None else kept[claim.id]
            for claim in claims
            if claim.message is not None or claim.id in kept
        ]

    def _files(self, draft: _Draft) -> tuple[list[tuple[StoredFile, bytes]], list[dict[str, Any]]]:
        """The files to attach with their content, and those left out (for the template).

        Read in a reading transaction of their own, after the claim and before the build: a
        large file is never read while the writer is held.
        """
        if not draft.files:
            return [], []
        with self.store.reading() as conn, Session(bind=conn) as session:
            shown = frozenset[str]()
            if draft.inbound is not None and any(f.content_id for f in draft.files):
                entry = session.get(LedgerEntry, draft.inbound)
                shown = shown_inline(raw_mail(session, entry)) if entry is not None else shown
            choice = choose_files(draft.files, shown, self.config.outbound.max_attachment_size)
            attached = [(file, blob_data(session, file.sha256)) for file in choice.attached]
        left_out = [{"filename": f.filename, "size": f.size} for f in choice.left_out]
        return attached, left_out

    def _record(
        self,
        results: list[tuple[_Claim, dict[str, tuple[Verdict, str]]]],
        now: datetime,
        stats: DeliveryStats,
    ) -> None:
        """The batch's results, in one transaction; a row whose claim is no longer ours
        (a stale-claim takeover bumps ``attempts``) is left to its new owner.

        A crash between sending and this commit leaves the batch's rows claimed; they are
        sent again once the claim is stale, as a crash mid-send always did.
        """
        if not results:
            return
        counted: list[tuple[Verdict, int, str | None]] = []
        changes: list[tuple[int, dict[str, Any]]] = []
        with self.store.transaction() as session:
            conn = session.connection()
            owned = _owned(conn, [claim for claim, _ in results])
            for claim, failures in results:
                current = owned.get(claim.id)
                if current is None:
                    continue
                payload = current.payload or {}
                attempted = claim.recipients
                settled = settle(
                    attempted, failures, payload.get("accepted", []), payload.get("refused", {})
                )
                verdict, error = settled.verdict, settled.error
                if (
                    verdict is Verdict.RETRY
                    and now - claim.created_at >= self.config.outbound.max_age
                ):
                    verdict = Verdict.FAILED
                    error = f"gave up after {claim.attempts} attempts: {error}"
                status = OutboxStatus(verdict.value)  # a verdict names the row's status
                values: dict[str, Any] = {
                    "status": status.value,
                    "last_error": error,
                    "claimed_at": None,
                }
                if verdict is Verdict.SENT:
                    values["sent_at"] = now
                elif verdict is Verdict.RETRY:
                    values["next_attempt_at"] = now + backoff(claim.attempts)
                attempt = {
                    "at": now.isoformat(),
                    "to": list(attempted),
                    "result": verdict.value,
                    "error": error,
                }
                values["payload"] = {
                    **payload,
                    "attempts": [*payload.get("attempts", []), attempt],
                    **({"accepted": list(settled.accepted)} if settled.accepted else {}),
                    **({"refused": settled.refused} if settled.refused else {}),
                }
                changes.append((claim.id, values))
                counted.append((verdict, claim.id, error))
            update_each(conn, _OUTBOX, changes)
        for verdict, row_id, error in counted:
            stats.count(verdict, row_id, error)

    def _flushed(
        self, results: list[tuple[_Claim, dict[str, tuple[Verdict, str]]]]
    ) -> list[tuple[_Claim, dict[str, tuple[Verdict, str]]]]:
        """The batch's results once the transport made what it took durable (a Maildir
        syncs its files together); when it cannot, whoever it took is tried again."""
        try:
            self.transport.flush()
            return results
        except Exception as exc:
            if isinstance(exc, DeliveryError):
                verdict, error = classify(exc.code), str(exc)
            else:
                verdict, error = judge_unexpected(exc), describe(exc)
        return [
            (claim, {r: failures.get(r, (verdict, error)) for r in claim.recipients})
            for claim, failures in results
        ]

    def _attempt(self, claim: _Claim) -> dict[str, tuple[Verdict, str]]:
        """Send once; the recipients who did not get it, each with its verdict and error."""
        assert claim.message is not None  # built before it is sent
        try:
            message = self.signer.sign(claim.message) if self.signer else claim.message
            refused = self.transport.send(message, self.config.mail.address, claim.recipients)
            return {r: (classify(code), reply) for r, (code, reply) in refused.items()}
        except DeliveryError as exc:
            verdict, error = classify(exc.code), str(exc)
        except Exception as exc:  # anything unforeseen ends in this row, never in the run
            log.debug("outbox %s: cannot send", claim.id, exc_info=True)
            verdict, error = judge_unexpected(exc), describe(exc)
            # The relay session may be left mid-transaction (MAIL sent, RCPT not): the next
            # row starts on a fresh connection.
            try:
                self.transport.close()
            except Exception as close_exc:
                log.warning(
                    "outbox %s: closing the relay connection: %s", claim.id, describe(close_exc)
                )
        return dict.fromkeys(claim.recipients, (verdict, error))

    def _draft(
        self,
        session: Session,
        row: Outbox,
        secret: str,
        now: datetime,
        loaded: _Prefetched | None = None,
    ) -> _Draft:
        """Read what the row's notification says: the ticket, the comment, the thread, and
        for one agent the one-time links to the comment's secrets (made now: the token is
        in this mail alone).

        ``loaded`` holds what the batch's rows need, read with a few statements for all of
        them (the session finds the tickets and comments there); the thread is its first
        and last Message-IDs, not every comment of the ticket.
        """
        loaded = loaded or _Prefetched.load(session, [row])
        config = self.config
        ticket = session.get(Ticket, row.ticket_id) if row.ticket_id is not None else None
        if ticket is None and (row.ticket_id is not None or row.kind not in TICKETLESS):
            raise ValueError("the ticket is gone")
        comment_id = row.payload.get("comment")
        comment = session.get(Comment, comment_id) if comment_id is not None else None
        if (
            comment is not None
            and not comment.public
            and not config.team.issuperset(row.recipients)
        ):
            # Queueing never writes such a row; should one exist, it is never sent.
            raise ValueError("an internal comment is for agents only")
        body, history = comment.body if comment is not None else "", ""
        if comment is not None and row.kind in (
            NotificationKind.AGENT_NEW_TICKET,
            NotificationKind.EMERGENCY,
        ):
            # The request's own words first; what it quoted or forwarded below them.
            body, history = split_history(comment.body)
            history = shown_history(history)
        organization = ticket.organization if ticket is not None else None
        org_cfg = self._organization(organization.name) if organization else None
        language = (org_cfg.language if org_cfg else None) or config.mail.language
        context = {
            "ticket": {
                "id": ticket.id,
                # Cut again: a ticket or row from before subjects were cut may hold a megabyte.
                "subject": shown_subject(ticket.subject),
                "status": ticket.status,
                "organization": organization.name if organization else None,
                "requester": ticket.requester.email,
                "requester_name": ticket.requester.name,
                "priority": ticket.priority,
                "routing_reason": ticket.routing_reason,
                "emergency": is_emergency(ticket.tags or ()),
                # This acknowledgement's emergency paged the on-call team (see Notify.paged).
                "paged": bool(row.payload.get("paged")),
                "assignee": ticket.assignee.email if ticket.assignee is not None else None,
            }
            if ticket is not None
            else None,
            "tag": config.tickets.tag_for(ticket.id) if ticket is not None else "",
            "recipient": row.recipients[0] if row.recipients else "",
            "support": self._support(language, row.created_at),
            "comment": (
                {
                    "author": comment.author.email,
                    "author_name": comment.author.name,
                    "body": body,
                    "history": history,
                    "attachments": [
                        {"filename": a.filename, "size": a.size} for a in comment.attachments
                    ],
                    "secrets": self._links(session, row, comment.id, now),
                }
                if comment is not None
                else None
            ),
            "errors": list(row.payload.get("errors", [])),
            "about": str(row.payload.get("about", "")),
            "by": str(row.payload.get("by", "")),  # who assigned the ticket
            "digest": with_reply_addresses(row.payload.get("digest"), config.mail.address, secret),
            "moved": row.payload.get("moved"),  # {"from": old or None, "to": new}
            # {"why": unknown|ambiguous|not_authorised, "prefix": as written, "names": [...]}
            "unused_prefix": row.payload.get("unused_prefix"),
            "left_out": [],  # filled in by _build, once the files are chosen
        }
        if ticket is not None:
            thread = list(loaded.threads.get(ticket.id, ()))
        else:  # the answer to the one mail it is about
            thread = [str(row.payload["about_id"])] if row.payload.get("about_id") else []
        envelope = OutboundEnvelope(
            to=tuple(row.recipients),
            subject=shown_subject(row.subject),
            reply_to=reply_address(ticket.id, config.mail.address, secret)
            if ticket is not None
            else config.mail.address,
            in_reply_to=(comment.message_id if comment and comment.message_id else None)
            or (thread[-1] if thread else None),
            references=tuple(dict.fromkeys(thread[:1] + thread[-1:])),
            auto_submitted="auto-replied"
            if row.kind == NotificationKind.TICKET_CREATED
            else "auto-generated",
        )
        files: tuple[StoredFile, ...] = ()
        if row.kind == NotificationKind.AGENT_REPLY and comment is not None and comment.public:
            # Only the files of the comment this reply sends: never another comment's.
            files = tuple(
                StoredFile(a.filename, a.content_type, a.size, a.sha256, a.content_id)
                for a in comment.attachments
            )
        inbound = comment.inbound_message_id if comment is not None else None
        return _Draft(row.kind, language, context, envelope, files, inbound)

    def _links(
        self, session: Session, row: Outbox, comment: int, now: datetime
    ) -> list[dict[str, Any]]:
        """Links to the secrets behind ``[secret N]``: in an agent's own mail only, never in
        a customer's or a follower's, nor in one mail to several (a reveal names who)."""
        if (
            not self.config.secrets.vault
            or row.kind not in SECRET_LINK_KINDS
            or len(row.recipients) != 1
            or row.recipients[0] not in self.config.team
        ):
            return []
        return make_links(session, self.config, comment, row.recipients[0], now)

    def _support(self, language: str, when: datetime) -> dict[str, Any]:
        """The support desk as the mail describes it at ``when`` (the row's time): hours,
        whether open, the phone number that applies then, and what an emergency does."""
        config, support = self.config, self.config.support
        open_now = self.hours.is_open(when)
        return {
            "address": config.mail.address,
            "hours": self.hours.describe(language),
            "open_now": open_now,
            "secrets_url": config.mail.secrets_url,
            "phone": support.phone if open_now else support.emergency_phone,
            "emergency_phone": support.emergency_phone,
            "emergency_keywords": list(support.emergency_keywords),
            # Someone is paged for an emergency outside support hours.
            "on_call": bool(support.emergency_keywords)
            and bool(support.paged(config.agents.notified)),
        }

    # --- auto-close -----------------------------------------------------------------------

    def close_solved(self, now: datetime) -> list[int]:
        """Close every ticket solved at least ``close_after`` ago; exactly once each.

        In batches of :data:`CLOSE_BATCH`, each its own short transaction: the due tickets
        by the ``(status, solved_at)`` index, then a conditional UPDATE of just those (a
        ticket another instance closed meanwhile, or an agent reopened, is left alone) and
        their ``ticket_closed`` rows. One UPDATE over every due ticket held SQLite's write
        lock for as long as it took, and ingest waited; between batches it is free.
        """
        cutoff = now - self.config.tickets.close_after
        ids: list[int] = []
        while True:
            with self.store.transaction() as session:
                batch = list(
                    session.scalars(
                        select(Ticket.id)
                        .where(Ticket.status == Status.SOLVED.value, Ticket.solved_at <= cutoff)
                        .order_by(Ticket.solved_at, Ticket.id)
                        .limit(CLOSE_BATCH)
                    )
                )
                closed = self._close(session, batch, now) if batch else []
            ids += closed
            # Fewer than a batch: none left. None closed of a full batch: another instance
            # holds them (it closes them); looking again would only find them again.
            if len(batch) < CLOSE_BATCH or not closed:
                break
        ids.sort()
        if ids:
            log.info("closed %d solved tickets: %s", len(ids), ids[:20])
        return ids

    def _close(self, session: Session, batch: list[int], now: datetime) -> list[int]:
        """Close these tickets if they are still solved; queue their ``ticket_closed``."""
        closed = session.execute(
            update(Ticket)
            .where(Ticket.id.in_(batch), Ticket.status == Status.SOLVED.value)
            .values(status=Status.CLOSED.value, closed_at=now, updated_at=now)
            .returning(Ticket.id, Ticket.subject, Ticket.requester_id)
        ).all()
        if closed and self.config.tickets.notify_closed:
            emails = dict(
                session.execute(
                    select(User.id, User.email).where(
                        User.id.in_({requester for _, _, requester in closed})
                    )
                ).all()
            )
            conn = session.connection()
            for ticket_id, subject, requester in closed:
                ticket = TicketFacts(
                    ticket_id, Status.CLOSED.value, None, emails[requester], subject=subject
                )
                for note in notify.on_ticket_closed(ticket.requester):
                    queue_notification(conn, self.config, ticket, None, note, now)
        return [ticket_id for ticket_id, _, _ in closed]

    def run_once(self, now: datetime) -> dict[str, Any]:
        """Every job once (``mailgate jobs run``): close first and queue a due digest, so
        their mail goes out too."""
        closed = self.close_solved(now)
        digests = self.send_digest(now)
        stats = self.deliver_outbox(now)
        return {"closed": len(closed), **stats.as_json(), "digests": digests}

    def purge(self, now: datetime) -> dict[str, Freed]:
        """Apply ``[retention]`` in batches (``serve`` runs it every :data:`PURGE_INTERVAL`)."""
        return retention.purge(self.store, self.config, now)

    def send_digest(self, now: datetime) -> int:
        """The agents' daily digest, when ``[agents] digest`` says it is due."""
        return send_digest(self.store, self.config, self.hours, now)

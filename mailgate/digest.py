"""The agents' daily digest: one mail each working morning with what waits on the team.

``[agents] digest = "08:30"`` sends every agent, on the support calendar's working days,
the tickets waiting on us (status new or open), oldest first, in three lists: their own,
the unassigned ones, and the overdue ones (untouched since before the previous working
day's opening: a full working day without an answer). An agent with nothing on any list
gets no mail.

Which day is due is a pure function of the clock, the calendar and the day last sent
(:func:`due_day`); the send itself is claimed in the database (``meta`` row ``digest``)
by a conditional update, so several instances sharing PostgreSQL send each day's digest
once, and a daemon started late in the morning still sends that day's, never a missed one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Connection, func, select, update

from mailgate.config import Config
from mailgate.db.fastexec import insert_for
from mailgate.db.lists import tickets_with_names, user_id
from mailgate.db.outbox import queue_notification
from mailgate.hours import SupportHours
from mailgate.models import Meta, NotificationKind, Status, Ticket, table_of
from mailgate.pipeline.decision import Notify
from mailgate.pipeline.threads import reply_address
from mailgate.store import Store

log = logging.getLogger(__name__)

SHOWN = 50  # tickets listed per section; the mail says how many more there are
WAITING = (Status.NEW.value, Status.OPEN.value)  # waiting on the team, not the customer
_META_KEY = "digest"

_TICKETS = table_of(Ticket)
_META = table_of(Meta)


def due_day(now: datetime, hours: SupportHours, at: str, last: str | None) -> date | None:
    """The local working day whose digest is due at ``now``, or None.

    Due from ``at`` (local wall-clock time) on a working day until that day ends, once:
    ``last`` is the ISO date of the last digest sent.
    """
    local = now.astimezone(hours.zone)
    today = local.date()
    if not hours.is_open_day(today) or local.time() < time.fromisoformat(at):
        return None
    if last is not None and last >= today.isoformat():
        return None
    return today


def overdue_before(today: date, hours: SupportHours) -> datetime:
    """The opening of the working day before ``today``: a ticket untouched since before
    it has waited a full working day."""
    day = today - timedelta(days=1)
    for _ in range(30):
        if hours.is_open_day(day):
            break
        day -= timedelta(days=1)
    return datetime.combine(day, hours.open_at, tzinfo=hours.zone)


@dataclass(frozen=True, slots=True)
class Section:
    """One list of the digest: the oldest tickets shown, and how many match in all."""

    shown: tuple[dict[str, Any], ...]
    total: int

    def as_payload(self) -> dict[str, Any]:
        return {"tickets": list(self.shown), "total": self.total}


def send_digest(store: Store, config: Config, hours: SupportHours, now: datetime) -> int:
    """Queue today's digest for each agent if it is due; the number of mails queued."""
    at = config.agents.digest
    if at is None or not config.agents.addresses:
        return 0
    with store.transaction() as session:
        conn = session.connection()
        last = conn.execute(select(_META.c.value).where(_META.c.key == _META_KEY)).scalar()
        day = due_day(now, hours, at, last)
        if day is None or not _claim(conn, day, last):
            return 0
        cutoff = overdue_before(day, hours)
        unassigned = _section(conn, hours, _TICKETS.c.assignee_id.is_(None))
        overdue = _section(conn, hours, _TICKETS.c.updated_at < cutoff)
        queued = 0
        for agent in config.agents.addresses:
            mine = _section(conn, hours, _TICKETS.c.assignee_id == user_id(agent))
            if not (mine.total or unassigned.total or overdue.total):
                continue
            payload = {
                "day": day.isoformat(),
                "mine": mine.as_payload(),
                "unassigned": unassigned.as_payload(),
                "overdue": overdue.as_payload(),
            }
            note = Notify(
                NotificationKind.AGENT_DIGEST,
                (agent,),
                about=_subject(config.mail.language, day, mine, unassigned, overdue),
                digest=payload,
            )
            queued += queue_notification(conn, config, None, None, note, now)
    if queued:
        log.info("digest of %s queued for %d agents", day.isoformat(), queued)
    return queued


def with_reply_addresses(
    digest: dict[str, Any] | None, address: str, secret: str
) -> dict[str, Any] | None:
    """The digest as rendered: each ticket with its reply address, so that an agent takes
    or answers it from the digest itself (``#assign me`` to that address)."""
    if digest is None:
        return None
    rendered = dict(digest)
    for name in ("mine", "unassigned", "overdue"):
        part = digest[name]
        tickets = [{**t, "reply": reply_address(t["id"], address, secret)} for t in part["tickets"]]
        rendered[name] = {**part, "tickets": tickets}
    return rendered


def _claim(conn: Connection, day: date, last: str | None) -> bool:
    """Take today's digest for this instance: exactly one instance wins the day."""
    if last is None:
        insert = insert_for(conn)(_META).values(key=_META_KEY, value=day.isoformat())
        return bool(conn.execute(insert.on_conflict_do_nothing(index_elements=["key"])).rowcount)
    claimed = conn.execute(
        update(_META)
        .where(_META.c.key == _META_KEY, _META.c.value == last)
        .values(value=day.isoformat())
    )
    return bool(claimed.rowcount)


def _section(conn: Connection, hours: SupportHours, condition: Any) -> Section:
    """Tickets waiting on us that meet ``condition``, oldest first."""
    waiting = (_TICKETS.c.status.in_(WAITING), condition)
    total = conn.execute(select(func.count()).select_from(_TICKETS).where(*waiting)).scalar()
    rows = conn.execute(
        tickets_with_names(
            _TICKETS.c.id,
            _TICKETS.c.subject,
            _TICKETS.c.status,
            _TICKETS.c.priority,
            _TICKETS.c.updated_at,
        )
        .where(*waiting)
        .order_by(_TICKETS.c.updated_at, _TICKETS.c.id)
        .limit(SHOWN)
    ).all()
    shown = tuple(
        {
            "id": row.id,
            "subject": row.subject[:120],
            "status": row.status,
            "priority": row.priority,
            "since": row.updated_at.astimezone(hours.zone).strftime("%d.%m. %H:%M"),
            "organization": row.organization,
            "requester": row.requester,
            "assignee": row.assignee,
        }
        for row in rows
    )
    return Section(shown, int(total or 0))


def _subject(language: str, day: date, *sections: Section) -> str:
    mine, unassigned, overdue = (section.total for section in sections)
    if language == "en":
        return (
            f"Tickets {day.isoformat()}: {mine} yours, {unassigned} unassigned, {overdue} overdue"
        )
    return (
        f"Tickets {day.strftime('%d.%m.%Y')}: {mine} bei Ihnen, {unassigned} ohne Zuständige, "
        f"{overdue} überfällig"
    )

"""The list commands' shared side: paging and filter options, and printing rows as they come.

``tickets list``, ``outbox list``, ``quarantine list`` and ``follow list`` read in a
read-only transaction (:meth:`~mailgate.store.Store.reading`, no write lock), stream their
rows from :mod:`mailgate.db.lists` and print each as it arrives: the text view a page of
the newest (50 unless ``--limit``) with a line saying how many more match and how to see
them; ``--json`` every matching row as one array (oldest first, as it always was, unless a
paging option is given), ``--jsonl`` one object a line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Connection, func, select

from mailgate.db.lists import (
    COUNT_CAP,
    Filters,
    Listing,
    Page,
    follower_query,
    follower_row,
    organization_id,
    stream,
)
from mailgate.views import print_followers, write_json_array, write_json_lines

DEFAULT_PAGE = 50  # rows the text view shows when no --limit is given


def _limit(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of rows (0: all)")
    return number


def _row_id(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not an id")
    return int(value)


def parse_time(value: str, end: bool = False) -> datetime:
    """An ISO 8601 date or time as an aware UTC datetime (UTC when it has no offset).

    ``end`` (``--until``, compared with ``<``): the bound just after what is given, so that
    ``--until 2026-11-26`` includes that day and ``--until 2026-11-26T10:00`` that instant
    (times are stored to the microsecond).
    """
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            start = datetime.combine(day, time(), tzinfo=UTC)
            return start + timedelta(days=1) if end else start
        when = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO 8601 date or time (e.g. 2026-11-26 or "
            "2026-11-26T10:00:00+01:00)"
        ) from None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when + timedelta(microseconds=1) if end else when


def add_list_options(
    parser: argparse.ArgumentParser, filters: Sequence[str] = (), paging: bool = True
) -> None:
    """The options every list has (``--limit``, ``--json``, ``--jsonl``, keyset paging),
    and of the filters those named in ``filters``."""
    parser.add_argument(
        "--limit",
        type=_limit,
        metavar="N",
        help=f"at most N rows, newest first (text view: {DEFAULT_PAGE}; 0: all)",
    )
    if paging:
        parser.add_argument(
            "--before-id", type=_row_id, metavar="ID", help="only rows older than ID (next page)"
        )
        parser.add_argument(
            "--after-id", type=_row_id, metavar="ID", help="only rows newer than ID"
        )
    if "requester" in filters:
        parser.add_argument("--requester", metavar="EMAIL", help="only tickets this user opened")
    if "time" in filters:
        parser.add_argument(
            "--since", type=parse_time, metavar="ISO8601", help="created at or after (UTC)"
        )
        parser.add_argument(
            "--until",
            type=lambda value: parse_time(value, end=True),
            metavar="ISO8601",
            help="created before (UTC; a date includes that day)",
        )
    if "tag" in filters:
        parser.add_argument("--tag", metavar="TAG", help="only tickets with this tag")
    if "search" in filters:
        parser.add_argument("--search", metavar="TEXT", help="subject contains TEXT (any case)")
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="print a JSON array")
    formats.add_argument("--jsonl", action="store_true", help="print one JSON object a line")


def filters_of(args: argparse.Namespace) -> Filters:
    """The filters given on the command line (those a list lacks are None)."""

    def given(name: str) -> Any:
        return getattr(args, name, None)

    return Filters(
        organization=given("org"),
        status=given("status"),
        requester=given("requester"),
        assignee=given("assignee"),
        since=given("since"),
        until=given("until"),
        tag=given("tag"),
        search=given("search"),
        email=given("email"),
    )


def page_of(args: argparse.Namespace) -> Page:
    """What the options ask for. ``--json``/``--jsonl`` without a paging option: every row,
    oldest first (scripts rely on it); otherwise a page, newest first."""
    before, after = getattr(args, "before_id", None), getattr(args, "after_id", None)
    machine = args.json or args.jsonl
    if machine and (args.limit, before, after) == (None, None, None):
        return Page(newest_first=False)
    limit = DEFAULT_PAGE if args.limit is None and not machine else args.limit
    return Page(limit=limit or None, before_id=before, after_id=after)


def show(
    conn: Connection,
    listing: Listing,
    page: Page,
    args: argparse.Namespace,
    table: Callable[[Iterable[dict[str, Any]]], int],
    empty: str,
) -> None:
    """Print one list's rows as ``args`` asks, then, in the text view, what is left."""
    rows = _rows(conn, listing, page)
    if args.json:
        write_json_array(rows)
        return
    if args.jsonl:
        write_json_lines(rows)
        return
    ends: dict[str, int] = {}

    def noted(source: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for row in source:
            ends.setdefault("first", row["id"])
            ends["last"] = row["id"]
            yield row

    shown = table(noted(rows))
    if not shown:
        print(empty)
    elif page.limit is not None and shown >= page.limit:
        print_hint(conn, listing, page, ends["first"], ends["last"])


def _rows(conn: Connection, listing: Listing, page: Page) -> Iterator[dict[str, Any]]:
    statement = listing.page(page)
    if page.newest_first and page.ascending:
        # The page just above --after-id: fetched oldest first, at most `limit` rows.
        yield from reversed([listing.shape(row) for row in conn.execute(statement)])
        return
    for row in stream(conn, statement):
        yield listing.shape(row)


def print_hint(conn: Connection, listing: Listing, page: Page, first: int, last: int) -> None:
    """The line after a full page: how many more match, and the option that shows them."""
    if page.ascending:  # a page above --after-id: what is newer still
        more = conn.execute(listing.remaining(below=page.before_id, above=first)).scalar() or 0
        option = f"--after-id {first}"
        which = "newer"
    else:
        more = conn.execute(listing.remaining(below=last, above=page.after_id)).scalar() or 0
        option = f"--before-id {last}"
        which = "more"
    if not more:
        return
    count = f"over {COUNT_CAP}" if more > COUNT_CAP else str(more)
    print(f"({count} {which}: add {option} for the next {page.limit}; --json for all)")


def show_followers(conn: Connection, args: argparse.Namespace) -> None:
    """``follow list``: by organization and address; a page is only ``--limit`` (followers
    have no id, and the config's members bound how many there are)."""
    filters, page = filters_of(args), page_of(args)
    every = follower_query(filters, organization_id(conn, filters.organization))
    query = every.limit(page.limit) if page.limit is not None else every
    rows = (follower_row(row) for row in stream(conn, query))
    if args.json:
        write_json_array(rows)
    elif args.jsonl:
        write_json_lines(rows)
    elif not (shown := print_followers(rows)):
        print("no followers")
    elif page.limit is not None and shown >= page.limit:
        counted = select(func.count()).select_from(every.order_by(None).subquery())
        more = (conn.execute(counted).scalar() or 0) - shown
        if more > 0:
            print(f"({more} more: add --limit 0 for all; --json for all)")

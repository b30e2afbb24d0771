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
from collections.abc import Callable, Iterable, Iterator
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
from mailgate.listargs import DEFAULT_PAGE
from mailgate.views import print_followers, write_json_array, write_json_lines


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

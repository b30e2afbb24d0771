"""The list commands' options: paging and filters, as the command line gives them.

Apart from :mod:`mailgate.listing`, which reads the rows, so that building the command
line imports no database code: every command builds it, and ``tickets show`` must answer
in 0.3 s (issue #21).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta

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

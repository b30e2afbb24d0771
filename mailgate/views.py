"""What the commands print: aligned tables and ticket details for people, JSON for scripts.

Kept apart from :mod:`mailgate.cli`, which parses arguments and runs commands; the JSON
objects themselves are built in :mod:`mailgate.db.queries`.
"""

from __future__ import annotations

import itertools
import json
import sys
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

# Rows a streamed table measures its columns on before it prints; later rows keep
# those widths (a wider cell pushes its line, nothing is cut).
MEASURED = 100


def print_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()
) -> None:
    """A header row and columns aligned to their widest cell; numbers (``right``) flush right.

    The last column is left as long as it is (a subject, an error), so nothing is cut off.
    """
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header[:-1])]
    for row in (header, *rows):
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row[:-1], widths, strict=True))
        ]
        print("  ".join([*cells, row[-1]]).rstrip())


def print_detail(detail: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(detail, ensure_ascii=False, indent=2))
        return
    print(f"Ticket #{detail['id']}: {detail['subject']}")
    print(f"  status:       {detail['status']}")
    print(f"  organization: {detail['organization'] or '-'}  ({detail['routing']['reason']})")
    print(f"  requester:    {detail['requester']}")
    print(f"  assignee:     {detail['assignee'] or '-'}")
    if people := [
        p + (" (inactive)" if p in detail["inactive_participants"] else "")
        for p in detail["participants"]
    ]:
        print(f"  participants: {', '.join(people)}")
    print(f"  created:      {detail['created_at']}   updated: {detail['updated_at']}")
    for key in ("solved_at", "closed_at", "follow_up_of"):
        if detail[key]:
            print(f"  {key.replace('_', ' ')}: {detail[key]}")
    for comment in detail["comments"]:
        visibility = "public" if comment["public"] else "internal"
        who = comment["author_kind"].replace("_", " ")
        how = f": {comment['authentication']}" if comment["authentication"] else ""
        print()
        print(f"--- {comment['author']} at {comment['created_at']} ({visibility}; {who}{how})")
        print(comment["body"])
        for a in comment["attachments"]:
            print(
                f"  [attachment {a['number']}] {a['filename']} "
                f"({a['content_type']}, {a['size']} bytes)"
            )


def write_json_array(rows: Iterable[dict[str, Any]]) -> int:
    """Print ``rows`` as one JSON array, element by element as they come; the number printed.

    The text is the same as ``json.dumps(list(rows), indent=2)`` would give, without ever
    holding the list: a script reading ``--json`` sees no difference, the memory stays flat.
    """
    out, count = sys.stdout, 0
    for row in rows:
        out.write("[\n" if count == 0 else ",\n")
        out.write(textwrap.indent(json.dumps(row, ensure_ascii=False, indent=2), "  "))
        count += 1
    out.write("[]\n" if count == 0 else "\n]\n")
    return count


def write_json_lines(rows: Iterable[dict[str, Any]]) -> int:
    """Print one JSON object a line (``--jsonl``); the number printed."""
    count = 0
    for row in rows:
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
    return count


def stream_table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    right: Sequence[int] = (),
    cut: int | None = None,
    last_cut: int | None = None,
) -> int:
    """:func:`print_table` for rows that arrive one by one; the number printed.

    The columns take their widths from the first :data:`MEASURED` rows (a default page is
    all of them). ``cut`` and ``last_cut`` shorten long cells (the tickets table's habit).
    """
    source = iter(rows)
    first = list(itertools.islice(source, MEASURED))
    if not first:
        return 0
    widths = [max(len(h), *(len(row[i]) for row in first)) for i, h in enumerate(header[:-1])]
    if cut is not None:
        widths = [min(width, cut) for width in widths]

    def line(row: Sequence[str]) -> str:
        cells = []
        for i, (cell, width) in enumerate(zip(row[:-1], widths, strict=True)):
            cell = cell[:cut] if cut is not None else cell
            cells.append(cell.rjust(width) if i in right else cell.ljust(width))
        last = row[-1][:last_cut] if last_cut is not None else row[-1]
        return "  ".join([*cells, last]).rstrip()

    count = 0
    for row in itertools.chain([header], first, source):
        print(line(row))
        count += 1
    return count - 1


def print_tickets(rows: Iterable[dict[str, Any]]) -> int:
    """``tickets list``: long cells cut at 40 characters, the subject at 80."""
    header = ("ID", "STATUS", "ORGANIZATION", "REQUESTER", "ASSIGNEE", "UPDATED (UTC)", "SUBJECT")
    cells = (
        (
            str(r["id"]),
            r["status"],
            r["organization"] or "-",
            r["requester"],
            r["assignee"] or "-",
            r["updated_at"][:16].replace("T", " "),
            r["subject"],
        )
        for r in rows
    )
    return stream_table(header, cells, cut=40, last_cut=80)


def print_outbox(rows: Iterable[dict[str, Any]]) -> int:
    header = ("ID", "STATUS", "KIND", "TICKET", "TRIES", "TO", "LAST ERROR")
    cells = (
        (
            str(r["id"]),
            r["status"],
            r["kind"],
            f"#{r['ticket']}" if r["ticket"] is not None else "-",
            str(r["attempts"]),
            ", ".join(r["to"]),
            r["last_error"] or "",
        )
        for r in rows
    )
    return stream_table(header, cells, right=(0, 4))


def print_quarantine(rows: Iterable[dict[str, Any]]) -> int:
    header = ("ID", "RECEIVED (UTC)", "SIZE", "FROM", "REASON")
    cells = (
        (
            str(r["id"]),
            r["received_at"][:16].replace("T", " "),
            str(r["size"]),
            r["mail_from"] or "<>",
            r["reason"],
        )
        for r in rows
    )
    return stream_table(header, cells, right=(0, 2))


def print_followers(rows: Iterable[dict[str, Any]]) -> int:
    header = ("EMAIL", "ORGANIZATION", "SOURCE")
    return stream_table(header, ((r["email"], r["organization"], r["source"]) for r in rows))

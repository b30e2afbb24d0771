"""What the commands print: aligned tables and ticket details for people, JSON for scripts.

Kept apart from :mod:`mailgate.cli`, which parses arguments and runs commands; the JSON
objects themselves are built in :mod:`mailgate.db.queries`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def print_list(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        print("no tickets")
        return
    table = [
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
    ]
    header = ("ID", "STATUS", "ORGANIZATION", "REQUESTER", "ASSIGNEE", "UPDATED (UTC)", "SUBJECT")
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header[:-1])]
    for row in (header, *table):
        cells = [c.ljust(min(w, 40))[:40] for c, w in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1][:80]]).rstrip())


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

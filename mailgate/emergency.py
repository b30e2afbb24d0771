"""Is this mail an emergency? Keywords of ``[support] emergency_keywords`` as whole words.

The out-of-hours acknowledgement tells customers to write NOTFALL (or EMERGENCY …) in the
subject or the first line of their message, also in a reply. So a keyword counts in the
subject wherever it stands (reply prefixes do not matter: "Re: AW: NOTFALL: Server down")
and in the first non-empty line of the customer's own text; never in quoted history (a
reply quoting last week's emergency is no new one) and never inside a word
("Notfallplan", "urgently"). Case does not matter. Pure: the caller passes the text it
already has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

EMERGENCY_TAG = "emergency"
URGENT = "urgent"


@dataclass(frozen=True, slots=True)
class Emergency:
    """The keyword that made a mail an emergency and where it stood, for the ticket's reason."""

    keyword: str  # as configured
    where: str  # "subject" | "first line"

    def __str__(self) -> str:
        return f"emergency ({self.keyword} in the {self.where})"


@lru_cache(maxsize=8)
def _pattern(keywords: tuple[str, ...]) -> re.Pattern[str] | None:
    if not keywords:
        return None
    words = "|".join(re.escape(k) for k in sorted(keywords, key=len, reverse=True))
    # \w-boundaries on both sides: "NOTFALL:" and "(URGENT)" count, "Notfallplan" does not.
    return re.compile(rf"(?<![\w-])({words})(?![\w-])", re.IGNORECASE)


def _found(text: str, keywords: tuple[str, ...]) -> str | None:
    pattern = _pattern(keywords)
    match = pattern.search(text) if pattern is not None else None
    if match is None:
        return None
    said = match.group(1).casefold()
    return next(k for k in keywords if k.casefold() == said)


def first_line(text: str) -> str:
    """The first non-empty line that is not quoted (``>``): where a customer writes first."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(">"):
            return stripped
    return ""


def emergency(subject: str, body: str, keywords: tuple[str, ...]) -> Emergency | None:
    """The emergency a mail declares in its subject or the first line of ``body`` (the
    sender's own text, quotes already stripped where the caller can), else None."""
    # Anywhere in the subject: reply prefixes ("Re: AW:"), our tag and a customer prefix
    # ("Müller: NOTFALL …") in front of it change nothing.
    found = _found(subject, keywords)
    if found is not None:
        return Emergency(found, "subject")
    found = _found(first_line(body), keywords)
    return Emergency(found, "first line") if found is not None else None


def escalated(tags: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """Priority and tags of an emergency ticket: urgent, and tagged so (once)."""
    return URGENT, tuple(dict.fromkeys((*tags, EMERGENCY_TAG)))


def is_emergency(tags: tuple[str, ...] | list[str]) -> bool:
    """Whether a ticket already is one: an emergency is paged once, not on every reply."""
    return EMERGENCY_TAG in tags

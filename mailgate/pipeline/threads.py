"""Which ticket a mail continues, and the reply tokens and tags that name one.

"My reply became a new ticket" and "a stranger's mail landed on my ticket" are the two
complaints this module exists to prevent. The decision is pure: ingest gathers the facts
(the ticket behind a reply token, behind a referenced Message-ID, behind a subject tag) and
:func:`match_thread` weighs them, first hit wins, each with its reason. Only the reply token
is unforgeable; references and tags count only for senders the ticket already knows.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mailgate.config import TicketsConfig
from mailgate.models import Status
from mailgate.pipeline.facts import Reference, TicketFacts

# --- reply tokens: support+<ticket>-<mac>@domain -------------------------------------------

_MAC_LENGTH = 12  # hex digits of HMAC-SHA256: 48 bits, lower case survives any MTA
_TOKEN = re.compile(
    r"^(?P<local>[^+@]+)\+(?P<ticket>\d{1,12})-(?P<mac>[0-9a-f]{12})@(?P<domain>.+)$"
)


def _mac(ticket_id: int, secret: str) -> str:
    digest = hmac.new(secret.encode(), f"ticket:{ticket_id}".encode(), hashlib.sha256)
    return digest.hexdigest()[:_MAC_LENGTH]


def reply_address(ticket_id: int, address: str, secret: str) -> str:
    """Our address with the ticket's token: ``support+42-3f2a…@support.example.com``."""
    local, _, domain = address.partition("@")
    return f"{local}+{ticket_id}-{_mac(ticket_id, secret)}@{domain}"


def ticket_from_token(recipients: Iterable[str], secret: str) -> int | None:
    """The ticket named by a valid reply token among the recipients, else None."""
    for recipient in recipients:
        match = _TOKEN.match(recipient.strip().lower())
        if match is None:
            continue
        ticket_id = int(match.group("ticket"))
        if hmac.compare_digest(match.group("mac"), _mac(ticket_id, secret)):
            return ticket_id
    return None


def names_a_ticket(
    recipients: Iterable[str], references: Iterable[str], subject: str, pattern: str
) -> bool:
    """Whether a mail could thread onto a ticket at all: a token-shaped recipient, a
    Message-ID it refers to, or a subject tag. One that names none opens a new ticket,
    whatever the database holds, so its ticket can be planned before the store sees it.
    """
    return (
        any(True for _ in references)
        or ticket_from_tag(subject, pattern) is not None
        or any(_TOKEN.match(r.strip().lower()) for r in recipients)
    )


# --- subject tags: [#123] ----------------------------------------------------------------------

DEFAULT_TAG = TicketsConfig().tag_regex  # "[#123]", the same pattern ingest uses


def ticket_from_tag(subject: str, pattern: str = DEFAULT_TAG) -> int | None:
    """The ticket number in the subject tag, when there is one."""
    match = re.search(pattern, subject)
    if match is None:
        return None
    try:
        return int(match.group(1))
    except (IndexError, ValueError):
        return None


# --- the decision ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThreadMatch:
    """The ticket a mail continues (None: a new ticket), how it was found, and why."""

    ticket: TicketFacts | None
    via: str  # "token" | "references" | "tag" | "new"
    reason: str


NO_REFERENCE = "no reference to an existing ticket"


def match_thread(
    sender: str,
    agents: frozenset[str],
    token: TicketFacts | None,
    references: Sequence[Reference],
    tag: TicketFacts | None,
) -> ThreadMatch:
    """First hit wins: reply token, then references, then subject tag, else new."""
    if token is not None:
        return ThreadMatch(token, "token", f"reply token for ticket #{token.id}")
    refused: list[str] = []
    for ref in references:
        if ref.sent_to_sender or ref.ticket.knows(sender, agents):
            return ThreadMatch(
                ref.ticket, "references", f"In-Reply-To/References name ticket #{ref.ticket.id}"
            )
        refused.append(f"#{ref.ticket.id}")
    if tag is not None:
        if tag.knows(sender, agents):
            return ThreadMatch(tag, "tag", f"subject tag [#{tag.id}]")
        return ThreadMatch(None, "new", f"tag [#{tag.id}] from unauthorised sender")
    if refused:
        return ThreadMatch(
            None, "new", f"references to ticket {', '.join(refused)} from unauthorised sender"
        )
    return ThreadMatch(None, "new", NO_REFERENCE)


def status_after_reply(status: str, by_agent: bool, auto_reply: bool) -> str:
    """A customer's reply reopens a pending or solved ticket; agents and robots do not.

    An agent's answer to a new ticket makes it open: a person has taken it up.
    """
    if auto_reply:
        return status
    if by_agent:
        return Status.OPEN.value if status == Status.NEW else status
    if status in (Status.PENDING, Status.SOLVED):
        return Status.OPEN.value
    return status

"""What becomes of one mail: a small closed set of typed outcomes.

:func:`mailgate.pipeline.decide.decide` returns one of these; :func:`mailgate.db.apply.apply`
writes it. Each carries the reason the ledger shows and the notifications it causes, so
"why did this mail become an internal note on ticket 42, and who was told?" is answered by
one value that a test can compare.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailgate.models import AuthorKind, NotificationKind, Outcome
from mailgate.pipeline.commands import Change
from mailgate.pipeline.facts import SentNotification, TicketFacts
from mailgate.routing import UnusedPrefix


@dataclass(frozen=True, slots=True)
class Notify:
    """One notification the decision causes, before the store's safety rules.

    :func:`mailgate.db.outbox.queue_notification` still drops recipients outside the
    ticket, our own addresses and suppressed ones. ``followers`` adds every follower of the
    ticket's organization, one mail each (followers never see each other's addresses).
    ``with_comment`` puts the comment the decision writes into the mail.
    """

    kind: NotificationKind
    to: tuple[str, ...] = ()
    followers: bool = False
    each: bool = False
    exclude: tuple[str, ...] = ()
    with_comment: bool = False
    errors: tuple[str, ...] = ()
    # For a notification that belongs to no ticket: the subject and Message-ID of the mail
    # it is about (it answers that mail).
    about: str = ""
    about_id: str = ""
    moved: tuple[str | None, str] | None = None  # a move's old and new organization
    # The acknowledgement of a ticket whose subject prefix did not decide its organization.
    unused_prefix: UnusedPrefix | None = None
    # The acknowledgement of an emergency that paged the on-call team: it may say so.
    paged: bool = False
    by: str = ""  # who did what the notification tells of (an assignment)
    digest: Mapping[str, Any] | None = None  # the lists of an agent_digest


@dataclass(frozen=True, slots=True)
class Ignore:
    """Stored in the ledger and nothing else: a loop, a robot's mail nobody should see."""

    reason: str
    outcome = Outcome.IGNORED


@dataclass(frozen=True, slots=True)
class Quarantine:
    """Kept aside for an admin (``mailgate quarantine``): no mail, no sender, too many.

    ``notify`` goes to agents only (it belongs to no ticket): an agent whose mail was
    not authenticated hears why it was kept aside.
    """

    reason: str
    notify: tuple[Notify, ...] = ()
    outcome = Outcome.QUARANTINED


@dataclass(frozen=True, slots=True)
class Bounce:
    """A bounce is never a ticket: the notifications it returns are marked and noted."""

    reason: str
    returned: tuple[SentNotification, ...]
    failed: str  # "anna@… 5.1.1, …": who could not be reached, with the status
    suppress: tuple[tuple[str, str], ...]  # hard-bounced (address, status): no mail for a while
    outcome = Outcome.IGNORED


@dataclass(frozen=True, slots=True)
class NewTicket:
    """A ticket opened by this mail, in the organization routing chose."""

    reason: str
    requester: str
    requester_name: str
    organization: str | None
    subject: str
    body: str
    score: float | None
    priority: str
    tags: tuple[str, ...]
    participants: tuple[tuple[str, str], ...]  # To/Cc people copied on it: (email, name)
    notify: tuple[Notify, ...]
    authentication: str | None = None  # the verdict that authenticated the sender, if any
    # The credentials behind "[secret N]" in subject and body, for the vault to encrypt.
    secrets: tuple[str, ...] = ()
    outcome = Outcome.CREATED


@dataclass(frozen=True, slots=True)
class FollowUp:
    """A reply to a closed ticket opens a new one: closed tickets are locked (user rule).

    An agent's reply to a closed ticket opens it too: its commands apply to the follow-up,
    its public text goes to the customer as an agent reply, and ``#note`` text stays
    internal (``public`` False).
    """

    reason: str
    closed: TicketFacts
    author: str
    author_name: str
    body: str
    notify: tuple[Notify, ...]
    author_kind: AuthorKind = AuthorKind.CUSTOMER
    authentication: str | None = None
    public: bool = True
    status: str = "new"  # the follow-up's status before the agent's commands
    changes: tuple[Change, ...] = ()
    emergency: bool = False  # the customer declared one: urgent, tagged emergency
    secrets: tuple[str, ...] = ()  # behind "[secret N]" in body, for the vault
    outcome = Outcome.CREATED


@dataclass(frozen=True, slots=True)
class Comment:
    """A public comment on an open ticket, with what it changes there."""

    reason: str
    ticket: TicketFacts
    author: str
    author_name: str
    body: str
    status: str  # the ticket's status after this comment
    participants: tuple[tuple[str, str], ...]  # To/Cc people to copy on the ticket
    changes: tuple[Change, ...]  # an agent's commands, checked
    notify: tuple[Notify, ...]
    author_kind: AuthorKind = AuthorKind.CUSTOMER
    authentication: str | None = None  # the verdict that authenticated the author, if any
    # A customer's reply declared an emergency on a ticket that was none: urgent, tagged.
    emergency: bool = False
    secrets: tuple[str, ...] = ()  # behind "[secret N]" in body, for the vault
    outcome = Outcome.COMMENTED

    public = True


@dataclass(frozen=True, slots=True)
class InternalNote(Comment):
    """A comment customers never see: an agent's ``#note``, a robot's reply to a ticket,
    an agent's mail that was not authenticated."""

    public = False


Decision = Ignore | Quarantine | Bounce | NewTicket | FollowUp | Comment | InternalNote

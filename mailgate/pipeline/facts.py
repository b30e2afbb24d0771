"""What the database knows that a decision needs, as plain values.

:func:`mailgate.db.gather.gather` reads these in the transaction that will write the
decision, so :func:`mailgate.pipeline.decide.decide` can stay pure: a test builds a
:class:`Facts` by hand instead of filling a database.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TicketFacts:
    """One existing ticket: what threading, replies, follow-ups and visibility look at."""

    id: int
    status: str
    organization: str | None
    requester: str
    participants: tuple[str, ...] = ()  # active, oldest first: the order notifications list them
    # Participants a move left outside the ticket's organization, or an agent's ``#cc
    # remove``: in its history, sent nothing, not brought back by a Cc (only ``#cc add``).
    inactive: frozenset[str] = frozenset()
    members: frozenset[str] = frozenset()  # members of the ticket's organization
    subject: str = ""
    priority: str = "normal"
    tags: tuple[str, ...] = ()
    assignee: str | None = None  # the agent who handles it
    # Row ids, for the store that writes the decision; decisions never look at them.
    organization_id: int | None = None
    requester_id: int | None = None
    assignee_id: int | None = None

    def knows(self, email: str, agents: frozenset[str]) -> bool:
        """Requester, participant, member of its organization, or agent (user rule)."""
        return (
            email == self.requester
            or email in self.participants
            or email in self.members
            or email in agents
        )


@dataclass(frozen=True, slots=True)
class Reference:
    """A Message-ID the mail refers to that we stored, and the ticket it belongs to."""

    ticket: TicketFacts
    sent_to_sender: bool  # one of our notifications, addressed to this very sender


@dataclass(frozen=True, slots=True)
class SentNotification:
    """An outbox row that a bounce says came back undelivered."""

    id: int
    kind: str
    ticket_id: int | None
    recipients: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything :func:`~mailgate.pipeline.decide.decide` may ask of the database."""

    token: TicketFacts | None = None  # the ticket behind a valid reply token
    references: tuple[Reference, ...] = ()  # tickets behind In-Reply-To/References
    tag: TicketFacts | None = None  # the ticket behind the subject tag
    recent_tickets: int = 0  # new tickets the sender opened in the last hour
    bounced: tuple[SentNotification, ...] = ()  # our notifications a bounce returns
    # Whether support is staffed when the mail arrives ([hours] at the mail's time): the
    # store's answer about the clock, so decide need not read one.
    support_open: bool = True
